"""The one authority on model files: saving, loading, what kind of model a file holds, which
image bands it reads, and a per-process cache of loaded models.

A model file is one safetensors file, weights plus plain-JSON metadata in its header. Loading
never unpickles: the header is JSON and tensors are raw bytes, so a model file cannot run code.
``torch.save``/pickle files are recognised by their first bytes and refused.

Two tasks exist: ``classifier`` (pixel classifiers, config kinds ``nd`` and ``mlp``; what
``train``, ``apply``, ``evaluate`` and ``formula`` take) and ``denoiser`` (metadata ``task:
"denoise"``; what ``denoise apply|evaluate`` and ``apply --denoise`` take).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError, safe_open

import ndgeo
from ndgeo.bands import select_bands
from ndgeo.errors import NdgeoError
from ndgeo.io.raster import RASTER_SUFFIXES, RasterInfo
from ndgeo.io.writer import atomic_path, write_error

if TYPE_CHECKING:  # torch is imported where a model is built: CPU apply never needs it
    import torch
    from torch import nn

    from ndgeo.kernels import BandMajorWeights

CLASSIFIER = "classifier"
DENOISER = "denoiser"
#: Config kinds of pixel classifiers; denoiser files carry ``"task": "denoise"``.
CLASSIFIER_KINDS = ("nd", "mlp")
DENOISE_TASK = "denoise"

#: Key of the ndgeo JSON document inside the safetensors ``__metadata__`` header.
METADATA_KEY = "ndgeo"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header size


def check_model_name(path: str | os.PathLike) -> None:
    """Refuse a model file name that ends like a raster (``-o scene.tif`` for a model)."""
    if Path(path).suffix.lower() in RASTER_SUFFIXES:
        raise NdgeoError(f"model file {path} ends in {Path(path).suffix}, as rasters do; name "
                         "it .safetensors (e.g. -o model.safetensors)")


def save_model(
    path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any], *,
    overwrite: bool = True,
) -> None:
    """Write ``model``'s state dict and ``metadata`` to ``path`` atomically (temp file, then
    published; an existing file is replaced only with ``overwrite``).

    The stored JSON is ``metadata`` plus ``ndgeo_version`` and ``config`` (``model.config()``,
    which overrides any ``config`` given) and ``eps`` (from the config unless given).
    """
    from safetensors.torch import save_file

    check_model_name(path)
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
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=header)
        except (OSError, SafetensorError) as exc:
            raise write_error(path, exc) from exc


def _sniff(path: Path) -> None:
    """Refuse anything whose first bytes are not a complete safetensors JSON header (pickles,
    torch.save zips, truncated files) before safetensors parses it."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    n = struct.unpack("<Q", head[:8])[0] if len(head) == 9 else -1
    if 0 < n <= min(_MAX_HEADER, size - 8) and head[8:] == b"{":
        return
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # (Big)TIFF magic
        raise NdgeoError(f"{path} is a GeoTIFF, not a model file; MODEL comes first "
                         "(e.g. ndgeo apply MODEL IMAGE -o OUT)")
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
    from ndgeo.nn import build_model

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
    except (ValueError, TypeError) as err:
        raise NdgeoError(f"{path} has unreadable ndgeo metadata: {err}") from err
    try:
        check_metadata(meta)
        try:
            model = build_model(meta["config"])
        except NdgeoError as err:
            raise ValueError(str(err)) from None
        _check_tensors(model, state)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:  # what the checks above missed: torch's first line
            raise ValueError(f"weights do not match the config: {str(err).splitlines()[0]}"
                             ) from None
    except ValueError as err:
        raise NdgeoError(f"{path} is not a valid ndgeo model file: {err}") from None
    return model.to(map_location).eval(), meta


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_metadata(meta: object) -> None:
    """Raise ValueError naming the first problem of a model file's ndgeo metadata: the
    schema (``config`` with a known kind, ``bands``, a classifier's ``classes``, a denoiser's
    statistics) and its agreement with the config (band and class counts)."""
    if not isinstance(meta, dict):
        raise ValueError(f"metadata must be a JSON object, got {type(meta).__name__}")
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str):
        raise ValueError("metadata 'config' must be an object with a 'kind'")
    task = meta.get("task")
    if task not in (None, DENOISE_TASK):
        raise ValueError(f"unknown task {task!r} (known: {DENOISE_TASK!r} or none)")
    kind = config["kind"]
    from ndgeo.nn.registry import MODEL_KINDS

    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: "
                         f"{', '.join(sorted(MODEL_KINDS))}")
    if task is None and kind not in CLASSIFIER_KINDS:
        raise ValueError(f"config kind {kind!r} is not a classifier ({', '.join(CLASSIFIER_KINDS)})"
                         f" and the file has no task {DENOISE_TASK!r}")
    if task == DENOISE_TASK and kind in CLASSIFIER_KINDS:
        raise ValueError(f"a denoiser file with the classifier config kind {kind!r}")
    if "eps" in meta and not (_number(meta["eps"]) and meta["eps"] > 0):
        raise ValueError(f"'eps' must be a positive number, got {meta['eps']!r}")
    bands = meta.get("bands")
    if not isinstance(bands, list) or not bands:
        raise ValueError("metadata 'bands' must be a non-empty list of {name, letter}")
    for i, band in enumerate(bands):
        if not isinstance(band, dict) or not isinstance(band.get("name"), str) or not band["name"]:
            raise ValueError(f"band {i} must be an object with a non-empty 'name', got {band!r}")
        if band.get("letter") is not None and not isinstance(band["letter"], str):
            raise ValueError(f"band {band['name']!r}: 'letter' must be a string or null")
    names = [b["name"] for b in bands]
    if len(set(names)) != len(names):
        raise ValueError(f"band names repeat: {', '.join(names)}")
    if task == DENOISE_TASK:
        _check_denoiser(meta, config, len(bands))
    else:
        _check_classifier(meta, config, len(bands))


