"""``lora-audit check`` end to end: exit codes, streams, formats, policy files."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import pytest
from check_adapters import write_lean, write_unreadable, write_untrained, write_wasteful
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, a repository root, so no policy file from outside is found."""
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    return tmp_path


@pytest.fixture
def adapters(workdir: Path) -> dict[str, str]:
    write_lean(workdir / "adapters" / "lean")
    write_wasteful(workdir / "adapters" / "wasteful")
    write_untrained(workdir / "adapters" / "untrained")
    write_unreadable(workdir / "adapters" / "broken")
    return {name: f"adapters/{name}" for name in ("lean", "wasteful", "untrained", "broken")}


def check(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["check", "--device", "cpu", *args])
    return result.exit_code, result.stdout, result.stderr


def test_lean_adapter_passes(adapters: dict[str, str]) -> None:
    code, out, err = check(adapters["lean"])
    assert code == 0, err
    assert err == ""
    assert "PASS: 1 adapter checked, 1 passed" in out


def test_wasteful_adapter_fails(adapters: dict[str, str]) -> None:
    code, out, err = check(
        adapters["lean"], adapters["wasteful"], "--energy", "0.99", "--max-waste", "0.5"
    )
    assert code == 1, err
    assert err == ""
    assert "✗ adapters/wasteful · max-waste · measured 0.875, limit 0.5" in out
    assert "fix: retrain at r=1" in out  # k@0.9 of the planted spectrum
    assert "FAIL: 2 adapters checked, 1 passed, 1 failed with 1 finding(s)" in out


def test_untrained_layer_fails_and_min_rank_used_zero_lets_it_pass(
    adapters: dict[str, str],
) -> None:
    code, out, _ = check(adapters["untrained"], "-f", "json")
    assert code == 1
    (finding,) = json.loads(out)["findings"]
    assert (finding["rule"], finding["layer"]) == ("min-rank-used", "model.layers.1.q_proj")
    # the dead layer also wastes its whole rank: 50% of the parameters, not more than 0.5
    assert check(adapters["untrained"], "--min-rank-used", "0")[0] == 0


def test_unreadable_adapter_exits_3_with_one_line_and_the_rest_checked(
    adapters: dict[str, str],
) -> None:
    code, out, err = check(adapters["broken"], adapters["wasteful"], "-f", "json")
    assert code == 3
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lora-audit: error: adapters/broken/adapter_model.safetensors: ")
    assert "Traceback" not in err
    report = json.loads(out)
    assert report["status"] == "error" and "exit_code" not in report
    assert report["errors"][0]["path"] == "adapters/broken"
    assert [a["adapter"]["path"] for a in report["adapters"]] == ["adapters/wasteful"]
    assert [f["rule"] for f in report["findings"]] == ["max-waste"]


def test_missing_adapter_exits_3(adapters: dict[str, str]) -> None:
    code, _, err = check("adapters/nope")
    assert code == 3
    assert err == "lora-audit: error: adapters/nope: no such file or directory\n"


def test_unreadable_in_a_real_process_has_no_traceback(adapters: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lora_audit", "check", "--device", "cpu", adapters["broken"]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert "unreadable" in done.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-waste", "2"], "--max-waste = 2 must be a number in [0, 1]"),
        (["--max-layer-waste", "-0.5"], "--max-layer-waste = -0.5 must be a number in [0, 1]"),
        (["--min-rank-used", "-1"], "--min-rank-used = -1 must be an integer ≥ 0"),
        (["--energy", "0"], "--energy = 0 must be a number in (0, 1]"),
        (["--coverage", "1.5"], "--coverage = 1.5 must be a number in (0, 1]"),
        (["--config", "x.toml", "--no-config"], "--config and --no-config exclude each other"),
        (["--format", "xml"], "xml"),
        (["--no-such-flag"], "no-such-flag"),
        (["--min-rank-used", "0.5"], "--min-rank-used"),
    ],
)
def test_bad_flags_exit_2(adapters: dict[str, str], args: list[str], needle: str) -> None:
    code, out, err = check(adapters["lean"], *args)
    assert code == 2, err
    assert out == ""
    assert needle in err
    assert "Traceback" not in err


def test_no_adapter_is_a_usage_error() -> None:
    assert check()[0] == 2


def test_output_file(adapters: dict[str, str], workdir: Path) -> None:
    code, out, _ = check(adapters["wasteful"], "-f", "junit", "-o", "report.xml")
    assert code == 1 and out == ""
    root = ET.parse(workdir / "report.xml").getroot()
    assert (root.get("tests"), root.get("failures")) == ("2", "1")


@pytest.mark.parametrize("fmt", ["table", "json", "markdown", "github", "junit"])
def test_every_format_keeps_stdout_for_the_report(adapters: dict[str, str], fmt: str) -> None:
    code, out, err = check(adapters["lean"], adapters["wasteful"], "-f", fmt)
    assert code == 1 and err == ""
    assert "adapters/wasteful" in out
    if fmt == "json":
        assert json.loads(out)["kind"] == "check"
    if fmt == "junit":
        ET.fromstring(out)
    if fmt == "github":
        assert out.startswith("::error file=adapters/wasteful/adapter_model.safetensors,")


