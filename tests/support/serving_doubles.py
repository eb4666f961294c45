"""Plain stand-ins for an audited adapter, as the serving-target and ``--fit`` rules read it
(no files, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Source:
    path: str = "adapters/a"
    format: str = "peft"
    rank: int | None = 8
    lora_alpha: float | None = 16.0
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: tuple[str, ...] = ()
    passthrough_tensors: int = 0


@dataclass(frozen=True, kw_only=True)
class Layer:
    rank: int
    scale: float
    dora: bool = False


@dataclass(frozen=True, kw_only=True)
class Audited:
    adapter: Source = field(default_factory=Source)
    layers: tuple[Layer, ...] = ()
