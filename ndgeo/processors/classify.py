"""``ndgeo apply``: a trained pixel classifier's class ids, probabilities or learned indices.

The processor is a small picklable object: the model file is loaded once per process with
:func:`ndgeo.checkpoint.cached_load`, and tasks only ever return CPU numpy arrays. On the CPU,
inputs without GDAL scale/offset run the folded weights in numpy (:mod:`ndgeo.kernels`,
bit-identical to the torch modules), so ``ndgeo apply`` imports torch only for a GPU, a
denoiser, scaled inputs or probability products (softmax).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ndgeo import kernels
from ndgeo.bands import Band
from ndgeo.checkpoint import cached_load, classifier_inference, load_classifier, match_model_bands
from ndgeo.device import device_kind, one_torch_thread, resolve_device, torch_op_alone
from ndgeo.engine import Processor
from ndgeo.errors import NdgeoError
from ndgeo.formula import formulas_from_coefficients, to_plain
from ndgeo.io.raster import RasterInfo, any_positive, physical_scaling
from ndgeo.io.writer import ClassInfo, classes_tag

#: Products of ``apply --products``: class values, class probabilities, the learned indices,
#: and per-pixel uncertainty: ``entropy`` of the probabilities (nats, 0..log C) and ``margin``
#: (top-1 minus top-2 probability, 0..1; OTB's confidence map); ``contributions``: for linear
#: heads, each learned index's term (weight x index) of the winning class logit.
OUTPUTS = ("class", "proba", "indices", "entropy", "margin", "contributions")


@dataclass
class ModelProcessor(Processor):
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
    classes: list | None = field(init=False)
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
            raise NdgeoError(f"--products must be among {', '.join(OUTPUTS)}, got "
                             f"{', '.join(bad or outputs) or 'nothing'}")
        if self.quantize_proba and outputs != ["proba"]:
            raise NdgeoError(
                f"--quantize writes probabilities as uint8 and applies to --products proba "
                f"alone; with --products {','.join(outputs)} the bands are "
                + ("stacked as float32" if len(outputs) > 1 else "not probabilities")
                + ": drop --quantize or write proba to its own file"
            )
        self.outputs = outputs
        kind = self.meta.get("config", {}).get("kind")
        if "indices" in outputs and kind != "nd":
            raise NdgeoError(f"--products indices needs an ND model; this model is {kind!r}")
        if "contributions" in outputs:
            _check_linear_head(self.meta)
        classes = self.meta.get("classes", [])
        self.class_names = [c["name"] for c in classes]
        n_classes = len(classes)
        n_indices = self.meta["config"].get("n_indices", 0)
        if self.meta["config"].get("pairs"):
            n_indices = len(self.meta["config"]["pairs"])
        counts = {"class": 1, "proba": n_classes, "indices": n_indices, "entropy": 1,
                  "margin": 1, "contributions": n_indices}
        self.out_count = sum(counts[o] for o in outputs)
        descriptions: list[str] = []
        for o in outputs:
            if o == "class":
                descriptions.append("class")
            elif o == "proba":
                descriptions += [f"proba_{name}" for name in self.class_names]
            elif o in ("entropy", "margin"):
                descriptions.append(o)
            elif o == "contributions":
                descriptions += [f"contribution_{d}" for d in list(self.index_descriptions)
                                 or [f"ND{k + 1}" for k in range(n_indices)]]
            else:
                descriptions += list(self.index_descriptions) or [
                    f"ND{k + 1}" for k in range(n_indices)
                ]
        self.descriptions = descriptions
        infos = class_infos(self.meta)
        self.class_values = np.array([c.value for c in infos], dtype=np.int64)
        self.tags = {"NDGEO_MODEL": os.path.basename(self.model_path),
                     "NDGEO_OUTPUTS": ",".join(outputs), **classes_tag(infos)}
        if "contributions" in outputs:  # the rest of each logit: contributions + bias = logit
            bias = _linear_head(self.model_path)[1]
            self.tags["NDGEO_CONTRIBUTION_BIAS"] = json.dumps(
                {name: float(b) for name, b in zip(self.class_names, bias, strict=True)})
        self.classes = None
        if outputs == ["class"]:
            self.out_dtype = "uint8" if self.class_values.max() <= 255 else "uint16"
            self.out_nodata = 0
            self.classes = infos
        elif outputs == ["proba"] and self.quantize_proba:
            self.out_dtype, self.out_nodata = "uint8", 255
            self.tags.update(SCALE="0.004", OFFSET="0", NDGEO_PROBA="value * 1/250")
        else:
            self.out_dtype, self.out_nodata = "float32", float("nan")
        # Blocks come in the file's type and become float32 batch by batch, in cache; a
        # denoiser works on the whole float block (NaN where invalid) first.
        self.raw_input = self.denoiser is None

    def _values(self, ids: np.ndarray) -> np.ndarray:
        """Output class values of class indices (``+ 1`` when they are 1..n in order)."""
        n = len(self.class_values)
        if np.array_equal(self.class_values, np.arange(1, n + 1)):
            return ids + 1
        return self.class_values[ids]

    def inputs(self) -> list[str]:
        return [self.model_path, *(self.denoiser.inputs() if self.denoiser else [])]

    def set_denoiser(self, stage: Processor) -> None:
        """Run ``stage`` (:func:`ndgeo.processors.denoise.denoise_stage`) on every block before
        the model, in the same pass; its halo becomes the run's."""
        self.denoiser = stage
        self.halo = stage.halo
        self.raw_input = False

    def prepare(self, image: RasterInfo, execution=None) -> None:
        """Note what the input type rules out and prepare the denoise stage (called once by the
        engine, before any task)."""
        if self.denoiser is not None:
            self.denoiser.prepare(image, execution)
        kind = np.dtype(image.dtype).kind
        exact = self.denoiser is None and self.scaling is None  # values reach the model as read
        # Unsigned pixels are never negative, so the clip at 0 is skipped.
        self.clip_negative = kind not in "u" or not exact
        # Unsigned with nodata 0: a pixel with any band at 0 is invalid already, so no pixel is
        # all <= 0 (after the clip) and the all-zero pass is skipped.
        self.check_all_zero = not (kind == "u" and image.nodata == 0) or not exact

    def _model(self, device):
        return cached_load(self.model_path, partial(_load_band_major, device=device),
                           key=("band-major", str(device)))

    def _kernels(self, device_type: str, pixels: np.ndarray):
        """``(class ids, logits, indices)`` functions of float32 band-major batches and the
        runner over the block's pixels: numpy on the CPU for unscaled input, else torch."""
        weights = classifier_inference(self.model_path)[2] if device_type == "cpu" else None
        if weights is not None and self.scaling is None:
            clip = self.clip_negative

            def run(fn) -> np.ndarray:
                def step(x: np.ndarray) -> np.ndarray:
                    return fn(kernels.clamp_min_zero(x) if clip else x)

                return kernels.run_columns(step, pixels, self.batch_size)

            return (lambda x: kernels.argmax_rows(kernels.forward(weights, x)),
                    partial(kernels.forward, weights), partial(kernels.indices, weights), run)
        import torch

        from ndgeo.nn.inference import DEVICE_BATCH, argmax_rows, run_batched, run_pipelined

        device = resolve_device(self.device)
        if device.type == "cpu":
            one_torch_thread()
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

        def run_torch(fn) -> np.ndarray:
            if device.type == "cuda":  # overlapped copies and compute, device-sized batches
                return run_pipelined(lambda b: fn(prepared(b)), pixels,
                                     max(self.batch_size, DEVICE_BATCH), device)
            return run_batched(lambda b: fn(prepared(b)), pixels, self.batch_size, device,
                               axis=1)

        # an MLP has no indices (``--products indices`` is refused for it before any pixel)
        indices = getattr(model, "indices", None)
        return lambda b: argmax_rows(model(b)), model, indices, run_torch

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        device_type = device_kind(self.device)
        if self.denoiser is not None:
            block = self.denoiser.denoise(block, valid)
        out = np.full((self.out_count, *block.shape[1:]), self.out_nodata, dtype=self.out_dtype)
        extra_mask = None  # pixels invalid here but not to the engine
        if self.check_all_zero:
            # Pixels with no band above 0 (physical units, after the clip) are nodata to
            # training (ndgeo.labels) too.
            nonzero = any_positive(block, self.scaling)
            if not nonzero.all():
                valid = extra_mask = valid & nonzero
        # Band-major (C, N) pixels: the whole block as a view when most pixels are valid (the
        # engine overwrites the results of the others), else a copy of the valid ones.
        gathered = np.count_nonzero(valid) < valid.size // 2
        pixels = block[:, valid] if gathered else block.reshape(block.shape[0], -1)
        if pixels.shape[1] == 0:
            return out
        classify, logits_of, indices_of, run = self._kernels(device_type, pixels)

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
            ids = run(classify)
            put(out[0], self._values(ids).astype(self.out_dtype, copy=False))
            return out
        # Logits from the model's own forward, as for class-only output (the indices output is
        # clamped to [-1, 1] and could move a tie by an ulp).
        logits = run(logits_of) if set(outputs) - {"indices"} else None
        proba = None
        if set(outputs) & {"proba", "entropy", "margin"}:
            import torch

            # One thread (softmax's vector/tail split depends on the thread count), while no
            # other engine thread changes that count.
            with torch_op_alone():
                proba = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
        indices = run(indices_of) if set(outputs) & {"indices", "contributions"} else None
        band = 0
        for o in outputs:
            if o == "class":
                ids = kernels.argmax_rows(logits)
                put(out[band], self._values(ids).astype(np.float32))
                band += 1
            elif o == "entropy":
                with np.errstate(divide="ignore", invalid="ignore"):
                    terms = np.where(proba > 0, -proba * np.log(proba), 0.0)
                put(out[band], terms.sum(axis=0, dtype=np.float32))
                band += 1
            elif o == "margin":
                top = np.sort(proba, axis=0)[-2:] if len(proba) > 1 else np.stack(
                    [np.zeros_like(proba[0]), proba[0]])
                put(out[band], top[1] - top[0])
                band += 1
            elif o == "proba":
                values = np.round(proba * 250) if self.out_dtype == "uint8" else proba
                for c in range(len(values)):
                    put(out[band + c], values[c])
                band += len(values)
            elif o == "contributions":
                weight = _linear_head(self.model_path)[0]
                terms = weight[kernels.argmax_rows(logits)].T * indices  # winner: first on ties
                for k in range(len(terms)):
                    put(out[band + k], terms[k])
                band += len(terms)
            else:
                for k in range(len(indices)):
                    put(out[band + k], indices[k])
                band += len(indices)
        return out