def _check_classifier(meta: dict, config: dict, n_bands: int) -> None:
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ValueError("metadata 'classes' must be a non-empty list of {id, name, color}")
    values = []
    for i, entry in enumerate(classes):
        if not isinstance(entry, dict):
            raise ValueError(f"class {i} must be an object, got {entry!r}")
        if not _integer(entry.get("id")):
            raise ValueError(f"class {i} has no integer 'id': {entry!r}")
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"class {entry['id']} has no 'name'")
        color = entry.get("color")
        if color is not None and not _color(color):
            raise ValueError(f"class {entry['id']}: 'color' must be '#rrggbb' or [r, g, b], "
                             f"got {color!r}")
        value = entry.get("value", entry["id"] + 1)
        if not _integer(value) or not 1 <= value <= 65535:
            raise ValueError(f"class {entry['id']}: 'value' must be an integer 1..65535 (0 is "
                             f"nodata), got {value!r}")
        values.append(value)
    ids = sorted(c["id"] for c in classes)
    if ids != list(range(len(classes))):
        raise ValueError(f"class ids must be 0..{len(classes) - 1}, each once; got {ids}")
    if len(set(values)) != len(values):
        raise ValueError(f"class values repeat: {values}")
    for key, count, what in (("in_bands", n_bands, "bands"), ("n_classes", len(classes),
                                                               "classes")):
        if key in config and config[key] != count:
            raise ValueError(f"the model has {key}={config[key]!r} but the file lists {count} "
                             f"{what}")


def _color(color: object) -> bool:
    if isinstance(color, str):
        return len(color) == 7 and color[0] == "#" and all(
            c in "0123456789abcdefABCDEF" for c in color[1:])
    return (isinstance(color, list) and len(color) in (3, 4)
            and all(_integer(v) and 0 <= v <= 255 for v in color))


