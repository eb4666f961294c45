"""lora-audit: how much of a LoRA adapter's rank is used, and how to give the rest back.

Distributed as ``lora-rank-audit`` (the PyPI name ``lora-audit`` is another project's).
"""

__version__ = "0.2.0"

#: The distribution name (``pip install lora-rank-audit``); the command is ``lora-audit``.
DISTRIBUTION = "lora-rank-audit"
#: Where the project lives; ``lora-audit --version`` prints it.
HOME = "https://github.com/lora-rank-audit/lora-rank-audit"
