"""compress and merge outputs read the same in PEFT, vLLM and llama.cpp — or the report says not.

For every compressed and merged output of the PEFT samples, each layer's ΔW is computed three
ways: by PEFT itself (``PeftModel.from_pretrained`` then ``get_delta_weight``, in float64),
and by vLLM's and llama.cpp's scale rules reproduced from their source (cited on each
function below; no server code is copied or run). vLLM's rule must always give PEFT's ΔW;
llama.cpp's must wherever the report says ``exact``, and with ``--uniform-rank`` always;
where it says ``differs`` the numbers do differ and the fix names ``--uniform-rank``; where a
server refuses, the reproduction refuses too.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from conftest import SAMPLES

from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.commands.merge import MergeOptions, merge_adapters
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.formats import load_adapter
from lora_audit.report import CompressReport, ServerCheck, to_dict
from lora_audit.report.merge import MergeReport

pytestmark = pytest.mark.peft
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SCHEMAS = Path(__file__).parents[2] / "src" / "lora_audit" / "report" / "schema"
Report = CompressReport | MergeReport

# ---------------------------------------------------------------------------------------------
# The servers' rules, reproduced from their source


def _tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the output, widened to float64 (BF16 exactly)."""
    loaded = safetensors_torch.load_file(str(directory / "adapter_model.safetensors"))
    return {key: value.double().numpy() for key, value in loaded.items()}


def _factors(directory: Path) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The config and every module's (B, A) as 2-D float64, keyed like PEFT's module names."""
    config = json.loads((directory / "adapter_config.json").read_text())
    tensors = _tensors(directory)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        for marker, role in (
            (".lora_A.weight", "A"),
            (".lora_B.weight", "B"),
            (".lora_embedding_A", "A"),
            (".lora_embedding_B", "B"),
        ):
            if key.endswith(marker):
                module = key.removesuffix(marker).removeprefix("base_model.model.")
                pairs.setdefault(module, {})[role] = value
    out = {}
    for module, f in pairs.items():
        b, a = f["B"], f["A"]
        out[module] = (b.reshape(b.shape[0], b.shape[1]), a.reshape(a.shape[0], -1))
    return config, out


def vllm_deltas(directory: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """ΔW of every module as vLLM applies it, and what vLLM refuses (empty: it loads).

    vllm-project/vllm ``vllm/lora/peft_helper.py`` (commit 02143692), ``PEFTHelper``:
    ``from_dict`` keeps only the dataclass's own fields (``r``, ``lora_alpha``,
    ``use_rslora``, ``use_dora``, ``modules_to_save``, …), so ``rank_pattern`` and
    ``alpha_pattern`` are dropped; ``_validate_features`` raises for a truthy
    ``modules_to_save`` ("vLLM only supports modules_to_save being None") and for ``use_dora``;
    ``__post_init__`` sets ``vllm_lora_scaling_factor = lora_alpha / math.sqrt(r)`` with
    rsLoRA, else ``lora_alpha / r`` — one number for the whole adapter.
    ``vllm/lora/lora_model.py`` ``LoRAModel.from_lora_tensors``: every module's
    ``LoRALayerWeights.from_config(module_name, peft_helper)`` (that one scaling) gets the
    tensors as stored; ``vllm/lora/lora.py`` ``LoRALayerWeights.optimize``:
    ``self.lora_b *= self.scaling``. ``vllm/lora/layers/base_linear.py`` ``set_lora``: after
    ``reset_lora`` (zeros), ``lora_a_stacked[0][index, 0, :lora_a.shape[0], :lora_a.shape[1]]
    .copy_(lora_a)`` (and so for B): each module's rank is its tensors' shape, zero-padded to
    ``max_lora_rank`` — exact.
    """
    config, factors = _factors(directory)
    refused = []
    if config.get("modules_to_save"):
        refused.append("modules_to_save")
    if config.get("use_dora"):
        refused.append("DoRA")
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return {m: (scaling * b) @ a for m, (b, a) in factors.items()}, refused


def llama_deltas(directory: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """ΔW of every module as llama.cpp applies it, and the tensors its converter stops at.

    ggml-org/llama.cpp ``convert_lora_to_gguf.py`` (commit 0b03adaa): ``alpha: float =
    lparams["lora_alpha"]`` is the only scale read from adapter_config.json (no
    ``use_rslora``, no patterns), stored by ``set_gguf_parameters`` with
    ``add_float32(gguf.Keys.Adapter.LORA_ALPHA, …)``; ``get_tensors`` takes ``.lora_A.weight``,
    ``.lora_B.weight``, ``.lora_embedding_A``/``_B``, skips ``.base_layer.weight``, keeps
    ``_layernorm``/``.norm`` tensors and otherwise logs "Unexpected name … Not a lora_A or
    lora_B tensor" and calls ``sys.exit(1)``.
    ``src/llama-adapter.h`` (commit 215841fc) ``llama_adapter_lora_weight::get_scale``:
    ``rank = (float) b->ne[0]`` (lora_b stored as (out, r): ne[0] is r) and
    ``scale = alpha ? adapter_scale * alpha / rank : adapter_scale`` — per tensor, with the
    user's ``adapter_scale`` = 1 here.
    """
    config, factors = _factors(directory)
    tensors = _tensors(directory)
    stops = [
        key
        for key in tensors
        if not any(
            m in key
            for m in (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")
        )
        and ".base_layer.weight" not in key
        and "_layernorm" not in key
        and ".norm" not in key
    ]
    alpha = float(np.float32(config["lora_alpha"]))
    out = {}
    for module, (b, a) in factors.items():
        rank = b.shape[1]
        scale = alpha / rank if alpha else 1.0
        out[module] = (scale * b) @ a
    return out, stops


# ---------------------------------------------------------------------------------------------
# PEFT as the reference


@pytest.fixture(scope="module")
def minilm() -> torch.nn.Module:
    """The samples' base shape (all-MiniLM-L6-v2 with a two-way head), built from a config."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        vocab_size=30522,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def peft_deltas(directory: Path, base: torch.nn.Module) -> dict[str, np.ndarray]:
    """Every module's ``get_delta_weight`` as PEFT loads the adapter (float64, as B·A)."""
    from peft.tuners.lora import LoraLayer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(directory))
    problems = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not problems, problems
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for factors in (module.lora_A, module.lora_B, module.lora_embedding_A):
            factors.double()  # BF16 widens exactly; the product is then float64
        module.lora_embedding_B.double()
        embedding = "default" in module.lora_embedding_A
        if "default" in module.lora_A or embedding:
            delta = module.get_delta_weight("default").detach().numpy()
            out[name.removeprefix("base_model.model.")] = delta.T if embedding else delta
    return out