def _check_denoiser(meta: dict, config: dict, n_bands: int) -> None:
    for key in ("data_min", "data_range", "sigma"):
        if not _number(meta.get(key)):
            raise ValueError(f"denoiser metadata {key!r} must be a number, got {meta.get(key)!r}")
    for key in ("data_range", "sigma"):
        if meta[key] <= 0:
            raise ValueError(f"denoiser metadata {key!r} must be > 0, got {meta[key]!r}")
    for key in ("halo", "receptive_field", "tile_alignment"):
        if meta.get(key) is not None and not (_integer(meta[key]) and meta[key] >= 0):
            raise ValueError(f"denoiser metadata {key!r} must be an integer >= 0, got "
                             f"{meta[key]!r}")
    backbone = config.get("backbone") if isinstance(config.get("backbone"), dict) else config
    if "channels" in backbone and backbone["channels"] != n_bands:
        raise ValueError(f"the denoiser has channels={backbone['channels']!r} but the file lists "
                         f"{n_bands} bands")
    if backbone.get("kind") == "user":
        path = backbone.get("class")
        if not (isinstance(path, str) and ":" in path and isinstance(backbone.get("args"), dict)
                and _integer(backbone.get("channels"))):
            raise ValueError("a user backbone config needs 'class' (pkg.module:Class), integer "
                             "'channels' and an 'args' object")
    if meta.get("receptive_field") is None and "receptive_field" in meta and not meta.get(
            "global_field"):
        raise ValueError("denoiser metadata 'receptive_field' is null but 'global_field' is not "
                         "true")


def _check_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The file's tensors are exactly the architecture's: names, shapes, finite values."""
    import torch

    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise ValueError(f"tensor {name!r} of the architecture is missing")
        found = state[name]
        if tuple(found.shape) != tuple(tensor.shape):
            raise ValueError(f"tensor {name!r} has shape {tuple(found.shape)}, the architecture "
                             f"in the config needs {tuple(tensor.shape)}")
        if found.is_floating_point() != tensor.is_floating_point():
            raise ValueError(f"tensor {name!r} is {found.dtype}, the architecture needs "
                             f"{tensor.dtype}")
        if found.is_floating_point() and not bool(torch.isfinite(found).all()):
            raise ValueError(f"tensor {name!r} holds NaN or infinite values")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ValueError(f"tensor {extra[0]!r} is not part of the architecture in the config")


def model_task(meta: dict[str, Any]) -> str:
    """``classifier`` or ``denoiser``: what the file's metadata says it holds."""
    if meta.get("task") == DENOISE_TASK:
        return DENOISER
    if meta.get("config", {}).get("kind") in CLASSIFIER_KINDS:
        return CLASSIFIER
    return str(meta.get("config", {}).get("kind"))


def require_task(meta: dict[str, Any], task: str, path: str | os.PathLike) -> None:
    """Refuse a model file that holds another task than ``task`` (one line)."""
    found = model_task(meta)
    if found == task:
        return
    if task == CLASSIFIER:
        raise NdgeoError(
            f"{path} is a {found} model, not a pixel classifier; denoisers go to "
            "`ndgeo denoise apply|evaluate` or `ndgeo apply --denoise`"
        )
    raise NdgeoError(f"{path} is not a denoiser (made by `ndgeo denoise train`)")


def load_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """:func:`load_model` for pixel classifiers only."""
    model, meta = load_model(path, map_location)
    require_task(meta, CLASSIFIER, path)
    return model, meta


def load_denoiser(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
    backbone: str | None = None,
):
    """:func:`load_model` for denoisers only.

    A file whose backbone is a user class (config kind ``user``) is rebuilt only when
    ``backbone`` names that same class (``--backbone pkg.module:Class``): then, and only then,
    the class is imported. Loading never imports a module that the file names by itself.
    """
    recorded = _user_backbone_of(_header_metadata(Path(path)))
    if recorded != backbone:
        if recorded is None:
            raise NdgeoError(f"--backbone {backbone} names a user backbone class, but {path} "
                             "holds a built-in one; drop --backbone")
        hint = "" if backbone is None else f" (not {backbone})"
        raise NdgeoError(f"{path} holds the user backbone {recorded}; loading a file never "
                         f"imports the code it names: pass --backbone {recorded}{hint} to "
                         "rebuild it (that imports and runs its module)")
    from ndgeo.nn.denoisers import user_backbone_allowed

    with user_backbone_allowed(backbone):
        model, meta = load_model(path, map_location)
    require_task(meta, DENOISER, path)
    return model, meta


