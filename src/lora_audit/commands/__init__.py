"""One pipeline per command: adapters in, finished frozen report out (no rendering, no CLI)."""
