"""compress → PeftModel.from_pretrained rebuilds exactly the optimal rank-k truncation.

PEFT itself is the judge: a tiny BERT built from a config (nothing downloaded), LoRA layers
created and saved by PEFT, compressed by lora-audit, loaded back by PEFT; every layer's
``get_delta_weight`` must equal the best rank-k approximation of the original delta
(dense float64 SVD) to ≤ 1e-5 relative.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SAMPLES
from tiny_bert import tiny_base

from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.formats import load_adapter
from lora_audit.report import CompressReport

pytestmark = pytest.mark.peft
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

CONFIGS: dict[str, dict[str, Any]] = {
    "patterns": dict(
        r=8,
        lora_alpha=16,
        target_modules=["query", "value", "dense"],
        rank_pattern={"query": 4, "layer.1.output.dense": 6},
        alpha_pattern={"value": 24},
    ),
    "rslora": dict(
        r=8,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["query", "key", "dense"],
        rank_pattern={"key": 4},  # with --rank 6 these are kept (at scale 8/√4) and others cut
    ),
}


def lora_deltas(model: Any) -> dict[str, np.ndarray]:
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            key = name.removeprefix("base_model.model.")
            out[key] = module.get_delta_weight("default").detach().double().numpy()
    return out


@pytest.fixture(params=sorted(CONFIGS))
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    torch.manual_seed(1)
    model = peft.get_peft_model(
        tiny_base(), peft.LoraConfig(init_lora_weights=False, **CONFIGS[request.param])
    )
    path = tmp_path / request.param
    model.save_pretrained(str(path))
    return path, lora_deltas(model)


def optimal(delta: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def load_back(path: Path) -> dict[str, np.ndarray]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(tiny_base(), str(path))
    problems = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not problems, problems
    return lora_deltas(model)


def run(source: Path, out: Path, rule: RankRule) -> CompressReport:
    options = CompressOptions(rule=rule, output=out)
    return compress_adapter(load_adapter(source), options=options)


@pytest.mark.parametrize(
    "rule",
    [
        RankRule(mode="rank", value=3),
        RankRule(mode="energy", value=0.9),
        RankRule(mode="budget", value=2000),
        RankRule(mode="ratio", value=4),
        RankRule(mode="rank", value=6),
    ],
    ids=["rank", "energy", "budget", "ratio", "rank-mixed"],
)
def test_peft_rebuilds_the_optimal_truncation(
    saved: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, rule: RankRule
) -> None:
    source, original = saved
    report = run(source, tmp_path / "out", rule)
    rebuilt = load_back(tmp_path / "out")
    assert set(rebuilt) == set(original)
    by_name = {layer.name: layer for layer in report.layers}
    worst = 0.0
    for name, delta in original.items():
        k = by_name[name].new_rank
        assert k == expected_rank(delta, rule, rank=by_name[name].rank) or rule.mode == "budget"
        best = optimal(delta, k)
        err = np.linalg.norm(rebuilt[name] - best) / np.linalg.norm(delta)
        worst = max(worst, float(err))
        expected = np.linalg.norm(delta - best) / np.linalg.norm(delta)
        assert by_name[name].relative_error == pytest.approx(expected, abs=1e-6)
    assert worst <= 1e-5, worst
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["use_rslora"] is False
    if rule.mode == "budget":
        assert report.summary.params_after <= rule.value
    if rule.mode == "rank" and rule.value == 6:
        actions = {layer.action for layer in report.layers}
        assert actions == {"kept", "truncated"}, actions
    check_config(config, source, report)


def expected_rank(delta: np.ndarray, rule: RankRule, *, rank: int) -> int:
    """The rank each rule keeps, from the dense spectrum (clamped to 1 ≤ k ≤ r)."""
    s = np.linalg.svd(delta, compute_uv=False)[:rank]
    if rule.mode == "rank":
        k = int(rule.value)
    elif rule.mode == "energy":
        energy = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.argmax(energy >= rule.value * (1 - 1e-12))) + 1
    else:
        k = int(np.count_nonzero(s >= s[0] / rule.value))
    return max(1, min(k, rank))


def check_config(config: dict[str, Any], source: Path, report: CompressReport) -> None:
    """Under PEFT's own pattern rule, every layer resolves to the (r, alpha) we meant."""
    from peft.utils.other import get_pattern_key

    old = json.loads((source / "adapter_config.json").read_text())
    keys_seen = set()
    for layer in report.layers:
        r_key = get_pattern_key(list(config["rank_pattern"]), layer.name)
        a_key = get_pattern_key(list(config["alpha_pattern"]), layer.name)
        r = config["rank_pattern"].get(r_key, config["r"])
        alpha = config["alpha_pattern"].get(a_key, config["lora_alpha"])
        keys_seen |= {r_key, a_key}
        assert r == layer.new_rank, layer.name
        # one scale for every layer (what vLLM's lora_alpha / r reads): the patterns restate it
        assert report.serving is not None
        assert alpha / r == pytest.approx(report.serving.scale, rel=1e-12), layer.name
        assert config["lora_alpha"] / config["r"] == pytest.approx(report.serving.scale)
        if layer.action == "kept" and not report.serving.rescaled_layers:
            # kept bit for bit: the one scale is the original one
            assert alpha / r == pytest.approx(
                old_scale(old, layer.name, rank=layer.rank), rel=1e-12
            ), layer.name
    # every pattern key matches some module (and none names the wrong one, checked above)
    assert set(config["rank_pattern"]) <= keys_seen
    assert set(config["alpha_pattern"]) <= keys_seen


