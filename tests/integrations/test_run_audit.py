"""The run's audit state without a trainer: metrics, quantiles, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft

import lora_audit
from lora_audit.integrations.run_audit import RunAudit, quantile, run_metrics


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 8.0, 7.0]])
@pytest.mark.parametrize("q", [0.5, 0.9])
def test_quantile_is_numpys_linear_one(values: list[float], q: float) -> None:
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))
    assert quantile([], q) == 0.0


def planted(directory: Path, *, grow: float = 1.0) -> Path:
    b, a = planted_factors(
        out=10, inp=12, rank=4, spectrum=np.array([4.0, 2.0, 1.0]) * grow, dtype=np.float32
    )
    zeros = (np.zeros((10, 4), np.float32), np.zeros((4, 12), np.float32))
    layers = [FakeLayer("m.a", b, a), FakeLayer("m.b", *zeros)]
    return write_peft(directory, FakeAdapter(layers))


def test_metrics_of_a_planted_adapter(tmp_path: Path) -> None:
    report = lora_audit.inspect(planted(tmp_path / "x"), device="cpu")
    metrics = run_metrics(report, per_layer=True)
    scale = 16 / 4  # lora_alpha / r
    assert metrics["lora_audit/sigma1_max"] == pytest.approx(4 * scale)
    assert metrics["lora_audit/delta_w_norm"] == pytest.approx(scale * math.sqrt(21))
    assert metrics["lora_audit/untrained_layers"] == 1
    # energies 16, 4, 1 (times scale²): 20/21 < τ = 0.99, so all three
    assert metrics["lora_audit/energy_rank_median"] == metrics["lora_audit/energy_rank_p90"] == 3
    assert metrics["lora_audit/stable_rank_mean"] == pytest.approx(21 / 16)
    assert metrics["lora_audit/stable_rank_max"] == pytest.approx(21 / 16)
    assert metrics["lora_audit/wasted_fraction"] == report.summary.wasted_fraction
    assert metrics["lora_audit/layers/m.a/sigma1"] == pytest.approx(4 * scale)
    assert all(name.startswith("lora_audit/") for name in metrics)


def test_files_written_for_the_checkpoints(tmp_path: Path) -> None:
    run = RunAudit()
    for step, grow in ((10, 1.0), (20, 1.5)):
        path = planted(tmp_path / "out" / f"checkpoint-{step}", grow=grow)
        report = lora_audit.inspect(path, device="cpu")
        metrics, alerts = run.observe(report, step=step)
        run.checkpoint(report, step=step)
        assert metrics["lora_audit/untrained_layers"] == 1
        assert alerts == []  # m.b is untrained, but only step 50 on is it a warning
    assert [step for step, _ in run.history] == [10, 20]
    written = run.write(tmp_path / "out")
    assert sorted(p.name for p in written) == ["advice.txt", "report.json", "trend.json"]
    trend = json.loads((tmp_path / "out" / "lora-audit" / "trend.json").read_text())
    assert trend["kind"] == "trend" and [c["step"] for c in trend["checkpoints"]] == [10, 20]
    norms = [c["frobenius_norm"] for c in trend["checkpoints"]]
    assert norms[1] == pytest.approx(1.5 * norms[0])
    assert RunAudit().write(tmp_path / "empty") == []
