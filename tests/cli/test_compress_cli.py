"""``lora-audit compress`` through the CLI: modes, safety, formats written back."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.cli.compress import parse_budget
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.errors import UsageError
from lora_audit.formats import load_adapter

runner = CliRunner()


def digest(path: Path) -> str:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def spectra(path: Path) -> dict[str, np.ndarray]:
    report = inspect_adapter(load_adapter(path), options=AuditOptions())
    return {layer.name: np.array(layer.singular_values) for layer in report.layers}


def test_parse_budget() -> None:
    assert parse_budget("2M") == 2_000_000
    assert parse_budget("500k") == 500_000
    assert parse_budget("1.5G") == 1_500_000_000
    assert parse_budget("120000") == 120_000
    for bad in ("", "-3", "2X", "0"):
        with pytest.raises(UsageError):
            parse_budget(bad)


def test_peft_directory_round_trip(mixed_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = digest(mixed_adapter)
    result = runner.invoke(
        app, ["compress", str(mixed_adapter), "-o", str(out), "--rank", "2", "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "compress" and report["summary"]["file_bytes_after"] > 0
    assert digest(mixed_adapter) == before, "the input is never written"
    old, new = spectra(mixed_adapter), spectra(out)
    for name, sigma in old.items():
        k = min(2, len(sigma))
        assert np.allclose(new[name][:k], sigma[:k], rtol=1e-2, atol=1e-3 * sigma[0])  # bf16/fp16
        assert len(new[name]) <= len(sigma)


def test_dry_run_writes_nothing(mixed_adapter: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["compress", str(mixed_adapter), "--energy", "0.9", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert "dry run" in result.stdout
    assert list(tmp_path.iterdir()) == [mixed_adapter]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--rank", "2", "--energy", "0.9"],
        ["--energy", "1.5"],
        ["--ratio", "0.5"],
        ["--rank", "0"],
        ["--budget", "lots"],
        ["--rank", "2", "--min-rank", "3", "--max-rank", "2"],
    ],
)
def test_usage_errors(mixed_adapter: Path, tmp_path: Path, args: list[str]) -> None:
    result = runner.invoke(app, ["compress", str(mixed_adapter), "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.stdout
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force(mixed_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["compress", str(mixed_adapter), "-o", str(out), "--rank", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, [*args, "--force"])  # not an adapter directory: kept
    assert result.exit_code == 2 and "did not write (keep.txt)" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert runner.invoke(app, args).exit_code == 2  # empty, but it exists
    for rank in ("2", "1"):  # an empty directory, then the adapter directory written before
        result = runner.invoke(app, [*args[:-1], rank, "--force"])
        assert result.exit_code == 0, result.stderr
        assert sorted(p.name for p in out.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("target", ["dir", "file", "config"])
def test_never_writes_over_the_input(mixed_adapter: Path, target: str) -> None:
    out = {
        "dir": mixed_adapter,
        "file": mixed_adapter / "adapter_model.safetensors",
        "config": mixed_adapter / "adapter_config.json",
    }[target]
    before = digest(mixed_adapter)
    result = runner.invoke(
        app, ["compress", str(mixed_adapter), "-o", str(out), "--rank", "2", "--force"]
    )
    assert result.exit_code == 2 and "overwrite the input" in result.stderr
    assert digest(mixed_adapter) == before


def test_interrupted_write_leaves_nothing(
    mixed_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    before = digest(mixed_adapter)
    from lora_audit.formats import atomic

    def crash() -> None:
        raise KeyboardInterrupt  # the user pressed ^C just before the rename

    monkeypatch.setattr(atomic, "hold_for_tests", crash)
    result = runner.invoke(app, ["compress", str(mixed_adapter), "-o", str(out), "--rank", "2"])
    assert result.exit_code == 130
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p != mixed_adapter] == []
    assert digest(mixed_adapter) == before


def test_disk_full_is_exit_3(
    mixed_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lora_audit.formats.writers as writers

    def full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "write_plain", full)
    result = runner.invoke(
        app, ["compress", str(mixed_adapter), "-o", str(tmp_path / "o"), "--rank", "2"]
    )
    assert result.exit_code == 3 and "No space left" in result.stderr
    assert [p for p in tmp_path.iterdir() if p != mixed_adapter] == []


def test_dora_needs_an_explicit_flag(tmp_path: Path) -> None:
    source = SAMPLES / "minilm-dora-r4"
    if not source.is_dir():
        pytest.skip("sample adapters not generated")
    args = ["compress", str(source), "-o", str(tmp_path / "o"), "--rank", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "DoRA" in result.stderr and "--allow-dora" in result.stderr
    result = runner.invoke(app, [*args, "--allow-dora"])
    assert result.exit_code == 0 and "magnitude" in result.stderr


@pytest.mark.parametrize(
    "name",
    ["kohya-lora", "lycoris-loha", "lycoris-lokr", "lycoris-locon-tucker", "diffusers-processor"],
)
def test_single_files_compress_to_their_format(tmp_path: Path, name: str) -> None:
    source = SAMPLES / "sd" / f"{name}.safetensors"
    out = tmp_path / f"{name}-r2.safetensors"
    result = runner.invoke(
        app, ["compress", str(source), "-o", str(out), "--rank", "2", "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    truncated = {
        layer["name"]: layer for layer in report["layers"] if layer["action"] == "truncated"
    }
    old, new = spectra(source), spectra(out)
    again = load_adapter(out)
    assert again.format == ("diffusers" if name.startswith("diffusers") else again.format)
    for layer in again.layers:
        if layer.name in truncated:
            assert layer.rank == 2 and layer.structure.value == "lora"
            assert layer.scale == 1.0
            k = 2
            assert np.allclose(new[layer.name][:k], old[layer.name][:k], rtol=2e-3)
            assert np.allclose(new[layer.name][k:], 0)
    if name == "kohya-lora":
        from safetensors import safe_open

        with safe_open(str(out), "pt") as f:
            meta = f.metadata()
        assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "2"
        assert meta["lora_audit.method"] == "rank"


def test_budget_below_the_floor_is_a_usage_error(mixed_adapter: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["compress", str(mixed_adapter), "-o", str(tmp_path / "o"), "--budget", "10"]
    )
    assert result.exit_code == 2 and "at least" in result.stderr
    assert not (tmp_path / "o").exists()


def test_budget_is_written_as_a_count(mixed_adapter: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "out"
    result = runner.invoke(
        app, ["compress", str(mixed_adapter), "-o", str(out), "--budget", "2M", "--max-rank", "3"]
    )
    assert result.exit_code == 0, result.stderr
    assert "2,000,000" in result.stdout and "2e+06" not in result.stdout  # the table title
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["lora_audit.parameter"] == "2000000" and meta["lora_audit.method"] == "budget"
    assert meta["lora_audit.max_rank"] == "3"


@pytest.mark.parametrize("name", ["dir", "file.safetensors"])
def test_output_under_a_file_is_exit_3(mixed_adapter: Path, tmp_path: Path, name: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    source = mixed_adapter
    if name.endswith(".safetensors"):  # a single-file input is written as a single file
        source = SAMPLES / "sd" / "kohya-lora.safetensors"
    result = runner.invoke(app, ["compress", str(source), "-o", str(blocker / name), "--rank", "1"])
    assert result.exit_code == 3, result.stderr
    assert "cannot create the directory" in result.stderr and "unexpected" not in result.stderr


@pytest.mark.parametrize("single_file", [False, True])
def test_interrupted_mid_write_leaves_nothing(
    mixed_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_file: bool
) -> None:
    source = SAMPLES / "sd" / "kohya-lora.safetensors" if single_file else mixed_adapter
    out = tmp_path / "out" / ("o.safetensors" if single_file else "o")
    before = digest(source)

    def killed(fd: int) -> None:  # the data is written, not yet on disk: ^C
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    result = runner.invoke(app, ["compress", str(source), "-o", str(out), "--rank", "1"])
    assert result.exit_code == 130
    assert list(out.parent.iterdir()) == []  # no output, no temporary file or directory
    assert digest(source) == before


def test_json_report_validates_against_the_schema(mixed_adapter: Path, tmp_path: Path) -> None:
    from importlib import resources

    import jsonschema

    text = (resources.files("lora_audit") / "report" / "schema" / "compress.schema.json").read_text(
        "utf-8"
    )
    result = runner.invoke(
        app, ["compress", str(mixed_adapter), "--energy", "0.9", "--dry-run", "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    jsonschema.validate(json.loads(result.stdout), json.loads(text))


def test_cpu_compress_does_not_import_torch(mixed_adapter: Path, tmp_path: Path) -> None:
    # Reading, the spectra, the refactorisation and the safetensors writer are numpy only:
    # torch's import alone costs about as much as compressing a 7B r=16 adapter.
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from lora_audit.cli import main\n"
        f"sys.argv = ['lora-audit', 'compress', {str(mixed_adapter)!r}, '-o', {str(out)!r},\n"
        "            '--rank', '2', '--device', 'cpu', '--format', 'json']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in ('torch', 'safetensors') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]"
    compressed = load_adapter(out)
    assert {layer.rank for layer in compressed.layers if layer.name != "model.conv"} <= {2}
