"""Several processes of python -m mini_clip.explain under torchrun, the images split between them.

`torchrun --nproc-per-node K -m mini_clip.explain ...` starts K processes with RANK, LOCAL_RANK and WORLD_SIZE
in their environment. Each explains the images at positions rank, rank + K, ... (`explain_folder`'s shard),
writes their folders and prints their tables; then every process's records go to process 0, which writes
results.json for all. torch.distributed carries them: gloo between CPU processes, NCCL between GPUs.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

Records = list[tuple[int, dict]]  # (position in the input list, the image's record)


def ranks(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) of this process: under torchrun (WORLD_SIZE set), its place among the
    processes and, for CUDA, the GPU of its LOCAL_RANK; otherwise (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    rank = int(os.environ["RANK"])
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return rank, world, device


def start_group(device: str) -> None:
    """Join torchrun's process group: NCCL between GPUs, gloo on CPUs (torch.distributed reads MASTER_ADDR,
    MASTER_PORT, RANK and WORLD_SIZE from the environment torchrun sets)."""
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))  # NCCL's object exchange runs on this process's GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def gather(results: Records, failures: int, world: int) -> tuple[Records, int]:
    """Every process's (position, record) pairs and failure count, in every process; then the group ends."""
    shares = [None] * world
    dist.all_gather_object(shares, (results, failures))
    dist.destroy_process_group()
    return [pair for share, _ in shares for pair in share], sum(count for _, count in shares)
