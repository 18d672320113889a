"""The torch device of a run (``--device``), its thread count, and batch-by-batch inference."""

from __future__ import annotations

import threading

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
