"""The README and docs/ stay true: the newcomer commands CI runs, pins, links that resolve."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
#: Absolute links to this repository's files, as the README (also the PyPI page) must write them.
REPO_FILE = re.compile(
    r"https://(?:github\.com/lora-rank-audit/lora-rank-audit/blob/main"
    r"|raw\.githubusercontent\.com/lora-rank-audit/lora-rank-audit/main)/([^)#\s]+)(#[^)\s]*)?"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


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
    """The install, pre-commit and GitHub Actions examples pin the tag of the current release."""
    from lora_audit import __version__

    tag = f"v{__version__}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / "docs" / "ci.md").read_text(encoding="utf-8")
    for text in (readme, *(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))):
        revs = re.findall(r"^\s+rev: (\S+)$", text, flags=re.MULTILINE)
        pins = re.findall(r"lora-rank-audit@(v[\d.]+)", text)
        assert set(revs) <= {tag} and set(pins) <= {tag}, (revs, pins)
    assert re.search(r"^\s+rev: \S+$", ci, flags=re.MULTILINE)  # the pre-commit example
    assert re.findall(r"lora-rank-audit@v", readme)  # the install commands
    assert re.findall(r"lora-rank-audit@v", ci)  # the GitHub Actions job
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


def test_readme_fits_on_two_screens() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 260, f"README.md has {lines} lines: move detail into docs/"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (headings inside code fences skipped)."""
    anchors: set[str] = set()
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def _check_target(source: Path, target: Path, anchor: str) -> str | None:
    if not target.exists():
        return f"{source.name}: {target} does not exist"
    if anchor and target.suffix == ".md" and anchor not in _anchors(target):
        return f"{source.name}: {target.name} has no heading #{anchor}"
    return None


def test_readme_links_to_files_that_exist() -> None:
    """Every absolute link into this repository names a file (and heading) of the tree."""
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    found = REPO_FILE.findall(text)
    assert len(found) >= 14, found  # the docs pages, LICENSE, CHANGELOG
    problems = [_check_target(readme, REPO / path, anchor[1:]) for path, anchor in found]
    for local in re.findall(r"\]\(#([^)]+)\)", text):
        problems.append(_check_target(readme, readme, local))
    assert not [p for p in problems if p], problems


def test_docs_links_resolve() -> None:
    """Relative links between docs pages (GitHub renders them) point to existing files."""
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) >= 14, pages
    problems, checked = [], 0
    for page in pages:
        for link in LINK.findall(page.read_text(encoding="utf-8")):
            if absolute := REPO_FILE.fullmatch(link):
                path, anchor = absolute.group(1), (absolute.group(2) or "#")[1:]
                problems.append(_check_target(page, REPO / path, anchor))
                continue
            if re.match(r"[a-z]+:", link):
                continue  # other sites, mailto:
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            problems.append(_check_target(page, target, anchor))
            checked += 1
    assert checked > 50, checked
    assert not [p for p in problems if p], problems


def test_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = set(LINK.findall(index))
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md"]
    assert not [name for name in missing if name not in linked], linked
