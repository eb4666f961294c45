"""The README's newcomer commands stay true: CI runs the same test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def newcomer_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    head = text[: text.index("---")]
    return re.findall(r"```sh\n(.+?)\n```", head)


def test_readme_starts_with_two_commands() -> None:
    main, tests = newcomer_commands()
    assert "lora-audit inspect sample_adapters/" in main
    assert (REPO / main.split("lora-audit inspect ")[1].strip()).is_dir()
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    _, tests = newcomer_commands()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for step in tests.split(" && "):
        if step.startswith(("python3 -m venv", ". .venv")):
            continue  # CI makes its own fresh venv
        assert step in ci, step