def test_pre_commit_passes_tensor_files(adapters: dict[str, str]) -> None:
    lean, wasteful = (f"{adapters[n]}/adapter_model.safetensors" for n in ("lean", "wasteful"))
    code, out, _ = check(lean, wasteful, "-f", "json")
    assert code == 1
    assert [f["adapter"] for f in json.loads(out)["findings"]] == [
        "adapters/wasteful/adapter_model.safetensors"
    ]


def test_policy_file_is_found_upward_used_and_reported(
    adapters: dict[str, str], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "pyproject.toml").write_text("[tool.lora-audit]\nmax-waste = 0.9\n")
    code, out, _ = check(adapters["wasteful"], "-f", "json")
    report = json.loads(out)
    assert code == 0, "87.5% waste is within a 0.9 limit"
    assert report["policy_file"] == "pyproject.toml"
    assert report["policy"]["max_waste"] == 0.9
    (workdir / "adapters" / "lora-audit.toml").write_text("max-waste = 0.1\n")
    monkeypatch.chdir(workdir / "adapters")
    code, out, _ = check("wasteful", "-f", "json")
    assert code == 1
    assert json.loads(out)["policy_file"] == "lora-audit.toml"


def test_flags_override_the_file(adapters: dict[str, str], workdir: Path) -> None:
    (workdir / "lora-audit.toml").write_text("max-waste = 0.9\nenergy = 0.95\n")
    code, out, _ = check(adapters["wasteful"], "--max-waste", "0.5", "-f", "json")
    report = json.loads(out)
    assert code == 1
    assert report["policy"] == {
        "energy": 0.95,
        "coverage": 0.9,
        "max_waste": 0.5,
        "max_layer_waste": 1.0,
        "min_rank_used": 1,
    }
    assert report["adapters"][0]["settings"]["energy"] == 0.95


def test_explicit_config_and_no_config(adapters: dict[str, str], workdir: Path) -> None:
    (workdir / "lora-audit.toml").write_text("max-waste = 0.1\n")
    (workdir / "loose.toml").write_text("max-waste = 0.9\n")
    assert check(adapters["wasteful"])[0] == 1
    code, out, _ = check(adapters["wasteful"], "--config", "loose.toml", "-f", "json")
    assert code == 0 and json.loads(out)["policy_file"] == "loose.toml"
    code, out, _ = check(adapters["lean"], "--no-config", "-f", "json")
    assert code == 0 and json.loads(out)["policy_file"] is None
    assert "policy file  none (defaults and flags)" in check(adapters["lean"], "--no-config")[1]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "[tool.lora-audit]\nmax-waste = 'lots'\n",
            'pyproject.toml: [tool.lora-audit]: max-waste = "lots" must be a number in [0, 1]',
        ),
        (
            "[tool.lora-audit]\nmax-wast = 0.5\n",
            "pyproject.toml: [tool.lora-audit]: unknown key 'max-wast'",
        ),
        ("[tool.lora-audit\n", "pyproject.toml: not valid TOML"),
    ],
)
def test_malformed_policy_file_exits_3_with_one_line(
    adapters: dict[str, str], workdir: Path, text: str, needle: str
) -> None:
    (workdir / "pyproject.toml").write_text(text)
    code, out, err = check(adapters["lean"])
    assert code == 3
    assert out == ""
    assert len(err.splitlines()) == 1 and needle in err, err
    assert str(workdir) in err, "the file is named"


def test_missing_config_file_exits_3(adapters: dict[str, str]) -> None:
    code, _, err = check(adapters["lean"], "--config", "nope.toml")
    assert code == 3
    assert "nope.toml: no such settings file" in err


def test_help_lists_the_policy_and_exit_codes() -> None:
    result = runner.invoke(app, ["check", "--help"])
    assert result.exit_code == 0
    for needle in (
        "--max-waste",
        "--max-layer-waste",
        "--min-rank-used",
        "--config",
        "junit",
        "Exit codes",
    ):
        assert needle in result.stdout


def test_json_validates_against_the_shipped_schema(adapters: dict[str, str]) -> None:
    import jsonschema
    from referencing import Registry, Resource

    def load(name: str) -> dict[str, object]:
        text = (resources.files("lora_audit") / "report" / "schema" / name).read_text("utf-8")
        return json.loads(text)  # type: ignore[no-any-return]

    inspect_schema, check_schema = load("inspect.schema.json"), load("check.schema.json")
    registry = Registry().with_resource(
        str(inspect_schema["$id"]), Resource.from_contents(inspect_schema)
    )
    code, out, _ = check(adapters["lean"], adapters["untrained"], adapters["broken"], "-f", "json")
    assert code == 3
    report = json.loads(out)
    jsonschema.Draft202012Validator(check_schema, registry=registry).validate(report)
    assert list(report) == sorted(report), "keys are sorted"
    assert len(report["adapters"]) == 2 and len(report["findings"]) == 1


def test_check_help_does_not_import_torch() -> None:
    code = (
        "import sys; from lora_audit.cli import app; "
        "from typer.testing import CliRunner; CliRunner().invoke(app, ['check', '--help']); "
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_input_format_is_passed_to_the_reader(adapters: dict[str, str]) -> None:
    assert check(adapters["lean"], "--input-format", "peft")[0] == 0
    assert check(adapters["lean"], "--input-format", "bogus")[0] == 2
