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


_THREAD_LOCK = threading.Lock()


def one_torch_thread() -> None:
    """Run torch ops of the calling thread on one thread: the engine runs one task per core.

    With two torch threads inside each of two engine threads, CPU inference ran 3.6x slower
    (benchmarks/apply_throughput.py --profile), and results depended on the thread count.
    Processors call this at the start of every task. torch's OpenMP setting is per thread and
    others may change it (training restores its caller's count), so it is checked every time;
    the lock keeps two engine threads from changing it at once.
    """
    if torch.get_num_threads() == 1:
        return
    with _THREAD_LOCK:
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise NdgeoError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def run_batched(fn, x: np.ndarray, batch_size: int, device: torch.device, *,
                axis: int = 0) -> np.ndarray:
    """``fn`` over slices of ``x`` along ``axis`` in batches on ``device``; returns CPU numpy.

    ``axis=0``: rows of ``(N, C)`` pixels, ``fn`` returns ``(n, K)``; ``axis=1``: columns of
    band-major ``(C, N)`` pixels, ``fn`` returns ``(K, n)`` or ``(n,)``. Results keep ``fn``'s
    dtype (float results come back as float32) and are written into one preallocated array. On
    CPU a batch is a view of ``x`` (no copy); on CUDA it is copied to pinned memory (uint16 and
    uint32 as float32) and sent without blocking, and each result comes back before the next
    batch is sent.
    """
    n = x.shape[axis]
    cuda = device.type == "cuda"
    out: np.ndarray | None = None
    for part in batches(n, batch_size):
        index = (part,) if axis == 0 else (slice(None), part)
        if cuda:
            # torch's uint16/uint32 have little CUDA support: those become float32 on the host.
            host = x[index]
            dtype = np.float32 if host.dtype.kind == "u" and host.dtype.itemsize > 1 else None
            batch = torch.from_numpy(np.ascontiguousarray(host, dtype=dtype))
            batch = batch.pin_memory().to(device, non_blocking=True)
        else:
            batch = torch.from_numpy(x[index])
        result = fn(batch)
        if result.is_floating_point():
            result = result.float()
        result = result.cpu().numpy()
        if out is None:
            shape = list(result.shape)
            shape[0 if axis == 0 or result.ndim == 1 else 1] = n
            out = np.empty(shape, dtype=result.dtype)
        if axis == 0 or result.ndim == 1:
            out[part] = result
        else:
            out[:, part] = result
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out
