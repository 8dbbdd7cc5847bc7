"""A user network (``network: {type: python, factory: gpu_oom_net.py:build}``) whose first trained trial runs
out of GPU memory: the acceptance's check that such a trial ends FAIL with the reason and that the worker frees
the memory and takes the next trial (scripts/gpu_paths.py, ``oom_path``).

On CUDA its first training step really holds half of the free GPU memory, then asks for more than the card has
(``torch.OutOfMemoryError``). Without CUDA (``--dry-run``) it raises the same exception without allocating, so
the worker's code path runs on the CPU too. Each ``build`` appends the process's GPU memory use to
``oom_probe.jsonl`` in the working directory: the build after the failed trial shows whether it was freed.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

_STATE = {"builds": 0, "failed": False}  # per process: only the first trained network runs out


class OutOfMemoryNet(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, 64), nn.ReLU(), nn.Linear(64, num_classes))
        self.held: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not _STATE["failed"]:
            _STATE["failed"] = True
            if x.is_cuda:
                free, total = torch.cuda.mem_get_info(x.device)
                self.held = torch.empty(free // 2, dtype=torch.uint8, device=x.device)  # the trial's memory
                _probe("held", held=free // 2)
                torch.empty(2 * total, dtype=torch.uint8, device=x.device)  # more than the card has
            raise torch.OutOfMemoryError("out of memory (simulated without CUDA)")
        return self.body(x)


def _probe(event: str, **extra: int) -> None:
    record: dict[str, object] = {"event": event, "pid": os.getpid(), "builds": _STATE["builds"], **extra}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record.update(allocated=torch.cuda.memory_allocated(), reserved=torch.cuda.memory_reserved())
    with open("oom_probe.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def build(in_features: int, num_classes: int, dropout: list[float], batch_norm: bool) -> nn.Module:
    _STATE["builds"] += 1
    _probe("build")
    return OutOfMemoryNet(in_features, num_classes)
