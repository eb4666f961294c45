"""The architecture rule: every folder and top-level module imports only what its rule allows.

The rule is an allow-list (docs/development.md draws the graph): each *unit* of
``src/lora_audit`` — a top-level folder or a top-level module — names the units and the
third-party packages it may import; anything else is a violation, and so is a unit without a
rule (a new folder must be placed in the graph before it can land). Every import counts: top
level, deferred, under ``TYPE_CHECKING``, relative (resolved against the importing module's
package) and ``importlib.import_module``/``__import__`` with a literal name. The standard
library is always allowed. The tests below plant each kind of wrong import in a copy of the
real tree and check that the rule fails on exactly that module.
"""

from __future__ import annotations

import ast
import functools
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lora_audit"

#: What ``from lora_audit import NAME`` may take from the package's ``__init__``: constants
#: that load nothing. Any other name there is the lazily loaded Python API (unit ``api``).
ROOT_CONSTANTS = frozenset({"__version__", "DISTRIBUTION", "HOME"})
#: The unit of those constants (the package's ``__init__`` as a leaf).
CONSTANTS = "lora_audit"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """What one unit may import: units of ``lora_audit`` and third-party top-level packages."""

    units: frozenset[str] = frozenset()
    packages: frozenset[str] = frozenset()


def rule(units: tuple[str, ...] = (), packages: tuple[str, ...] = ()) -> Rule:
    return Rule(units=frozenset(units), packages=frozenset(packages))


#: Imported by every unit; they import no stage and no third-party package. ``adapter`` is not
#: here: it brings numpy.
LEAVES = ("errors", "regex_guard", "choices", "findings")
STAGES = ("formats", "linalg", "engine", "decisions", "commands", "report", "render", "cli")

#: unit → what it may import. A unit that is not a key is itself a violation.
RULES: dict[str, Rule] = {
    # top-level modules
    "__init__": rule(("api",)),  # the API, imported on first use (``lora_audit.inspect``)
    "__main__": rule(("cli",)),
    "errors": rule(),
    "regex_guard": rule(("errors",)),
    "choices": rule(("errors",)),
    "findings": rule(),  # the one finding type, built by decisions and held by report
    "output_format": rule(),
    "adapter": rule(("errors", "choices"), ("numpy",)),
    # ``inspect_model`` reads a live PEFT model through integrations/peft_live (torch deferred)
    "api": rule(
        (
            *LEAVES,
            "adapter",
            "formats",
            "engine",
            "decisions",
            "commands",
            "report",
            "integrations",
        ),
        ("torch",),
    ),
    "samples": rule(),
    # the functions a distributed census ships to its workers (docs/fleet.md)
    "fleet": rule((*LEAVES, "api", "formats", "commands", "report")),
    # the stages
    "formats": rule((*LEAVES, "adapter"), ("numpy", "torch", "gguf", "safetensors")),
    "linalg": rule(LEAVES, ("numpy", "torch")),
    "engine": rule((*LEAVES, "adapter", "linalg"), ("numpy", "torch", "threadpoolctl")),
    "decisions": rule((CONSTANTS, *LEAVES, "adapter", "linalg"), ("numpy",)),
    "commands": rule(
        (CONSTANTS, *LEAVES, "adapter", "formats", "linalg", "engine", "decisions", "report"),
        ("numpy", "torch"),
    ),
    "report": rule(LEAVES),  # a leaf: the models commands build and render formats
    "render": rule((*LEAVES, "output_format", "report"), ("rich", "matplotlib")),
    "cli": rule(
        (CONSTANTS, *LEAVES, "adapter", "output_format", *STAGES[:-1]),
        ("typer", "rich"),
    ),
    # beside cli, another entry point: trainer integrations call the API and the pipelines,
    # never the command line
    "integrations": rule(
        (CONSTANTS, *LEAVES, "adapter", "api", *STAGES[:-1]),
        ("numpy", "torch", "transformers", "peft", "mlx", "mlx_lm"),
    ),
}


@dataclass(frozen=True)
class Violation:
    module: str
    imported: str