def _close(a: np.ndarray, b: np.ndarray, *, rtol: float = 1e-6) -> bool:
    scale = max(float(np.linalg.norm(b)), 1e-300)
    return float(np.linalg.norm(a.reshape(b.shape) - b)) <= rtol * scale


# ---------------------------------------------------------------------------------------------
# The outputs


def _compress(sample: str, rule: RankRule, **kw: Any) -> Callable[[Path, bool], Report]:
    def run(out: Path, uniform: bool) -> Report:
        options = CompressOptions(rule=rule, output=out, uniform_rank=uniform, **kw)
        return compress_adapter(load_adapter(SAMPLES / sample), options=options)

    return run


def _merge(samples: list[str], rule: RankRule | None, **kw: Any) -> Callable[[Path, bool], Report]:
    def run(out: Path, uniform: bool) -> Report:
        options = MergeOptions(rule=rule, output=out, uniform_rank=uniform, **kw)
        return merge_adapters([load_adapter(SAMPLES / s) for s in samples], options=options)

    return run


ENERGY = RankRule(mode="energy", value=0.9)
OUTPUTS: dict[str, Callable[[Path, bool], Report]] = {
    "r16-energy": _compress("minilm-r16", ENERGY),
    # query (r=4, scale 8) is kept bit for bit; the rest is cut to 4
    "rslora-rank4": _compress("minilm-r8-rslora-patterns", RankRule(mode="rank", value=4)),
    "rslora-energy": _compress("minilm-r8-rslora-patterns", ENERGY),
    "bf16-energy": _compress("minilm-r4-bf16", RankRule(mode="energy", value=0.8)),
    "dora-energy": _compress("minilm-dora-r4", ENERGY, allow_dora=True),
    "run-rank4": _compress("minilm-run/checkpoint-80", RankRule(mode="rank", value=4)),
    "merge-energy": _merge(
        ["minilm-r16", "minilm-r8-rslora-patterns"],
        RankRule(mode="energy", value=0.99),
        weights=[1.0, 0.5],
        drop_extras=True,
    ),
    # the head is the same in both inputs, so it is kept: vLLM and llama.cpp refuse it
    "merge-concat": _merge(["minilm-r4-bf16", "minilm-r4-bf16"], None, weights=[1.0, 0.5]),
}
CASES = [(name, False) for name in OUTPUTS] + [
    (name, True) for name in ("rslora-energy", "bf16-energy", "dora-energy", "merge-energy")
]


