"""``trend``: checkpoint order, the drift rule, and the series against dense references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from checkpoints import FOCUS, GROW, write_checkpoint
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft

from lora_audit.cli._common import exit_code_for
from lora_audit.commands.trend import (
    TrendOptions,
    expand_run,
    order_checkpoints,
    step_from_name,
    trend_of,
)
from lora_audit.decisions.drift import rise
from lora_audit.formats import load_adapter

#: Spectra of two layers over four checkpoints: "grow" spreads out, "focus" collapses.


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """``run/checkpoint-{5,50,500,5000}`` holding GROW and FOCUS at those steps."""
    for i, step in enumerate((5, 50, 500, 5000)):
        write_checkpoint(tmp_path / "run" / f"checkpoint-{step}", i)
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("checkpoint-500", (500, "step")),
        ("ckpt_20", (20, "step")),
        ("step_1000", (1000, "step")),
        ("global_step300", (300, "step")),
        ("my-lora-step00000500", (500, "step")),
        ("run-steps-40", (40, "step")),
        ("lora-e3", (3, "epoch")),
        ("epoch_12", (12, "epoch")),
        ("ep2", (2, "epoch")),
        ("mylora-000003", (3, "number")),
        ("lr1e-4-step500", (500, "step")),
        ("final", None),
        ("lr1e-4", None),
        ("checkpoint-10-epoch-2", (10, "step")),
    ],
)
def test_step_from_name(name: str, expected: tuple[int, str] | None) -> None:
    assert step_from_name(name) == expected


def test_checkpoints_are_ordered_by_step_in_their_names(run: Path) -> None:
    given = [run / f"checkpoint-{s}" for s in (500, 5, 5000, 50)]  # the shell sorts as text
    order = order_checkpoints([load_adapter(p) for p in given])
    assert order.steps == (5, 50, 500, 5000)
    assert [given[i].name for i in order.order] == [
        "checkpoint-5",
        "checkpoint-50",
        "checkpoint-500",
        "checkpoint-5000",
    ]
    assert (order.source, order.unit) == ("name", "step")


def test_adapter_file_path_uses_its_folder(run: Path) -> None:
    given = [run / f"checkpoint-{s}" / "adapter_model.safetensors" for s in (50, 5)]
    assert order_checkpoints([load_adapter(p) for p in given]).steps == (5, 50)


def test_metadata_orders_when_names_do_not(tmp_path: Path) -> None:
    paths = [
        write_checkpoint(tmp_path / name, i, metadata={"ss_steps": str(step), "ss_epoch": "1"})
        for i, (name, step) in enumerate((("early", 100), ("late", 900), ("final", 1000)))
    ]
    order = order_checkpoints([load_adapter(p) for p in reversed(paths)])
    assert (order.source, order.unit, order.steps) == ("ss_steps", "step", (100, 900, 1000))


def test_epoch_metadata_when_steps_repeat(tmp_path: Path) -> None:
    paths = [
        write_checkpoint(tmp_path / f"x{i}", i, metadata={"ss_steps": "10", "ss_epoch": str(3 - i)})
        for i in range(3)
    ]
    order = order_checkpoints([load_adapter(p) for p in paths])
    assert (order.source, order.steps, order.order) == ("ss_epoch", (1, 2, 3), (2, 1, 0))


def test_given_order_with_a_warning(tmp_path: Path) -> None:
    paths = [write_checkpoint(tmp_path / name, i) for i, name in enumerate(("b", "a", "c"))]
    warnings: list[str] = []
    report = trend_of(
        [load_adapter(p) for p in paths], options=TrendOptions(), warn=warnings.append
    )
    assert [Path(c.path).name for c in report.checkpoints] == ["b", "a", "c"]
    assert report.settings.step_source == "order"
    assert any("order given" in w for w in warnings)
    assert any("order given" in w for w in report.warnings)


def test_mixed_units_in_names_fall_back(tmp_path: Path) -> None:
    paths = [write_checkpoint(tmp_path / n, i) for i, n in enumerate(("step-10", "epoch-2"))]
    assert order_checkpoints([load_adapter(p) for p in paths]).source == "order"


@pytest.mark.parametrize(
    ("series", "window", "expected"),
    [
        ([1.0, 1.1, 1.3, 1.5], 3, 1.5 / 1.1 - 1),
        ([2.0, 1.0, 1.0, 1.2], 3, 0.2),
        ([1.0, 1.5, 1.4, 1.6], 3, None),  # falls inside the window
        ([1.0, 1.5, 1.4, 1.6], 2, 1.6 / 1.4 - 1),
        ([1.0, 1.2], 3, None),  # too short
        ([0, 3, 4], 3, None),  # untrained at the window's start
        ([3, None, 4, 5], 3, None),  # missing inside the window
        ([3, 3, 3], 3, 0.0),
    ],
)
def test_rise(series: list[float | None], window: int, expected: float | None) -> None:
    got = rise(series, window=window)
    assert got == (None if expected is None else pytest.approx(expected))


def test_series_match_dense_reference_and_drift_is_flagged(run: Path) -> None:
    report = trend_of(
        [load_adapter(run / f"checkpoint-{s}") for s in (5000, 5, 500, 50)],
        options=TrendOptions(),
    )
    assert [c.step for c in report.checkpoints] == [5, 50, 500, 5000]
    by_name = {layer.name: layer for layer in report.layers}
    for name, spectra in (("model.layers.0.q_proj", GROW), ("model.layers.0.v_proj", FOCUS)):
        layer = by_name[name]
        for i, spectrum in enumerate(spectra):
            ckpt = load_adapter(run / f"checkpoint-{report.checkpoints[i].step}")
            found = next(x for x in ckpt.layers if x.name == name)
            b, a = ckpt.load_factors(found)
            w = found.scale * b @ a  # dense, test only
            sigma = np.linalg.svd(w, compute_uv=False)
            assert sigma[: len(spectrum)] == pytest.approx(np.array(spectrum), rel=1e-5)
            assert layer.stable_rank[i] == pytest.approx((sigma**2).sum() / sigma[0] ** 2, rel=1e-9)
            assert layer.frobenius_norm[i] == pytest.approx(np.linalg.norm(w), rel=1e-9)
            energy = np.cumsum(sigma**2) / (sigma**2).sum()
            assert layer.energy_rank[i] == int(np.searchsorted(energy, 0.99 * (1 - 1e-12))) + 1
    assert by_name["model.layers.0.q_proj"].drift == ("stable_rank", "energy_rank")
    assert by_name["model.layers.0.v_proj"].drift == ()
    rules = {(f.layer, f.rule) for f in report.findings}
    assert ("model.layers.0.q_proj", "stable-rank-drift") in rules
    assert ("model.layers.0.q_proj", "energy-rank-drift") in rules
    assert all(f.severity == "warning" for f in report.findings)
    assert report.status == "drift" and exit_code_for(report) == 0
    first = report.findings[0]
    assert "steps 50–5000" in first.message
    total = np.sqrt(sum(layer.frobenius_norm[-1] ** 2 for layer in report.layers))  # type: ignore[operator]
    assert report.checkpoints[-1].frobenius_norm == pytest.approx(total)


def test_fail_on_drift_and_thresholds(run: Path) -> None:
    adapters = [load_adapter(run / f"checkpoint-{s}") for s in (5, 50, 500, 5000)]
    strict = trend_of(adapters, options=TrendOptions(fail_on_drift=True))
    assert exit_code_for(strict) == 1 and all(f.severity == "error" for f in strict.findings)
    lax = trend_of(adapters, options=TrendOptions(min_rise=10.0, fail_on_drift=True))
    assert lax.findings == () and lax.status == "pass" and exit_code_for(lax) == 0


def test_too_few_checkpoints_are_not_judged(run: Path) -> None:
    warnings: list[str] = []
    report = trend_of(
        [load_adapter(run / "checkpoint-500"), load_adapter(run / "checkpoint-5000")],
        options=TrendOptions(),
        warn=warnings.append,
    )
    assert report.findings == ()
    assert any("none is flagged" in w for w in warnings)


def test_expand_run(run: Path, tmp_path: Path) -> None:
    found, notes = expand_run([run])
    assert sorted(p.name for p in found) == [
        "checkpoint-5",
        "checkpoint-50",
        "checkpoint-500",
        "checkpoint-5000",
    ]
    assert notes == []
    write_checkpoint(run, 3)  # the trainer's final adapter at the top of output_dir
    found, notes = expand_run([run])
    assert len(found) == 4 and notes and "not part of the trend" in notes[0]
    single = run / "checkpoint-5"
    assert expand_run([single]) == ([single], [])
    assert expand_run([single, run]) == ([single, run], [])


def test_layer_missing_from_a_checkpoint(run: Path, tmp_path: Path) -> None:
    extra = tmp_path / "checkpoint-9999"
    write_peft(
        extra,
        FakeAdapter(
            [
                FakeLayer(
                    "model.layers.0.q_proj",
                    *planted_factors(out=32, inp=24, rank=8, spectrum=np.array([1.0]), seed=0),
                )
            ],
            {"lora_alpha": 8},
        ),
    )
    report = trend_of(
        [load_adapter(run / "checkpoint-5000"), load_adapter(extra)], options=TrendOptions()
    )
    v = next(x for x in report.layers if x.name == "model.layers.0.v_proj")
    assert v.stable_rank[1] is None and v.stable_rank[0] is not None
