"""``inspect_model(model, gather=True)`` under FSDP2: two CPU processes (gloo), ``fully_shard``.

Each rank trains the sharded model and an unsharded twin on the same batches (so the FSDP2
average of two equal gradients is the twin's gradient); the report gathered one module at a
time with ``DTensor.full_tensor()`` must equal the twin's on every rank, to 1e-10 relative.
Without ``gather`` every rank is refused alike (no collective started), and training goes on
after the audit (no rank left behind in a collective). Every wait has a timeout.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.peft

SUPPORT = Path(__file__).resolve().parents[1] / "support"
#: Seconds any collective may wait, and the whole test.
COLLECTIVE_TIMEOUT, TEST_TIMEOUT = 60, 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _step(model: Any, optimizer: Any, step: int) -> None:
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(step))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT),
    )
    sys.path.insert(0, str(SUPPORT))
    from peft import LoraConfig, get_peft_model
    from tiny_llama import tiny_llama
    from torch.distributed.fsdp import fully_shard

    import lora_audit
    from lora_audit.integrations.peft_live import ShardedFactors

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(tiny_llama(), config)
    twin = copy.deepcopy(model)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    sharded = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, twin)]
    for step in range(2):
        _step(model, optimizers[0], step)
        _step(twin, optimizers[1], step)

    refused = ""
    try:
        lora_audit.inspect_model(model, device="cpu")
    except ShardedFactors as exc:
        refused = str(exc)
    live = lora_audit.inspect_model(model, device="cpu", gather=True)
    reference = lora_audit.inspect_model(twin, device="cpu")
    _step(model, optimizers[0], 2)  # every rank is still in step: the next collective runs
    dist.barrier()
    result = {
        "type": type(sharded).__name__,
        "local_rows": int(sharded.to_local().shape[0]),
        "still_sharded": type(sharded).__name__,
        "refused": refused,
        "live": live.to_dict(),
        "reference": reference.to_dict(),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_fsdp2_gathered_report_equals_the_unsharded_one_on_every_rank(tmp_path: Path) -> None:
    from nested import assert_close

    context = mp.start_processes(
        _worker,
        args=(2, _free_port(), str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TEST_TIMEOUT
    try:
        while not context.join(timeout=5):
            assert time.monotonic() < deadline, "an FSDP2 rank hung"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["type"] == result["still_sharded"] == "DTensor"
        assert result["local_rows"] == 4  # half of r = 8 on each rank
        assert "FSDP2 DTensor" in result["refused"] and "gather=True" in result["refused"]
        live, reference = result["live"], result["reference"]
        assert len(live["layers"]) == 6
        assert all(layer["spectral_norm"] > 0 for layer in live["layers"])
        assert_close(live, reference, where=f"rank {rank}")
