"""A real distributed job: every rank adds its tensor to the others' with torch's all-reduce (gloo,
on the CPU), meeting through the rendezvous variables Trainyard sets for each rank (MASTER_ADDR,
MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK): the same script runs under ``torchrun`` unchanged.

Rank r contributes r + 1, so every rank must end with 1 + 2 + ... + WORLD_SIZE. Each rank prints
what it got; rank 0 writes it to the outputs dir. A rank whose sum is wrong exits 1, which fails
the whole attempt.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def main() -> int:
    dist.init_process_group(backend="gloo", init_method="env://", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    got, expected = value.item(), world * (world + 1) / 2
    print(
        f"rank {rank}/{world} (local {local_rank}): all_reduce sum = {got:g}, expected {expected:g}",
        flush=True,
    )
    out = os.environ.get("TRAINYARD_OUTPUT_DIR")
    if rank == 0 and out:
        with open(os.path.join(out, "allreduce.json"), "w") as f:
            json.dump({"world_size": world, "sum": got, "torch": torch.__version__}, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if got == expected else 1


if __name__ == "__main__":
    sys.exit(main())
