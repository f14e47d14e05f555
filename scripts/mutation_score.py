"""Mutation score per module: mutmut 3 changes one line at a time, the module's tests must fail.

Each module runs in its own throw-away copy of the work tree (mutmut writes mutants/ and
its own config into the project root, so the real tree is never touched), with only the
unit tests that exercise it, and the score is printed per module:

    killed / (mutants - listed equivalents)

Survivors are printed with their diff so they can be killed by a new test or, when no
test can tell them apart, listed in tests/mutation/equivalent.txt with the reason.

    scripts/mutation                          the default modules below
    scripts/mutation exporter/decode.py       just these (a directory means its *.py)
    scripts/mutation --tests tests/x.py mod.py  a module without a default test list
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "tests" / "mutation" / "equivalent.txt"
TARGET = 85.0

STATE_TESTS = ["tests/test_state.py", "tests/test_state_mutants.py", "tests/test_state_rooms.py"]
RENDERING = ["tests/test_ingest_equivalence.py::test_fast_text_rendering_is_byte_identical",
             "tests/test_ingest_equivalence.py::test_rendering_while_ingesting_gives_whole_lines"]
# Module (or glob) -> the unit tests that exercise it. Only fast, in-process tests: mutmut
# forks one process per mutant, and tests that start servers would start them per mutant.
DEFAULT_TESTS: dict[str, list[str]] = {
    "exporter/decode.py": ["tests/test_decode.py", "tests/test_decode_mutants.py"],
    "exporter/labels.py": ["tests/test_labels.py", *STATE_TESTS],
    "exporter/collector.py": ["tests/test_collector.py", "tests/test_collector_mutants.py",
                              "tests/test_state_mutants.py",
                              "tests/test_backoff_and_probe_status.py", *RENDERING],
    # The event state package, module by module: the incident rooms (running, waiting) are
    # driven through the State API by test_incidents.
    # The series' fresh (zero-first) and exemplar rules and the worker rows reach the output
    # via the collector.
    "exporter/state/series.py": [*STATE_TESTS, "tests/test_incidents.py",
                                 "tests/test_collector.py", "tests/test_collector_mutants.py"],
    "exporter/state/workers.py": [*STATE_TESTS, "tests/test_incidents.py",
                                  "tests/test_collector.py", "tests/test_collector_mutants.py"],
    "exporter/state/*.py": [*STATE_TESTS, "tests/test_incidents.py"],
    "exporter/pipeline.py": [*STATE_TESTS, "tests/test_collector.py"],
    "alerts/rules.py": ["tests/test_alerts.py", "tests/test_rule_clauses.py"],
    "dashboards/common.py": ["tests/test_dashboards.py", "tests/test_dashboard_queries.py"],
}
DEFAULT_MODULES = ["exporter/decode.py", "exporter/labels.py", "exporter/collector.py",
                   "exporter/state", "alerts/rules.py", "dashboards/common.py"]

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
RESULT_LINE = re.compile(r"^\s+(\S+): (.+)$")


@dataclass
class Score:
    module: str
    counts: Counter[str] = field(default_factory=Counter)
    survivors: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    untested: set[str] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values()) - self.counts["skipped"]

    @property
    def killed(self) -> int:
        return sum(n for status, n in self.counts.items() if status in KILLED)

    @property
    def percent(self) -> float:
        counted = self.total - len(self.equivalent)
        return 100.0 * self.killed / counted if counted else 100.0


def equivalents() -> dict[str, str]:
    """Mutant name -> why no test can tell it from the original."""
    out: dict[str, str] = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def tests_for(module: str, override: list[str] | None) -> list[str]:
    if override:
        return override
    for pattern, tests in DEFAULT_TESTS.items():
        if fnmatch(module, pattern):
            return [t for t in tests if (ROOT / t.partition("::")[0]).exists()]
    raise SystemExit(f"no default tests for {module}: name them with --tests")


def expand(modules: list[str]) -> list[str]:
    out: list[str] = []
    for m in modules:
        path = ROOT / m
        if path.is_dir():
            out += sorted(str(p.relative_to(ROOT)) for p in path.glob("*.py")
                          if p.name != "__init__.py")
        elif path.is_file():
            out.append(m)
        else:
            raise SystemExit(f"{m}: no such module (paths are relative to {ROOT})")
    return out


def copy_tree(dest: Path) -> None:
    """Tracked and new (not ignored) files: what a fresh clone plus the work in hand has."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def configure(dest: Path, module: str, tests: list[str]) -> None:
    package = module.split("/", 1)[0]
    quoted = ", ".join(f'"{t}"' for t in tests)
    # mutmut runs the tests inside mutants/: everything they read (docs, rules, the other
    # packages) must be there too.
    others = ", ".join(f'"{p.name}"' for p in sorted(dest.iterdir()) if p.name != package)
    with (dest / "pyproject.toml").open("a") as f:
        f.write(f"""
[tool.mutmut]
source_paths = ["{package}"]
only_mutate = ["{module}"]
also_copy = [{others}]
pytest_add_cli_args_test_selection = [{quoted}]
# Random order and plugin state would make a mutant's verdict depend on the draw; the
# alias makes the import name load the mutated copy (see scripts/mutation_alias.py).
pytest_add_cli_args = ["-p", "scripts.mutation_alias", "-p", "no:randomly",
                       "-p", "no:cacheprovider", "-q"]
use_git_change_detection = false
""")


