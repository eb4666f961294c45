"""What every report says about the tool that made it and the adapter it read."""

from __future__ import annotations

from collections import Counter

from lora_audit import __version__
from lora_audit.adapter import Adapter
from lora_audit.formats.kohya import SHOWN_METADATA
from lora_audit.report import (
    AdapterInfo,
    ToolInfo,
)

TOOL = ToolInfo(name="lora-audit", version=__version__)


def adapter_info(adapter: Adapter) -> AdapterInfo:
    """The report's description of what was read."""
    config = adapter.config
    alpha = config.get("lora_alpha")
    rank = config.get("r")
    try:
        file_bytes = adapter.tensor_file.stat().st_size
    except OSError:
        file_bytes = 0
    return AdapterInfo(
        path=str(adapter.path),
        tensor_file=str(adapter.tensor_file),
        format=str(adapter.format),  # the plain name: reports hold no enum member
        base_model=adapter.base_model,
        layer_count=len(adapter.layers),
        dtypes=tuple(sorted({layer.dtype for layer in adapter.layers})),
        rank=rank if isinstance(rank, int) else None,
        lora_alpha=float(alpha) if isinstance(alpha, int | float) else None,
        use_rslora=bool(config.get("use_rslora", False)),
        use_dora=any(layer.dora for layer in adapter.layers),
        modules_to_save=tuple(adapter.modules_to_save),
        passthrough_tensors=len(adapter.passthrough_keys),
        file_bytes=file_bytes,
        metadata={k: adapter.metadata[k] for k in SHOWN_METADATA if k in adapter.metadata},
        scale_sources=dict(sorted(Counter(layer.scale_source for layer in adapter.layers).items())),
    )
