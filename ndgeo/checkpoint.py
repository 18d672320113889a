"""Safe model files: one safetensors file, weights plus plain-JSON metadata in its header.

Loading never unpickles: the header is JSON and tensors are raw bytes, so a model file cannot run
code. ``torch.save``/pickle files are recognised by their first bytes and refused.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import ndgeo
from ndgeo.errors import NdgeoError
from ndgeo.nn import build_model
from ndgeo.writer import atomic_path

#: Key of the ndgeo JSON document inside the safetensors ``__metadata__`` header.
METADATA_KEY = "ndgeo"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header size


def save_model(path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Write ``model``'s state dict and ``metadata`` to ``path`` atomically (temp file + rename).

    The stored JSON is ``metadata`` plus ``ndgeo_version`` and ``config`` (``model.config()``,
    which overrides any ``config`` given) and ``eps`` (from the config unless given).
    """
    if not callable(getattr(model, "config", None)):
        raise NdgeoError(f"{type(model).__name__} has no config(); only ndgeo models can be saved")
    config = model.config()
    meta = {**metadata, "ndgeo_version": ndgeo.__version__, "config": config}
    if "eps" in config:
        meta.setdefault("eps", config["eps"])
    try:
        header = {METADATA_KEY: json.dumps(meta)}
    except (TypeError, ValueError) as err:
        raise NdgeoError(f"model metadata is not JSON-serialisable: {err}") from err
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def _sniff(path: Path) -> None:
    """Refuse anything whose first bytes are not a complete safetensors JSON header (pickles,
    torch.save zips, truncated files) before safetensors parses it."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    n = struct.unpack("<Q", head[:8])[0] if len(head) == 9 else -1
    if 0 < n <= min(_MAX_HEADER, size - 8) and head[8:] == b"{":
        return
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise NdgeoError(
            f"{path} is a pickle/torch.save file; ndgeo never unpickles model files (they can run "
            f"code). Use a .safetensors model written by ndgeo"
        )
    raise NdgeoError(
        f"{path} is truncated or not a safetensors file ({size} bytes, header length {n})"
    )


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a file written by :func:`save_model`; returns ``(model in eval mode, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise NdgeoError(f"model file not found: {path}")
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            header = f.metadata() or {}
            if METADATA_KEY not in header:
                raise NdgeoError(f"{path} is a safetensors file without ndgeo metadata")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    except SafetensorError as err:
        raise NdgeoError(f"{path} is not a valid safetensors file: {err}") from err
    try:
        meta = json.loads(header[METADATA_KEY])
        config = meta["config"]
    except (ValueError, KeyError, TypeError) as err:
        raise NdgeoError(f"{path} has unreadable ndgeo metadata: {err!r}") from err
    model = build_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise NdgeoError(f"{path}: weights do not match config {config}: {err}") from err
    return model.to(map_location).eval(), meta
