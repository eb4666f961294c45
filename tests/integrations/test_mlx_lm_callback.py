"""``LoraAuditMlxCallback`` in a real ``mlx_lm.tuner.trainer.train`` run (CPU mlx, tiny Llama).

Each audit at a save step must equal ``lora_audit.inspect`` of the checkpoint mlx-lm saved at
that step (to 1e-10 relative), the final audit that of ``adapters.safetensors``; the metrics
reach the wrapped callback; ``lora-audit trend`` reads the trend file the callback wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from nested import assert_close  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import lora_audit  # noqa: E402
from lora_audit.cli import app  # noqa: E402
from lora_audit.errors import InputError  # noqa: E402
from lora_audit.integrations.mlx_lm import (  # noqa: E402
    LoraAuditMlxCallback,
    inspect_mlx_model,
)

PARAMS = {"rank": 4, "scale": 2.0, "dropout": 0.0}
#: What the report's file fields say, not the adapter.
FILE_FIELDS = ("path", "tensor_file", "file_bytes", "metadata")


def tiny_model() -> Any:
    from mlx_lm.models import llama
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=16,
        num_hidden_layers=2,
        intermediate_size=24,
        num_attention_heads=2,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=32,
    )
    model = llama.Model(args)
    model.freeze()
    linear_to_lora_layers(model, 2, dict(PARAMS))
    return model


def same(live: Any, saved: Any) -> None:
    a, b = live.to_dict(), saved.to_dict()
    for report in (a, b):
        for key in FILE_FIELDS:
            report["adapter"].pop(key)
    assert_close(a, b)
    assert live.summary.advice == saved.summary.advice


class Recorder:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        self.reports.append(dict(info))

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        pass


def test_a_real_mlx_lm_run_audits_what_it_saves(tmp_path: Path) -> None:
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.utils import save_config

    model = tiny_model()
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": PARAMS}
    save_config(config, tmp_path / "adapter_config.json")  # as mlx_lm.lora does first
    args = TrainingArgs(
        batch_size=4,
        iters=8,
        steps_per_report=2,
        steps_per_save=4,
        steps_per_eval=1000,
        max_seq_length=32,
        adapter_file=str(tmp_path / "adapters.safetensors"),
    )
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 32, 12).tolist(), 0) for _ in range(16)]
    recorder = Recorder()
    callback = LoraAuditMlxCallback(model, args=args, wrapped_callback=recorder)
    train(model, optim.Adam(learning_rate=1e-2), data, None, args, training_callback=callback)

    # the metrics reached the wrapped callback at every report, beside mlx-lm's own values
    assert [r["iteration"] for r in recorder.reports] == [2, 4, 6, 8]
    assert all("train_loss" in r and "lora_audit/stable_rank_mean" in r for r in recorder.reports)
    assert [step for step, _ in callback.run.history] == [2, 4, 6, 8]

    # each trend point equals inspect of the checkpoint mlx-lm saved at that step
    assert [step for step, _ in callback.run.checkpoints] == [4, 8]
    for step, live in callback.run.checkpoints:
        saved_file = tmp_path / f"{step:07d}_adapters.safetensors"
        assert live.adapter.path == str(saved_file)
        same(live, lora_audit.inspect(saved_file, device="cpu"))
    # the final audit (step 8, also a save step) is that of the final adapters.safetensors
    assert callback.run.last is callback.run.checkpoints[-1][1]
    final = lora_audit.inspect(tmp_path / "adapters.safetensors", device="cpu")
    assert_close(callback.run.last.to_dict()["layers"], final.to_dict()["layers"])
    assert len(callback.run.last.layers) == 14
    assert all(layer.spectral_norm > 0 for layer in callback.run.last.layers)

    # `lora-audit trend` reads the trend file the callback wrote
    shown = CliRunner().invoke(
        app, ["trend", str(tmp_path / "lora-audit" / "trend.json"), "-f", "json"]
    )
    assert shown.exit_code == 0, shown.stderr
    trend = json.loads(shown.stdout)
    assert [c["step"] for c in trend["checkpoints"]] == [4, 8]
    for point, (_, live) in zip(trend["checkpoints"], callback.run.checkpoints, strict=True):
        assert point["mean_stable_rank"] == live.summary.mean_stable_rank
    advice = (tmp_path / "lora-audit" / "advice.txt").read_text().splitlines()
    assert advice == list(callback.run.last.summary.advice)


def test_a_module_scale_other_than_the_configs_is_refused_by_name() -> None:
    model = tiny_model()
    report = inspect_mlx_model(model)  # no config: the modules' one scale
    assert {layer.scale for layer in report.layers} == {2.0}
    other = {"fine_tune_type": "lora", "lora_parameters": {**PARAMS, "scale": 4.0}}
    said = r"_proj applies scale 2, but the config says lora_parameters.scale = 4.0"
    with pytest.raises(InputError, match=said):
        inspect_mlx_model(model, other)
    model.model.layers[0].self_attn.q_proj.scale = 3.0
    with pytest.raises(InputError, match="2 different scales"):
        inspect_mlx_model(model)


def test_a_model_without_lora_is_refused() -> None:
    from mlx_lm.models import llama

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=16,
        num_hidden_layers=1,
        intermediate_size=24,
        num_attention_heads=2,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=32,
    )
    with pytest.raises(InputError, match="no mlx-lm LoRA modules"):
        inspect_mlx_model(llama.Model(args))


@pytest.mark.parametrize("every", [0, 2.5, True])
def test_every_n_steps_must_be_a_positive_int(every: Any) -> None:
    with pytest.raises(ValueError, match="must be a positive int"):
        LoraAuditMlxCallback(object(), every_n_steps=every)