def old_scale(config: dict[str, Any], name: str, *, rank: int) -> float:
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(list(config.get("alpha_pattern") or {}), name)
    alpha = (config.get("alpha_pattern") or {}).get(key, config["lora_alpha"])
    return float(alpha / (rank**0.5 if config.get("use_rslora") else rank))


def test_budget_is_no_worse_than_uniform(
    saved: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    source, original = saved
    uniform = run(source, tmp_path / "u", RankRule(mode="rank", value=2))
    budget = run(
        source, tmp_path / "b", RankRule(mode="budget", value=uniform.summary.params_after)
    )
    assert budget.summary.params_after <= uniform.summary.params_after
    assert budget.summary.relative_error <= uniform.summary.relative_error + 1e-12

    # and PEFT agrees on the errors: Σ‖ΔW − ΔW_k‖² computed from what it loads
    def total_error(path: Path) -> float:
        rebuilt = load_back(path)
        return sum(float(np.linalg.norm(original[n] - rebuilt[n]) ** 2) for n in original)

    assert total_error(tmp_path / "b") <= total_error(tmp_path / "u") * (1 + 1e-9)


def test_untouched_layers_keep_their_bits(
    saved: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    from safetensors import safe_open

    source, original = saved
    report = run(source, tmp_path / "out", RankRule(mode="rank", value=64))  # nothing shrinks
    rebuilt = load_back(tmp_path / "out")
    for name, delta in original.items():
        assert np.allclose(rebuilt[name], delta, rtol=0, atol=1e-6 * np.abs(delta).max())
    # one scale for every layer (vLLM reads only lora_alpha / r): the most common one, so the
    # layers at it keep their bits and the others are rescaled to it (rounded to float32)
    assert report.serving is not None
    old = json.loads((source / "adapter_config.json").read_text())
    scales = {x.name: old_scale(old, x.name, rank=x.rank) for x in report.layers}
    assert report.serving.scale == max(set(scales.values()), key=list(scales.values()).count)
    rescaled = {n for n, s in scales.items() if s != pytest.approx(report.serving.scale)}
    assert report.serving.rescaled_layers == len(rescaled)
    with (
        safe_open(str(source / "adapter_model.safetensors"), "pt") as a,
        safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():  # noqa: SIM118 (safe_open has no __iter__)
            module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
            if module not in rescaled:
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
        meta = b.metadata()
    assert meta["lora_audit.method"] == "rank" and len(meta["lora_audit.source_sha256"]) == 64


def test_dora_needs_allow_dora_and_keeps_the_magnitudes(tmp_path: Path) -> None:
    from safetensors import safe_open

    from lora_audit.errors import UsageError

    torch.manual_seed(1)
    config = peft.LoraConfig(
        init_lora_weights=False, r=8, lora_alpha=16, use_dora=True, target_modules=["query"]
    )
    model = peft.get_peft_model(tiny_base(), config)
    source = tmp_path / "dora"
    model.save_pretrained(str(source))
    original = lora_deltas(model)
    with pytest.raises(UsageError, match="--allow-dora"):
        run(source, tmp_path / "refused", RankRule(mode="rank", value=3))
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "out"
    report = compress_adapter(
        load_adapter(source),
        options=CompressOptions(rule=RankRule(mode="rank", value=3), output=out, allow_dora=True),
    )
    assert any("magnitude" in w for w in report.warnings)
    rebuilt = load_back(out)
    for name, delta in original.items():  # the low-rank part is still the optimal truncation
        err = np.linalg.norm(rebuilt[name] - optimal(delta, 3)) / np.linalg.norm(delta)
        assert err <= 1e-5, (name, err)
    with (
        safe_open(str(source / "adapter_model.safetensors"), "pt") as a,
        safe_open(str(out / "adapter_model.safetensors"), "pt") as b,
    ):
        magnitudes = [k for k in a.keys() if "lora_magnitude_vector" in k]  # noqa: SIM118
        assert len(magnitudes) == len(original)
        for key in magnitudes:
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


@pytest.mark.parametrize("name", ["minilm-r16", "minilm-r8-rslora-patterns", "minilm-r4-bf16"])
def test_sample_adapters_compress_to_the_dense_truncation(name: str, tmp_path: Path) -> None:
    # real adapters saved by PEFT, through the whole pipeline (Gram pass, refactorisation from
    # the kept Grams, rounding to the stored dtype, writer), read back and compared layer by
    # layer with the dense float64 truncation of the original
    source = load_adapter(SAMPLES / name)
    report = run(SAMPLES / name, tmp_path / "out", RankRule(mode="energy", value=0.9))
    again = {layer.name: layer for layer in load_adapter(tmp_path / "out").layers}
    reread = load_adapter(tmp_path / "out")
    bf16 = "BF16" in source.layers[0].dtype
    worst = 0.0
    for layer, planned in zip(source.layers, report.layers, strict=True):
        b, a = source.load_factors(layer)
        delta = layer.scale * (b @ a)
        new = again[layer.name]
        assert new.rank == planned.new_rank
        b2, a2 = reread.load_factors(new)
        got = new.scale * (b2 @ a2)
        err = np.linalg.norm(got - optimal(delta, new.rank)) / np.linalg.norm(delta)
        worst = max(worst, float(err))
    assert report.summary.truncated > 0
    assert worst <= (1e-2 if bf16 else 1e-5), worst  # bf16 keeps 8 bits of mantissa
