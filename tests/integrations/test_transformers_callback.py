"""``LoraAuditCallback`` in real ``transformers.Trainer`` runs of a tiny Llama built from a config.

The metrics are read back from the TensorBoard event file the run wrote; the trend file is
compared with ``lora-audit trend`` on the checkpoints the Trainer saved; the final in-memory
audit with ``lora_audit.inspect`` of the last checkpoint; the early warnings are planted (a
frozen B, a σ₁ jump) and must stay silent on the normal run.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import torch
import transformers
from nested import assert_close
from peft import LoraConfig, get_peft_model
from tiny_llama import tiny_llama

import lora_audit
from lora_audit.decisions.training_alerts import AlertRules
from lora_audit.integrations.transformers import LoraAuditCallback
from lora_audit.report.schema_bundle import load as load_schema

pytestmark = pytest.mark.peft

METRICS = (
    "stable_rank_mean",
    "stable_rank_max",
    "energy_rank_median",
    "energy_rank_p90",
    "wasted_fraction",
    "sigma1_max",
    "delta_w_norm",
    "untrained_layers",
)
#: Tight enough for an 8-step run: a normal interval grows σ₁ by well under 3×.
RULES = AlertRules(untrained_after_steps=2, spike_after_steps=4, spike_factor=3.0)


def peft_model(r: int = 8) -> Any:
    base = tiny_llama()
    return get_peft_model(base, LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "v_proj"]))


def dataset(n: int = 48) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 64, (16,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def trainer_for(model: Any, out: Path, **kwargs: Any) -> transformers.Trainer:
    callbacks = kwargs.pop("callbacks", None)
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=kwargs.pop("max_steps"),
        learning_rate=2e-3,
        logging_steps=4,
        save_steps=4,
        save_strategy="steps",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **kwargs,
    )
    return transformers.Trainer(
        model=model, args=args, train_dataset=dataset(), callbacks=callbacks
    )


@pytest.fixture
def messages() -> Iterator[list[str]]:
    """What the callback tells the Trainer's logger."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "lora-audit" in record.getMessage():
                seen.append(record.getMessage())

    handler = Keep(level=logging.INFO)
    log = logging.getLogger("transformers.trainer")
    log.addHandler(handler)
    try:
        yield seen
    finally:
        log.removeHandler(handler)


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of every event file below ``folder``: tag → step → value."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    files = list(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file below {folder}"
    for path in files:
        data, i = path.read_bytes(), 0
        while i < len(data):  # TFRecord: length (u64), its CRC, the record, its CRC
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def test_a_normal_run_logs_to_tensorboard_writes_the_trend_and_stays_silent(
    tmp_path: Path, messages: list[str]
) -> None:
    out = tmp_path / "run"
    callback = LoraAuditCallback(every_n_steps=2, rules=RULES, device="cpu")
    trainer = trainer_for(
        peft_model(), out, report_to=["tensorboard"], callbacks=[callback], max_steps=8
    )
    trainer.train()

    # 1. every metric reached the TensorBoard integration (which files logs under train/),
    # at every audited step, and the Trainer's own loss log is still there
    scalars = tensorboard_scalars(out)
    for name in METRICS:
        assert set(scalars[f"train/lora_audit/{name}"]) == {2, 4, 6, 8}, name
    assert set(scalars["train/loss"]) == {4, 8}
    last = callback.run.history[-1][1]
    top = scalars["train/lora_audit/sigma1_max"][8]
    assert top == pytest.approx(last["lora_audit/sigma1_max"], rel=1e-6)
    assert scalars["train/lora_audit/untrained_layers"][2] == 0
    assert 0 < scalars["train/lora_audit/stable_rank_mean"][8] <= 8
    assert any("lora_audit/wasted_fraction" in e for e in trainer.state.log_history)

    # 2. the trend file is what `lora-audit trend` reports for the checkpoints saved
    trend = json.loads((out / "lora-audit" / "trend.json").read_text())
    cli = subprocess.run(
        [sys.executable, "-m", "lora_audit", "trend", str(out), "-f", "json", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
    )
    reference = json.loads(cli.stdout)
    assert [c["step"] for c in trend["checkpoints"]] == [4, 8]
    for ours, theirs in zip(trend["checkpoints"], reference["checkpoints"], strict=True):
        assert_close(without(ours, "tensor_file"), without(theirs, "tensor_file"))
        assert ours["tensor_file"] == "<in memory: adapter 'default'>"
    for key in ("layers", "findings", "status", "settings", "drifting_layers"):
        assert_close(trend[key], reference[key], where=key)

    # 2b. `lora-audit trend` reads the callback's own file: schema-valid, and its values are
    # those of the in-memory audits of the checkpoints
    jsonschema.validate(trend, load_schema("trend.schema.json"))
    written = str(out / "lora-audit" / "trend.json")
    read_back = subprocess.run(
        [sys.executable, "-m", "lora_audit", "trend", written, "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    again = json.loads(read_back.stdout)
    assert without(again, "tool") == without(trend, "tool")
    audits = callback.run.checkpoints
    assert [c["step"] for c in again["checkpoints"]] == [step for step, _ in audits]
    for point, (_, report) in zip(again["checkpoints"], audits, strict=True):
        assert point["mean_stable_rank"] == report.summary.mean_stable_rank
        assert point["wasted_fraction"] == report.summary.wasted_fraction
        assert point["untrained_layers"] == len(report.summary.untrained_layers)
    for layer in again["layers"]:
        assert layer["stable_rank"] == [
            next(x.stable_rank for x in r.layers if x.name == layer["name"]) for _, r in audits
        ]
        assert layer["frobenius_norm"] == [
            next(x.frobenius_norm for x in r.layers if x.name == layer["name"]) for _, r in audits
        ]

    # 3. the last in-memory audit equals inspect of the adapter saved at that step
    step, live = callback.run.checkpoints[-1]
    saved = lora_audit.inspect(out / f"checkpoint-{step}", device="cpu")
    assert live.summary.advice == saved.summary.advice
    assert_close(live.to_dict()["layers"], saved.to_dict()["layers"])
    assert_close(live.to_dict()["summary"], saved.to_dict()["summary"])
    assert (out / "lora-audit" / "advice.txt").read_text().splitlines() == list(
        callback.run.last.summary.advice
    )

    # 4. nothing to warn about in a normal run
    assert callback.run.fired == set()
    assert [m for m in messages if "advice" not in m] == []


def test_planted_untrained_layer_and_spike_warn_once_each_through_attach(
    tmp_path: Path, messages: list[str]
) -> None:
    model = peft_model()
    frozen = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    dict(model.named_parameters())[frozen].requires_grad_(False)  # B stays 0: never trains

    class Spike(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 7:
                layer = kw["model"].base_model.model.model.layers[0].self_attn.q_proj
                with torch.no_grad():
                    layer.lora_B["default"].weight.mul_(20.0)

    trainer = trainer_for(model, tmp_path / "run", callbacks=[Spike()], max_steps=8)
    callback = LoraAuditCallback(every_n_steps=2, rules=RULES, device="cpu").attach(trainer)
    trainer.train()

    warned = [m for m in messages if "advice" not in m]
    assert len(warned) == 2, warned
    untrained, spike = warned
    assert "1 of 4 LoRA layers are still untrained (ΔW = 0) after 2 steps" in untrained
    assert "model.layers.1.self_attn.v_proj" in untrained and "lora_B frozen" in untrained
    assert "σ₁ of model.layers.0.self_attn.q_proj jumped" in spike
    assert "between steps 6 and 8" in spike
    assert callback.run.fired == {"untrained", "spike"}
    logged = [e for e in trainer.state.log_history if "lora_audit/untrained_layers" in e]
    assert [e["step"] for e in logged] == [2, 4, 6, 8]
    assert all(e["lora_audit/untrained_layers"] == 1 for e in logged)


def test_zero3_placeholders_switch_the_audit_off_and_are_never_untrained(
    tmp_path: Path, messages: list[str]
) -> None:
    model = peft_model()
    for name, param in model.named_parameters():
        if "lora_" in name:  # what DeepSpeed ZeRO-3 leaves outside a gather
            param.ds_shape, param.ds_numel = tuple(param.shape), param.numel()
            param.data = torch.empty(0, dtype=param.dtype)
    callback = LoraAuditCallback(every_n_steps=1, rules=RULES, device="cpu")
    args = SimpleNamespace(output_dir=str(tmp_path))
    control = SimpleNamespace(should_save=False)
    callback.on_train_begin(args, SimpleNamespace(is_world_process_zero=True), control)
    for step in (1, 2, 3):
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        callback.on_step_end(args, state, control, model=model)
        callback.on_save(args, state, control, model=model)
    callback.on_train_end(args, state, control, model=model)
    off = [m for m in messages if "audit is off" in m]
    assert len(off) == 1 and "DeepSpeed ZeRO-3" in off[0] and "placeholder" in off[0]
    assert not any("untrained" in m for m in messages)
    assert callback.run.history == [] and not (tmp_path / "lora-audit").exists()


def test_only_the_main_process_audits(tmp_path: Path) -> None:
    callback = LoraAuditCallback(every_n_steps=1, device="cpu")
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=1, is_world_process_zero=False)
    model = peft_model()
    control = SimpleNamespace(should_save=True)
    callback.on_train_begin(args, state, control)
    callback.on_step_end(args, state, control, model=model)
    callback.on_save(args, state, control, model=model)
    callback.on_train_end(args, state, control, model=model)
    assert callback.run.history == [] and not (tmp_path / "lora-audit").exists()


def test_every_n_steps_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LoraAuditCallback(every_n_steps=0)
    with pytest.raises(TypeError, match="must be an int"):
        LoraAuditCallback(every_n_steps=2.5)  # type: ignore[arg-type]


def test_fsdp_switches_the_audit_off_from_the_start(tmp_path: Path, messages: list[str]) -> None:
    callback = LoraAuditCallback(every_n_steps=1, device="cpu")
    args = SimpleNamespace(output_dir=str(tmp_path), fsdp=["full_shard"])
    state = SimpleNamespace(global_step=1, is_world_process_zero=True)
    control = SimpleNamespace(should_save=True)
    callback.on_train_begin(args, state, control)
    callback.on_step_end(args, state, control, model=peft_model())
    off = [m for m in messages if "audit is off" in m]
    assert len(off) == 1 and "TrainingArguments.fsdp is set" in off[0]
    assert callback.run.history == []
