"""The Python API: ``lora_audit.inspect``, ``inspect_model``, ``inspect_many``, ``check``, …

Each function runs the same pipeline as the command of the same name (:mod:`lora_audit.commands`)
and returns its finished, frozen report; ``report.to_dict()`` gives the JSON form the command
prints with ``--format json``. Warnings (an assumed scale, a GPU fallback) are issued as
:class:`~lora_audit.errors.LoraAuditWarning` through :mod:`warnings` and are also kept in the
report. Errors raise the package's exceptions: :class:`~lora_audit.errors.InputError` for an
unreadable or invalid adapter, :class:`~lora_audit.errors.UsageError` for inconsistent
arguments (both are :class:`~lora_audit.errors.LoraAuditError`).

``import lora_audit`` stays light: this module (and numpy) load on first use of a function.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_audit.choices import DeviceName as Device
from lora_audit.choices import InputFormatName as InputFormat
from lora_audit.choices import MethodName as Method
from lora_audit.choices import input_format_name
from lora_audit.errors import InputError, LoraAuditWarning, UsageError
from lora_audit.report import (
    CheckReport,
    CompressReport,
    ExtractReport,
    FullFinetuneReport,
    InspectManyReport,
    InspectReport,
)

if TYPE_CHECKING:
    from lora_audit.adapter import Adapter
    from lora_audit.commands.inspect import AuditOptions
    from lora_audit.decisions.fuse_advice import Scheme
    from lora_audit.engine.device import EngineOptions

PathLike = str | os.PathLike[str]


def _warn(message: str) -> None:
    warnings.warn(message, LoraAuditWarning, stacklevel=4)


def _engine(device: Device, method: Method) -> EngineOptions:
    from lora_audit.engine.device import EngineOptions

    return EngineOptions(device=device, method=method)


def _audit_options(
    *, energy: float, coverage: float | None, device: Device, method: Method
) -> AuditOptions:
    from lora_audit.commands.inspect import AuditOptions
    from lora_audit.commands.options import check_fraction
    from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE

    quantile = DEFAULT_ADVICE_RULE.quantile if coverage is None else coverage
    return AuditOptions(
        energy=check_fraction("--energy", energy),
        coverage=check_fraction("--coverage", quantile),
        engine=_engine(device, method),
    )


def _one_adapter(path: PathLike, *, alpha: float | None, input_format: InputFormat) -> Adapter:
    """The one adapter ``path`` names (a cache repository at ``refs/main``), read."""
    from lora_audit.commands.many import find_adapters
    from lora_audit.formats import load_adapter

    fmt = input_format_name(input_format)
    found = find_adapters([Path(path)]).found
    if len(found) != 1:
        shown = ", ".join(str(f.path) for f in found[:4]) + (", …" if len(found) > 4 else "")
        raise InputError(
            f"{path}: {len(found)} adapters below it ({shown})",
            hint="name one of them, or use lora_audit.inspect_many",
        )
    if found[0].error is not None:
        raise found[0].error
    adapter = load_adapter(found[0].path, alpha=alpha, input_format=fmt)
    for message in adapter.warnings:
        _warn(message)
    return adapter


def inspect(
    path: PathLike,
    *,
    energy: float = 0.99,
    coverage: float | None = None,
    device: Device = "auto",
    method: Method = "auto",
    alpha: float | None = None,
    input_format: InputFormat = "auto",
    base: PathLike | None = None,
    base_k: int | None = None,
    base_partial: bool = False,
    fuse_into: str | Sequence[str] | None = None,
) -> InspectReport:
    """Audit one adapter, as ``lora-audit inspect PATH [--base DIR]`` does.

    Parameters
    ----------
    path
        A PEFT or mlx-lm adapter directory, a ``.safetensors`` file (PEFT, kohya, LyCORIS,
        diffusers, XLabs), a llama.cpp GGUF LoRA, or a Hugging Face cache directory
        (``hub/models--org--name``, read at ``refs/main``; never downloaded).
    energy
        τ in (0, 1]: each layer's energy rank keeps at least this fraction of ‖ΔW‖_F².
    coverage
        Fraction of layers, in (0, 1], the advised retraining rank must cover; ``None``
        keeps the advice rule's quantile (``DEFAULT_ADVICE_RULE`` in
        ``lora_audit.decisions.advice_rule``; ``summary.advice_basis`` names the rule).
    device
        ``"auto"`` (CUDA when torch sees one), ``"cpu"`` (numpy, float64) or ``"cuda"``.
    method
        Core factorisation: ``"auto"``, ``"qr"`` or ``"gram"``.
    alpha
        ``lora_alpha`` to use when neither the config nor the file gives a scale.
    input_format
        ``"auto"`` detects the format; ``"peft"``, ``"kohya"`` or ``"mlx"`` force a reader.
    base, base_k, base_partial
        The pretrained model to audit the update against (needs torch), the number of top
        singular directions compared (default: each layer's energy rank), and whether layers
        the base lacks are allowed (as ``--base``, ``--base-k``, ``--base-partial``).
    fuse_into
        Quantization schemes (``"q8_0,q4_0"`` or ``["nf4"]``) to measure how much of each
        update survives fusing into them (as ``--fuse-into``; needs ``base``). The results
        are ``layer.fuse`` and ``report.summary.fuse``.

    Returns
    -------
    InspectReport
        Per layer (``report.layers``): singular values (float64), stable and effective rank,
        energy rank, wasted rank; adapter-wide (``report.summary``): wasted fraction, the
        rank to retrain at, and the advice lines.

    Raises
    ------
    InputError
        When the path holds no readable, valid adapter, or holds several (use
        :func:`inspect_many`).
    UsageError
        For an ``energy`` or ``coverage`` out of range, or ``device="cuda"`` without a GPU.
    """
    from pathlib import Path

    from lora_audit.commands.inspect_base import BaseOptions, inspect_with_base
    from lora_audit.decisions.fuse_advice import parse_schemes

    options = _audit_options(energy=energy, coverage=coverage, device=device, method=method)
    schemes: tuple[Scheme, ...] = ()
    if fuse_into is not None:
        if base is None:
            raise UsageError("fuse_into needs base", hint="pass base=path/to/base-model")
        schemes = parse_schemes(fuse_into if isinstance(fuse_into, str) else ",".join(fuse_into))
    base_options = (
        None
        if base is None
        else BaseOptions(path=Path(base), k=base_k, partial=base_partial, fuse_into=schemes)
    )
    adapter = _one_adapter(path, alpha=alpha, input_format=input_format)
    return inspect_with_base(adapter, options=options, base=base_options, warn=_warn)


def inspect_model(
    model: Any,
    adapter_name: str | None = None,
    *,
    energy: float = 0.99,
    coverage: float | None = None,
    device: Device = "auto",
    method: Method = "auto",
    path: PathLike | None = None,
    gather: bool = False,
) -> InspectReport:
    """Audit the LoRA adapter of a PEFT model in memory, as :func:`inspect` audits it saved.

    Each LoRA module's factors and scale are read from the live model (LoRA, rsLoRA,
    ``rank_pattern``/``alpha_pattern``, DoRA, several adapters) and go through the same engine
    as :func:`inspect`: no copy to disk, no dense ``ΔW``, no gradient, and the model's mode,
    dtypes, devices and ``requires_grad`` are left as they were. The report equals that of
    :func:`inspect` on ``model.save_pretrained(path)`` at the same step (up to the file's own
    fields: ``tensor_file``, ``file_bytes``, metadata). Needs torch and PEFT.

    Parameters
    ----------
    model
        A ``PeftModel`` (``get_peft_model``), a ``LoraModel``, or a module with PEFT LoRA
        layers injected (transformers' ``add_adapter``).
    adapter_name
        The adapter to audit; ``None``: the active one (an error when several are active).
    energy, coverage, device, method
        As for :func:`inspect`.
    path
        What the report calls the adapter, e.g. where it will be saved; it appears in the
        ``compress`` command of the advice. Default ``"ADAPTER_DIR"``.
    gather
        Under FSDP2 (``fully_shard``), gather each module's factors with
        ``DTensor.full_tensor()``, one module at a time. That is a collective: call
        ``inspect_model(model, gather=True)`` on every rank (each gets the report).

    Returns
    -------
    InspectReport
        As :func:`inspect` returns; ``report.adapter.tensor_file`` is
        ``<in memory: adapter 'NAME'>``.

    Raises
    ------
    InputError
        No LoRA module, an unknown or ambiguous adapter, or factors sharded by DeepSpeed
        ZeRO-3, or by FSDP2 without ``gather=True`` (or audit the saved checkpoint).
    """
    from lora_audit.engine.device import require_torch

    require_torch("inspect_model")
    import torch

    from lora_audit.commands.inspect_base import inspect_with_base
    from lora_audit.integrations.peft_live import live_adapter

    options = _audit_options(energy=energy, coverage=coverage, device=device, method=method)
    with torch.no_grad():
        where = None if path is None else str(path)
        adapter = live_adapter(model, adapter_name, path=where, gather=gather)
        for message in adapter.warnings:
            _warn(message)
        return inspect_with_base(adapter, options=options, base=None, warn=_warn)


def inspect_many(
    paths: Iterable[PathLike],
    *,
    energy: float = 0.99,
    coverage: float | None = None,
    include_checkpoints: bool = False,
    device: Device = "auto",
    method: Method = "auto",
    alpha: float | None = None,
    input_format: InputFormat = "auto",
) -> InspectManyReport:
    """Audit every adapter ``paths`` name or hold, as ``lora-audit inspect A B DIR`` does.

    Directories are searched (``checkpoint-*`` only with ``include_checkpoints``); the
    adapters are audited a few at a time. An adapter that cannot be read does not stop the
    others: it is listed in ``report.errors`` and ``report.status`` is ``"error"``. The other
    parameters are those of :func:`inspect`.

    Returns
    -------
    InspectManyReport
        ``adapters`` (one :class:`InspectReport` each), ``errors``, and ``summary``: one
        :class:`~lora_audit.report.AdapterRow` per adapter (waste, stable rank, verdict).
    """
    from lora_audit.commands.many import audit_all, find_adapters
    from lora_audit.commands.many import inspect_many as assemble

    options = _audit_options(energy=energy, coverage=coverage, device=device, method=method)
    fmt = input_format_name(input_format)
    found = find_adapters([Path(p) for p in paths], include_checkpoints=include_checkpoints)
    outcomes = audit_all(
        found.found,
        options=options,
        alpha=alpha,
        input_format=fmt,
        warn=_warn,
    )
    return assemble(outcomes, options=options)


def check(
    paths: PathLike | Iterable[PathLike],
    *,
    energy: float | None = None,
    coverage: float | None = None,
    max_waste: float | None = None,
    max_layer_waste: float | None = None,
    min_rank_used: int | None = None,
    include_checkpoints: bool = False,
    device: Device = "auto",
    method: Method = "auto",
    alpha: float | None = None,
    input_format: InputFormat = "auto",
) -> CheckReport:
    """Gate adapters on a policy, as ``lora-audit check`` does (no policy file is read).

    Parameters
    ----------
    paths
        One path or several: adapters, or directories to search for them.
    energy, coverage, max_waste, max_layer_waste, min_rank_used
        The policy; ``None`` keeps the default (0.99, the advice rule's quantile 0.9, 0.5,
        1.0, 1).
    include_checkpoints
        Also search ``checkpoint-*`` directories.
    device, method, alpha, input_format
        As for :func:`inspect`.

    Returns
    -------
    CheckReport
        ``status`` is ``"pass"``, ``"fail"`` (``findings`` lists what broke) or ``"error"``
        (``errors`` lists the adapters that could not be read); with several adapters,
        ``summary`` holds one row each.

    Raises
    ------
    UsageError
        For a policy value out of range, or ``device="cuda"`` without a GPU.
    """
    from lora_audit.commands.check import run_check
    from lora_audit.commands.options import policy_settings
    from lora_audit.decisions.check_rules import Policy, merge

    values = policy_settings(
        energy=energy,
        coverage=coverage,
        max_waste=max_waste,
        max_layer_waste=max_layer_waste,
        min_rank_used=min_rank_used,
    )
    named = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    engine, fmt = _engine(device, method), input_format_name(input_format)
    return run_check(
        [Path(p) for p in named],
        policy=merge(Policy(), values),
        engine=engine,
        alpha=alpha,
        input_format=fmt,
        include_checkpoints=include_checkpoints,
        warn=_warn,
    )


def compress(
    path: PathLike,
    *,
    output: PathLike | None = None,
    rank: int | None = None,
    energy: float | None = None,
    ratio: float | None = None,
    budget: int | str | None = None,
    min_rank: int = 1,
    max_rank: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    allow_dora: bool = False,
    device: Device = "auto",
    method: Method = "auto",
    alpha: float | None = None,
    input_format: InputFormat = "auto",
    uniform_rank: bool = False,
    fit: str | None = None,
) -> CompressReport:
    """Truncate an adapter exactly (Eckart–Young), as ``lora-audit compress`` does.

    Parameters
    ----------
    path
        The adapter, as for :func:`inspect`.
    output
        Where to write the compressed adapter, in the input's format (a directory for a PEFT
        directory, else a ``.safetensors`` file); required unless ``dry_run``. Never the
        input; an existing output only with ``force``.
    rank, energy, ratio, budget
        Exactly one: every layer to at most ``rank``; per layer the smallest k keeping
        ``energy`` of ‖ΔW‖_F²; the σᵢ ≥ σ₁/``ratio``; or a total of ``budget`` parameters
        (an int, or text such as ``"2M"``) placed where they remove the most error.
    min_rank, max_rank
        Bounds on every layer's new rank.
    dry_run
        Plan only; write nothing.
    allow_dora
        Compress a DoRA adapter's B·A and keep its magnitude vectors unchanged.
    device, method, alpha, input_format
        As for :func:`inspect`.
    uniform_rank
        Zero-pad every layer of a PEFT output to one rank (exact), so that llama.cpp's
        per-layer ``lora_alpha / rank`` reads it as PEFT and vLLM do (``report.serving``).
    fit
        A serving target, as ``check --target`` takes it (``"vllm"``,
        ``"vllm:max-lora-rank=32"``, ``"llama.cpp"``, ``"peft"``): write the best adapter
        it loads; with it, the rank arguments are optional (clamped to the target).

    Returns
    -------
    CompressReport
        Per layer the old and new rank, energy kept and relative error; the totals.

    Raises
    ------
    UsageError
        For inconsistent arguments (none or several of rank/energy/ratio/budget, no
        ``output`` without ``dry_run``, an output that exists or is the input).
    InputError
        When the adapter cannot be read, or is a kind that cannot be written back.
    """
    from lora_audit.commands.compress import CompressOptions, compress_adapter
    from lora_audit.commands.compress_fit import given_rule
    from lora_audit.decisions.serving_fit import fit_rule
    from lora_audit.decisions.serving_targets import parse_target

    target = None if fit is None else parse_target(fit)
    rule = given_rule(
        target is not None,
        rank=rank,
        energy=energy,
        ratio=ratio,
        budget=None if budget is None else str(budget),
        min_rank=min_rank,
        max_rank=max_rank,
    )
    if output is None and not dry_run:
        raise UsageError("--output is required", hint="or pass dry_run=True to see the plan")
    adapter = _one_adapter(path, alpha=alpha, input_format=input_format)
    if target is not None:
        rule = fit_rule(target, rule, [x.rank for x in adapter.layers])
    assert rule is not None  # given_rule gave one, or fit_rule did
    options = CompressOptions(
        rule=rule,
        fit=target,
        output=None if output is None else Path(output),
        dry_run=dry_run,
        force=force,
        allow_dora=allow_dora,
        engine=_engine(device, method),
        uniform_rank=uniform_rank,
    )
    return compress_adapter(adapter, options=options, warn=_warn)


def inspect_full(
    tuned: PathLike,
    *,
    base: PathLike,
    energy: float = 0.9,
    device: Device = "auto",
) -> FullFinetuneReport:
    """Audit a full fine-tune, as ``lora-audit inspect --base BASE TUNED`` does.

    Parameters
    ----------
    tuned
        The fully fine-tuned model: a ``.safetensors`` file, a directory, a sharded
        ``*.safetensors.index.json`` or a Hugging Face cache directory.
    base
        The model it was fine-tuned from, read the same way.
    energy
        τ of each layer's ``k@τ``.
    device
        As for :func:`inspect`.

    Returns
    -------
    FullFinetuneReport
        Per 2-D or conv weight the certified top spectrum of ``ΔW = W_tuned − W_base``, its
        exact energy, ``k@τ``, stable rank, and the stable ranks of ``W`` and ``W + ΔW``;
        embeddings, biases and norms listed with their exact norms.

    Raises
    ------
    InputError
        When a checkpoint cannot be read, ``tuned`` is an adapter, or nothing matches.
    """
    from lora_audit.commands.inspect_full import FullOptions, inspect_full
    from lora_audit.commands.options import check_fraction
    from lora_audit.engine.device import EngineOptions

    options = FullOptions(
        energy=check_fraction("--energy", energy), engine=EngineOptions(device=device)
    )
    return inspect_full(Path(tuned), base=Path(base), options=options, warn=_warn)


def extract(
    base: PathLike,
    tuned: PathLike,
    *,
    output: PathLike,
    energy: float | None = None,
    rank: int | None = None,
    force: bool = False,
    device: Device = "auto",
) -> ExtractReport:
    """Write the optimal LoRA of a full fine-tune as PEFT, as ``lora-audit extract`` does.

    Parameters
    ----------
    base, tuned
        The base and the fully fine-tuned model (as for :func:`inspect_full`).
    output
        The PEFT adapter directory to write; never an input, an existing one only with
        ``force``.
    energy, rank
        Exactly one: each layer at its ``k@τ`` for ``τ = energy``, or at ``rank``.
    device
        As for :func:`inspect`.

    Returns
    -------
    ExtractReport
        Per layer the rank written, the optimal error ``√(1 − C(k))`` and the measured error of
        the written factors; every other tensor and how it was carried.

    Raises
    ------
    UsageError
        For none or both of ``energy`` and ``rank``, or an output that exists or is an input.
    InputError
        When a checkpoint cannot be read.
    """
    from lora_audit.commands.extract import ExtractOptions, extract
    from lora_audit.engine.device import EngineOptions

    options = ExtractOptions(
        energy=energy, rank=rank, force=force, engine=EngineOptions(device=device)
    )
    return extract(Path(base), Path(tuned), output=Path(output), options=options, warn=_warn)