def run_module(module: str, tests: list[str], children: int, keep: bool,
               known: dict[str, str], diffs: bool = True) -> Score:
    score = Score(module)
    work = Path(tempfile.mkdtemp(prefix="mutation-"))
    started = time.monotonic()
    try:
        copy_tree(work)
        configure(work, module, tests)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        mutmut = [sys.executable, "-m", "mutmut"]
        log = work / "mutmut-run.log"
        with log.open("w") as out:
            proc = subprocess.run([*mutmut, "run", "--max-children", str(children)], cwd=work,
                                  env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{module}: mutmut run failed ({proc.returncode}):\n{tail}")
        listing = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env,
                                 check=True, capture_output=True, text=True).stdout
        for line in listing.splitlines():
            match = RESULT_LINE.match(line)
            if not match:
                continue
            name, status = match.groups()
            score.counts[status] += 1
            if status not in KILLED and status != "skipped":
                if status == "no tests":
                    score.untested.add(name)
                if name in known:
                    score.equivalent.append(name)
                else:
                    score.survivors.append(name)
        # Diffs for the ones a test ran against and missed; "no tests" ones are listed by
        # name (their function has no test at all: one `mutmut show` each would be slow).
        for name in score.survivors if diffs else ():
            if name in score.untested:
                continue
            diff = subprocess.run([*mutmut, "show", name], cwd=work, env=env,
                                  capture_output=True, text=True, check=False).stdout
            print(diff.rstrip(), flush=True)
    finally:
        score.seconds = time.monotonic() - started
        if keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths (default: %(default)s)",
                        default=DEFAULT_MODULES)
    parser.add_argument("--tests", nargs="+", help="test files for every module given")
    parser.add_argument("--max-children", type=int, default=2,
                        help="mutants run at once (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the work copies")
    parser.add_argument("--no-diffs", action="store_true",
                        help="name the survivors without their diffs (faster)")
    args = parser.parse_args(argv)
    if args.max_children < 1:
        parser.error("--max-children must be at least 1")

    known = equivalents()
    scores: list[Score] = []
    for module in expand(args.modules):
        tests = tests_for(module, args.tests)
        print(f"== {module}  (tests: {' '.join(tests)})", flush=True)
        score = run_module(module, tests, args.max_children, args.keep, known,
                           not args.no_diffs)
        scores.append(score)
        print(f"   {score.killed}/{score.total - len(score.equivalent)} killed "
              f"= {score.percent:.1f}%  ({dict(score.counts)}, "
              f"{len(score.equivalent)} listed equivalent, {score.seconds:.0f} s)", flush=True)

    print(f"\n{'module':<28} {'mutants':>7} {'killed':>6} {'equiv':>5} {'left':>4} {'score':>7}")
    for s in scores:
        print(f"{s.module:<28} {s.total:>7} {s.killed:>6} {len(s.equivalent):>5} "
              f"{len(s.survivors):>4} {s.percent:>6.1f}%")
    for s in scores:
        for name in s.survivors:
            print(f"{'no tests' if name in s.untested else 'survived'}: {name}")
    low = [s.module for s in scores if s.percent < TARGET]
    if low:
        print(f"below {TARGET:.0f}%: {', '.join(low)}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
