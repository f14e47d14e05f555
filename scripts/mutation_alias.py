"""pytest plugin for scripts/mutation: `celery_events_exporter.*` imports mutmut's mutants.

The import name is not a directory of the repository (pyproject's package-dir maps it onto
exporter/, alerts/ and dashboards/), and the editable install's finder points at the real
tree. mutmut puts its mutated copy first on sys.path under the directory names and names
every mutant after them (`exporter.state.clocks.x_...`), so the tests must import the same
module objects under those names. This finder, first on sys.meta_path, makes
`celery_events_exporter.X` the module `exporter.X` (`alerts.X`, `dashboards.X` for the two
subpackages kept in their own directories) imported from the mutated copy.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

PACKAGE = "celery_events_exporter"
# Subpackages in a directory of their own (pyproject's package-dir), the rest is exporter/.
OWN_DIRECTORY = {"alerts", "dashboards"}


def target(fullname: str) -> str | None:
    """The module name under the repository's directories, or None if not ours."""
    if fullname == PACKAGE:
        return "exporter"
    if not fullname.startswith(PACKAGE + "."):
        return None
    rest = fullname[len(PACKAGE) + 1:]
    head = rest.partition(".")[0]
    return rest if head in OWN_DIRECTORY else f"exporter.{rest}"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None,
                  target_module: object = None) -> importlib.machinery.ModuleSpec | None:
        real = target(fullname)
        if real is None:
            return None
        module = importlib.import_module(real)
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=getattr(module, "__file__",
                                                                             None))
        spec.submodule_search_locations = getattr(module, "__path__", None)
        return spec

    def __init__(self) -> None:
        self._specs: dict[int, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # The same object under both names: a mutant's trampoline sees the name mutmut gave it.
        module = importlib.import_module(target(spec.name))  # type: ignore[arg-type]
        self._specs[id(module)] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Executed already, under its directory name; importlib has just replaced its spec
        # with the alias's: put the real one back (relative imports, reload, inspect).
        module.__spec__ = self._specs.pop(id(module), module.__spec__)


if PACKAGE in sys.modules and sys.modules[PACKAGE].__name__ != "exporter":
    raise RuntimeError(f"{PACKAGE} was imported before the mutation alias: the tests would "
                       "run against the real tree, not the mutants")
sys.meta_path.insert(0, _Alias())
