"""merge: the written ΔW of every layer is the optimal rank-k truncation of Σ wᵢ·ΔWᵢ.

The reference is dense float64: each input's ΔW = s·B·A as its reader gives it, summed with
the weights, then truncated by numpy's full SVD (Eckart–Young). The output is read back from
disk by the same reader (its scale comes from the config or alpha the writer wrote).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from factories import FakeAdapter, FakeLayer, write_peft
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_audit.adapter import Adapter
from lora_audit.commands.merge import MergeOptions, merge_adapters
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.errors import InputError, UsageError
from lora_audit.formats import load_adapter
from lora_audit.report.merge import MergeReport

PEFT_PAIR = (SAMPLES / "minilm-r16", SAMPLES / "minilm-r8-rslora-patterns")
SD = SAMPLES / "sd"
#: every plain and LyCORIS structure: LoRA (linear + conv), LoHa, LoKr (+ full kron), Tucker
SD_FILES = ("kohya-lora", "lycoris-loha", "lycoris-lokr", "lycoris-locon-tucker")


def deltas(adapter: Adapter) -> dict[str, np.ndarray]:
    out = {}
    for layer in adapter.layers:
        b, a = adapter.load_factors(layer)
        out[layer.name] = layer.scale * (b @ a)
    return out


def weighted_sum(adapters: list[Adapter], weights: list[float]) -> dict[str, np.ndarray]:
    total: dict[str, np.ndarray] = {}
    for adapter, w in zip(adapters, weights, strict=True):
        for name, delta in deltas(adapter).items():
            total[name] = total.get(name, 0) + w * delta
    return total


def best(delta: np.ndarray, k: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]


#: how close the written ΔW can be to the float64 optimum, by the dtype it is stored in
TOLERANCE = {"F64": 1e-9, "F32": 1e-6, "F16": 2e-3, "BF16": 1.6e-2}


def check_optimal(report: MergeReport, out: Path, ref: dict[str, np.ndarray]) -> None:
    """Each written layer within its dtype's rounding (1e-6 for F32) of the optimum."""
    merged = load_adapter(out)
    got = deltas(merged)
    assert set(got) == set(ref)
    by_name = {layer.name: layer for layer in report.layers}
    for layer in merged.layers:
        k = by_name[layer.name].new_rank
        assert layer.rank == k
        full = k >= by_name[layer.name].rank  # rank(ΔW) ≤ Σrᵢ: the optimum is ΔW itself
        target = ref[layer.name] if full else best(ref[layer.name], k)
        norm = np.linalg.norm(ref[layer.name])
        tol = TOLERANCE[layer.dtype]
        assert np.linalg.norm(got[layer.name] - target) <= tol * norm, layer.name
        # the reported error is the Eckart–Young error of the exact sum
        exact = np.linalg.norm(ref[layer.name] - target) / norm
        assert by_name[layer.name].relative_error == pytest.approx(exact, abs=1e-6)


def run(
    inputs: list[Path], out: Path, rule: RankRule | None, weights: list[float], **kw: object
) -> tuple[MergeReport, list[Adapter]]:
    adapters = [load_adapter(p) for p in inputs]
    options = MergeOptions(rule=rule, output=out, weights=weights, **kw)  # type: ignore[arg-type]
    return merge_adapters(adapters, options=options), adapters


def test_peft_samples_merge_to_the_optimal_truncation(tmp_path: Path) -> None:
    rule = RankRule(mode="energy", value=0.99)
    weights = [0.8, -0.5]
    report, adapters = run(list(PEFT_PAIR), tmp_path / "out", rule, weights, drop_extras=True)
    ref = weighted_sum(adapters, weights)
    check_optimal(report, tmp_path / "out", ref)
    # layers in only one input are carried with their weight (key: r16 only; embeddings: r8)
    only = {x.name: x.inputs for x in report.layers if len(x.inputs) == 1}
    assert "bert.embeddings.word_embeddings" in only and any("key" in n for n in only)
    assert report.summary.partial_layers == len(only)
    assert min(x.energy_kept for x in report.layers) >= 0.99


