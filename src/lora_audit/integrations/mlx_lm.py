"""mlx-lm: audit the LoRA layers of a model in memory, and ``LoraAuditMlxCallback`` for its trainer.

mlx-lm's trainer (``mlx_lm.tuner.trainer.train``) saves ``dict(tree_flatten(
model.trainable_parameters()))`` to ``adapters.safetensors`` (and ``{step:07d}_adapters
.safetensors`` every ``steps_per_save`` steps). :func:`live_mlx_adapter` takes exactly those
arrays, in memory, and reads them through the mlx-lm reader (:func:`lora_audit.formats.mlx.
mlx_adapter`) with the run's ``adapter_config.json`` — so :func:`inspect_mlx_model` gives the
report that ``lora_audit.inspect`` gives for the file saved at the same step. The scale each
LoRA module applies (its ``scale``) must be the config's: a module that disagrees is refused by
name, since the saved file would be read with the config's scale.

mlx-lm's ``TrainingCallback`` is called at each loss report (``steps_per_report``, and the last
iteration) with the report's values, and nothing else: no model, no save event. So
:class:`LoraAuditMlxCallback` is given the model (and the ``TrainingArgs``, to know where and
when the trainer saves). At a report step it audits the model, adds the ``lora_audit/…``
metrics to the report's values before it hands them to ``wrapped_callback`` (mlx-lm's own
``WandBCallback`` wraps another callback the same way), and gives the early warnings; at a
save step (mlx-lm saves after reporting, with no update in between) it records a trend point
and writes ``<adapter dir>/lora-audit/`` as the transformers callback writes
``<output_dir>/lora-audit/``. Only rank 0 of ``mx.distributed`` audits (the audit starts no
collective).

mlx and mlx-lm are imported inside the functions only: importing this module stays mlx-free.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lora_audit.adapter import Adapter
from lora_audit.decisions.training_alerts import AlertRules
from lora_audit.errors import InputError, LoraAuditError
from lora_audit.formats.mlx import CONFIG_NAME, mlx_adapter, read_config
from lora_audit.formats.safetensors_io import Header, TensorInfo
from lora_audit.integrations.run_audit import RunAudit
from lora_audit.report import InspectReport

__all__ = ["LoraAuditMlxCallback", "inspect_mlx_model", "live_mlx_adapter"]

#: Where the warnings and the advice go.
logger = logging.getLogger("lora_audit.mlx_lm")

_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


class ArraysSource:
    """A :class:`~lora_audit.adapter.TensorSource` over host copies of mlx arrays.

    The copies are made when it is built, in the calling thread (mlx streams are per thread,
    and the engine reads from worker threads); bf16 is widened exactly to float32, as the
    safetensors reader does.
    """

    def __init__(self, arrays: Mapping[str, Any]) -> None:
        import mlx.core as mx

        mx.eval(list(arrays.values()))
        self._arrays = {
            key: np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a, copy=True)
            for key, a in arrays.items()
        }

    def get(self, key: str) -> npt.NDArray[Any]:
        """The host copy of array ``key`` as stored."""
        return self._arrays[key]


def lora_scales(model: Any) -> dict[str, float]:
    """The ``scale`` of every LoRA module of an mlx model, by module path."""
    return {
        name: float(module.scale)
        for name, module in model.named_modules()
        if hasattr(module, "lora_a") and hasattr(module, "scale")
    }


def run_config(model: Any, config: Mapping[str, Any] | None, *, where: str) -> dict[str, Any]:
    """The run's adapter config: ``config`` checked against the modules, or built from them.

    Raises
    ------
    InputError
        No LoRA module; modules with different scales (mlx-lm saves one); a module whose
        scale is not the config's ``lora_parameters.scale``.
    """
    scales = lora_scales(model)
    if not scales:
        raise InputError(
            f"{where}: the model has no mlx-lm LoRA modules",
            hint="convert it first (mlx_lm.tuner.utils.linear_to_lora_layers)",
        )
    if config is None:
        if len(set(scales.values())) != 1:
            raise InputError(
                f"{where}: the LoRA modules apply {len(set(scales.values()))} different scales; "
                "mlx-lm's adapter_config.json holds one",
                hint="pass the run's config (config=...)",
            )
        dora = any(hasattr(module, "m") for _, module in model.named_modules())
        scale = next(iter(scales.values()))
        return {"fine_tune_type": "dora" if dora else "lora", "lora_parameters": {"scale": scale}}
    wanted = (config.get("lora_parameters") or {}).get("scale")
    for name, scale in scales.items():
        if not isinstance(wanted, int | float) or not math.isclose(scale, wanted, rel_tol=1e-12):
            raise InputError(
                f"{where}: {name} applies scale {scale:g}, but the config says "
                f"lora_parameters.scale = {wanted!r}; the saved adapter would be read with the "
                "config's",
                hint="pass the config the model was converted with",
            )
    return dict(config)


def live_mlx_adapter(
    model: Any, config: Mapping[str, Any] | None = None, *, path: str | None = None
) -> Adapter:
    """The adapter mlx-lm would save from ``model`` now, read in memory.

    Parameters
    ----------
    model
        An mlx-lm model with LoRA (or DoRA) layers, its base frozen, as ``mlx_lm.lora`` trains.
    config
        The run's ``adapter_config.json`` as a dict; ``None``: built from the modules (their
        one scale).
    path
        What the report calls the adapter (where it is, or will be, saved).
    """
    from mlx.utils import tree_flatten

    where = "<in memory: mlx-lm model>"
    arrays = dict(tree_flatten(model.trainable_parameters()))  # what the trainer saves
    tensors = {}
    for key, array in arrays.items():
        dtype = _DTYPES.get(str(array.dtype).removeprefix("mlx.core."), str(array.dtype))
        tensors[key] = TensorInfo(dtype=dtype, shape=tuple(array.shape), start=0, end=0)
    return mlx_adapter(
        path=Path(path or "adapters.safetensors"),
        tensor_file=Path(where),
        config=run_config(model, config, where=where),
        where=where,
        header=Header(tensors=tensors, metadata={}),
        alpha=None,
        stored=ArraysSource(arrays),
    )


def inspect_mlx_model(
    model: Any,
    config: Mapping[str, Any] | None = None,
    *,
    energy: float = 0.99,
    coverage: float | None = None,
    method: Literal["auto", "qr", "gram"] = "auto",
    path: str | None = None,
) -> InspectReport:
    """Audit an mlx-lm model's LoRA layers in memory, as ``lora_audit.inspect`` audits the file.

    Returns
    -------
    InspectReport
        Equal to ``lora_audit.inspect`` of the ``adapters.safetensors`` (with the run's
        ``adapter_config.json``) mlx-lm saves from the model now, but for the fields that
        describe the file (``tensor_file`` is ``<in memory: mlx-lm model>``).
    """
    from lora_audit.commands.inspect import AuditOptions, inspect_adapter
    from lora_audit.commands.options import check_fraction
    from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE
    from lora_audit.engine.device import EngineOptions

    quantile = DEFAULT_ADVICE_RULE.quantile if coverage is None else coverage
    options = AuditOptions(
        energy=check_fraction("--energy", energy),
        coverage=check_fraction("--coverage", quantile),
        engine=EngineOptions(device="cpu", method=method),
    )
    adapter = live_mlx_adapter(model, config, path=path)
    for message in adapter.warnings:
        logger.warning(message)
    return inspect_adapter(adapter, options=options, warn=logger.warning)


class LoraAuditMlxCallback:
    """An mlx-lm ``TrainingCallback`` that audits the adapter at its loss reports.

    Parameters
    ----------
    model
        The model being trained (mlx-lm's callback is not given it).
    args
        The ``TrainingArgs`` of the run: where the adapter is saved (``adapter_file``) and
        when (``steps_per_save``). Without it no trend point is recorded and no file written.
    config
        The run's adapter config; ``None``: ``adapter_config.json`` beside ``adapter_file``
        (``mlx_lm.lora`` writes it before training), else built from the modules.
    every_n_steps
        Audit at the loss reports whose step is a multiple of this (``None``: every report).
    energy, coverage, method, per_layer, rules
        As for :class:`lora_audit.integrations.transformers.LoraAuditCallback`.
    wrapped_callback
        Called after the audit with the report's values and the ``lora_audit/…`` metrics.

    Attributes
    ----------
    run
        The run's audit: ``history``, ``checkpoints``, ``last``, ``fired``.
    """

    def __init__(
        self,
        model: Any,
        *,
        args: Any = None,
        config: Mapping[str, Any] | None = None,
        every_n_steps: int | None = None,
        energy: float = 0.99,
        coverage: float | None = None,
        method: Literal["auto", "qr", "gram"] = "auto",
        per_layer: bool = False,
        rules: AlertRules | None = None,
        write_files: bool = True,
        wrapped_callback: Any = None,
    ) -> None:
        n = every_n_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"every_n_steps = {n!r} must be a positive int")
        self.model, self.args, self.wrapped = model, args, wrapped_callback
        self.every_n_steps, self.write_files = every_n_steps, write_files
        self.energy, self.coverage, self.method = energy, coverage, method
        self.config = dict(config) if config is not None else _saved_config(args)
        self.run = RunAudit(rules=rules or AlertRules(), per_layer=per_layer)
        self._off = False
        if args is not None and args.steps_per_save % args.steps_per_report:
            logger.warning(
                "lora-audit: steps_per_save %d is not a multiple of steps_per_report %d: the "
                "saves between reports get no trend point",
                args.steps_per_save,
                args.steps_per_report,
            )

    def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
        """Audit at this report (rank 0), add the metrics, then call the wrapped callback."""
        step = int(train_info["iteration"])
        if not self._off and _rank() == 0 and self._due(step):
            report = self._audit(step)
            if report is not None:
                self._record(report, step=step)
                train_info.update(self.run.history[-1][1])
        if self.wrapped is not None:
            self.wrapped.on_train_loss_report(train_info)

    def on_val_loss_report(self, val_info: dict[str, Any]) -> None:
        """Pass the validation report on to the wrapped callback."""
        if self.wrapped is not None:
            self.wrapped.on_val_loss_report(val_info)

    def _due(self, step: int) -> bool:
        last = self.args is not None and step == self.args.iters
        return last or self.every_n_steps is None or step % self.every_n_steps == 0

    def _audit(self, step: int) -> InspectReport | None:
        try:
            return inspect_mlx_model(
                self.model,
                self.config,
                energy=self.energy,
                coverage=self.coverage,
                method=self.method,
                path=str(self._saved_at(step)) if self.args is not None else None,
            )
        except LoraAuditError as exc:  # never stop the training run over its audit
            self._off = True
            logger.warning("lora-audit: the audit is off for this run: %s", exc)
            return None

    def _record(self, report: InspectReport, *, step: int) -> None:
        _, alerts = self.run.observe(report, step=step)
        for alert in alerts:
            logger.warning(alert.message)
        if self.args is None:
            return
        if step % self.args.steps_per_save == 0:
            self.run.checkpoint(report, step=step)
        if self.write_files:
            self.run.write(Path(self.args.adapter_file).parent)
        if step == self.args.iters:
            for line in report.summary.advice:
                logger.info("lora-audit advice: %s", line)

    def _saved_at(self, step: int) -> Path:
        """The file mlx-lm saves at ``step``: the numbered checkpoint, or the final file."""
        adapter_file = Path(self.args.adapter_file)
        if step % self.args.steps_per_save == 0:
            return adapter_file.parent / f"{step:07d}_adapters.safetensors"
        return adapter_file


def _saved_config(args: Any) -> dict[str, Any] | None:
    """``adapter_config.json`` beside ``args.adapter_file``, when there is one."""
    if args is None:
        return None
    path = Path(args.adapter_file).parent / CONFIG_NAME
    return read_config(path) if path.is_file() else None


def _rank() -> int:
    import mlx.core as mx

    return int(mx.distributed.init().rank())
