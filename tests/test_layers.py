"""The package's layers: no module imports a module of a higher layer.

Layers, bottom to top (one explicit table, :data:`LAYERS`):

0. ``ulfine/__init__``, ``errors``, ``registry``, ``config``, ``batch``, ``jsonable``, ``schedule``,
   ``safefiles``, ``statefiles``, ``validation``
1. ``features``, ``models``
2. ``data``, ``methods``, ``microworld``
3. ``engine``
4. ``apps``, ``cli`` and anything else at the top level

Every module under ``src/ulfine`` is parsed with ``ast`` (nothing is imported); every
``import``/``from ... import`` anywhere in it counts, relative ones resolved, including those
inside functions and under ``if TYPE_CHECKING:``. One test per top-level unit, so a failure says
whose modules break the rule; its message lists every offending import with file and line.

One deliberate exception, outside the import statements this checker reads: ``ulfine.load`` is
resolved on first attribute access by ``ulfine/__init__.py`` (PEP 562 ``__getattr__``, importing
``ulfine.apps.model_io`` by name), the way open_clip and timm expose their top-level API. Importing
``ulfine`` therefore imports nothing of a higher layer; :func:`test_import_ulfine_stays_light`
checks it in a fresh process.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "ulfine"

#: top-level unit of ``ulfine`` -> layer ("" is ``ulfine/__init__.py`` itself)
LAYERS: dict[str, int] = {
    "": 0, "errors": 0, "registry": 0, "config": 0, "batch": 0, "jsonable": 0, "schedule": 0,
    "safefiles": 0, "statefiles": 0, "validation": 0,
    "features": 1, "models": 1,
    "data": 2, "methods": 2, "microworld": 2,
    "engine": 3,
    "apps": 4, "cli": 4,
}
#: anything else at the top level (``__main__``, a new application) is an application
TOP_LAYER = 4


@dataclass(frozen=True)
class Import:
    """One resolved import of an ``ulfine`` module."""

    path: Path
    line: int
    importer: str
    target: str

    def __str__(self) -> str:
        return (f"{self.path.relative_to(SRC.parent)}:{self.line}: {self.importer} (layer "
                f"{layer_of(self.importer)}) imports {self.target} (layer {layer_of(self.target)})")


def unit_of(module: str) -> str:
    """Top-level unit of a dotted ``ulfine`` module name (``""`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    return LAYERS.get(unit_of(module), TOP_LAYER)


def module_name(path: Path) -> str:
    """``src/ulfine/data/splits.py`` -> ``ulfine.data.splits``; a package's ``__init__`` -> the package."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether a dotted name is a module or package of the source tree."""
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """Absolute name of the ``from X`` part (relative levels resolved as Python does)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str, is_package: bool,
               exists: Callable[[str], bool] = is_module) -> Iterator[tuple[int, str]]:
    """(line, imported ``ulfine`` module) of every import statement in ``source``, anywhere.

    ``from pkg import name`` counts as ``pkg.name`` when that is a module (a submodule import),
    else as ``pkg`` (a name defined in it).
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            targets = [f"{base}.{a.name}" if exists(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):  # ``from .m import a, b`` is one import of .m
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                yield node.lineno, target


def all_imports() -> list[Import]:
    out = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        module = module_name(path)
        for line, target in imports_of(path.read_text(), module, path.name == "__init__.py"):
            out.append(Import(path, line, module, target))
    return out


def upward(imports: list[Import]) -> list[Import]:
    return [i for i in imports if layer_of(i.target) > layer_of(i.importer)]


UNITS = sorted({unit_of(module_name(p)) for p in (SRC / PACKAGE).rglob("*.py")})


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u or "ulfine")
def test_no_import_of_a_higher_layer(unit: str) -> None:
    bad = [i for i in upward(all_imports()) if unit_of(i.importer) == unit]
    if bad:
        pytest.fail(f"{len(bad)} import(s) of a higher layer:\n" + "\n".join(map(str, bad)), pytrace=False)


def test_the_checker_resolves_every_kind_of_import() -> None:
    source = "\n".join([
        "from __future__ import annotations",
        "import json",
        "from typing import TYPE_CHECKING",
        "from . import splits",              # a sibling module
        "from ..config import load_config",  # a name defined in a package
        "import ulfine.apps.demo as demo",
        "if TYPE_CHECKING:",
        "    from ..engine.loop import train",
        "def f():",
        "    from ..apps import results",
        "    return results",
    ])
    known = {"ulfine.data.splits", "ulfine.apps.results", "ulfine.engine.loop", "ulfine.config"}
    found = sorted(imports_of(source, "ulfine.data.x", False, known.__contains__))
    assert found == [(4, "ulfine.data.splits"), (5, "ulfine.config"), (6, "ulfine.apps.demo"),
                     (8, "ulfine.engine.loop"), (10, "ulfine.apps.results")]
    assert [layer_of(t) for _, t in found] == [2, 0, 4, 3, 4]
    # from a package's __init__, one dot is the package itself
    assert list(imports_of("from .splits import x", "ulfine.data", True, known.__contains__)) == [
        (1, "ulfine.data.splits")]
    assert list(imports_of("from .. import __version__", "ulfine.data.splits", False)) == [(1, "ulfine")]


def test_every_layer_is_known_and_ordered() -> None:
    assert layer_of("ulfine") == 0 and layer_of("ulfine.microworld.task") == 2
    assert layer_of("ulfine.apps.demo") == layer_of("ulfine.cli") == layer_of("ulfine.__main__") == 4
    assert all(unit in LAYERS or layer_of(f"ulfine.{unit}") == TOP_LAYER for unit in UNITS)


def test_import_ulfine_stays_light() -> None:
    code = ("import sys, ulfine; loaded = [m for m in sys.modules if m.startswith(('ulfine.', 'torch'))]; "
            "assert not loaded, loaded; assert 'load' in dir(ulfine)")
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import ulfine
    from ulfine.apps.model_io import load

    assert ulfine.load is load  # resolved on first use
