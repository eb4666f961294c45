"""The Python API: ``lora_audit.inspect``, ``inspect_many``, ``check``, ``compress``."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from check_adapters import write_lean, write_unreadable, write_wasteful
from conftest import SAMPLES
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft
from typer.testing import CliRunner

import lora_audit
from lora_audit.cli import app
from lora_audit.errors import InputError, LoraAuditWarning, UsageError
from lora_audit.report import CheckReport, CompressReport, InspectManyReport, InspectReport


def test_import_is_light_and_exposes_the_api() -> None:
    code = (
        "import sys, lora_audit; "
        "print(sorted(m for m in ('numpy', 'torch', 'lora_audit.api') if m in sys.modules)); "
        "print(all(n in dir(lora_audit) for n in lora_audit.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lora_audit.nope  # type: ignore[attr-defined]  # noqa: B018


def test_inspect_returns_the_frozen_report_with_the_dense_reference_spectrum(
    tmp_path: Path,
) -> None:
    spectrum = np.array([9.0, 4.0, 1.0])
    b, a = planted_factors(out=40, inp=30, rank=8, spectrum=spectrum, seed=3, dtype=np.float64)
    write_peft(tmp_path / "ad", FakeAdapter([FakeLayer("model.q_proj", b, a)]))
    report = lora_audit.inspect(tmp_path / "ad", energy=0.95, device="cpu")
    assert isinstance(report, InspectReport)
    dense = np.linalg.svd((16 / 8) * (b @ a), compute_uv=False)  # s = lora_alpha / r
    (layer,) = report.layers
    np.testing.assert_allclose(layer.singular_values[:3], dense[:3], rtol=1e-10)
    assert layer.energy_rank == 2  # 81+16 of 98 ≥ 0.95
    assert report.settings.energy == 0.95
    with pytest.raises(AttributeError):
        report.summary = None  # type: ignore[misc]


def test_to_dict_is_the_cli_s_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_wasteful(tmp_path / "w")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["inspect", "w", "--device", "cpu", "-f", "json"])
    assert result.exit_code == 0
    ours = lora_audit.inspect("w", device="cpu").to_dict()
    assert json.loads(json.dumps(ours)) == json.loads(result.stdout)
    assert ours["adapter"]["path"] == "w" and path.name == "w"


def test_inspect_refuses_a_folder_of_several_and_inspect_many_takes_it(tmp_path: Path) -> None:
    write_lean(tmp_path / "runs" / "a")
    write_wasteful(tmp_path / "runs" / "b")
    write_unreadable(tmp_path / "runs" / "c")
    with pytest.raises(InputError, match="3 adapters below it"):
        lora_audit.inspect(tmp_path / "runs")
    many = lora_audit.inspect_many([tmp_path / "runs"], device="cpu")
    assert isinstance(many, InspectManyReport)
    assert [r.verdict for r in many.summary] == ["keep", "retrain", "error"]
    assert many.status == "error" and len(many.adapters) == 2
    assert many.summary[1].wasted_fraction == pytest.approx(14 / 16)
    assert many.to_dict()["kind"] == "inspect-many"


def test_check_applies_the_policy_given(tmp_path: Path) -> None:
    lean, wasteful = write_lean(tmp_path / "lean"), write_wasteful(tmp_path / "wasteful")
    report = lora_audit.check([lean, wasteful], device="cpu")
    assert isinstance(report, CheckReport)
    assert report.status == "fail"
    assert {f.adapter for f in report.findings} == {str(wasteful)}
    assert [row.verdict for row in report.summary] == ["pass", "fail"]
    assert lora_audit.check(wasteful, max_waste=1.0, device="cpu").status == "pass"
    with pytest.raises(UsageError, match="--max-waste = 2 must be"):
        lora_audit.check(lean, max_waste=2)


def test_compress_writes_or_plans(tmp_path: Path) -> None:
    wasteful = write_wasteful(tmp_path / "wasteful")
    plan = lora_audit.compress(wasteful, energy=0.99, dry_run=True, device="cpu")
    assert isinstance(plan, CompressReport)
    assert not (tmp_path / "small").exists()
    done = lora_audit.compress(wasteful, output=tmp_path / "small", rank=2, device="cpu")
    assert done.summary.params_after < done.summary.params
    assert lora_audit.inspect(tmp_path / "small").summary.nominal_rank == 2
    with pytest.raises(UsageError, match="--output is required"):
        lora_audit.compress(wasteful, energy=0.9)
    with pytest.raises(UsageError, match="exactly one of"):
        lora_audit.compress(wasteful, rank=2, energy=0.9, dry_run=True)


def test_errors_are_the_package_s_and_warnings_go_through_warnings(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        lora_audit.inspect(tmp_path / "missing")
    with pytest.raises(UsageError, match=r"--energy = 1\.5 must be in"):
        lora_audit.inspect(SAMPLES / "minilm-r16", energy=1.5)
    with pytest.warns(LoraAuditWarning, match="scale 1 assumed"):
        report = lora_audit.inspect(SAMPLES / "sd" / "diffusers-processor.safetensors")
    assert any("scale 1 assumed" in w for w in report.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lora_audit.inspect(SAMPLES / "minilm-r16", device="cpu")  # nothing to warn about