def units_of(src: Path) -> set[str]:
    """Every unit of a package tree: top-level modules and folders holding Python files."""
    modules = {p.stem for p in src.glob("*.py")}
    folders = {p.name for p in src.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    return modules | folders


def module_name(src: Path, path: Path) -> tuple[str, ...]:
    """``("lora_audit", "render", "table", "_layout")`` for ``render/table/_layout.py``."""
    return ("lora_audit", *path.relative_to(src).with_suffix("").parts)


def absolute(node: ast.ImportFrom, name: tuple[str, ...]) -> str:
    """The module a ``from … import`` names, relative imports resolved against ``name``."""
    if node.level == 0:
        return node.module or ""
    package = name[:-1]  # render/escape.py and render/__init__.py are both in lora_audit.render
    base = package[: len(package) - node.level + 1]
    return ".".join((*base, *([node.module] if node.module else [])))


def literal_import(node: ast.Call) -> str | None:
    """The literal name given to ``importlib.import_module(...)`` or ``__import__(...)``."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imported(src: Path, path: Path) -> tuple[str, ...]:
    """Every module ``path`` imports (``from m import x`` gives ``m.x``: ``x`` may be a module)."""
    return imported_by(module_name(src, path), path.read_text(encoding="utf-8"))


@functools.cache
def imported_by(name: tuple[str, ...], text: str) -> tuple[str, ...]:
    """The modules imported by the module ``name`` whose source is ``text``, sorted."""
    return tuple(sorted(set(walk_imports(name, text))))


def walk_imports(name: tuple[str, ...], text: str) -> Iterator[str]:
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node, name)
            yield from (f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and (literal := literal_import(node)) is not None:
            yield literal


def unit_of(module: str, units: set[str]) -> str | None:
    """The unit (or third-party package) ``module`` belongs to; ``None`` for the stdlib."""
    parts = module.split(".")
    if parts[0] != "lora_audit":
        return None if parts[0] in sys.stdlib_module_names or parts[0] == "__future__" else parts[0]
    if len(parts) == 1 or parts[1] not in units:  # the package itself, or a name from it
        return CONSTANTS if len(parts) == 2 and parts[1] in ROOT_CONSTANTS else "api"
    return parts[1]


def violations(src: Path) -> list[Violation]:
    """Every import in ``src`` (a ``lora_audit`` package tree) that its unit's rule forbids."""
    units = units_of(src)
    found = [Violation(unit, "(no rule for this unit)") for unit in sorted(units - set(RULES))]
    for path in sorted(src.rglob("*.py")):
        own = module_name(src, path)[1]
        allowed = RULES.get(own)
        if allowed is None:
            continue
        for module in imported(src, path):
            target = unit_of(module, units)
            if target in (None, own) or target in allowed.units | allowed.packages:
                continue
            found.append(Violation(str(path.relative_to(src)), module))
    return found


def test_every_unit_has_a_rule_and_every_rule_a_unit() -> None:
    assert units_of(SRC) == set(RULES)
    assert set(STAGES) <= set(RULES)


def test_every_unit_imports_only_what_its_rule_allows() -> None:
    assert violations(SRC) == []


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package's Python files, to plant imports in."""
    copy = tmp_path_factory.mktemp("tree") / "lora_audit"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("minilm-*", "schema", "__pycache__"))
    assert violations(copy) == []
    return copy


def plant(tree: Path, tmp_path: Path, relative: str, body: str) -> Path:
    """A copy of ``tree`` with ``body`` written to ``relative`` (new folders created)."""
    copy = tmp_path / "lora_audit"
    shutil.copytree(tree, copy)
    target = copy / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body, encoding="utf-8")
    return copy


DEFERRED = "def f() -> None:\n    {}\n"
TYPING = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    {}\n"

