"""``LoraAuditCallback`` under DDP: two CPU processes (gloo), a real Trainer in each.

Only the main process audits and writes; the other returns at once, and neither hangs.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

pytestmark = pytest.mark.peft

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    sys.path.insert(0, str(HERE))
    from test_transformers_callback import RULES, peft_model, trainer_for

    from lora_audit.integrations.transformers import LoraAuditCallback

    callback = LoraAuditCallback(every_n_steps=2, rules=RULES, device="cpu")
    trainer = trainer_for(
        peft_model(), Path(out) / "run", callbacks=[callback], max_steps=4, ddp_backend="gloo"
    )
    trainer.train()
    result = {
        "parallel": str(trainer.args.parallel_mode),
        "world": trainer.args.world_size,
        "audits": [step for step, _ in callback.run.history],
        "checkpoints": [step for step, _ in callback.run.checkpoints],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def test_ddp_two_gloo_processes_audit_on_the_main_process_only(tmp_path: Path) -> None:
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    main, other = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert main["world"] == other["world"] == 2
    assert "DISTRIBUTED" in main["parallel"]
    assert (main["audits"], main["checkpoints"]) == ([2, 4], [4])
    assert (other["audits"], other["checkpoints"]) == ([], [])
    trend = json.loads((tmp_path / "run" / "lora-audit" / "trend.json").read_text())
    assert [c["step"] for c in trend["checkpoints"]] == [4]
