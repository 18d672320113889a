"""The torch device of a run (``--device``) and its thread count.

Importing this module does not import torch: :func:`device_kind` answers ``cpu`` for
``--device cpu`` and for ``auto`` on a Linux machine without an NVIDIA driver, so CPU commands
that need no torch (``ndgeo apply`` on the CPU, see :mod:`ndgeo.kernels`) never load it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ndgeo.errors import NdgeoError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if device not in DEVICES:
        raise NdgeoError(f"--device must be auto, cpu or cuda, got {device!r}")
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise NdgeoError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def _no_nvidia_driver() -> bool:
    """True when this is Linux and no NVIDIA kernel driver is loaded (so CUDA cannot work)."""
    return sys.platform.startswith("linux") and not (
        os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")
    )


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda``: where ``device`` runs, validated as :func:`resolve_device` does,
    without importing torch when the answer is the CPU for certain."""
    if device == "cpu" or (device == "auto" and _no_nvidia_driver()):
        return "cpu"
    return resolve_device(device).type


_THREAD_LOCK = threading.Lock()


def one_torch_thread() -> None:
    """Run torch ops of the calling thread on one thread: the engine runs one task per core.

    With two torch threads inside each of two engine threads, CPU inference ran 3.6x slower
    (benchmarks/apply_throughput.py --profile), and results depended on the thread count.
    Processors call this at the start of every task. torch's OpenMP setting is per thread and
    others may change it (training restores its caller's count), so it is checked every time;
    the lock keeps two engine threads from changing it at once.
    """
    import torch

    if torch.get_num_threads() == 1:
        return
    with _THREAD_LOCK:
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)


@contextmanager
def torch_op_alone() -> Iterator[None]:
    """One torch op on one thread while no other engine thread changes torch's thread count:
    :func:`one_torch_thread`, then the op under the same lock (a ``set_num_threads`` in
    another thread during a parallel op is not something torch promises to survive)."""
    one_torch_thread()
    with _THREAD_LOCK:
        yield