#: (file planted, its text, what the rule must report). The first six are the review's kinds.
PLANTED = [
    ("render/planted.py", "from ..linalg import spectral\n", "lora_audit.linalg.spectral"),
    (
        "render/table/planted.py",
        DEFERRED.format("from ...engine import spectra"),
        "lora_audit.engine.spectra",
    ),
    ("decisions/planted.py", "from lora_audit.api import inspect\n", "lora_audit.api.inspect"),
    (
        "report/planted.py",
        "from lora_audit.adapter import LayerKind\n",
        "lora_audit.adapter.LayerKind",
    ),
    ("render/planted.py", "import scipy.linalg\n", "scipy.linalg"),
    ("toolbox/__init__.py", "import os\n", "(no rule for this unit)"),
    # api and cli from every stage, in every spelling
    ("commands/planted.py", "from lora_audit import api\n", "lora_audit.api"),
    ("formats/planted.py", "from lora_audit import inspect\n", "lora_audit.inspect"),
    ("engine/planted.py", TYPING.format("import lora_audit.api"), "lora_audit.api"),
    ("linalg/planted.py", "import lora_audit\n", "lora_audit"),
    (
        "commands/planted.py",
        "from lora_audit.cli._common import warn\n",
        "lora_audit.cli._common.warn",
    ),
    ("render/planted.py", "from .. import cli\n", "lora_audit.cli"),
    (
        "engine/planted.py",
        'import importlib\n\nimportlib.import_module("lora_audit.cli")\n',
        "lora_audit.cli",
    ),
    # the stage order
    (
        "linalg/planted.py",
        "from lora_audit.formats import load_adapter\n",
        "lora_audit.formats.load_adapter",
    ),
    (
        "engine/planted.py",
        "from lora_audit.formats.safetensors_io import SafetensorsSource\n",
        "lora_audit.formats.safetensors_io.SafetensorsSource",
    ),
    ("commands/planted.py", "from lora_audit.render import render\n", "lora_audit.render.render"),
    (
        "report/planted.py",
        "from .rows import x\nfrom ..commands import inspect\n",
        "lora_audit.commands.inspect",
    ),
    (
        "formats/planted.py",
        DEFERRED.format("from lora_audit.engine.spectra import spectra"),
        "lora_audit.engine.spectra.spectra",
    ),
    (
        "errors.py",
        "from lora_audit.formats import load_adapter\n",
        "lora_audit.formats.load_adapter",
    ),
    ("output_format.py", "from lora_audit.render import table\n", "lora_audit.render.table"),
    # third-party packages
    ("report/planted.py", DEFERRED.format("import numpy as np"), "numpy"),
    ("report/planted.py", "from scipy import stats\n", "scipy.stats"),
    ("decisions/planted.py", "import torch\n", "torch"),
    ("decisions/planted.py", "import rich\n", "rich"),
    ("commands/planted.py", "import typer\n", "typer"),
    ("cli/planted.py", "import numpy\n", "numpy"),
    ("helpers.py", "", "(no rule for this unit)"),
    ("choices.py", "import numpy as np\n", "numpy"),
    ("findings.py", "from lora_audit.report import CheckReport\n", "lora_audit.report.CheckReport"),
    (
        "integrations/planted.py",
        "from lora_audit.cli._common import warn\n",
        "lora_audit.cli._common.warn",
    ),
    ("integrations/planted.py", "import typer\n", "typer"),
]


@pytest.mark.parametrize(("relative", "body", "reported"), PLANTED)
def test_a_planted_wrong_import_is_caught(
    real_tree: Path, tmp_path: Path, relative: str, body: str, reported: str
) -> None:
    copy = plant(real_tree, tmp_path, relative, body)
    unit = relative.split("/")[0].removesuffix(".py")
    where = unit if reported.startswith("(") else relative
    assert violations(copy) == [Violation(where, reported)]


@pytest.mark.parametrize(
    ("relative", "body"),
    [
        ("render/planted.py", "from . import escape\nfrom .table import _layout\n"),
        ("render/table/planted.py", DEFERRED.format("from ...report import InspectReport")),
        ("commands/planted.py", "from lora_audit import __version__\nfrom ..report import rows\n"),
        ("report/planted.py", "import json\nfrom lora_audit.errors import InputError\n"),
        ("cli/planted.py", "from lora_audit.output_format import OutputFormat\n"),
    ],
)
def test_an_allowed_import_is_not_reported(
    real_tree: Path, tmp_path: Path, relative: str, body: str
) -> None:
    assert violations(plant(real_tree, tmp_path, relative, body)) == []
