"""One Linear (8 → 6) named ``proj``: the smallest model PEFT adapts, and the dense σ of its
saved adapter, for the reader tests that need PEFT's own ``save_pretrained`` layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


class TinyProj(torch.nn.Module):
    """``proj = Linear(8, 6)``; PEFT targets it with ``target_modules=["proj"]``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def proj_sigma(directory: Path, scale: float) -> np.ndarray:
    """Singular values (float64, descending) of ``scale · B·A`` of the adapter in ``directory``."""
    t = load_file(str(directory / "adapter_model.safetensors"))
    a = t["base_model.model.proj.lora_A.weight"].double().numpy()
    b = t["base_model.model.proj.lora_B.weight"].double().numpy()
    return np.linalg.svd(scale * b @ a, compute_uv=False)
