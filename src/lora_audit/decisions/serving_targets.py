"""``check --target``: will the server an adapter is deployed to load it, and read it as PEFT does?

Each rule reads only what an inspect report states (the config and every layer's rank and
scale, read as PEFT applies them) and compares it with the server's own rule, as its source
applies it (docs/ci.md, "Serving targets"; the same rules as :mod:`lora_audit.commands.serving`):

``vllm`` (``vllm/config/lora.py``, ``vllm/lora/peft_helper.py``)
    ``max_lora_rank`` (default 16, one of :data:`VLLM_MAX_LORA_RANKS`) bounds every layer's
    rank; ``modules_to_save`` and DoRA are refused (``PEFTHelper._validate_features``); every
    layer is scaled by one ``lora_alpha / r`` (``/ √r`` with rsLoRA), ``rank_pattern`` and
    ``alpha_pattern`` unread (``PEFTHelper.__post_init__``).
``llama.cpp`` (``convert_lora_to_gguf.py``, ``src/llama-adapter.h``)
    The converter stops at any tensor that is not a LoRA factor (``modules_to_save`` heads,
    DoRA magnitudes) and keeps only ``lora_alpha``; the runtime scales each layer by
    ``lora_alpha / that layer's rank``.
``peft``
    Nothing beyond what the reader already requires (it reads a PEFT adapter as PEFT does).

One finding per adapter and problem, each with a fix; a ``lora-audit compress … --fit TARGET``
command where one exists (:mod:`lora_audit.decisions.serving_fit`: the best adapter that the
target loads and reads as PEFT does).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

from lora_audit.errors import UsageError
from lora_audit.findings import ERROR, Finding

Server = Literal["vllm", "llama.cpp", "peft"]
#: ``MaxLoRARanks`` in vLLM's ``vllm/config/lora.py`` (``max_lora_rank`` must be one of them).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: ``LoRAConfig.max_lora_rank``'s default in the same file.
VLLM_DEFAULT_MAX_LORA_RANK = 16
TARGET_HINT = "use vllm, vllm:max-lora-rank=N (N one of 1, 8, 16, 32, 64, 128, 256, 320, 512), "
TARGET_HINT += "llama.cpp or peft"


@dataclass(frozen=True, kw_only=True)
class Target:
    """A server to check adapters against.

    Attributes
    ----------
    server
        ``"vllm"``, ``"llama.cpp"`` or ``"peft"``.
    max_lora_rank
        vLLM's ``--max-lora-rank`` (``None`` for the other servers).
    """

    server: Server
    max_lora_rank: int | None = None

    def __str__(self) -> str:
        if self.max_lora_rank is None:
            return self.server
        return f"{self.server}:max-lora-rank={self.max_lora_rank}"


def parse_target(text: str) -> Target:
    """``vllm``, ``vllm:max-lora-rank=N``, ``llama.cpp`` or ``peft`` as a :class:`Target`.

    Raises
    ------
    UsageError
        Naming what is wrong, with the accepted forms as the hint.
    """
    server, _, option = text.strip().partition(":")
    if server not in get_args(Server):
        raise UsageError(f"unknown --target {text!r}", hint=TARGET_HINT)
    if server != "vllm":
        if option:
            raise UsageError(f"--target {server} takes no options ({text!r})", hint=TARGET_HINT)
        return Target(server=server)  # type: ignore[arg-type]
    if not option:
        return Target(server="vllm", max_lora_rank=VLLM_DEFAULT_MAX_LORA_RANK)
    key, _, value = option.partition("=")
    if key != "max-lora-rank" or not value.isdigit() or int(value) not in VLLM_MAX_LORA_RANKS:
        raise UsageError(
            f"--target {text!r}: vLLM accepts max-lora-rank=N with N one of "
            f"{', '.join(map(str, VLLM_MAX_LORA_RANKS))} (vllm/config/lora.py)",
            hint=TARGET_HINT,
        )
    return Target(server="vllm", max_lora_rank=int(value))


class TargetSource(Protocol):
    """What the rules read of the adapter's file (:class:`lora_audit.report.AdapterInfo`)."""

    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def rank(self) -> int | None: ...
    @property
    def lora_alpha(self) -> float | None: ...
    @property
    def use_rslora(self) -> bool: ...
    @property
    def use_dora(self) -> bool: ...
    @property
    def modules_to_save(self) -> tuple[str, ...]: ...
    @property
    def passthrough_tensors(self) -> int: ...


