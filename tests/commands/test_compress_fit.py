"""``compress --fit TARGET``: the output passes ``check --target TARGET``, and every module's ΔW
as the server applies it is PEFT's and the Eckart–Young optimum of the input under the
target's constraints (dense float64 reference).

The adapters are written by PEFT itself on the tiny BERT (tests/support/tiny_bert.py), B drawn
at random (trained-like). The servers' rules are reproduced from their source, cited on each
function; no server code is copied or run.
"""

from __future__ import annotations

import json
import math
import shlex
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_bert import tiny_base
from typer.testing import CliRunner

from lora_audit.cli import app

pytestmark = pytest.mark.peft
peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

runner = CliRunner()
SCHEMA = Path(__file__).parents[2] / "src" / "lora_audit" / "report" / "schema"
TARGETS = ["query", "value", "intermediate.dense"]
#: Only the target rules in ``check``: the waste rules off.
QUIET_POLICY = ("--max-waste", "1", "--min-rank-used", "0")
ADAPTERS: dict[str, dict[str, Any]] = {
    "r64": {"r": 64, "lora_alpha": 32},
    # per-layer scales: rsLoRA's √r, a rank_pattern and an alpha_pattern
    "rslora-patterns": {
        "r": 32,
        "lora_alpha": 16,
        "use_rslora": True,
        "rank_pattern": {"value": 8},
        "alpha_pattern": {"intermediate.dense": 64},
    },
}


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, a repository root, so no policy file from outside is found."""
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(name: str, **config: Any) -> str:
    torch.manual_seed(1)
    lora = peft.LoraConfig(init_lora_weights=False, target_modules=TARGETS, **config)
    peft.get_peft_model(tiny_base(), lora).save_pretrained(name)
    return name


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--device", "cpu"])
    return result.exit_code, result.stdout, result.stderr


def check(adapter: str, target: str) -> tuple[int, dict[str, dict[str, Any]]]:
    code, out, err = cli("check", adapter, "--target", target, "-f", "json", *QUIET_POLICY)
    assert code in (0, 1), err
    return code, {f["rule"]: f for f in json.loads(out)["findings"]}


# ---------------------------------------------------------------------------------------------
# The references: PEFT itself, the servers' rules, Eckart–Young


def peft_deltas(directory: str) -> dict[str, np.ndarray]:
    """Every module's ``get_delta_weight`` as PEFT loads the adapter (float64)."""
    from peft.tuners.lora import LoraLayer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(tiny_base(), directory)
    assert not [w for w in caught if "key" in str(w.message).lower()]
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            module.lora_A.double()
            module.lora_B.double()
            delta = module.get_delta_weight("default").detach().numpy()
            out[name.removeprefix("base_model.model.")] = delta
    return out


def _factors(directory: str) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    config = json.loads((Path(directory) / "adapter_config.json").read_text())
    tensors = safetensors_torch.load_file(str(Path(directory) / "adapter_model.safetensors"))
    factors = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            module = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
            factors[module] = (b.double().numpy(), a.double().numpy())
    return config, factors


