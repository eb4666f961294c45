"""``compress --base`` of a PEFT DoRA adapter: ranks and factors that keep DoRA exact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.commands.base_weights import (
    check_base_options,
    load_magnitudes,
    load_weights,
    map_with_weights,
)
from lora_audit.engine.batches import (
    Warn,
)
from lora_audit.engine.device import EngineOptions
from lora_audit.errors import UsageError
from lora_audit.formats.base_model import (
    BaseMatch,
    BaseModel,
    magnitude_key,
    match_base_weights,
    open_base,
    unmatched_error,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch


@dataclass(frozen=True, kw_only=True)
class DoraCompression:
    """``compress --base`` for a PEFT DoRA adapter: spectra and factors that keep DoRA exact.

    For each DoRA layer, ``sigmas`` holds the singular values of the row-scaled update
    ``X = diag(c)·s·B·A`` (``cᵢ = mᵢ / ‖Wᵢ + s(BA)ᵢ‖``), the part of DoRA's effective weight
    ``W′ = diag(c)·W + X`` that the factors carry; ``compress`` picks ranks on them, so its
    energy and error figures are exact for ``W′``: ``‖W′_k − W′‖_F = √(1 − C(k))·‖X‖_F``.
    :meth:`refactor` gives the truncated layers
    (:func:`lora_audit.linalg.dora.dora_truncated`)
    with their new magnitudes.
    """

    adapter: Adapter
    base: BaseModel
    match: BaseMatch
    engine: EngineOptions
    sigmas: Mapping[str, npt.NDArray[np.float64]]

    @classmethod
    def prepare(
        cls,
        adapter: Adapter,
        base_path: Path,
        *,
        engine: EngineOptions,
        warn: Warn | None = None,
    ) -> DoraCompression | None:
        """Open the base and compute the DoRA layers' spectra; ``None`` without DoRA layers.

        Raises
        ------
        UsageError
            For kohya/LyCORIS DoRA (``dora_scale``), whose normalisation is not PEFT's.
        InputError
            When a DoRA layer has no matching base weight.
        """
        dora = [layer for layer in adapter.layers if layer.dora]
        if not dora:
            if warn is not None:
                warn("--base: the adapter has no DoRA layers; the base weights are not needed")
            return None
        kohya = [layer.name for layer in dora if magnitude_key(layer) is None]
        if kohya:
            raise UsageError(
                f"{adapter.path}: --base handles PEFT DoRA (lora_magnitude_vector); "
                f"{len(kohya)} layer(s) store kohya/LyCORIS dora_scale, e.g. {kohya[0]!r}",
                hint="drop --base and pass --allow-dora to compress B·A with the scales kept",
            )
        check_base_options(base_path, k=None, partial=False)  # torch missing: what to install
        import torch

        subset = replace(adapter, layers=tuple(dora))
        base = open_base(base_path)
        match = match_base_weights(subset, base)
        if match.unmatched:
            raise unmatched_error(base, match, layer_count=len(dora))

        def batch(
            chunk: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor
        ) -> list[npt.NDArray[np.float64]]:
            from lora_audit.linalg.dora import dora_row_scale
            from lora_audit.linalg.spectral import singular_values

            w = load_weights(subset, base, match, chunk, like=b)
            m = load_magnitudes(subset, chunk, like=b)
            scales = [layer.scale for layer in chunk]
            c = dora_row_scale(w, b, a, scales=scales, magnitude=m)
            s = torch.tensor(scales, dtype=b.dtype, device=b.device).reshape(-1, 1, 1)
            sigma = singular_values(c.unsqueeze(-1) * (b * s), a, method="qr").cpu().numpy()
            return [sigma[i] for i in range(len(chunk))]

        sigmas = map_with_weights(subset, batch, engine=engine, warn=warn)
        return cls(adapter=subset, base=base, match=match, engine=engine, sigmas=sigmas)

    def refactor(self, ranks: Mapping[str, int], *, warn: Warn | None = None) -> dict[str, Any]:
        """The truncated DoRA layers as :class:`~lora_audit.formats.writer.NewLayer` objects.

        Each carries its new ``lora_magnitude_vector`` in ``extra`` (stored shape and dtype).
        """
        from lora_audit.formats.safetensors_io import SafetensorsSource, encode_floats
        from lora_audit.formats.writer import new_layer, stored_dtypes

        todo = replace(
            self.adapter, layers=tuple(x for x in self.adapter.layers if x.name in ranks)
        )
        if not todo.layers:
            return {}

        def batch(chunk: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor) -> list[Any]:
            from lora_audit.linalg.dora import dora_truncated

            w = load_weights(todo, self.base, self.match, chunk, like=b)
            m = load_magnitudes(todo, chunk, like=b)
            truncated = dora_truncated(
                w,
                b,
                a,
                scales=[layer.scale for layer in chunk],
                magnitude=m,
                ranks=[ranks[layer.name] for layer in chunk],
            )
            assert todo.source is not None
            out = []
            for layer, (b_k, a_k, m_k) in zip(chunk, truncated, strict=True):
                key = magnitude_key(layer)
                assert key is not None
                assert isinstance(todo.source, SafetensorsSource)
                stored = todo.source.header.tensors[key]
                magnitude = m_k.cpu().double().numpy().reshape(stored.shape)
                out.append(
                    new_layer(
                        layer,
                        b=b_k.cpu().double().numpy(),
                        a=a_k.cpu().double().numpy(),
                        extra={key: encode_floats(magnitude, stored.dtype)},
                        dtypes=stored_dtypes(todo, layer),
                    )
                )
            return out

        return map_with_weights(todo, batch, engine=self.engine, warn=warn)
