"""``python -m lora_audit.samples``: print the path of the bundled sample adapter."""

from lora_audit.samples import SAMPLE

print(SAMPLE)
