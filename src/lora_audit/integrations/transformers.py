"""``LoraAuditCallback``: audit a PEFT LoRA adapter while a transformers ``Trainer`` trains it.

Every ``every_n_steps`` optimizer steps the callback audits the live adapter
(:func:`lora_audit.inspect_model`: the factors in memory, no gradient, the model left as it
was) on the main process only, and logs the metrics of
:func:`~lora_audit.integrations.run_audit.run_metrics` under ``lora_audit/…``.

How the metrics reach every ``report_to`` integration
    The Trainer builds its callback list as *defaults, integrations, then the callbacks given*,
    and hands one ``logs`` dict to each in that order: a callback that adds to ``logs`` in
    ``on_log`` does so after TensorBoard, W&B, MLflow… have written it. So the callback logs
    its own entry through ``Trainer.log`` (which reaches every callback, and
    ``state.log_history``). It needs the Trainer: :meth:`LoraAuditCallback.attach` gives it
    (``LoraAuditCallback().attach(trainer)``); passed in ``callbacks=[…]`` it finds it when
    training begins, as the ``Trainer`` whose callback handler is calling it (read from the
    calling frames). If neither works, it says so once and keeps the metrics in
    :attr:`LoraAuditCallback.run` only.

Checkpoints and the end of the run
    At each ``on_save`` the adapter as saved is audited (one trend point), and
    ``<output_dir>/lora-audit/`` gets ``trend.json`` (what ``lora-audit trend output_dir -f
    json`` reports for the checkpoints; ``lora-audit trend output_dir/lora-audit/trend.json``
    reads it back), ``report.json`` (the latest audit) and
    ``advice.txt``; at ``on_train_end`` once more, with the final audit.

Distributed training
    Only the world's main process audits and writes; the others return at once and no
    collective is started, so every rank takes the same path and none can hang. Factors that
    the model holds sharded (DeepSpeed ZeRO-3 placeholders, FSDP2 ``DTensor``) are not
    gathered: the audit is switched off for the run with one warning naming the setting,
    and such a layer is never reported as untrained.

Early warnings (once each, through the ``transformers.trainer`` logger) are those of
:mod:`lora_audit.decisions.training_alerts`, with the defaults of
:class:`~lora_audit.decisions.training_alerts.AlertRules`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal

from transformers import Trainer, TrainerCallback

from lora_audit.decisions.training_alerts import AlertRules
from lora_audit.errors import LoraAuditError
from lora_audit.integrations.peft_live import ShardedFactors
from lora_audit.integrations.run_audit import RunAudit
from lora_audit.report import InspectReport

__all__ = ["AlertRules", "LoraAuditCallback"]

#: The Trainer's own logger: its level follows ``TrainingArguments.log_level``.
logger = logging.getLogger("transformers.trainer")

#: The one warning when the factors are sharded (``why``: what says so).
_OFF = (
    "lora-audit: the audit is off for this run: {why}. Under DeepSpeed ZeRO-3 "
    "(zero_optimization.stage 3) or FSDP the factors are sharded and the callback does not "
    "gather them; audit the saved checkpoints with `lora-audit trend OUTPUT_DIR` (under ZeRO-3 "
    "save with stage3_gather_16bit_weights_on_model_save: true)"
)

#: How many calling frames are searched for the Trainer.
_FRAMES = 12


class LoraAuditCallback(TrainerCallback):  # type: ignore[misc]
    """Audit the adapter during training; log ``lora_audit/…`` metrics, warnings and a trend.

    Parameters
    ----------
    every_n_steps
        Audit every this many optimizer steps (default 100).
    energy, coverage, device, method
        As for :func:`lora_audit.inspect`.
    adapter_name
        The adapter to audit; ``None``: the active one.
    per_layer
        Also log each layer's stable rank, energy rank and σ₁.
    rules
        When the early warnings fire (:class:`AlertRules`: untrained after 50 steps; a σ₁
        jump of more than 3× in one interval after step 200; energy in ≤ r/4 after step 200).
    write_files
        Write ``<output_dir>/lora-audit/`` at each save and at the end.

    Attributes
    ----------
    run
        The run's audit: ``history`` of metrics, ``checkpoints``, ``last`` report, ``fired``.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        *,
        energy: float = 0.99,
        coverage: float | None = None,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        method: Literal["auto", "qr", "gram"] = "auto",
        adapter_name: str | None = None,
        per_layer: bool = False,
        rules: AlertRules | None = None,
        write_files: bool = True,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int):
            raise TypeError(f"every_n_steps = {every_n_steps!r} must be an int")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps = {every_n_steps} must be at least 1")
        self.every_n_steps = every_n_steps
        self.energy, self.coverage, self.device, self.method = energy, coverage, device, method
        self.adapter_name = adapter_name
        self.write_files = write_files
        self.rules = rules or AlertRules()
        self.per_layer = per_layer
        self.run = RunAudit(rules=self.rules, per_layer=per_layer)
        self._trainer: Any = None
        self._off = False
        self._told: set[str] = set()
        self._cache: tuple[int, str | None, InspectReport] | None = None

    def attach(self, trainer: Any) -> LoraAuditCallback:
        """Log through ``trainer`` (and add this callback to it if it is not there yet)."""
        self._trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    # --- Trainer events ---------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run = RunAudit(rules=self.rules, per_layer=self.per_layer)
        self._off, self._cache = False, None
        if self._trainer is None:
            self._trainer = _calling_trainer(self)
        if getattr(args, "fsdp", None) and state.is_world_process_zero:
            self._off = True
            self._tell("sharded", _OFF.format(why="TrainingArguments.fsdp is set"))
        if self._trainer is None and state.is_world_process_zero:
            self._tell(
                "trainer",
                "lora-audit: LoraAuditCallback could not find its Trainer, so its metrics "
                "reach no report_to integration; use LoraAuditCallback(...).attach(trainer)",
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        if not state.is_world_process_zero or step % self.every_n_steps:
            return
        path = _checkpoint_dir(args, step) if control.should_save else None
        report = self._audit(kwargs.get("model"), step=step, path=path)
        if report is None:
            return
        metrics, alerts = self.run.observe(report, step=step)
        for alert in alerts:
            logger.warning(alert.message)
        if self._trainer is not None:
            # the callback handler's on_log clears should_log: keep the Trainer's own log
            keep = control.should_log
            self._trainer.log(dict(metrics))
            control.should_log = self._trainer.control.should_log = keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        step = state.global_step
        report = self._audit(kwargs.get("model"), step=step, path=_checkpoint_dir(args, step))
        if report is not None:
            self.run.checkpoint(report, step=step)
            self._write(args)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        report = self._audit(kwargs.get("model"), step=state.global_step, path=args.output_dir)
        if report is None:
            return
        self.run.last = report
        self._write(args)
        for line in report.summary.advice:
            logger.info("lora-audit advice: %s", line)

    # --- helpers ------------------------------------------------------------------------

    def _audit(self, model: Any, *, step: int, path: str | None) -> InspectReport | None:
        """The audit at ``step``, computed once per step and path; ``None`` when off."""
        if self._off or model is None:
            return None
        if self._cache is not None and self._cache[:2] == (step, path):
            return self._cache[2]
        import lora_audit

        try:
            report = lora_audit.inspect_model(
                model,
                self.adapter_name,
                energy=self.energy,
                coverage=self.coverage,
                device=self.device,
                method=self.method,
                path=path,
            )
        except ShardedFactors as exc:
            self._off = True
            self._tell("sharded", _OFF.format(why=exc.message))
            return None
        except LoraAuditError as exc:  # never stop the training run over its audit
            self._off = True
            self._tell("error", f"lora-audit: the audit is off for this run: {exc}")
            return None
        self._cache = (step, path, report)
        return report

    def _write(self, args: Any) -> None:
        if self.write_files:
            self.run.write(args.output_dir)

    def _tell(self, key: str, message: str) -> None:
        if key not in self._told:
            self._told.add(key)
            logger.warning(message)


def _checkpoint_dir(args: Any, step: int) -> str:
    """Where the Trainer saves the checkpoint of ``step`` (``checkpoint-STEP``)."""
    return os.path.join(args.output_dir, f"checkpoint-{step}")


def _calling_trainer(callback: LoraAuditCallback) -> Any:
    """The ``Trainer`` whose callback handler is calling ``callback``, or ``None``."""
    frame = sys._getframe(1)
    for _ in range(_FRAMES):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer) and callback in candidate.callback_handler.callbacks:
            return candidate
        if frame.f_back is None:
            break
        frame = frame.f_back
    return None
