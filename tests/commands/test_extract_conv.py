"""extract of a convolution: PEFT's Conv2d LoRA rebuilds the rank-k optimum of the flattened ΔW."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from lora_audit.commands.extract import ExtractOptions, extract

pytestmark = pytest.mark.peft
torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.torch import save_file  # noqa: E402


class Net(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_conv_layer_loads_in_peft_as_the_optimum(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = Net()
    tuned = Net()
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        tuned.conv.weight += 0.1 * torch.randn(8, 6, 3, 3)
    for name, model in (("base", base), ("tuned", tuned)):
        (tmp_path / name).mkdir()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp_path / name / "model.safetensors"))
    report = extract(
        tmp_path / "base",
        tmp_path / "tuned",
        output=tmp_path / "out",
        options=ExtractOptions(rank=3),
    )
    assert [x.name for x in report.layers] == ["conv"] and report.layers[0].rank == 3
    assert report.unchanged == ("head",)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(Net(), str(tmp_path / "out"))
    module = model.base_model.model.conv
    delta = (tuned.conv.weight - base.conv.weight).detach().double().reshape(8, -1).numpy()
    u, s, vh = np.linalg.svd(delta)
    optimum = (u[:, :3] * s[:3]) @ vh[:3]
    got = module.get_delta_weight("default").detach().double().reshape(8, -1).numpy()
    assert np.linalg.norm(got - optimum) <= 1e-6 * np.linalg.norm(delta)
