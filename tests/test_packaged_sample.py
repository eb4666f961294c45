"""The sample adapter inside the package is the repository's, and is found by the module."""

from __future__ import annotations

import subprocess
import sys

from conftest import SAMPLES

from lora_audit.samples import SAMPLE


def test_packaged_sample_is_the_repository_sample() -> None:
    twin = SAMPLES / SAMPLE.name
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (SAMPLE / name).read_bytes() == (twin / name).read_bytes(), name


def test_module_prints_the_path() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lora_audit.samples"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(SAMPLE)
