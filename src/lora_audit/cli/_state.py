"""Process-wide CLI state: switches set by the root callback, and the running command's guard."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_audit.formats.output_guard import OutputGuard

DEBUG = False

#: The inputs and outputs of the command running now (set by ``run_guarded``).
OUTPUTS: OutputGuard | None = None
