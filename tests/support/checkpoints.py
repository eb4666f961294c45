"""Training runs for trend tests: PEFT checkpoints whose spectra grow or focus with the step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft

GROW = [[1.0], [1.0, 0.5], [1.0, 0.6, 0.5], [1.0, 0.7, 0.6, 0.5]]
FOCUS = [[1.0, 0.9, 0.8, 0.7], [2.0, 0.9, 0.5], [3.0, 0.5, 0.2], [4.0, 0.1]]


def write_checkpoint(
    path: Path, i: int, *, metadata: dict[str, str] | None = None, grow: list[list[float]] = GROW
) -> Path:
    layers = [
        FakeLayer(
            "model.layers.0.q_proj",
            *planted_factors(out=32, inp=24, rank=8, spectrum=np.array(grow[i]), seed=i),
        ),
        FakeLayer(
            "model.layers.0.v_proj",
            *planted_factors(out=32, inp=24, rank=8, spectrum=np.array(FOCUS[i]), seed=10 + i),
        ),
    ]
    return write_peft(path, FakeAdapter(layers, {"lora_alpha": 8}), metadata=metadata)