def _load_band_major(path: str, device):
    from ndgeo.nn.inference import band_major

    return band_major(load_classifier(path)[0]).to(device)


def class_infos(meta: dict) -> list[ClassInfo]:
    """The classes of a classifier file with their output values (``value``; files without
    one number their classes 1..n in order) and colours."""
    out = []
    for c in meta.get("classes", []):
        value = int(c.get("value", c["id"] + 1))
        out.append(ClassInfo(value, str(c["name"]), _rgb(c.get("color"))))
    return out


def _rgb(color) -> tuple[int, int, int]:
    if isinstance(color, str) and color.startswith("#") and len(color) == 7:
        return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    if isinstance(color, list | tuple) and len(color) >= 3:
        return tuple(int(v) for v in color[:3])  # type: ignore[return-value]
    return (128, 128, 128)


def model_processor(
    model_path: str | os.PathLike,
    image: RasterInfo,
    *,
    outputs: Sequence[str] = ("class",),
    batch_size: int = 16384,
    device: str = "auto",
    quantize_proba: bool = False,
) -> tuple[ModelProcessor, list[int]]:
    """Build the processor and input band positions for ``ndgeo apply``.

    The model file is read once here (for its metadata and formulas); workers load it again
    from ``model_path`` once per process. Bands are matched by name, never by position.
    A denoise stage is added with :meth:`ModelProcessor.set_denoiser`.
    """
    device_kind(device)  # fail early on --device cuda without a GPU
    meta, coefficients, _ = classifier_inference(model_path)
    positions = match_model_bands(meta, image)
    descriptions: list[str] = []
    if meta["config"]["kind"] == "nd":  # as ndgeo.formula.model_formulas gives them
        bands = [Band(b["name"], b.get("letter")) for b in meta["bands"]]
        descriptions = [to_plain(f) for f in formulas_from_coefficients(
            coefficients, bands, threshold=0.05, precision=3)]
    processor = ModelProcessor(
        os.path.abspath(model_path), meta, outputs=outputs, batch_size=batch_size,
        device=device, quantize_proba=quantize_proba, index_descriptions=descriptions,
        scaling=physical_scaling(image.scales, image.offsets, positions),
    )
    return processor, positions


