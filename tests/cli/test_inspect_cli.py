"""``lora-audit inspect`` end to end through the CLI."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from factories import FakeAdapter, write_peft
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.report.common import SCHEMA_VERSION

runner = CliRunner()


def schema() -> dict[str, object]:
    text = (resources.files("lora_audit") / "report" / "schema" / "inspect.schema.json").read_text(
        "utf-8"
    )
    return json.loads(text)  # type: ignore[no-any-return]


def test_json_validates_and_stdout_is_only_the_report(mixed_adapter: Path) -> None:
    result = runner.invoke(app, ["inspect", str(mixed_adapter), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["tool"]["name"] == "lora-audit"
    assert report["adapter"]["format"] == "peft"
    assert all(len(layer["singular_values"]) == layer["rank"] for layer in report["layers"])
    assert list(report) == sorted(report), "keys are sorted"


def test_table_fits_100_columns(mixed_adapter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    result = runner.invoke(app, ["inspect", str(mixed_adapter)])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert any("embed_tokens" in line for line in lines)
    assert "Retrain at " in result.stdout
    assert "\x1b[" not in result.stdout, "no colour codes when not a terminal"


def test_output_file_and_energy_option(mixed_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = runner.invoke(
        app, ["inspect", str(mixed_adapter), "-f", "json", "-o", str(out), "--energy", "0.5"]
    )
    assert result.exit_code == 0 and result.stdout == ""
    report = json.loads(out.read_text())
    assert report["settings"]["energy"] == 0.5
    assert all(layer["energy_rank"] <= 1 for layer in report["layers"] if layer["kind"] == "linear")


def test_warning_goes_to_stderr(tmp_path: Path, mixed_adapter: Path) -> None:
    (mixed_adapter / "adapter_config.json").unlink()
    result = runner.invoke(app, ["inspect", str(mixed_adapter), "-f", "json"])
    assert result.exit_code == 0
    assert "assuming scale 1" in result.stderr
    assert json.loads(result.stdout)["warnings"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--energy", "1.5"], 2),
        (["--energy", "0"], 2),
        (["--coverage", "-1"], 2),
        (["--format", "xml"], 2),
        (["--no-such-flag"], 2),
    ],
)
def test_usage_errors_exit_2(mixed_adapter: Path, args: list[str], code: int) -> None:
    result = runner.invoke(app, ["inspect", str(mixed_adapter), *args])
    assert result.exit_code == code
    assert result.stdout == ""


def test_cuda_without_gpu_is_a_usage_error(mixed_adapter: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = runner.invoke(app, ["inspect", str(mixed_adapter), "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device" in result.stderr


@pytest.mark.parametrize("kind", ["missing", "garbage", "nan"])
def test_bad_input_exits_3_with_one_line(tmp_path: Path, kind: str) -> None:
    import torch
    from factories import FakeLayer

    if kind == "missing":
        target = tmp_path / "nope"
    elif kind == "garbage":
        target = tmp_path / "adapter_model.safetensors"
        target.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    else:
        a = torch.ones(2, 5)
        a[1, 3] = float("nan")
        target = write_peft(tmp_path / "nan", FakeAdapter([FakeLayer("q", torch.ones(4, 2), a)]))
    result = runner.invoke(app, ["inspect", str(target)])
    assert result.exit_code == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-audit: error: ")
    assert "Traceback" not in result.stderr
    if kind == "nan":
        assert "lora_A" in lines[0] and "NaN" in lines[0]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_the_project_and_its_home(flag: str) -> None:
    from lora_audit import HOME, __version__

    result = runner.invoke(app, [flag])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lora-audit {__version__} (lora-rank-audit, {HOME})"


def test_offered_formats_are_the_registered_ones() -> None:
    from lora_audit.cli._options import InspectFormat
    from lora_audit.render import formats_for

    offered = [f.value for f in InspectFormat if f.value != "jsonl"]  # lines, not a renderer
    assert offered == [f.value for f in formats_for("inspect")]
    result = runner.invoke(app, ["inspect", "x", "--format", "junit"])
    assert result.exit_code == 2


def test_permission_denied_on_output_is_exit_3(
    mixed_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_audit.formats import atomic

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic, "new_temp_file", denied)  # root ignores chmod; simulate it
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["inspect", str(mixed_adapter), "-f", "json", "-o", str(out)])
    assert result.exit_code == 3 and "Permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
