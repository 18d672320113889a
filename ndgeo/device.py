"""Choosing the torch device from a ``--device`` option."""

from __future__ import annotations

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


def one_torch_thread() -> None:
    """Run torch on one thread in this process: the engine already runs one task per core.

    torch's thread count is process-wide, so it is set once; with two torch threads inside each
    of two engine threads, CPU inference ran 3.6x slower (benchmarks/apply_throughput.py
    --profile). Processors call this on their first CPU task.
    """
    global _ONE_THREAD
    if not _ONE_THREAD:
        torch.set_num_threads(1)
        _ONE_THREAD = True
