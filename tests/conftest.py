"""Shared fixtures: small adapters with known spectra, written into tmp_path.

Without torch (the default install), test modules that import torch, or the libraries that
need it (PEFT, transformers, diffusers, lycoris), at module level are not collected; the
header of the run says how many, and fixtures that need torch skip their tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from factories import HAS_TORCH, FakeAdapter, FakeLayer, planted_factors, write_peft

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_adapters"
TESTS = Path(__file__).resolve().parent

#: A module-level import of torch or of a library that needs it.
_NEEDS_TORCH = re.compile(
    r"^(?:import|from) (?:torch|safetensors\.torch|peft|transformers|diffusers|lycoris)\b",
    re.MULTILINE,
)


def _modules_needing_torch() -> list[str]:
    return sorted(
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("*.py")
        if _NEEDS_TORCH.search(p.read_text(encoding="utf-8"))
    )


collect_ignore = [] if HAS_TORCH else _modules_needing_torch()


def pytest_configure(config: pytest.Config) -> None:
    """Make SIGINT and SIGTERM deliverable in this process and the commands it starts.

    A shell starts a background job (``bash .ci/run &``, ``nohup``) with SIGINT ignored, and an
    ignored signal stays ignored across ``exec``: the lora-audit processes the signal tests
    start would then (rightly: see ``formats/atomic.py``) ignore the ^C they are sent. The tests
    are about a signal that reaches lora-audit, so the run starts from the defaults; a test of
    the ignored case sets it itself.
    """
    del config
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_TORCH_LIBRARIES = frozenset({"torch", "peft", "transformers", "diffusers", "lycoris"})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    """Without torch, a test that imports it (or PEFT, …) inside its body is skipped."""
    outcome = yield
    error = outcome.excinfo[1] if outcome.excinfo else None
    if (
        not HAS_TORCH
        and isinstance(error, ModuleNotFoundError)
        and (error.name or "").split(".")[0] in _TORCH_LIBRARIES
    ):
        outcome.force_exception(pytest.skip.Exception(f"needs {error.name}, not installed"))


def pytest_report_header() -> str:
    if HAS_TORCH:
        return "torch: installed (every test module runs)"
    return (
        f"torch: not installed; {len(collect_ignore)} test modules that need it are not collected"
    )


def sample_adapter_dirs() -> list[Path]:
    """The real adapters saved by PEFT in sample_adapters/ (empty if not generated)."""
    if not SAMPLES.is_dir():
        return []
    return sorted(p for p in SAMPLES.iterdir() if (p / "adapter_model.safetensors").is_file())


def sample_sd_files() -> list[Path]:
    """The synthetic single-file SD adapters in sample_adapters/sd/."""
    return sorted((SAMPLES / "sd").glob("*.safetensors"))


@pytest.fixture
def mixed_adapter(tmp_path: Path) -> Path:
    """Linear layers with planted spectra, an embedding, a conv, an untrained layer; bf16/fp16."""
    torch = pytest.importorskip("torch")
    layers = []
    for i in range(2):
        for name, (out, inp) in {"q_proj": (24, 16), "up_proj": (40, 16)}.items():
            b, a = planted_factors(
                out=out,
                inp=inp,
                rank=8,
                spectrum=np.array([5.0, 2, 1, 0.1]),
                seed=i,
                dtype=torch.bfloat16,
            )
            layers.append(FakeLayer(f"model.layers.{i}.{name}", b, a))
    gen = torch.Generator().manual_seed(7)
    layers.append(
        FakeLayer(
            "model.embed_tokens",
            torch.randn(16, 8, generator=gen),
            torch.randn(8, 60, generator=gen),
            embedding=True,
        )
    )
    layers.append(
        FakeLayer(
            "model.conv",
            torch.randn(6, 8, 1, 1, generator=gen).half(),
            torch.randn(8, 3, 3, 3, generator=gen).half(),
        )
    )
    layers.append(FakeLayer("model.layers.1.down_proj", torch.zeros(16, 8), torch.randn(8, 40)))
    config = {"r": 8, "lora_alpha": 16, "use_rslora": True}
    return write_peft(tmp_path / "mixed", FakeAdapter(layers, config))


@pytest.fixture(autouse=True)
def _outside_github_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as if outside GitHub Actions, even on its runners: ``check`` appends to
    ``$GITHUB_STEP_SUMMARY`` when it is set, and must never write the real job summary."""
    for name in ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
