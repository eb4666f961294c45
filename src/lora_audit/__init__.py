"""lora-audit: how much of a LoRA adapter's rank is used, and how to give the rest back."""

__version__ = "0.1.0"
