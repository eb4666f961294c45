"""Policy files: where they are found, how they are validated, how they merge with flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_audit.cli.settings_file import find_policy_file, read_policy_file, resolve_policy
from lora_audit.decisions.check_rules import Policy
from lora_audit.errors import ExitCode, InputError


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository root (``.git``) with a nested working directory."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "training" / "runs").mkdir(parents=True)
    return tmp_path


def test_nothing_found_stops_at_the_repository_root(repo: Path) -> None:
    (repo.parent / "lora-audit.toml").write_text("max-waste = 0.1\n")
    try:
        assert find_policy_file(repo / "training" / "runs") is None
    finally:
        (repo.parent / "lora-audit.toml").unlink()


def test_found_upward_pyproject_without_table_is_skipped(repo: Path) -> None:
    (repo / "pyproject.toml").write_text("[tool.lora-audit]\nmax-waste = 0.3\n")
    (repo / "training" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert find_policy_file(repo / "training" / "runs") == repo / "pyproject.toml"


def test_own_file_wins_over_pyproject_and_nearest_directory_wins(repo: Path) -> None:
    (repo / "lora-audit.toml").write_text("max-waste = 0.1\n")
    (repo / "training" / "pyproject.toml").write_text("[tool.lora-audit]\nmax-waste = 0.2\n")
    assert find_policy_file(repo / "training" / "runs") == repo / "training" / "pyproject.toml"
    (repo / "training" / "lora-audit.toml").write_text("max-waste = 0.3\n")
    assert find_policy_file(repo / "training") == repo / "training" / "lora-audit.toml"


def test_read_pyproject_table_with_both_spellings(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(
        "[project]\nname = 'x'\n\n[tool.lora-audit]\n"
        "energy = 0.95\nmax-waste = 0.4\nmax_layer_waste = 0.8\nmin-rank-used = 2\ncoverage = 1\n"
    )
    source = read_policy_file(path)
    assert source.path == path
    assert dict(source.values) == {
        "energy": 0.95,
        "max_waste": 0.4,
        "max_layer_waste": 0.8,
        "min_rank_used": 2,
        "coverage": 1,
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max-wast = 0.5\n", "unknown key 'max-wast'"),
        ("max-waste = 'high'\n", 'max-waste = "high" must be a number in [0, 1]'),
        ("max-waste = 1.5\n", "max-waste = 1.5 must be a number in [0, 1]"),
        ("energy = 0\n", "energy = 0 must be a number in (0, 1]"),
        ("min-rank-used = 0.5\n", "min-rank-used = 0.5 must be an integer ≥ 0"),
        ("min-rank-used = true\n", "min-rank-used = true must be an integer ≥ 0"),
        ("max-waste = 0.5\nmax_waste = 0.4\n", "'max-waste' is given twice"),
        ("max-waste = [0.5]\n", "max-waste = an array must be"),
        ("max-waste = = 0.5\n", "not valid TOML"),
        ("max-waste = 0.5\n[max-waste]\n", "not valid TOML"),
    ],
)
def test_malformed_own_file_is_an_input_error_naming_file_and_key(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = tmp_path / "lora-audit.toml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_policy_file(path)
    message = str(info.value)
    assert info.value.exit_code == ExitCode.INPUT
    assert message.startswith(str(path)), message
    assert needle in message
    assert "\n" not in message


def test_malformed_pyproject_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.lora-audit]\nbogus = 1\n")
    with pytest.raises(InputError, match=r"pyproject.toml: \[tool.lora-audit\]: unknown key"):
        read_policy_file(path)
    path.write_text("[tool]\nlora-audit = 3\n")
    with pytest.raises(InputError, match="must be a table"):
        read_policy_file(path)
    path.write_text("[project]\n")
    with pytest.raises(InputError, match=r"no \[tool.lora-audit\] table"):
        read_policy_file(path)


def test_broken_pyproject_on_the_search_path_is_reported_not_skipped(repo: Path) -> None:
    (repo / "pyproject.toml").write_text("[project\n")
    found = find_policy_file(repo)
    assert found == repo / "pyproject.toml"
    with pytest.raises(InputError, match="not valid TOML"):
        read_policy_file(found)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such settings file"):
        resolve_policy(flags={}, config=tmp_path / "nope.toml", search_from=None)


def test_merge_defaults_then_file_then_flags(repo: Path) -> None:
    (repo / "lora-audit.toml").write_text("max-waste = 0.3\nenergy = 0.9\n")
    policy, path = resolve_policy(flags={"energy": 0.95}, config=None, search_from=repo)
    assert path == repo / "lora-audit.toml"
    assert policy == Policy(max_waste=0.3, energy=0.95)


def test_no_search_means_defaults_and_flags(repo: Path) -> None:
    (repo / "lora-audit.toml").write_text("max-waste = 0.3\n")
    policy, path = resolve_policy(flags={"min_rank_used": 0}, config=None, search_from=None)
    assert path is None
    assert policy == Policy(min_rank_used=0)


def test_explicit_config_beats_discovery(repo: Path) -> None:
    (repo / "lora-audit.toml").write_text("max-waste = 0.3\n")
    other = repo / "strict.toml"
    other.write_text("max-waste = 0.1\n")
    policy, path = resolve_policy(flags={}, config=other, search_from=repo)
    assert path == other and policy.max_waste == 0.1