def _check(report: Report, server: str) -> ServerCheck:
    assert report.serving is not None
    (check,) = [c for c in report.serving.checks if c.server == server]
    return check


@pytest.mark.parametrize(
    ("name", "uniform"), CASES, ids=[f"{n}{'-uniform' if u else ''}" for n, u in CASES]
)
def test_servers_read_the_output_as_the_report_says(
    name: str, uniform: bool, tmp_path: Path, minilm: torch.nn.Module
) -> None:
    out = tmp_path / "out"
    report = OUTPUTS[name](out, uniform)
    kind = "compress" if isinstance(report, CompressReport) else "merge"
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(to_dict(report))), schema)
    reference = peft_deltas(out, minilm)
    config = json.loads((out / "adapter_config.json").read_text())
    assert report.serving is not None
    assert config["use_rslora"] is False
    assert config["lora_alpha"] / config["r"] == pytest.approx(report.serving.scale, rel=1e-12)

    # vLLM: one scale for every layer, and that is PEFT's scale for every layer
    vllm, refused = vllm_deltas(out)
    assert set(vllm) == set(reference)
    wrong = [m for m in reference if not _close(vllm[m], reference[m])]
    assert not wrong, wrong
    check = _check(report, "vllm")
    assert (check.verdict == "refused") == bool(refused), (check, refused)
    assert check.verdict in {"exact", "refused"}

    # llama.cpp: alpha / each tensor's rank
    llama, stops = llama_deltas(out)
    wrong = [m for m in reference if not _close(llama[m], reference[m])]
    check = _check(report, "llama.cpp")
    assert (check.verdict == "refused") == bool(stops), (check, stops)
    if uniform:
        assert len(report.serving.ranks) == 1 and not config["rank_pattern"]
        assert not wrong, wrong
    if check.verdict == "exact":
        assert not wrong, wrong
    elif check.verdict == "differs":
        assert wrong
    if wrong:  # the report names the option that makes it exact
        assert check.fix is not None and "--uniform-rank" in check.fix, check
    else:
        assert check.fix is None or "--uniform-rank" not in check.fix, check


def test_uniform_rank_keeps_every_number(tmp_path: Path, minilm: torch.nn.Module) -> None:
    """--uniform-rank pads with zeros: PEFT reads the same ΔW as without it, and the report's
    parameter count says what is stored."""
    run = OUTPUTS["rslora-energy"]
    plain = run(tmp_path / "plain", False)
    padded = run(tmp_path / "padded", True)
    a, b = peft_deltas(tmp_path / "plain", minilm), peft_deltas(tmp_path / "padded", minilm)
    assert all(np.array_equal(a[m], b[m]) for m in a)
    assert [x.new_rank for x in plain.layers] == [x.new_rank for x in padded.layers]
    assert padded.summary.params_after > plain.summary.params_after
    top = max(x.new_rank for x in padded.layers)
    tensors = _tensors(tmp_path / "padded")
    assert {v.shape[0] for k, v in tensors.items() if ".lora_A" in k} == {top}
