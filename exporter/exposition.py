"""/metrics bodies: the text format and OpenMetrics, rendered fast, and which one to send.

prometheus_client's renderers spend ~7 µs per sample (label sorting, escaping and name
checks per line): ~80 ms of text at 10k series, and its OpenMetrics renderer ~20x the text
one. The task families below render the same bytes straight from the state snapshot, a label
string per series rather than per line. Those strings are kept between scrapes (label values
of a series never change), for up to _CACHE_KEYS series per family, a few hundred bytes
each: ~5 MiB at the very most. Both formats share them: a sample line reads the same in both,
OpenMetrics adds a `_created` line per series, exemplars on histogram buckets (the task
behind the latest observation in each bucket), other HELP/TYPE names and `# EOF`; its
`_created` lines and exemplar texts are kept between scrapes too (a series' creation time
and a bucket's latest task rarely change between two scrapes), which brings an OpenMetrics
render from ~1.55x to ~1.25x the text one.

Every other family (workers, queues, the exporter's own) is small and goes through
prometheus_client's renderers, one family at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as om
from prometheus_client.utils import floatToGoString

_CACHE_KEYS = 2048
# Keys of a family's cache that are not label keys: OpenMetrics' `_created` lines (label key
# -> (created, line)) and exemplar texts (the state's mark tuple -> text). A series' creation
# time and a bucket's latest exemplar change far less often than scrapes come.
_CREATED = object()
_MARKS = object()

Renderer = Callable[[object], bytes]


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return value


def _help_line(name: str, documentation: str, kind: str) -> str:
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def _om_help_line(name: str, documentation: str, kind: str) -> str:
    # OpenMetrics escapes the double quote in HELP too (the text format does not).
    return f"# HELP {name} {_escape(documentation)}\n# TYPE {name} {kind}\n"


def created_times(series: object) -> dict | None:
    """When each series of one state Series was created (label key -> unix time), if known.

    The one place that reads creation times. The state keeps none per series yet; when it
    holds a `created` mapping beside `data`, it is used, else every series counts from the
    exporter's start (see `TaskCounter`): a true start of the count, earlier than the
    series' own whenever the series appeared later.
    """
    times = getattr(series, "created", None)
    return dict(times) if times else None


class _Lazy:
    """A family whose samples are built on first access; `render` writes its text directly."""

    _rows: object
    _created: dict | None
    _since: float

    @property
    def samples(self) -> list:  # type: ignore[override]
        if self._rows is not None:
            rows, self._rows = self._rows, None
            self._build(rows)
        return self._samples

    @samples.setter
    def samples(self, value: list) -> None:
        self._samples = value

    def _build(self, rows: object) -> None:
        raise NotImplementedError

    def render(self, out: list[str], go: dict[float, str], openmetrics: bool = False) -> None:
        raise NotImplementedError

    def created(self, key: tuple[str, ...]) -> float:
        times = self._created
        if times is None:
            return self._since
        return times.get(key, self._since)

    def _created_lines(self, cache: dict, data: dict, name: str, cut: int,
                       go: dict[float, str]) -> Callable[[tuple[str, ...], str], str]:
        """The `_created` line of a series, from the sample prefix it shares labels with."""
        lines = cache.get(_CREATED)
        if lines is None or len(lines) > 2 * len(data) + 64:
            lines = cache[_CREATED] = {}
        times, since = self._created, self._since

        def line_of(key: tuple[str, ...], prefix: str) -> str:
            when = since if times is None else times.get(key, since)
            got = lines.get(key)
            if got is not None and got[0] == when:
                return got[1]
            text = go.get(when)
            if text is None:
                text = go[when] = floatToGoString(when)
            line = f"{name}{prefix[cut:]}{text}\n"
            if len(lines) < _CACHE_KEYS:
                lines[key] = (when, line)
            return line
        return line_of


class TaskCounter(_Lazy, CounterMetricFamily):
    def __init__(self, name: str, documentation: str, labels: list[str], data: dict,
                 static: tuple[str, ...], worker_pos: int, cache: dict,
                 created: dict | None = None, since: float = 0.0,
                 zero: set | None = None) -> None:
        self._rows = None
        CounterMetricFamily.__init__(self, name, documentation, labels=labels)
        # Series no scrape has shown yet: 0 this time, so rate() sees their first increment.
        self.zero = zero or set()
        self._labelnames = tuple(labels)
        self._static = static
        self._worker_pos = worker_pos
        self._cache = cache
        self._created = created
        self._since = since
        self._rows = data

    def _values(self, key: tuple[str, ...]) -> tuple[str, ...]:
        pos = self._worker_pos
        if pos >= 0:
            return (*key[:pos], *key[pos + 1:], *self._static)
        return (*key, *self._static)

    def _build(self, data: dict) -> None:  # type: ignore[override]
        # No `_created` here: prometheus_client's text renderer would print them as extra
        # gauge families, one series each. OpenMetrics gets them from `render`.
        add = super().add_metric
        zero = self.zero
        for key, cell in data.items():
            add(list(self._values(key)), 0.0 if key in zero else cell[0])

    def render(self, out: list[str], go: dict[float, str], openmetrics: bool = False) -> None:
        data = self._rows
        if data is None:  # samples were built (or added by hand): the generic way
            out.append(_generic(self, openmetrics))
            return
        sample = self.name + "_total"
        cut = len(sample)
        if openmetrics:
            out.append(_om_help_line(self.name, self.documentation, "counter"))
            created_line = self._created_lines(self._cache, data, self.name + "_created", cut,
                                               go)
        else:
            out.append(_help_line(sample, self.documentation, "counter"))
        names = self._labelnames
        order = sorted(range(len(names)), key=names.__getitem__)
        heads = [f'{names[i]}="' for i in order]
        values = self._values
        append = out.append
        cache = _trim(self._cache, data)
        room = _CACHE_KEYS - len(cache)
        zero = self.zero
        for key, cell in data.items():
            prefix = cache.get(key)
            if prefix is None:
                vals = values(key)
                labels = ",".join([h + _escape(vals[i]) + '"'
                                   for h, i in zip(heads, order, strict=True)])
                prefix = f"{sample}{{{labels}}} " if labels else f"{sample} "
                if room > 0:
                    cache[key] = prefix
                    room -= 1
            value = cell[0] if key not in zero else 0.0
            text = go.get(value)
            if text is None:
                text = go[value] = floatToGoString(value)
            if openmetrics:
                append(f"{prefix}{text}\n{created_line(key, prefix)}")
            else:
                append(f"{prefix}{text}\n")


class TaskHistogram(_Lazy, HistogramMetricFamily):
    def __init__(self, name: str, documentation: str, labels: list[str], data: dict,
                 static: tuple[str, ...], les: list[str], cache: dict,
                 created: dict | None = None, since: float = 0.0,
                 exemplars: dict | None = None, zero: set | None = None) -> None:
        self._rows = None
        HistogramMetricFamily.__init__(self, name, documentation, labels=labels)
        self.zero = zero or set()  # as for TaskCounter
        self._labelnames = tuple(labels)
        self._static = static
        self._les = les
        self._cache = cache
        self._created = created
        self._since = since
        # label key -> per bucket (task id, value, unix time) or None: the state's own
        self.exemplars = exemplars or {}
        self._rows = data

    def _build(self, data: dict) -> None:  # type: ignore[override]
        les, static = self._les, self._static
        add = super().add_metric
        zero = self.zero
        for key, cell in data.items():
            if key in zero:
                cell = [0.0] * len(cell)
            running = 0.0
            buckets = []
            for le, count in zip(les, cell, strict=False):
                running += count
                buckets.append((le, running))
            add([*key, *static], buckets, cell[-1])

    def render(self, out: list[str], go: dict[float, str], openmetrics: bool = False) -> None:
        data = self._rows
        if data is None:
            out.append(_generic(self, openmetrics))
            return
        name = self.name
        cut = len(name) + len("_count")
        if openmetrics:
            out.append(_om_help_line(name, self.documentation, "histogram"))
            created_line = self._created_lines(self._cache, data, name + "_created", cut, go)
            marks_text = self._cache.get(_MARKS)
            if marks_text is None or len(marks_text) > (len(self._les) + 1) * len(data) + 256:
                marks_text = self._cache[_MARKS] = {}
        else:
            out.append(_help_line(name, self.documentation, "histogram"))
        names = self._labelnames
        order = sorted(range(len(names)), key=names.__getitem__)
        before = [i for i in order if names[i] < "le"]
        after = [i for i in order if names[i] > "le"]
        les = [f'le="{le}"' for le in self._les]
        static = self._static
        exemplars = self.exemplars
        append = out.append
        cache = _trim(self._cache, data)
        room = _CACHE_KEYS - len(cache)
        zero = self.zero
        for key, cell in data.items():
            shown_zero = zero and key in zero
            if shown_zero:
                cell = [0.0] * len(cell)
            entry = cache.get(key)
            if entry is None:
                vals = (*key, *static)
                head = "".join([f'{name}_bucket{{',
                                *[f'{names[i]}="{_escape(vals[i])}",' for i in before]])
                tail = "".join([*[f',{names[i]}="{_escape(vals[i])}"' for i in after], "} "])
                plain = ",".join([f'{names[i]}="{_escape(vals[i])}"' for i in order])
                labels = f"{{{plain}}}" if plain else ""
                entry = (head, tail, f"{name}_count{labels} ", f"{name}_sum{labels} ")
                if room > 0:
                    cache[key] = entry
                    room -= 1
            head, tail, count_prefix, sum_prefix = entry
            running = 0.0
            marks = exemplars.get(key) if openmetrics and not shown_zero else None
            if marks is None:
                for le, count in zip(les, cell, strict=False):
                    running += count
                    text = go.get(running)
                    if text is None:
                        text = go[running] = floatToGoString(running)
                    append(f"{head}{le}{tail}{text}\n")
            else:
                for le, count, mark in zip(les, cell, marks, strict=False):
                    running += count
                    text = go.get(running)
                    if text is None:
                        text = go[running] = floatToGoString(running)
                    if mark is None:
                        append(f"{head}{le}{tail}{text}\n")
                    else:  # the task behind the latest observation in this bucket
                        suffix = marks_text.get(mark)
                        if suffix is None:
                            task_id, value, when = mark
                            suffix = marks_text[mark] = (
                                f' # {{task_id="{_escape(task_id)}"}} '
                                f"{floatToGoString(value)} {when}\n")
                        append(f"{head}{le}{tail}{text}{suffix}")
            total = cell[-1]
            text = go.get(total)
            if text is None:
                text = floatToGoString(total)
            append(f"{count_prefix}{go[running]}\n{sum_prefix}{text}\n")
            if openmetrics:
                append(created_line(key, count_prefix))


def _trim(cache: dict, data: dict) -> dict:
    """Label strings of series that no longer exist go once they are the bulk."""
    if len(cache) > 2 * len(data) + 64:
        cache.clear()
    return cache


class _One:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> list[Metric]:
        return [self.metric]


_EOF = "# EOF\n"


def _generic(metric: Metric, openmetrics: bool = False) -> str:
    if openmetrics:
        # Its default (underscores) escaping walks every sample name a character at a time
        # in Python; allow-utf-8 gives the same bytes for valid legacy names like ours.
        text = om.generate_latest(_One(metric), escaping=om.ALLOWUTF8)  # type: ignore[arg-type]
        return text.decode("utf-8")[:-len(_EOF)]
    return generate_latest(_One(metric)).decode("utf-8")  # type: ignore[arg-type]


def _render(registry: object, openmetrics: bool) -> list[str]:
    out: list[str] = []
    go: dict[float, str] = {}
    for metric in registry.collect():  # type: ignore[attr-defined]
        if isinstance(metric, _Lazy):
            metric.render(out, go, openmetrics)
        else:
            out.append(_generic(metric, openmetrics))
    return out


def generate_text(registry: object) -> bytes:
    """The same bytes as prometheus_client's `generate_latest` (text format 0.0.4), fast."""
    return "".join(_render(registry, False)).encode("utf-8")