class TargetLayer(Protocol):
    """What the rules read of one layer (:class:`lora_audit.report.LayerReport`)."""

    @property
    def rank(self) -> int: ...
    @property
    def scale(self) -> float: ...
    @property
    def dora(self) -> bool: ...


class TargetAdapter(Protocol):
    """An inspected adapter (:class:`lora_audit.report.InspectReport`)."""

    @property
    def adapter(self) -> TargetSource: ...
    @property
    def layers(self) -> Sequence[TargetLayer]: ...


def rule_names(targets: Sequence[Target]) -> tuple[str, ...]:
    """The rules the targets add to a check (for the report's ``rules``)."""
    names = {
        "vllm": ("vllm-format", "vllm-max-lora-rank", "vllm-refused", "vllm-one-scale"),
        "llama.cpp": ("llama.cpp-format", "llama.cpp-refused", "llama.cpp-scale"),
        "peft": ("peft-format",),
    }
    return tuple(dict.fromkeys(n for t in targets for n in names[t.server]))


def target_violations(report: TargetAdapter, targets: Sequence[Target]) -> list[Finding]:
    """Every finding of ``report`` against ``targets``, target by target."""
    out: list[Finding] = []
    for target in dict.fromkeys(targets):
        if report.adapter.format != "peft" and not (
            target.server == "llama.cpp" and report.adapter.format == "gguf"
        ):
            out.append(_format(report, target))
        elif target.server == "vllm":
            out += _vllm(report, target.max_lora_rank or VLLM_DEFAULT_MAX_LORA_RANK)
        elif target.server == "llama.cpp" and report.adapter.format == "peft":
            out += _llama(report)
    return out


def _finding(
    report: TargetAdapter, rule: str, measured: float, limit: float, message: str, fix: str
) -> Finding:
    return Finding(
        adapter=report.adapter.path,
        layer=None,
        rule=rule,
        measured=measured,
        limit=limit,
        message=message,
        fix=fix,
        severity=ERROR,
    )


def _format(report: TargetAdapter, target: Target) -> Finding:
    what = "a GGUF LoRA or a PEFT adapter" if target.server == "llama.cpp" else "PEFT adapters"
    return _finding(
        report,
        f"{target.server}-format",
        0,
        0,
        f"is a {report.adapter.format} adapter; {target.server} loads {what}",
        f"convert it to a PEFT adapter first (lora-audit does not convert {report.adapter.format})",
    )


def fit_command(path: str, target: Target) -> str:
    """The ``lora-audit compress PATH -o OUT --fit TARGET`` command that writes the best
    adapter that ``target`` loads, beside the input (``ADAPTER-vllm16``, ``ADAPTER-llama.cpp``;
    :mod:`lora_audit.decisions.serving_fit`)."""
    source = Path(path)
    beside = source if source.name else source.resolve()  # "." has no name to extend
    limit = target.max_lora_rank or VLLM_DEFAULT_MAX_LORA_RANK
    suffix = f"vllm{limit}" if target.server == "vllm" else str(target.server)
    out = beside.with_name(f"{beside.stem}-{suffix}{beside.suffix}")
    words = ["lora-audit", "compress", str(source), "-o", str(out), "--fit", str(target)]
    return shlex.join(words)


def _fit_fix(report: TargetAdapter, target: Target) -> str:
    """:func:`fit_command`, after what ``--fit`` refuses (DoRA, ``modules_to_save``) is gone."""
    command = fit_command(report.adapter.path, target)
    first = [
        *(["without DoRA"] if _dora(report) else []),
        *(["without modules_to_save"] if report.adapter.modules_to_save else []),
    ]
    return f"once the adapter is {' and '.join(first)}: {command}" if first else command


def _dora(report: TargetAdapter) -> bool:
    return report.adapter.use_dora or any(x.dora for x in report.layers)


