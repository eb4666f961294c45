"""``--plot FILE``: checked before any work is done, drawn from the finished report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_audit.errors import UsageError


@dataclass(frozen=True, kw_only=True)
class PlotRequest:
    """Where to draw, in which format, and (``inspect``) which layers' spectra."""

    path: Path
    fmt: str
    layers: str | None = None


def plot_request(
    path: Path | None, *, layers: str | None = None, names: Sequence[str] | None = None
) -> PlotRequest | None:
    """Validate ``--plot`` (and ``--plot-layers``) up front; ``None`` when no plot is wanted.

    Parameters
    ----------
    names
        The layer names ``--plot-layers`` must match at least one of, when known.

    Raises
    ------
    UsageError
        For a suffix other than .png/.svg, missing matplotlib, a bad or unmatched pattern, or
        ``--plot-layers`` without ``--plot``.
    """
    from lora_audit.regex_guard import search_names
    from lora_audit.render.plot import layer_filter, plot_format, require_matplotlib

    if path is None:
        if layers is not None:
            raise UsageError("--plot-layers needs --plot FILE")
        return None
    fmt = plot_format(path)
    from lora_audit.cli._common import preflight

    preflight(path, role="--plot")
    require_matplotlib()
    pattern = layer_filter(layers)
    if (
        pattern is not None
        and names is not None
        and not any(search_names(pattern, names, what="--plot-layers"))
    ):
        raise UsageError(
            f"--plot-layers {layers!r} matches none of the {len(names)} layers",
            hint="e.g. " + (names[0] if names else "layer names as inspect prints them"),
        )
    return PlotRequest(path=path, fmt=fmt, layers=layers)


def draw(report: Any, request: PlotRequest | None) -> None:
    """Draw ``report`` into the requested file (written atomically)."""
    if request is None:
        return
    from lora_audit.cli._common import outputs, warn
    from lora_audit.render.plot import render_plot

    data = render_plot(report, fmt=request.fmt, layers=request.layers, warn=warn)
    outputs().write(request.path, data, role="--plot")
