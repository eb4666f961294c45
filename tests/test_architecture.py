"""The layering rules, checked on folders: each stage imports only the stages before it.

formats (files) → linalg (math) → engine (devices, batches) → decisions (rules) → commands
(pipelines) → report (frozen model) → render (text, pictures) → cli. The rules are checked on
every module's imports, top-level and deferred ones alike (``ast`` finds both), and the checker
itself is shown to fail on a planted wrong import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lora_audit"

UI = ("typer", "rich", "click")
STAGES = ("formats", "linalg", "engine", "decisions", "commands", "report", "render", "cli")


def inner(*stages: str) -> tuple[str, ...]:
    return tuple(f"lora_audit.{s}" for s in stages)


#: folder → import prefixes it must not use.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "formats": (
        *UI,
        *inner("linalg", "engine", "decisions", "commands", "report", "render", "cli"),
    ),
    "linalg": (*UI, "safetensors", *inner(*(s for s in STAGES if s != "linalg"))),
    "engine": (
        *UI,
        "safetensors",
        *inner("formats", "decisions", "commands", "report", "render", "cli"),
    ),
    "decisions": (
        *UI,
        "safetensors",
        "torch",
        *inner(*(s for s in STAGES if s not in ("linalg", "decisions"))),
    ),
    "commands": (*UI, *inner("render", "cli")),
    "report": (*UI, "torch", "numpy", *inner(*(s for s in STAGES if s != "report"))),
    "render": (
        "torch",
        "numpy",
        "safetensors",
        *inner("formats", "linalg", "engine", "decisions", "commands", "cli"),
    ),
    # beside cli: trainer integrations call the API and the pipelines, never the command line
    "integrations": (*UI, *inner("cli")),
}
#: top-level modules every stage may use; they import no stage themselves.
SHARED = ("errors.py", "adapter.py", "regex_guard.py", "choices.py")


@dataclass(frozen=True)
class Violation:
    module: str
    imported: str


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lora_audit":  # from lora_audit import engine
                names.update(f"lora_audit.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def violations(src: Path) -> list[Violation]:
    """Every import in ``src`` (a ``lora_audit`` package tree) that breaks a folder rule."""
    found: list[Violation] = []
    for folder, forbidden in FORBIDDEN.items():
        for path in sorted((src / folder).rglob("*.py")):
            for name in sorted(imported_modules(path)):
                if name.startswith(forbidden):
                    found.append(Violation(str(path.relative_to(src)), name))
    for shared in SHARED:
        for name in sorted(imported_modules(src / shared)):
            if name.startswith(inner(*STAGES)):
                found.append(Violation(shared, name))
    return found


def test_the_tree_is_the_pipeline() -> None:
    assert {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()} >= set(
        STAGES
    )


def test_every_stage_imports_only_the_stages_before_it() -> None:
    assert violations(SRC) == []


@pytest.mark.parametrize(
    ("folder", "line"),
    [
        ("linalg", "from lora_audit.formats import load_adapter"),
        ("decisions", "import rich"),
        ("engine", "from lora_audit.formats.safetensors_io import SafetensorsSource"),
        ("commands", "from lora_audit.render import render"),
        ("render", "from lora_audit.linalg.spectral import svd"),
        ("report", "import numpy as np"),
        ("formats", "    from lora_audit.engine.spectra import spectra  # deferred, still caught"),
        ("integrations", "from lora_audit.cli._common import warn"),
    ],
)
def test_a_planted_wrong_import_is_caught(tmp_path: Path, folder: str, line: str) -> None:
    for stage in (*STAGES, "integrations"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "__init__.py").write_text("")
    for shared in SHARED:
        (tmp_path / shared).write_text("")
    body = f"def f() -> None:\n{line}\n" if line.startswith(" ") else f"{line}\n"
    (tmp_path / folder / "planted.py").write_text(body)
    assert [v.module for v in violations(tmp_path)] == [f"{folder}/planted.py"]


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from lora_audit.cli import app; "
        "from typer.testing import CliRunner; CliRunner().invoke(app, ['--help']); "
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
