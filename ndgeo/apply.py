"""Processors that turn the engine's blocks into model outputs or index values.

``ndgeo apply`` (a trained pixel model), ``ndgeo index`` (catalogue or exported formulas) and
``ndgeo denoise apply`` all run on :func:`ndgeo.engine.run`; this module holds what they run.
Processors are small picklable objects: model files are loaded once per process with
:func:`ndgeo.engine.cached_load`, and tasks only ever return CPU numpy arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from ndgeo.bands import select_bands
from ndgeo.checkpoint import load_model
from ndgeo.device import one_torch_thread, resolve_device, run_batched
from ndgeo.engine import cached_load
from ndgeo.errors import NdgeoError
from ndgeo.formula import (
    catalogue_constants,
    catalogue_expression,
    evaluate,
    expression_variables,
    model_formulas,
    to_plain,
)
from ndgeo.nn.inference import argmax_rows, band_major
from ndgeo.raster import RasterInfo, physical_scaling

OUTPUTS = ("class", "proba", "indices")


def require_classifier(meta: dict, path: str | os.PathLike) -> str:
    """The model kind (``nd`` or ``mlp``); any other model file is a user error."""
    kind = meta.get("config", {}).get("kind")
    if kind not in ("nd", "mlp"):
        raise NdgeoError(
            f"{path} is a {kind!r} model, not a pixel classifier; denoisers go to "
            "`ndgeo denoise apply|evaluate` or `ndgeo apply --denoise`"
        )
    return kind


def match_model_bands(meta: dict, image: RasterInfo) -> list[int]:
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


@dataclass
class ModelProcessor:
    """Per-pixel model outputs: ``class`` ids, class ``proba`` and/or first-layer ``indices``.

    With one output the file keeps its natural type (uint8/uint16 classes with a colour table;
    float32 or uint8-quantised probabilities; float32 indices). With several, the bands are
    stacked in the order given as float32.
    """

    model_path: str
    meta: dict
    outputs: Sequence[str] = ("class",)
    batch_size: int = 16384
    device: str = "cpu"
    quantize_proba: bool = False
    index_descriptions: Sequence[str] = ()
    denoiser: object | None = None
    halo: int = 0
    out_count: int = field(init=False)
    out_dtype: str = field(init=False)
    out_nodata: float = field(init=False)
    descriptions: list[str] = field(init=False)
    tags: dict = field(init=False)
    colormap: dict | None = field(init=False)
    clip_negative: bool = field(init=False, default=True)
    check_all_zero: bool = field(init=False, default=True)
    raw_input: bool = field(init=False, default=True)
    #: (scale, offset) per input band from the file's GDAL metadata, None for raw = physical.
    scaling: tuple | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:  # checked here, not in the first task: fail before any I/O
            raise NdgeoError(f"--batch-size must be >= 1, got {self.batch_size}")
        outputs = list(dict.fromkeys(self.outputs))
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad or not outputs:
            raise NdgeoError(f"--output must be among {', '.join(OUTPUTS)}, got {bad or outputs}")
        self.outputs = outputs
        kind = self.meta.get("config", {}).get("kind")
        if "indices" in outputs and kind != "nd":
            raise NdgeoError(f"--output indices needs an ND model; this model is {kind!r}")
        classes = self.meta.get("classes", [])
        self.class_names = [c["name"] for c in classes]
        n_classes = len(classes)
        n_indices = self.meta["config"].get("n_indices", 0)
        if self.meta["config"].get("pairs"):
            n_indices = len(self.meta["config"]["pairs"])
        counts = {"class": 1, "proba": n_classes, "indices": n_indices}
        self.out_count = sum(counts[o] for o in outputs)
        descriptions: list[str] = []
        for o in outputs:
            if o == "class":
                descriptions.append("class")
            elif o == "proba":
                descriptions += [f"proba_{name}" for name in self.class_names]
            else:
                descriptions += list(self.index_descriptions) or [
                    f"ND{k + 1}" for k in range(n_indices)
                ]
        self.descriptions = descriptions
        class_map = {str(c["id"] + 1): c["name"] for c in classes}
        self.tags = {"NDGEO_MODEL": os.path.basename(self.model_path),
                     "NDGEO_OUTPUTS": ",".join(outputs),
                     "CLASSES": json.dumps(class_map)}
        self.colormap = None
        if outputs == ["class"]:
            self.out_dtype = "uint8" if n_classes <= 254 else "uint16"
            self.out_nodata = 0
            self.colormap = {0: (0, 0, 0, 0)}
            for c in classes:
                self.colormap[c["id"] + 1] = tuple(_rgb(c.get("color"))) + (255,)
        elif outputs == ["proba"] and self.quantize_proba:
            self.out_dtype, self.out_nodata = "uint8", 255
            self.tags.update(SCALE="0.004", OFFSET="0", NDGEO_PROBA="value * 1/250")
        else:
            self.out_dtype, self.out_nodata = "float32", float("nan")
        # Blocks come in the file's type and become float32 batch by batch, in cache; a
        # denoiser works on the whole float block (NaN where invalid) first.
        self.raw_input = self.denoiser is None

    def prepare(self, image: RasterInfo) -> None:
        """Note what the input type rules out (called once by the engine, before any task)."""
        kind = np.dtype(image.dtype).kind
        exact = self.denoiser is None and self.scaling is None  # values reach the model as read
        # Unsigned pixels are never negative, so the clip at 0 is skipped.
        self.clip_negative = kind not in "u" or not exact
        # Unsigned with nodata 0: a pixel with any band at 0 is invalid already, so no pixel is
        # all <= 0 (after the clip) and the all-zero pass is skipped.
        self.check_all_zero = not (kind == "u" and image.nodata == 0) or not exact

    def _model(self, device: torch.device):
        return cached_load(self.model_path, partial(_load_band_major, device=device),
                           key=("band-major", str(device)))

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        device = resolve_device(self.device)
        if device.type == "cpu":
            one_torch_thread()
        if self.denoiser is not None:
            block = self.denoiser.denoise(block, valid)
        out = np.full((self.out_count, *block.shape[1:]), self.out_nodata, dtype=self.out_dtype)
        extra_mask = None  # pixels invalid here but not to the engine
        if self.check_all_zero:
            # Pixels with no band above 0 (physical units, after the clip) are nodata to
            # training (ndgeo.labels) too.
            nonzero = _any_positive(block, self.scaling)
            if not nonzero.all():
                valid = extra_mask = valid & nonzero
        # Band-major (C, N) pixels: the whole block as a view when most pixels are valid (the
        # engine overwrites the results of the others), else a copy of the valid ones.
        gathered = np.count_nonzero(valid) < valid.size // 2
        pixels = block[:, valid] if gathered else block.reshape(block.shape[0], -1)
        if pixels.shape[1] == 0:
            return out
        model = self._model(device)

        scale = offset = None
        if self.scaling is not None:
            scale, offset = (torch.tensor(v, dtype=torch.float32, device=device)[:, None]
                             for v in self.scaling)

        def prepared(b: torch.Tensor) -> torch.Tensor:
            # float32 batches in physical units; reflectance below 0 is clipped to 0, as in
            # training.
            x = b.float()
            if scale is not None:
                x = torch.addcmul(offset, x, scale)
            return x.clamp_min(0) if self.clip_negative else x

        def run(fn) -> np.ndarray:
            return run_batched(lambda b: fn(prepared(b)), pixels, self.batch_size, device, axis=1)

        def put(dst: np.ndarray, values: np.ndarray) -> None:
            # Masked pixels may hold NaN; the engine overwrites them, so no cast warning.
            with np.errstate(invalid="ignore"):
                _put(dst, values)

        def _put(dst: np.ndarray, values: np.ndarray) -> None:
            if gathered:
                dst[valid] = values
            elif extra_mask is None:
                dst[...] = values.reshape(dst.shape)
            else:
                np.copyto(dst, values.reshape(dst.shape), where=extra_mask, casting="unsafe")

        outputs = self.outputs
        if outputs == ["class"]:
            put(out[0], run(lambda b: argmax_rows(model(b))).astype(self.out_dtype) + 1)
            return out
        # Logits from the model's own forward, as for class-only output (the indices output is
        # clamped to [-1, 1] and could move a tie by an ulp).
        logits = run(model) if "class" in outputs or "proba" in outputs else None
        indices = run(model.indices) if "indices" in outputs else None
        band = 0
        for o in outputs:
            if o == "class":
                put(out[band], argmax_rows(torch.from_numpy(logits)).numpy() + 1.0)
                band += 1
            elif o == "proba":
                proba = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
                values = np.round(proba * 250) if self.out_dtype == "uint8" else proba
                for c in range(len(values)):
                    put(out[band + c], values[c])
                band += len(values)
            else:
                for k in range(len(indices)):
                    put(out[band + k], indices[k])
                band += len(indices)
        return out


def _any_positive(block: np.ndarray, scaling: tuple | None) -> np.ndarray:
    """Pixels of ``block`` (C, h, w) with a band above 0 in physical units."""
    if scaling is None:
        return (block > 0).any(axis=0)
    positive = np.zeros(block.shape[1:], dtype=bool)
    with np.errstate(invalid="ignore"):
        for band, scale, offset in zip(block, *scaling, strict=True):
            positive |= band > -offset / scale  # scale > 0 (physical_scaling checks it)
    return positive


def _load_band_major(path: str, device: torch.device):
    return band_major(load_model(path)[0]).to(device)


def _rgb(color) -> tuple[int, int, int]:
    if isinstance(color, str) and color.startswith("#") and len(color) == 7:
        return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    if isinstance(color, list | tuple) and len(color) >= 3:
        return tuple(int(v) for v in color[:3])  # type: ignore[return-value]
    return (128, 128, 128)


@dataclass
class IndexProcessor:
    """Band-math formulas (catalogue indices or exported learned ones) as float32 bands."""

    expressions: Sequence[tuple[str, str]]  # (name, formula)
    variables: Sequence[str]  # formula variable of each input band, in engine band order
    constants: dict = field(default_factory=dict)
    halo: int = 0
    out_dtype: str = "float32"
    out_nodata: float = float("nan")
    #: (scale, offset) per input band from the file's GDAL metadata or --scale/--offset.
    scaling: tuple | None = None

    def __post_init__(self) -> None:
        self.out_count = len(self.expressions)
        self.descriptions = [f"{name} = {text}" for name, text in self.expressions]
        self.tags = {"NDGEO_INDICES": json.dumps(dict(self.expressions))}
        if self.scaling is not None:
            self.tags["NDGEO_INPUT_SCALING"] = json.dumps(
                dict(zip(self.variables, zip(*self.scaling, strict=True), strict=True))
            )

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.scaling is None:
            arrays = {var: block[i] for i, var in enumerate(self.variables)}
        else:
            gains, shifts = self.scaling
            arrays = {var: block[i] * gains[i] + shifts[i]
                      for i, var in enumerate(self.variables)}
        out = np.stack([evaluate(text, arrays, self.constants) for _, text in self.expressions])
        out = out.astype(np.float32)
        out[~np.isfinite(out)] = np.nan
        return out


def index_processor(
    image: RasterInfo,
    *,
    names: Sequence[str] = (),
    formulas: Sequence[str] = (),
    formula_file: str | os.PathLike | None = None,
) -> tuple[IndexProcessor, list[int]]:
    """Build the processor and input band positions for ``ndgeo index``.

    ``names`` are spyndex catalogue indices (with their default constants); ``formulas`` are
    ``NAME=EXPR`` or bare expressions over band names or ASI letters; ``formula_file`` is a JSON
    document in the Awesome Spectral Indices layout (as ``ndgeo formula --format asi`` writes).
    """
    exprs: list[tuple[str, str]] = []
    constants: dict[str, float | None] = {}
    for name in names:
        text, _, consts = catalogue_expression(name)
        exprs.append((name, text))
        constants.update(consts)
    for k, text in enumerate(formulas, start=1):
        label, sep, body = text.partition("=")
        if sep and label.strip().isidentifier() and body.strip():
            exprs.append((label.strip(), body.strip()))
        else:
            exprs.append((f"F{k}", text.strip()))
    if formula_file is not None:
        exprs += _read_formula_file(formula_file)
    if not exprs:
        raise NdgeoError("give at least one --name, --formula or --formula-file")
    known_constants = catalogue_constants()
    variables: list[str] = []
    for _, text in exprs:
        for var in sorted(expression_variables(text)):
            if var in known_constants and known_constants[var] is not None:
                constants.setdefault(var, known_constants[var])
            elif var not in variables:
                variables.append(var)
    positions = select_bands(variables, image.bands)
    scaling = physical_scaling(image.scales, image.offsets, positions)
    return IndexProcessor(exprs, variables, constants, scaling=scaling), positions


def _read_formula_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise NdgeoError(f"formula file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise NdgeoError(f"cannot read formula file {path}: {err}") from None
    entries = doc.get("SpectralIndices") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise NdgeoError(
            f"{path} is not an Awesome Spectral Indices document "
            '({"SpectralIndices": {NAME: {"formula": ...}}})'
        )
    out = []
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("formula"), str):
            raise NdgeoError(f"{path}: entry {key!r} has no formula")
        out.append((str(entry.get("short_name", key)), entry["formula"]))
    return out


def model_processor(
    model_path: str | os.PathLike,
    image: RasterInfo,
    *,
    outputs: Sequence[str] = ("class",),
    batch_size: int = 16384,
    device: str = "auto",
    quantize_proba: bool = False,
    denoiser: str | os.PathLike | None = None,
    chunk_size: int = 1024,
    compute_stats: bool = True,
    scheduler: object = None,
    workers: int | None = None,
    gdal_env: dict | None = None,
) -> tuple[ModelProcessor, list[int]]:
    """Build the processor and input band positions for ``ndgeo apply``.

    The model file is read once here (for its metadata and formulas); workers load it again
    from ``model_path`` once per process. Bands are matched by name, never by position. With a
    ``denoiser``, the scene statistics pass runs here on ``scheduler`` / ``workers`` with
    ``gdal_env``, as the run will, unless ``compute_stats`` is False (dry runs).
    """
    resolve_device(device)  # fail early on --device cuda without a GPU
    model, meta = load_model(model_path)
    kind = require_classifier(meta, model_path)
    positions = match_model_bands(meta, image)
    descriptions: list[str] = []
    if kind == "nd":
        descriptions = [to_plain(f) for f in model_formulas(model, meta)]
    stage = None
    halo = 0
    if denoiser is not None:
        from ndgeo.denoise import denoise_stage

        stage = denoise_stage(denoiser, image, positions, chunk_size=chunk_size, device=device,
                              compute_stats=compute_stats, scheduler=scheduler,
                              workers=workers, gdal_env=gdal_env)
        halo = stage.halo
    processor = ModelProcessor(
        os.path.abspath(model_path), meta, outputs=outputs, batch_size=batch_size,
        device=device, quantize_proba=quantize_proba, index_descriptions=descriptions,
        denoiser=stage, halo=halo,
        scaling=physical_scaling(image.scales, image.offsets, positions),
    )
    return processor, positions