def _header_metadata(path: Path) -> dict[str, Any]:
    """The ndgeo metadata of a model file (header only, no tensors; {} when unreadable, which
    :func:`load_model` then reports)."""
    try:
        _sniff(path)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
    except (OSError, NdgeoError, SafetensorError, ValueError, TypeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _user_backbone_of(meta: dict[str, Any]) -> str | None:
    """The class path of a denoiser file's user backbone, or None for a built-in one."""
    config = meta.get("config")
    if not isinstance(config, dict):
        return None
    if config.get("kind") == "wne" and isinstance(config.get("backbone"), dict):
        config = config["backbone"]
    if config.get("kind") != "user":
        return None
    return str(config.get("class"))


def match_model_bands(meta: dict[str, Any], image: RasterInfo) -> list[int]:
    """Positions in ``image`` of the model's bands, matched by name (or ASI letter)."""
    wanted = [b.get("letter") or b["name"] for b in meta.get("bands", [])]
    names = [b["name"] for b in meta.get("bands", [])]
    if not wanted:
        raise NdgeoError("the model file lists no bands")
    try:
        return select_bands(names, image.bands)
    except NdgeoError:
        pass
    try:
        return select_bands(wanted, image.bands)
    except NdgeoError as err:
        raise NdgeoError(f"{err} (the model needs: {', '.join(names)})") from None


#: Models kept per process: a job needs one or two (classifier, denoiser); a long-lived
#: distributed worker serving many jobs keeps only the most recently used ones.
CACHE_SIZE = 4
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = Lock()


def cached_load(
    path: str | os.PathLike, loader: Callable[[str], Any], *, key: object = None
) -> Any:
    """``loader(path)`` once per process (keyed by path, mtime and ``key``), then cached.

    Processors call it inside ``__call__`` so each worker process loads a model once and no
    weights travel with the tasks. A file rewritten on disk (new mtime) is loaded again, and
    only the :data:`CACHE_SIZE` most recently used entries are kept. Every engine thread of the
    process shares the loaded object, so nothing may change it per call: a module's
    ``.to(device)`` reassigns its parameters even when they are already there, under a forward
    pass running in another thread. Load onto the device instead, with the device in ``key``.
    """
    path = os.path.abspath(os.fspath(path))
    cache_key = (path, os.stat(path).st_mtime_ns, key)
    with _CACHE_LOCK:
        if cache_key in _CACHE:
            _CACHE.move_to_end(cache_key)
        else:
            _CACHE[cache_key] = loader(path)
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
        return _CACHE[cache_key]


# -- the torch-free inference form of a classifier file -------------------------------------

#: Bumped whenever what :func:`classifier_inference` stores changes, or how :mod:`ndgeo.kernels`
#: computes (an entry's ``exact`` flag is a verdict on the kernels of its day).
_INFERENCE_FORMAT = 3


def _machine_fingerprint() -> str:
    """What decides whether the numpy kernels reproduce torch here: CPU model and flags,
    torch and numpy versions, ``MKL_CBWR``. Read without importing torch; part of the key of
    a cache entry, so an entry made on another CPU or torch (shared home) is not trusted."""
    import hashlib
    import platform
    import re
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "-"

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            info = f.read(1 << 16)
        # x86: model name, flags; ARM: implementer, part, features (first core's lines)
        fields = r"model name|flags|CPU implementer|CPU part|Features"
        cpu = "".join(dict.fromkeys(re.findall(rf"^(?:{fields})\s*:.*$", info, re.M))) or cpu
    except OSError:
        pass
    parts = (platform.machine(), cpu, version("torch"), np.__version__,
             os.environ.get("MKL_CBWR", ""))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def inference_cache_dir() -> Path | None:
    """Where folded classifier weights are kept between runs: ``$NDGEO_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ndgeo`` or ``~/.cache/ndgeo``; ``NDGEO_CACHE_DIR=""`` turns it off."""
    explicit = os.environ.get("NDGEO_CACHE_DIR")
    if explicit is not None:
        return Path(explicit) / "models" if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ndgeo" / "models"


def classifier_inference(
    path: str | os.PathLike,
) -> tuple[dict, list, BandMajorWeights | None]:
    """``(metadata, index coefficients, folded band-major weights)`` of a classifier file.

    The weights are what :func:`ndgeo.nn.inference.band_major` folds (the coefficients what
    ``model.index_coefficients`` gives, ``[]`` for an MLP), computed with torch on the first
    call for a file's content and then kept per process and in :func:`inference_cache_dir`
    under the file's SHA-256 and this machine's fingerprint (CPU, torch, numpy, ``MKL_CBWR``),
    so later CPU runs read the numbers without importing torch.
    A file is validated whole (:func:`load_classifier`) before anything of it is cached; a
    cache entry is trusted because its key is the content it was made from. The weights are
    None when :mod:`ndgeo.kernels` did not reproduce the torch module bit for bit on
    :func:`ndgeo.kernels.probe_pixels` on this machine (its CPU runs then stay on torch).
    """
    return cached_load(path, _classifier_inference, key="inference")


def _classifier_inference(path: str) -> tuple[dict, list, BandMajorWeights]:
    import hashlib

    file = Path(path)
    if not file.is_file():
        raise NdgeoError(f"model file not found: {file}")
    _sniff(file)  # a GeoTIFF given as MODEL is refused before it is read whole
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    cache = inference_cache_dir()
    entry = (None if cache is None
             else cache / f"{digest}.{_machine_fingerprint()}.v{_INFERENCE_FORMAT}.npz")
    if entry is not None and entry.is_file():
        try:
            return _read_inference(entry)
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry: rebuild it
    from ndgeo.nn.inference import band_major

    model, meta = load_classifier(file)
    weights = _exact_weights(band_major(model))
    coefficients: list = []
    if callable(getattr(model, "index_coefficients", None)):
        coefficients = model.index_coefficients([b["name"] for b in meta["bands"]])
    if entry is not None and hashlib.sha256(file.read_bytes()).hexdigest() == digest:
        _write_inference(entry, meta, coefficients, weights)
    return meta, coefficients, weights


def _exact_weights(net) -> BandMajorWeights | None:
    """``net``'s numpy weights in the first :mod:`ndgeo.kernels` layout (pixel-major, then
    band-major) that gives its exact logits and indices, else None."""
    import dataclasses

    import torch

    from ndgeo import kernels

    weights = net.numpy_weights()
    width = weights.first.shape[1] if weights.first is not None else weights.weights[0].shape[1]
    x = kernels.probe_pixels(width)
    with torch.no_grad():
        want = [net(torch.from_numpy(x)).numpy()]
        if weights.kind == "nd":
            want.append(net.indices(torch.from_numpy(x)).numpy())
    for layout in ("pixels", "bands"):
        candidate = dataclasses.replace(weights, layout=layout)
        got = [kernels.run_columns(partial(kernels.forward, candidate), x)]
        if weights.kind == "nd":
            got.append(kernels.run_columns(partial(kernels.indices, candidate), x))
        if all(np.array_equal(a.view(np.uint32), b.view(np.uint32))
               for a, b in zip(got, want, strict=True)):
            return candidate
    return None


def _read_inference(entry: Path) -> tuple[dict, list, BandMajorWeights | None]:
    from ndgeo.kernels import BandMajorWeights

    with np.load(entry, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    doc = json.loads(str(arrays.pop("__json__")))
    weights = BandMajorWeights.from_arrays(arrays) if doc["exact"] else None
    return doc["meta"], doc["coefficients"], weights


def _write_inference(entry: Path, meta: dict, coefficients: list, weights) -> None:
    """Store an entry atomically; a cache that cannot be written is only a slower next run."""
    import logging
    import tempfile

    doc = json.dumps({"meta": meta, "coefficients": coefficients, "exact": weights is not None})
    arrays = weights.to_arrays() if weights is not None else {}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, __json__=np.array(doc), **arrays)
            os.replace(tmp, entry)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        logging.getLogger(__name__).debug("model cache not written (%s): %s", entry, exc)
