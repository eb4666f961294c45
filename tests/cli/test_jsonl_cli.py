"""``--format jsonl``: one schema-valid line per adapter, a summary line, --resume, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.report import schema_bundle

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "src" / "lora_audit" / "samples" / "minilm-r4-bf16"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}


def fleet(root: Path, n: int, *, bad: bool = False) -> Path:
    """``n`` copies of the bundled sample (hard links), and with ``bad`` an unreadable file."""
    root.mkdir()
    for i in range(n):
        d = root / f"a{i:03d}"
        d.mkdir()
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            try:
                os.link(SAMPLE / f, d / f)
            except OSError:
                shutil.copy(SAMPLE / f, d / f)
    if bad:
        (root / "zz-bad.safetensors").write_bytes(b"not a safetensors file")
    return root


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema_bundle.load("jsonl.schema.json"))


def lines_of(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    out = [json.loads(line) for line in text.splitlines()]
    for line in out:
        validator().validate(line)
    return out


def test_schema_is_valid_and_self_contained() -> None:
    schema = schema_bundle.load("jsonl.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "inspect_report" in schema["$defs"]


def test_inspect_lines_match_the_json_report(tmp_path: Path) -> None:
    root = fleet(tmp_path / "f", 3, bad=True)
    result = runner.invoke(app, ["inspect", str(root), "-f", "jsonl"])
    assert result.exit_code == 3, result.stderr  # one unreadable adapter
    lines = lines_of(result.stdout)
    assert [x["kind"] for x in lines] == ["adapter"] * 4 + ["summary"]
    whole = runner.invoke(app, ["inspect", str(root), "-f", "json"])
    many = json.loads(whole.stdout)
    assert [x["report"] for x in lines[:3]] == many["adapters"]
    assert [x["row"] for x in lines[:4]] == many["summary"]
    assert lines[3]["status"] == "error" and lines[3]["report"] is None
    assert lines[3]["error"] == many["errors"][0]
    summary = lines[-1]
    assert summary["status"] == "error" and summary["settings"] == many["settings"]
    assert summary["totals"] == {
        "adapters": 4, "read": 3, "unreadable": 1, "passed": None, "failed": None,
        "findings": None,
    }  # fmt: skip
    assert (
        json.dumps(lines[0], sort_keys=True, separators=(",", ":")) + "\n"
        == (result.stdout.splitlines(keepends=True)[0])
    ), "compact, sorted, one line"


def test_one_adapter_gives_a_line_and_a_summary(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(SAMPLE), "-f", "jsonl"])
    assert result.exit_code == 0, result.stderr
    line, summary = lines_of(result.stdout)
    single = json.loads(runner.invoke(app, ["inspect", str(SAMPLE), "-f", "json"]).stdout)
    assert line["report"] == single and summary["status"] == "ok"


@pytest.mark.parametrize(("max_waste", "code", "status"), [("0.1", 1, "fail"), ("0.9", 0, "pass")])
def test_check_lines_keep_the_exit_code(
    tmp_path: Path, max_waste: str, code: int, status: str
) -> None:
    root = fleet(tmp_path / "f", 2)
    args = ["check", str(root), "--no-config", "--max-waste", max_waste]
    result = runner.invoke(app, [*args, "-f", "jsonl"])
    assert result.exit_code == code, result.stderr
    lines = lines_of(result.stdout)
    whole = json.loads(runner.invoke(app, [*args, "-f", "json"]).stdout)
    assert [f for x in lines[:2] for f in x["findings"]] == whole["findings"]
    assert [x["row"] for x in lines[:2]] == whole["summary"]
    assert {x["status"] for x in lines[:2]} == {status}
    totals = lines[-1]["totals"]
    assert lines[-1]["status"] == status and lines[-1]["rules"] == whole["rules"]
    assert {k: totals[k] for k in ("passed", "failed", "findings", "unreadable")} == {
        k: whole["totals"][k] for k in ("passed", "failed", "findings", "unreadable")
    }


def test_options_that_need_the_whole_run_are_refused(tmp_path: Path) -> None:
    root = fleet(tmp_path / "f", 2)
    cases = [
        ["check", str(root), "-f", "jsonl", "--junit-xml", str(tmp_path / "j.xml")],
        ["inspect", str(root), "--resume", str(tmp_path / "r.jsonl")],
        ["inspect", str(SAMPLE), "-f", "jsonl", "--plot", str(tmp_path / "p.png")],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.stderr)
        assert not (tmp_path / "j.xml").exists()


def test_output_file_is_new_unless_forced(tmp_path: Path) -> None:
    root = fleet(tmp_path / "f", 2)
    out = tmp_path / "out.jsonl"
    out.write_text("keep\n")
    refused = runner.invoke(app, ["inspect", str(root), "-f", "jsonl", "-o", str(out)])
    assert refused.exit_code == 2 and out.read_text() == "keep\n"
    forced = runner.invoke(app, ["inspect", str(root), "-f", "jsonl", "-o", str(out), "--force"])
    assert forced.exit_code == 0 and forced.stdout == ""
    assert len(lines_of(out.read_text())) == 3


def test_resume_appends_what_is_missing(tmp_path: Path) -> None:
    root = fleet(tmp_path / "f", 4)
    full = tmp_path / "full.jsonl"
    runner.invoke(app, ["inspect", str(root), "-f", "jsonl", "-o", str(full)])
    expected = full.read_text().splitlines(keepends=True)
    out = tmp_path / "part.jsonl"
    out.write_text("".join(expected[:2]) + expected[2][:40])  # two lines, and a cut tail
    args = ["inspect", str(root), "-f", "jsonl", "-o", str(out), "--resume", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    lines = lines_of(out.read_text())
    assert lines[:-1] == [json.loads(x) for x in expected[:-1]]
    summary, whole = lines[-1], json.loads(expected[-1])
    assert summary["resumed"] == 2 and summary["totals"] == whole["totals"]
    assert {**summary, "resumed": 0} == whole


def test_resume_refuses_another_command_or_other_settings(tmp_path: Path) -> None:
    root = fleet(tmp_path / "f", 2)
    out = tmp_path / "o.jsonl"
    runner.invoke(app, ["inspect", str(root), "-f", "jsonl", "-o", str(out)])
    check = ["check", str(root), "--no-config", "-f", "jsonl", "--resume", str(out)]
    assert runner.invoke(app, check).exit_code == 3
    other = ["inspect", str(root), "-f", "jsonl", "-e", "0.9", "--resume", str(out)]
    assert runner.invoke(app, other).exit_code == 2
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"a": 1}\n')
    assert (
        runner.invoke(app, ["inspect", str(root), "-f", "jsonl", "--resume", str(junk)]).exit_code
        == 3
    )


N = 150


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_leaves_a_valid_prefix_that_resumes(tmp_path: Path, sig: int) -> None:
    root = fleet(tmp_path / "f", N)
    out = tmp_path / "o.jsonl"
    command = [sys.executable, "-m", "lora_audit", "inspect", str(root), "-f", "jsonl"]
    proc = subprocess.Popen(
        [*command, "-o", str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == -sig  # the default action: the shell shows 130 or 143
    text = out.read_text()
    prefix = lines_of(text)
    assert 2 <= len(prefix) < N and all(x["kind"] == "adapter" for x in prefix)
    resumed = subprocess.run(
        [*command, "-o", str(out), "--resume", str(out)], env=ENV, capture_output=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    lines = lines_of(out.read_text())
    assert [x["path"] for x in lines[:-1]] == [str(root / f"a{i:03d}") for i in range(N)]
    assert lines[-1]["resumed"] == len(prefix) and lines[-1]["totals"]["read"] == N
