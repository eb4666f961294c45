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


def test_nothing_installs_the_other_projects_package() -> None:
    """``lora-audit`` on PyPI is an unrelated project with a command of the same name."""
    bad = re.compile(r"pip install ['\"]?lora-audit(?:['\" ]|\[|$)", re.MULTILINE)
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        assert not bad.search(path.read_text(encoding="utf-8")), path
    for path in sorted((REPO / "src").rglob("*.py")):
        assert "'lora-audit[" not in path.read_text(encoding="utf-8"), path


def test_pinned_revisions_are_this_version() -> None:
    """The pre-commit and GitHub Actions examples pin the tag of the current release."""
    from lora_audit import __version__

    tag = f"v{__version__}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    revs = re.findall(r"^\s+rev: (\S+)$", readme, flags=re.MULTILINE)
    assert revs and set(revs) == {tag}, revs
    pins = re.findall(r"lora-rank-audit@(v[\d.]+)", readme)
    assert pins and set(pins) == {tag}, pins
    hooks = (REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    assert f"rev: {tag}" in hooks
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(__version__)}\]", changelog, flags=re.MULTILINE)


def test_distribution_metadata() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "lora-rank-audit"
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")[:200]
    assert not any(dep.startswith("torch") for dep in project["dependencies"])
    assert project["optional-dependencies"]["gpu"] == ["torch>=2.1"]
    assert {"Homepage", "Issues", "Changelog"} <= set(project["urls"])


def test_links_to_files_are_absolute() -> None:
    """The README is the PyPI description too: links to repository files must be absolute."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    relative = re.findall(r"\]\((?!https?://|#|mailto:)([^)]+)\)", text)
    assert not relative, relative