def _check_linear_head(meta: dict) -> None:
    """Refuse ``--products contributions`` for a model whose logits are not a weighted sum of
    its first-layer indices."""
    config = meta.get("config", {})
    if config.get("kind") != "nd":
        raise NdgeoError(f"--products contributions needs an ND model with a linear head; "
                         f"this model is {config.get('kind')!r}")
    if config.get("head_hidden") or config.get("depth", 1) > 1:
        what = (f"an MLP head (hidden widths {config['head_hidden']})" if config.get(
            "head_hidden") else f"{config['depth']} ND layers")
        raise NdgeoError(
            f"--products contributions needs a linear head on the first-layer indices; this "
            f"model has {what}, so its logits are not a sum of per-index terms and no "
            "per-index contribution adds up to them (train with --head linear --depth 1)")


def _linear_head(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Effective head weights (n_classes, K) and bias (n_classes,) of a linear-head ND model,
    float32, with its normalisation folded in exactly as the band-major inference runs it."""
    return cached_load(path, _load_linear_head, key="linear-head")


def _load_linear_head(path: str) -> tuple[np.ndarray, np.ndarray]:
    from ndgeo.nn.inference import band_major

    model = band_major(load_classifier(path)[0])
    return (model.head_weights[0].detach().numpy().copy(),
            model.head_biases[0].detach().numpy()[:, 0].copy())