def generate_openmetrics(registry: object) -> bytes:
    """OpenMetrics 1.0.0 text: prometheus_client's bytes plus `_created` of the task series."""
    out = _render(registry, True)
    out.append(_EOF)
    return "".join(out).encode("utf-8")


# -- content negotiation ------------------------------------------------------------------
#
# Prometheus sends one Accept header per scrape, by version:
#   2.x before 2.49  application/openmetrics-text;version=1.0.0,application/openmetrics-text;
#                    version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1
#   2.49 and later   the same media ranges weighted q=0.5..0.2 (scrape_protocols reorders them,
#                    PrometheusProto first with native histograms on)
#   3.x              adds text/plain;version=1.0.0, and escaping=allow-utf-8 (or underscores,
#                    per metric_name_escaping_scheme) on both 1.0.0 ranges
# Our names are all valid legacy names, so underscores, allow-utf-8 and values escaping give
# the same bytes; dots escaping doubles every underscore: prometheus_client renders that one.

_ESCAPINGS = (om.UNDERSCORES, om.ALLOWUTF8, om.VALUES, om.DOTS)
TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"


def _choice(media: str, version: str, escaping: str) -> tuple[Renderer, str] | None:
    if escaping not in _ESCAPINGS:
        escaping = om.UNDERSCORES
    if media == "application/openmetrics-text":
        if version in ("", "1.0.0"):
            content_type = ("application/openmetrics-text; version=1.0.0; charset=utf-8; "
                            f"escaping={escaping}")
            if escaping == om.DOTS:
                return partial(om.generate_latest, escaping=om.DOTS), content_type
            return generate_openmetrics, content_type
        if version == "0.0.1":
            return generate_openmetrics, "application/openmetrics-text; version=0.0.1; " \
                                         "charset=utf-8"
        return None
    if media == "text/plain":
        if version in ("", "0.0.4"):
            return generate_text, TEXT_0_0_4
        if version == "1.0.0":
            content_type = f"text/plain; version=1.0.0; charset=utf-8; escaping={escaping}"
            if escaping == om.DOTS:
                return partial(generate_latest, escaping=om.DOTS), content_type
            return generate_text, content_type
        return None
    if media in ("*/*", "text/*"):
        return generate_text, TEXT_0_0_4
    return None  # protobuf and the rest: not served


def negotiate(accept: str | None) -> tuple[Renderer, str]:
    """The renderer and Content-Type for an Accept header: the highest q we serve wins (the
    first such range on a tie); the text format 0.0.4 when none is served."""
    best: tuple[float, tuple[Renderer, str]] | None = None
    for item in (accept or "").split(","):
        media, *params = item.split(";")
        options: dict[str, str] = {}
        for param in params:
            key, _, value = param.partition("=")
            options[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(options.get("q", "1"))
        except ValueError:
            q = 0.0
        if not q > 0:
            continue
        choice = _choice(media.strip().lower(), options.get("version", ""),
                         options.get("escaping", ""))
        if choice is not None and (best is None or q > best[0]):
            best = (q, choice)
    return best[1] if best is not None else (generate_text, TEXT_0_0_4)
