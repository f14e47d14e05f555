"""The metric names a PromQL expression reads, for checking rules and dashboards against
the catalogue in `exporter.metrics`.

Not a PromQL parser: a tokenizer that knows the constructs we generate (label matchers,
`__name__` alternations, range/subquery brackets, grouping clauses, function calls,
Grafana's `label_values()`), which `promtool` has already validated syntactically.
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*(=~|=)\s*"([^"]*)"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.S)
_KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "inf", "nan", "Inf", "NaN",
})


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects, including those in `__name__` matchers.

    A `__name__=~` regex must be a plain alternation of names (what our generators emit);
    anything else is returned verbatim so the caller's catalogue check fails loudly.
    """
    lv = _LABEL_VALUES.match(expr)
    if lv:
        expr = lv.group(1)
    names: set[str] = set()
    for op, value in _NAME_MATCHER.findall(expr):
        names.update(value.split("|") if op == "=~" else [value])
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub(" ", s)
    s = _BRACKETS.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    s = _OFFSET.sub(" ", s)
    s = _NUMBER.sub(" ", s)
    for match in _IDENT.finditer(s):
        word = match.group(0)
        rest = s[match.end():].lstrip()
        if word in _KEYWORDS or rest.startswith("("):
            continue  # a keyword, or a function / aggregation call
        names.add(word)
    return names
