"""One ``check`` run, several outputs: annotations, ``--junit-xml`` and the job summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from check_adapters import write_lean, write_unreadable, write_wasteful
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    write_lean(tmp_path / "adapters" / "lean")
    write_wasteful(tmp_path / "adapters" / "wasteful")
    write_unreadable(tmp_path / "adapters" / "broken")
    return tmp_path


ADAPTERS = ["adapters/lean", "adapters/wasteful"]


def check(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["check", "--device", "cpu", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def alone(fmt: str, *adapters: str) -> str:
    """What ``--format fmt`` prints on its own, outside Actions."""
    code, out, _ = check(*adapters, "--format", fmt)
    assert code in (1, 3)
    return out


def test_one_run_prints_annotations_and_writes_junit_and_the_summary(workdir: Path) -> None:
    summary = workdir / "step_summary.md"
    summary.write_text("## an earlier step\n", encoding="utf-8")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    code, out, err = check(*ADAPTERS, "-f", "github", "--junit-xml", "lora-audit.xml", env=env)
    assert code == 1, err
    assert out == alone("github", *ADAPTERS)
    assert out.startswith("::error file=adapters/wasteful/adapter_model.safetensors,")
    assert (workdir / "lora-audit.xml").read_text(encoding="utf-8") == alone("junit", *ADAPTERS)
    markdown = alone("markdown", *ADAPTERS)
    assert summary.read_text(encoding="utf-8") == "## an earlier step\n" + markdown
    assert "## ❌ lora-audit check: FAIL" in markdown


def test_the_summary_is_appended_after_a_line_without_newline(workdir: Path) -> None:
    summary = workdir / "summary.md"
    summary.write_text("text", encoding="utf-8")
    code, _, _ = check("adapters/lean", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 0
    assert summary.read_text(encoding="utf-8").startswith("text\n## ✅ lora-audit check: PASS")


def test_no_step_summary_and_markdown_output_leave_the_summary_alone(workdir: Path) -> None:
    summary = workdir / "summary.md"
    summary.write_text("", encoding="utf-8")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    assert check(*ADAPTERS, "--no-step-summary", env=env)[0] == 1
    assert summary.read_text() == ""
    code, out, _ = check(*ADAPTERS, "-f", "markdown", env=env)  # >> $GITHUB_STEP_SUMMARY
    assert code == 1 and out.startswith("## ❌ lora-audit check")
    assert summary.read_text() == ""
    # Markdown into a file (-o) is not the summary: the summary is still appended
    assert check(*ADAPTERS, "-f", "markdown", "-o", "report.md", env=env)[0] == 1
    assert summary.read_text() == (workdir / "report.md").read_text() != ""


def test_without_github_step_summary_nothing_is_appended(workdir: Path) -> None:
    before = sorted(p.name for p in workdir.iterdir())
    assert check(*ADAPTERS)[0] == 1
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_an_unreadable_adapter_still_gets_every_output(workdir: Path) -> None:
    summary = workdir / "summary.md"
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    code, _, err = check("adapters/lean", "adapters/broken", "--junit-xml", "j.xml", env=env)
    assert code == 3, err
    assert '<error type="InputError"' in (workdir / "j.xml").read_text()
    assert "⚠️ unreadable" in summary.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--junit-xml", "adapters/lean/adapter_model.safetensors"], "would overwrite the input"),
        (["-o", "x.xml", "--junit-xml", "x.xml"], "is also where"),
        (["--junit-xml", "exists.xml"], "already exists"),
    ],
)
def test_a_bad_junit_path_is_refused_before_any_work(
    workdir: Path, args: list[str], message: str
) -> None:
    (workdir / "exists.xml").write_text("keep")
    code, out, err = check("adapters/lean", *args)
    assert code == 2, err
    assert message in err and out == ""
    assert (workdir / "exists.xml").read_text() == "keep"


def test_an_unwritable_summary_is_a_warning_not_a_new_exit_code(workdir: Path) -> None:
    env = {"GITHUB_STEP_SUMMARY": str(workdir / "missing" / "summary.md")}
    code, _, err = check(*ADAPTERS, env=env)
    assert code == 1
    assert "lora-audit: warning: cannot append the summary to $GITHUB_STEP_SUMMARY" in err
    assert "--no-step-summary" in err
