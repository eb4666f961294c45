"""Inspect and check reports built by hand, so renderer tests can assert exact text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from lora_audit.commands.adapter_info import TOOL
from lora_audit.report import AdapterInfo, InspectReport, LayerReport, Settings, Summary


def layer_report(
    name: str, *, rank: int, k: int, out: int = 8, inp: int = 8, scale_source: str = "config"
) -> LayerReport:
    """A linear layer of rank ``rank`` whose ΔW has ``k`` equal singular values."""
    return LayerReport(
        name=name,
        kind="linear",
        shape=(out, inp),
        weight_shape=(out, inp),
        rank=rank,
        alpha=16.0,
        scale=16.0 / rank,
        dtype="F32",
        dora=False,
        singular_values=(1.0,) * k + (0.0,) * (rank - k),
        frobenius_norm=float(k) ** 0.5,
        spectral_norm=1.0 if k else 0.0,
        stable_rank=float(k),
        effective_rank=float(k),
        energy=tuple(min(1.0, (i + 1) / k) if k else 0.0 for i in range(rank)),
        energy_rank=k,
        recommended_rank=k,
        wasted_rank=rank - k,
        params=rank * (out + inp),
        params_after=k * (out + inp),
        untrained=k == 0,
        scale_source=scale_source,
    )


def inspect_report(
    path: str, layers: Sequence[LayerReport], *, recommended_rank: int, energy: float = 0.99
) -> InspectReport:
    """An inspect report whose summary is consistent with ``layers``."""
    params = sum(layer.params for layer in layers)
    params_after = sum(layer.params_after for layer in layers)
    nominal = max(layer.rank for layer in layers)
    return InspectReport(
        tool=TOOL,
        adapter=AdapterInfo(
            path=path,
            tensor_file=f"{path}/adapter_model.safetensors",
            format="peft",
            base_model="tiny-test-model",
            layer_count=len(layers),
            dtypes=("F32",),
            rank=nominal,
            lora_alpha=16.0,
            use_rslora=False,
            use_dora=False,
            modules_to_save=(),
            passthrough_tensors=0,
            file_bytes=1000,
            scale_sources=dict(sorted(Counter(layer.scale_source for layer in layers).items())),
        ),
        settings=Settings(energy=energy, coverage=0.9, device="cpu", method="auto"),
        layers=tuple(layers),
        summary=Summary(
            layer_count=len(layers),
            untrained_layers=tuple(layer.name for layer in layers if layer.untrained),
            nominal_rank=nominal,
            recommended_rank=recommended_rank,
            lora_alpha=16.0 * recommended_rank / nominal,
            rank_pattern={},
            alpha_pattern={},
            layers_covered=len(layers),
            params=params,
            params_after=params_after,
            params_retrain=recommended_rank
            * sum(layer.shape[0] + layer.shape[1] for layer in layers),
            wasted_fraction=(params - params_after) / params,
            mean_stable_rank=1.0,
            max_stable_rank=1.0,
            top_wasters=(),
            advice=(),
        ),
    )


def lean_report(path: str = "adapters/lean") -> InspectReport:
    """Two rank-4 layers that use 4 and 3 of their rank: 12.5% wasted."""
    layers = [
        layer_report("model.layers.0.q_proj", rank=4, k=4),
        layer_report("model.layers.1.q_proj", rank=4, k=3),
    ]
    return inspect_report(path, layers, recommended_rank=4)


def wasteful_report(path: str = "adapters/wasteful") -> InspectReport:
    """Rank 16: one layer uses 2, one 1, one is untrained: 93.75% wasted."""
    layers = [
        layer_report("model.layers.0.q_proj", rank=16, k=2),
        layer_report("model.layers.1.q_proj", rank=16, k=1),
        layer_report("model.layers.2.q_proj", rank=16, k=0),
    ]
    return inspect_report(path, layers, recommended_rank=2)
