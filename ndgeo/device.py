"""The torch device of a run (``--device``), its thread count, and batch-by-batch inference."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import torch

from ndgeo.errors import NdgeoError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise NdgeoError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise NdgeoError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


_ONE_THREAD = False
_ONE_THREAD_LOCK = threading.Lock()


def one_torch_thread() -> None:
    """Run torch on one thread in this process: the engine already runs one task per core.

    torch's thread count is process-wide, so it is set once; with two torch threads inside each
    of two engine threads, CPU inference ran 3.6x slower (benchmarks/apply_throughput.py
    --profile). Processors call this before any torch work of a task. The lock makes every
    other engine thread wait until the count is set, so it never changes under a running op.
    """
    global _ONE_THREAD
    with _ONE_THREAD_LOCK:
        if not _ONE_THREAD:
            torch.set_num_threads(1)
            _ONE_THREAD = True


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise NdgeoError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def run_batched(fn, x: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """``fn`` over rows of ``x`` (N, C) in batches on ``device``; returns CPU float32 (N, K).

    On CUDA the host batch is pinned and copied without blocking; each batch's result comes
    back to the CPU before the next batch is sent (no overlap between batches).
    """
    outs = []
    cuda = device.type == "cuda"
    for part in batches(len(x), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(x[part]))
        if cuda:
            batch = batch.pin_memory().to(device, non_blocking=True)
        outs.append(fn(batch).float().cpu().numpy())
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs, axis=0)