def test_rslora_and_pattern_scales_are_applied(tmp_path: Path) -> None:
    """The rsLoRA sample's scale is alpha/√r with its patterns, read from its config here."""
    rs = PEFT_PAIR[1]
    config = json.loads((rs / "adapter_config.json").read_text())
    assert config["use_rslora"] and config["rank_pattern"]
    report, _ = run([rs, rs], tmp_path / "out", None, [1.0, 2.0], drop_extras=True)
    merged = deltas(load_adapter(tmp_path / "out"))
    from safetensors.numpy import load_file

    tensors = load_file(str(rs / "adapter_model.safetensors"))
    for name, delta in merged.items():
        short = name.split(".")[-1] if "layer.5.output" not in name else "layer.5.output.dense"
        r = config["rank_pattern"].get(short, config["r"])
        alpha = config["alpha_pattern"].get(short, config["lora_alpha"])
        stem = f"base_model.model.{name}"
        if "embeddings" in name:
            b, a = tensors[f"{stem}.lora_embedding_B"], tensors[f"{stem}.lora_embedding_A"]
        else:
            b, a = tensors[f"{stem}.lora_B.weight"], tensors[f"{stem}.lora_A.weight"]
        assert a.shape[0] == r, name
        expected = 3.0 * alpha / math.sqrt(r) * (b.astype(np.float64) @ a)
        np.testing.assert_allclose(delta, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert all(x.new_rank == x.rank for x in report.layers)  # concat: Σ rᵢ = 2r


def test_concat_is_lossless_and_records_what_was_merged(tmp_path: Path) -> None:
    weights = [1.0, -0.25]
    report, adapters = run(list(PEFT_PAIR), tmp_path / "out", None, weights, drop_extras=True)
    ref = weighted_sum(adapters, weights)
    got = deltas(load_adapter(tmp_path / "out"))
    for name, delta in ref.items():
        assert np.linalg.norm(got[name] - delta) <= 1e-6 * np.linalg.norm(delta)
    assert report.settings.mode == "concat" and report.summary.max_relative_error == 0
    assert all(x.new_rank == x.rank for x in report.layers)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and not config["use_rslora"]
    assert set(config["target_modules"]) == set(ref)  # the inputs target different modules
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "np") as fh:
        meta = fh.metadata()
    merged = json.loads(meta["lora_audit.merge"])
    assert [m["weight"] for m in merged] == weights
    assert [m["file"] for m in merged] == ["adapter_model.safetensors"] * 2
    assert all(len(m["sha256"]) == 64 for m in merged) and meta["lora_audit.method"] == "concat"


@pytest.mark.parametrize("rule", [RankRule(mode="rank", value=3), None], ids=["rank3", "concat"])
def test_kohya_and_lycoris_structures_merge_exactly(tmp_path: Path, rule: RankRule | None) -> None:
    inputs = [SD / f"{name}.safetensors" for name in SD_FILES]
    weights = [0.7, 1.3, -0.4, 2.0]
    out = tmp_path / "merged.safetensors"
    report, adapters = run(inputs, out, rule, weights)
    ref = weighted_sum(adapters, weights)
    written = load_adapter(out)
    if rule is None:
        got = deltas(written)
        for layer in written.layers:  # each in the widest dtype its inputs store it in
            delta = ref[layer.name]
            err = np.linalg.norm(got[layer.name] - delta)
            assert err <= TOLERANCE[layer.dtype] * np.linalg.norm(delta), layer.name
    else:
        check_optimal(report, out, ref)
    assert {x.dtype for x in written.layers} == {"F16", "F32"}  # kohya-lora alone is F16
    assert written.format == "kohya" and {x.structure.value for x in written.layers} == {"lora"}
    assert all(x.scale == 1.0 for x in written.layers)  # alpha = k