def vllm_deltas(directory: str, max_lora_rank: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """ΔW of every module as vLLM applies it, and what vLLM refuses (empty: it loads).

    vllm-project/vllm ``vllm/lora/peft_helper.py``, ``PEFTHelper``: ``from_dict`` keeps only
    its own fields, so ``rank_pattern`` and ``alpha_pattern`` are dropped; ``validate_legal``
    raises for ``modules_to_save`` and ``use_dora`` (``_validate_features``), for
    ``r > lora_config.max_lora_rank`` ("LoRA rank {r} is greater than max_lora_rank …") and
    for a ``bias`` other than ``"none"``; ``__post_init__``: ``vllm_lora_scaling_factor =
    lora_alpha / math.sqrt(r)`` with rsLoRA, else ``lora_alpha / r``. ``vllm/lora/
    lora_model.py`` ``LoRAModel.from_lora_tensors``: every module gets
    ``LoRALayerWeights.from_config(module_name, peft_helper)`` — that one scaling — and its
    tensors as stored; ``LoRALayerWeights.optimize``: ``lora_b *= scaling``. ``vllm/lora/
    layers/base_linear.py`` ``set_lora`` copies ``lora_a`` into
    ``lora_a_stacked[0][index, 0, :lora_a.shape[0], :]``, ``max_lora_rank`` rows wide: a
    module of larger rank does not fit.
    """
    config, factors = _factors(directory)
    refused = [
        *(["modules_to_save"] if config.get("modules_to_save") else []),
        *(["DoRA"] if config.get("use_dora") else []),
        *(["bias"] if config.get("bias", "none") != "none" else []),
        *([f"r={config['r']}"] if config["r"] > max_lora_rank else []),
        *(m for m, (_, a) in factors.items() if a.shape[0] > max_lora_rank),
    ]
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return {m: (scaling * b) @ a for m, (b, a) in factors.items()}, refused


def llama_deltas(directory: str) -> dict[str, np.ndarray]:
    """ΔW of every module as llama.cpp applies it: ggml-org/llama.cpp
    ``convert_lora_to_gguf.py`` keeps only ``lora_alpha`` of adapter_config.json (no rsLoRA,
    no patterns; stored as float32); ``src/llama-adapter.h``
    ``llama_adapter_lora_weight::get_scale``: ``alpha / rank`` with ``rank = b->ne[0]``, the
    rank of that module's tensors."""
    config, factors = _factors(directory)
    alpha = float(np.float32(config["lora_alpha"]))
    return {m: (alpha / b.shape[1] * b) @ a for m, (b, a) in factors.items()}


def eckart_young(delta: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """The best rank-k approximation of ``delta`` and the fraction of ‖ΔW‖F² it keeps."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k], float((s[:k] ** 2).sum() / (s**2).sum())


def close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-6) -> bool:
    """Equal to float32 storage: ‖a − b‖F ≤ rtol·‖b‖F."""
    return float(np.linalg.norm(a - b)) <= rtol * float(np.linalg.norm(b))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_fit_vllm_passes_check_and_is_the_optimum_under_vllms_rule(name: str) -> None:
    import jsonschema

    adapter = write(name, **ADAPTERS[name])
    code, rules = check(adapter, "vllm")
    assert code == 1 and "vllm-max-lora-rank" in rules
    if name == "rslora-patterns":
        assert "vllm-one-scale" in rules  # value (r=8) is at another scale
    fit = f"lora-audit compress {name} -o {name}-vllm16 --fit vllm:max-lora-rank=16"
    assert {f["fix"] for f in rules.values()} == {fit}

    code, _, err = cli(*shlex.split(fit)[1:], "-f", "json", "--report", "fit.json")
    assert code == 0, err
    assert check(f"{name}-vllm16", "vllm") == (0, {})
    report = json.loads(Path("fit.json").read_text())
    jsonschema.validate(report, json.loads((SCHEMA / "compress.schema.json").read_text()))
    assert report["settings"]["fit"] == "vllm:max-lora-rank=16"
    with safetensors_torch.safe_open(f"{name}-vllm16/adapter_model.safetensors", "pt") as f:
        assert (f.metadata() or {})["lora_audit.fit"] == "vllm:max-lora-rank=16"

    before = peft_deltas(name)
    served, refused = vllm_deltas(f"{name}-vllm16", 16)
    assert refused == []
    loaded = peft_deltas(f"{name}-vllm16")
    layers = {x["name"]: x for x in report["layers"]}
    assert set(served) == set(loaded) == set(before) == set(layers)
    kept = total = 0.0
    for module, delta in before.items():
        k = min(layers[module]["rank"], 16)
        best, energy = eckart_young(delta, k)
        assert layers[module]["new_rank"] == k
        assert layers[module]["energy_kept"] == pytest.approx(energy, rel=1e-9)
        assert close(served[module], best), module
        assert close(loaded[module], best), module
        kept, total = kept + energy * (delta**2).sum(), total + (delta**2).sum()
    assert report["summary"]["energy_kept"] == pytest.approx(kept / total, rel=1e-9)
    assert 0.5 < report["summary"]["energy_kept"] < 1


def test_fit_llama_cpp_pads_to_one_rank_and_keeps_every_number() -> None:
    """llama.cpp scales each module by lora_alpha / its own rank: the fit pads every layer to
    one rank (zero rows and columns, exact) and truncates nothing."""
    name = write("patterns", **ADAPTERS["rslora-patterns"])
    code, rules = check(name, "llama.cpp")
    assert code == 1 and set(rules) == {"llama.cpp-scale"}
    fix = rules["llama.cpp-scale"]["fix"]
    assert fix == "lora-audit compress patterns -o patterns-llama.cpp --fit llama.cpp"
    code, out, err = cli(*shlex.split(fix)[1:])
    assert code == 0, err
    assert "fit         llama.cpp: keeps 1.0000 of the adapter's ‖ΔW‖F² (per layer above)" in out
    assert check("patterns-llama.cpp", "llama.cpp") == (0, {})
    assert check("patterns-llama.cpp", "vllm:max-lora-rank=32") == (0, {})

    before, served = peft_deltas(name), llama_deltas("patterns-llama.cpp")
    loaded = peft_deltas("patterns-llama.cpp")
    assert all(close(served[m], d) and close(loaded[m], d) for m, d in before.items())
    _, factors = _factors("patterns-llama.cpp")
    assert {b.shape[1] for b, _ in factors.values()} == {32}


def test_fit_peft_keeps_what_peft_loads() -> None:
    """PEFT loads modules_to_save; --fit peft truncates nothing and writes one scale."""
    name = write("saved", r=8, lora_alpha=16, modules_to_save=["pooler.dense"])
    code, _, err = cli("compress", name, "-o", "saved-peft", "--fit", "peft")
    assert code == 0, err
    before, after = peft_deltas(name), peft_deltas("saved-peft")
    assert all(close(after[m], d) for m, d in before.items())
    assert check("saved-peft", "peft") == (0, {})


@pytest.mark.parametrize(
    ("config", "target", "says"),
    [
        ({"r": 8, "lora_alpha": 16, "use_dora": True}, "vllm", "vLLM refuses adapters with DoRA"),
        ({"r": 8, "lora_alpha": 16, "use_dora": True}, "llama.cpp", "with DoRA"),
        (
            {"r": 8, "lora_alpha": 16, "modules_to_save": ["pooler.dense"]},
            "vllm",
            "modules_to_save (pooler.dense)",
        ),
        (
            {"r": 8, "lora_alpha": 16, "modules_to_save": ["pooler.dense"]},
            "llama.cpp",
            "modules_to_save (pooler.dense)",
        ),
        ({"r": 8, "lora_alpha": 16, "bias": "lora_only"}, "vllm", "bias 'lora_only'"),
    ],
)
def test_what_no_truncation_removes_is_refused_in_one_line(
    config: dict[str, Any], target: str, says: str
) -> None:
    name = write("a", **config)
    code, out, err = cli("compress", name, "-o", "out", "--fit", target)
    assert code == 2 and out == ""
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not Path("out").exists()


def test_a_rule_with_fit_is_clamped_or_refused() -> None:
    name = write("r64", **ADAPTERS["r64"])
    code, _, err = cli("compress", name, "-o", "o1", "--fit", "vllm", "--rank", "32")
    assert code == 2 and "--rank 32 contradicts --fit vllm:max-lora-rank=16" in err
    code, _, err = cli("compress", name, "-o", "o2", "--fit", "vllm:max-lora-rank=8", "-e", "0.999")
    assert code == 0, err
    assert check("o2", "vllm:max-lora-rank=8") == (0, {})
    code, _, err = cli("compress", name, "-o", "o3", "--fit", "tgi")
    assert code == 2 and "vllm:max-lora-rank=N" in err


def test_the_api_fits_as_the_cli_does() -> None:
    import lora_audit

    name = write("r64", **ADAPTERS["r64"])
    report = lora_audit.compress(name, output="api-out", fit="vllm", device="cpu")
    assert report.settings.fit == "vllm:max-lora-rank=16"
    assert {x.new_rank for x in report.layers} == {16}
    assert report.summary.energy_kept == pytest.approx(1 - report.summary.relative_error**2)
    assert check("api-out", "vllm") == (0, {})


def test_fit_peft_truncates_dora_only_with_the_base() -> None:
    name = write("dora", r=8, lora_alpha=16, use_dora=True)
    for extra in ((), ("--allow-dora",)):
        code, out, err = cli("compress", name, "-o", "out", "--fit", "peft", *extra)
        assert code == 2 and out == "" and "--base BASE" in err, err
    code, out, err = cli(
        "compress", name, "-o", "plan", "--fit", "peft", "--rank", "4", "--dry-run"
    )
    assert code == 2 and "--base BASE" in err  # the same answer for a plan
    assert not Path("out").exists() and not Path("plan").exists()


def test_dry_run_plans_the_fit_and_writes_nothing() -> None:
    name = write("r64", **ADAPTERS["r64"])
    code, out, err = cli("compress", name, "--fit", "vllm", "--dry-run", "-f", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dry_run"] and report["settings"]["fit"] == "vllm:max-lora-rank=16"
    assert {x["new_rank"] for x in report["layers"]} == {16}
    assert sorted(p.name for p in Path().iterdir()) == [".git", "r64"]
