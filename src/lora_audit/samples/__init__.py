"""A tiny real adapter shipped inside the package, to try lora-audit right after installing.

``minilm-r4-bf16`` is a LoRA (r=4, bf16) trained with PEFT on all-MiniLM-L6-v2, the same file
as ``sample_adapters/minilm-r4-bf16`` in the repository (which holds the other samples and
the scripts that made them). ``python -m lora_audit.samples`` prints its path::

    lora-audit inspect "$(python -m lora_audit.samples)"
"""

from __future__ import annotations

from pathlib import Path

#: The bundled PEFT adapter directory.
SAMPLE = Path(__file__).resolve().parent / "minilm-r4-bf16"
