"""``inspect`` and ``check`` over several adapters: discovery, summary rows in every format,
the inspect-many schema, and one adapter's output unchanged."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import pytest
from check_adapters import write_lean, write_unreadable, write_wasteful
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / ".git").mkdir()  # no policy file from outside
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    write_lean(tmp_path / "runs" / "lean")
    write_wasteful(tmp_path / "runs" / "wasteful")
    write_lean(tmp_path / "runs" / "wasteful" / "checkpoint-5")
    write_lean(tmp_path / "runs" / "x" / "checkpoint-10")
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--device", "cpu"])
    return result.exit_code, result.stdout, result.stderr


def row(text: str, name: str) -> list[str]:
    """The cells of the table row whose first cell is ``name``."""
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [name])


def load_schema(name: str) -> dict[str, object]:
    text = (resources.files("lora_audit") / "report" / "schema" / name).read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def validator(name: str) -> object:
    """The shipped schema alone (the inspect schema is bundled in it: no registry)."""
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema(name))


def test_inspect_a_folder_ends_with_one_row_per_adapter(workdir: Path) -> None:
    code, out, err = run("inspect", "runs")
    assert code == 0
    assert out.count("\nstable rank  mean") == 2  # each adapter's own report
    summary = out[out.index("summary · 2 adapters below runs/") :]
    assert row(summary, "lean")[:2] == ["lean", "keep"]
    assert row(summary, "wasteful")[:6] == ["wasteful", "retrain", "2", "16", "87.5%", "1.04/1.04"]
    assert "2 adapters: 1 keep r, 1 retrain" in summary
    assert "skipped 2 checkpoint-* directories" in err
    assert all(not line.endswith(" ") for line in summary.splitlines())


def test_inspect_several_json_validates_against_its_schema(workdir: Path) -> None:
    write_unreadable(workdir / "broken")
    code, out, err = run("inspect", "runs", "broken", "-f", "json", "--include-checkpoints")
    assert code == 3  # one could not be read; the others are still reported
    report = json.loads(out)
    validator("inspect-many.schema.json").validate(report)  # type: ignore[attr-defined]
    assert report["kind"] == "inspect-many"
    assert [r["path"] for r in report["summary"]] == [
        "runs/lean",
        "runs/wasteful",
        "runs/wasteful/checkpoint-5",
        "runs/x/checkpoint-10",
        "broken",
    ]
    assert [r["verdict"] for r in report["summary"]][-1] == "error"
    assert report["status"] == "error" and len(report["adapters"]) == 4
    assert "lora-audit: error: broken" in err


def test_inspect_markdown_and_refusals(workdir: Path) -> None:
    code, out, _ = run("inspect", "runs/lean", "runs/wasteful", "-f", "markdown")
    assert code == 0
    assert "## Summary: 2 adapters: 1 keep r, 1 retrain" in out
    assert "| `runs/wasteful` | retrain | 2 | 16 | 87.5% |" in out
    code, _, err = run("inspect", "runs", "--plot", "x.png")
    assert code == 2 and "--plot takes one adapter; 2 were found" in err
    _, one, _ = run("inspect", "runs/x", "-f", "json")  # one checkpoint: read as always
    assert json.loads(one)["adapter"]["path"] == "runs/x"
    write_lean(workdir / "run2" / "checkpoint-1")
    write_lean(workdir / "run2" / "checkpoint-2")
    code, _, err = run("inspect", "run2")
    assert code == 3 and "2 checkpoint-* directories" in err and "--include-checkpoints" in err


def test_one_adapter_keeps_its_report(workdir: Path) -> None:
    """A folder that holds one adapter reads exactly as that adapter named directly."""
    _, direct, _ = run("inspect", "runs/lean", "-f", "json")
    assert json.loads(direct)["kind"] == "inspect"
    _, check_one, _ = run("check", "runs/lean", "-f", "json")
    assert "summary" not in json.loads(check_one)
    _, table, _ = run("check", "runs/lean")
    assert "summary ·" not in table


def test_check_a_folder_in_every_format(workdir: Path) -> None:
    code, out, _ = run("check", "runs")
    assert code == 1  # wasteful fails the default max-waste 0.5
    tail = out[out.index("summary · 2 adapters") :]
    assert row(tail, "lean")[:3] == ["lean", "pass", "0.0%"] and row(tail, "lean")[-1] == "0"
    assert row(tail, "wasteful") == ["wasteful", "fail", "87.5%", "1.04/1.04", "1"]
    code, out, _ = run("check", "runs", "-f", "json")
    report = json.loads(out)
    validator("check.schema.json").validate(report)  # type: ignore[attr-defined]
    assert [(r["path"], r["verdict"], r["findings"]) for r in report["summary"]] == [
        ("runs/lean", "pass", 0),
        ("runs/wasteful", "fail", 1),
    ]
    _, out, _ = run("check", "runs", "-f", "markdown")
    assert "| `runs/wasteful` | ❌ fail | 87.5% |" in out
    _, out, _ = run("check", "runs", "-f", "github")
    notices = [line for line in out.splitlines() if "title=lora-audit summary" in line]
    assert len(notices) == 2 and "runs/wasteful: fail, wasted 87.5%25" in notices[1]
    _, out, _ = run("check", "runs", "-f", "junit")
    root = ET.fromstring(out)
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    props = {p.get("name"): p.get("value") for p in suites["runs/wasteful"].iter("property")}
    assert props["lora-audit.verdict"] == "fail" and props["lora-audit.waste"] == "0.875"
    assert suites["runs/wasteful"][0].tag == "properties"  # first, as JUnit XSDs ask


def test_the_summary_row_schema_is_the_same_in_both_files() -> None:
    many, check = load_schema("inspect-many.schema.json"), load_schema("check.schema.json")
    assert many["$defs"]["adapter_row"] == check["$defs"]["adapter_row"]  # type: ignore[index]


def test_no_output_replaces_an_adapter_found_deep_below(workdir: Path) -> None:
    deep = write_lean(workdir / "runs" / "group" / "sub" / "deep")
    target = deep / "adapter_model.safetensors"
    before = target.read_bytes()
    for command in ("inspect", "check"):
        code, _, err = run(command, "runs", "-f", "json", "-o", str(target), "--force")
        assert code == 2, err
        assert target.read_bytes() == before
