"""``python -m lora_audit``."""

from lora_audit.cli import main

if __name__ == "__main__":
    main()