#: No ``lora-audit`` command removes these; what the user can do instead.
DORA_FIX = "retrain without use_dora, or merge the adapter into the base and serve that model"
SAVED_FIX = (
    "retrain without modules_to_save (or serve those heads with the base model), or merge "
    "the adapter into the base and serve that model"
)


def _vllm(report: TargetAdapter, limit: int) -> list[Finding]:
    out: list[Finding] = []
    info = report.adapter
    ranks = [x.rank for x in report.layers]
    top = max([*ranks, info.rank or 0])
    if top > limit:
        over = sum(k > limit for k in ranks)
        out.append(
            _finding(
                report,
                "vllm-max-lora-rank",
                top,
                limit,
                f"has rank {top} ({over} of {len(ranks)} layers above {limit}); vLLM refuses "
                f"a LoRA rank greater than max_lora_rank {limit} (or serve it with "
                f"--max-lora-rank {_next_allowed(top)})",
                _fit_fix(report, Target(server="vllm", max_lora_rank=limit)),
            )
        )
    refused = [
        *([f"modules_to_save ({', '.join(info.modules_to_save)})"] if info.modules_to_save else []),
        *(["DoRA"] if _dora(report) else []),
    ]
    if refused:
        fixes = [
            *([SAVED_FIX] if info.modules_to_save else []),
            *([DORA_FIX] if _dora(report) else []),
        ]
        out.append(
            _finding(
                report,
                "vllm-refused",
                len(refused),
                0,
                f"has {' and '.join(refused)}, which vLLM refuses (PEFTHelper._validate_features)",
                "; ".join(dict.fromkeys(fixes)),
            )
        )
    if info.lora_alpha is not None and info.rank:
        root = math.sqrt(info.rank) if info.use_rslora else info.rank
        scale = info.lora_alpha / root
        off = sum(not math.isclose(x.scale, scale, rel_tol=1e-9) for x in report.layers)
        if off:
            denominator = f"√{info.rank}" if info.use_rslora else str(info.rank)
            out.append(
                _finding(
                    report,
                    "vllm-one-scale",
                    off,
                    0,
                    f"{off} of {len(ranks)} layers are not at vLLM's one scale lora_alpha / r = "
                    f"{info.lora_alpha:g} / {denominator} = {scale:.6g} (vLLM does not read "
                    "rank_pattern or alpha_pattern): they would be served at another scale",
                    _fit_fix(report, Target(server="vllm", max_lora_rank=limit)),
                )
            )
    return out


def _next_allowed(rank: int) -> int:
    return next((n for n in VLLM_MAX_LORA_RANKS if n >= rank), VLLM_MAX_LORA_RANKS[-1])


def _llama(report: TargetAdapter) -> list[Finding]:
    out: list[Finding] = []
    info = report.adapter
    ranks = [x.rank for x in report.layers]
    dora = _dora(report)
    if info.passthrough_tensors or dora:
        kinds = [
            *(["modules_to_save heads"] if info.modules_to_save else []),
            *(["DoRA magnitude vectors"] if dora else []),
        ]
        fixes = [*([SAVED_FIX] if info.modules_to_save else []), *([DORA_FIX] if dora else [])]
        out.append(
            _finding(
                report,
                "llama.cpp-refused",
                info.passthrough_tensors or sum(x.dora for x in report.layers),
                0,
                f"has {info.passthrough_tensors} tensors that are not LoRA factors "
                f"({', '.join(kinds) or 'unnamed'}), at which convert_lora_to_gguf.py stops",
                "; ".join(fixes) or SAVED_FIX,
            )
        )
    if info.lora_alpha is not None:
        alpha = info.lora_alpha
        off = sum(
            not math.isclose(x.scale, alpha / x.rank, rel_tol=1e-9) for x in report.layers if x.rank
        )
        if off:
            out.append(
                _finding(
                    report,
                    "llama.cpp-scale",
                    off,
                    0,
                    f"{off} of {len(ranks)} layers are not at scale lora_alpha / their rank "
                    f"(lora_alpha {alpha:g}), the only scale llama.cpp applies: they would be "
                    "served at another scale",
                    _fit_fix(report, Target(server="llama.cpp")),
                )
            )
    return out