@st.composite
def peft_inputs(draw: st.DrawFn) -> tuple[list[FakeAdapter], list[float], int]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(2, 3))
    shapes = {"m.q": (12, 9), "m.v": (7, 15)}
    adapters = []
    for _ in range(count):
        names = draw(st.lists(st.sampled_from(sorted(shapes)), min_size=1, max_size=2, unique=True))
        r = draw(st.integers(1, 6))
        layers = [
            FakeLayer(
                name=n,
                b=rng.standard_normal((shapes[n][0], r)).astype(np.float64),
                a=rng.standard_normal((r, shapes[n][1])).astype(np.float64),
            )
            for n in names
        ]
        config = {
            "r": r,
            "lora_alpha": draw(st.sampled_from([1, 4, 16, 3.5])),
            "use_rslora": draw(st.booleans()),
            "target_modules": names,
        }
        adapters.append(FakeAdapter(layers=layers, config=config))
    weights = draw(
        st.lists(st.floats(-3, 3).filter(lambda w: abs(w) > 0.05), min_size=count, max_size=count)
    )
    return adapters, weights, draw(st.integers(1, 8))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=peft_inputs())
def test_generated_factors_merge_to_the_optimal_truncation(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[list[FakeAdapter], list[float], int]
) -> None:
    fakes, weights, k = case
    root = tmp_path_factory.mktemp("gen")
    paths = [write_peft(root / f"in{i}", fake) for i, fake in enumerate(fakes)]
    report, adapters = run(paths, root / "out", RankRule(mode="rank", value=k), weights)
    ref = weighted_sum(adapters, weights)
    check_optimal(report, root / "out", ref)


def test_refusals(tmp_path: Path) -> None:
    r16 = PEFT_PAIR[0]
    dora = SAMPLES / "minilm-dora-r4"
    rule = RankRule(mode="rank", value=4)
    with pytest.raises(InputError, match="DoRA"):
        run([r16, dora], tmp_path / "a", rule, [1, 1], drop_extras=True)
    with pytest.raises(InputError, match="kohya adapter cannot be merged"):
        run([r16, SD / "kohya-lora.safetensors"], tmp_path / "b", rule, [1, 1], drop_extras=True)
    with pytest.raises(InputError, match="diffusers"):
        run([SD / "diffusers-processor.safetensors"] * 2, tmp_path / "c.safetensors", rule, [1, 1])
    with pytest.raises(InputError, match="not a LoRA factor"):
        run(list(PEFT_PAIR), tmp_path / "d", rule, [1, 1])
    with pytest.raises(UsageError, match="3 value"):
        run(list(PEFT_PAIR), tmp_path / "e", rule, [1, 1, 1], drop_extras=True)
    with pytest.raises(UsageError, match="finite"):
        run(list(PEFT_PAIR), tmp_path / "f", rule, [1, math.nan], drop_extras=True)
    assert not any(tmp_path.iterdir())  # nothing written by a refused merge


def test_different_bases_and_shapes_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def fake(out: int, base: str) -> FakeAdapter:
        layer = FakeLayer(
            name="m.q", b=rng.standard_normal((out, 2)), a=rng.standard_normal((2, 5))
        )
        return FakeAdapter(layers=[layer], config={"base_model_name_or_path": base})

    a = write_peft(tmp_path / "a", fake(4, "base-1"))
    b = write_peft(tmp_path / "b", fake(4, "base-2"))
    c = write_peft(tmp_path / "c", fake(6, "base-1"))
    rule = RankRule(mode="rank", value=1)
    with pytest.raises(InputError, match="same base model"):
        run([a, b], tmp_path / "o1", rule, [1, 1])
    with pytest.raises(InputError, match="shape"):
        run([a, c], tmp_path / "o2", rule, [1, 1])


def test_output_guards(tmp_path: Path) -> None:
    inputs = [SD / "kohya-lora.safetensors", SD / "lycoris-loha.safetensors"]
    rule = RankRule(mode="rank", value=2)
    for target in inputs:  # never over an input, not even with --force
        with pytest.raises(UsageError):
            run(inputs, target, rule, [1, 1], force=True)
    out = tmp_path / "m.safetensors"
    run(inputs, out, rule, [1, 1])
    with pytest.raises(UsageError, match="exists"):
        run(inputs, out, rule, [1, 1])
    run(inputs, out, rule, [1, 1], force=True)
    report, _ = run(inputs, tmp_path / "dry.safetensors", rule, [1, 1], dry_run=True)
    assert report.summary.file_bytes_after is None and not (tmp_path / "dry.safetensors").exists()
