"""``ndgeo denoise apply`` and the denoise stage of ``ndgeo apply --denoise``.

Units. Every denoiser works on data mapped by one fixed affine map u = (y - data_min) / data_range,
where ``data_min`` and ``data_range`` are the min and max - min of the training pixels (stored in
the model file). That is the paper's [0, 1] convention, which unwrapped backbones need; WNE and
NE-arch are indifferent to it (they are normalization-equivariant).

Tiling (docs: shared notes wne.md section 8, option 1). WNE normalizes with one (mean, std) per
*instance*: a training patch when training, the whole scene at inference. The scene statistics are
computed once (masked, float64, one pass of :func:`ndgeo.engine.scene_statistics` on the
command's :class:`ndgeo.engine.Execution`) and given to every tile, the halo is the backbone's
receptive field rounded up to its ``tile_alignment`` and chunk origins are multiples of that
alignment, so the tiled output equals whole-scene inference. Invalid pixels are filled with the
scene mean before the backbone (0 in normalized space) and restored as nodata after.

A global backbone (its output depends on the whole input, e.g. global attention:
:attr:`ndgeo.nn.wne.WNE.is_global`) has no halo that makes tiles exact. It is run on the whole
scene as one block when the scene has at most ``max_whole_pixels`` pixels (default
:data:`WHOLE_SCENE_PIXELS`, 1024 x 1024), and refused otherwise: never silently seamful.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from ndgeo import engine
from ndgeo.checkpoint import cached_load, load_denoiser, match_model_bands
from ndgeo.device import one_torch_thread, resolve_device
from ndgeo.errors import NdgeoError
from ndgeo.io.raster import SUPPORTED_DTYPES, RasterInfo, check_nodata
from ndgeo.io.tiles import aligned_chunk_size, chunk_shape, halo_for
from ndgeo.nn.wne import WNE, receptive_field_of, run_denoiser

#: Largest scene (pixels) that a global denoiser runs on as one block: its activations then hold
#: the whole scene at once (attention: quadratic in it), far above what tiles need.
WHOLE_SCENE_PIXELS = 1024 * 1024


def model_halo(model: nn.Module) -> int | None:
    """The tiling halo of a denoiser: its receptive field rounded up to its tile alignment;
    ``None`` for a global backbone (no halo makes tiles exact)."""
    field = receptive_field_of(model)
    if field is None:
        return None
    return halo_for(int(field), int(getattr(model, "tile_alignment", 1)))


def whole_scene_chunk(model: nn.Module, image: RasterInfo, max_whole_pixels: int) -> int:
    """The chunk size running a global denoiser on all of ``image`` at once, or a one-line
    refusal when the scene is larger than ``max_whole_pixels``."""
    pixels = image.height * image.width
    name = type(getattr(model, "backbone", model)).__name__
    if pixels > max_whole_pixels:
        raise NdgeoError(
            f"the denoiser's backbone {name} is global (its measured receptive field reaches the "
            f"border of every probe), so tiles would show seams; {image.path} "
            f"({image.height} x {image.width} px) is larger than the {max_whole_pixels} px it may "
            "process whole: crop the scene or use a local backbone"
        )
    return max(image.height, image.width)


def _to_output(values: np.ndarray, valid: np.ndarray, dtype: str, nodata: float) -> np.ndarray:
    """Round and clip to ``dtype``; valid pixels never take the nodata value (moved by one step)."""
    kind = np.dtype(dtype).kind
    if kind in "iu":
        limits = np.iinfo(dtype)
        values = np.clip(np.rint(values.astype(np.float64)), limits.min, limits.max)
    if math.isnan(nodata):
        return values
    clash = valid[None] & (values == nodata)
    if kind in "iu":
        values[clash] = nodata + 1 if nodata < np.iinfo(dtype).max else nodata - 1
    else:
        values[clash] = np.nextafter(values.dtype.type(nodata), values.dtype.type(np.inf))
    return values


@dataclass
class DenoiseProcessor(engine.Processor):
    """Engine processor (and ``ndgeo apply --denoise`` stage) running one denoiser per block.

    Holds the scene statistics (data units, one value for joint pooling or one per band) and no
    weights: the model is loaded with :func:`ndgeo.checkpoint.cached_load` once per process.
    The statistics are computed by :meth:`prepare` (one pass over the image at ``positions``
    on the command's execution context) unless given. ``band_index`` picks the denoiser's
    bands out of a wider block (the classifier's, for ``apply --denoise``); other bands pass
    through unchanged. ``backbone`` is the user backbone class the user named (``--backbone``),
    which each worker imports to rebuild the model. ``whole_scene``: a global backbone, run on
    the whole scene as one chunk.
    """

    denoiser_path: str
    data_min: float
    data_range: float
    halo: int
    descriptions: list[str]
    positions: tuple[int, ...] = ()
    pooling: str = "joint"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    out_dtype: str = "float32"
    out_nodata: float = float("nan")
    device: str = "cpu"
    band_index: tuple[int, ...] | None = None
    backbone: str | None = None
    whole_scene: bool = False
    tags: dict = field(default_factory=dict)

    @property
    def out_count(self) -> int:
        return len(self.descriptions)

    def inputs(self) -> list[str]:
        return [self.denoiser_path]

    def prepare(self, image: RasterInfo, execution: engine.Execution | None = None) -> None:
        """Compute the scene statistics once (skipped when already set)."""
        if self.mean is not None:
            return
        self.use_statistics(engine.scene_statistics(image, self.positions,
                                                    execution=execution))

    def use_statistics(self, stats: dict) -> None:
        """Set the scene statistics from an :func:`ndgeo.stats.summary` dict."""
        if self.pooling == "band":
            self.mean, self.std = tuple(stats["mean"]), tuple(stats["std"])
        else:
            self.mean, self.std = (stats["joint_mean"],), (stats["joint_std"],)
        self.tags = {**self.tags, "NDGEO_SCENE_MEAN": ",".join(f"{v:.6g}" for v in self.mean),
                     "NDGEO_SCENE_STD": ",".join(f"{v:.6g}" for v in self.std)}

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (torch.tensor(self.mean, dtype=torch.float64) - self.data_min) / self.data_range
        std = torch.tensor(self.std, dtype=torch.float64) / self.data_range
        return mean.view(1, -1, 1, 1).to(device), std.view(1, -1, 1, 1).to(device)

    def denoise(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Denoised float32 copy of ``block`` (C, h, w), NaN (or the input) where invalid."""
        if self.band_index is not None:
            out = np.array(block, dtype=np.float32, copy=True)
            out[list(self.band_index)] = self.denoise_bands(block[list(self.band_index)], valid)
            return out
        return self.denoise_bands(block, valid)

    @torch.no_grad()
    def denoise_bands(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Denoise a block holding exactly the denoiser's bands."""
        device = resolve_device(self.device)
        if device.type == "cpu":
            one_torch_thread()
        if self.mean is None:
            raise RuntimeError("DenoiseProcessor used before its scene statistics were set")
        model = cached_load(self.denoiser_path,
                            partial(_load_denoiser_on, device=device, backbone=self.backbone),
                            key=("denoiser", str(device), self.backbone))
        y = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)[None]
        mask = torch.from_numpy(np.ascontiguousarray(valid)).to(device)[None, None]
        u = ((y.double() - self.data_min) / self.data_range).float()
        out = run_denoiser(model, u, mask, self._stats(device))
        out = (out.double() * self.data_range + self.data_min).float()
        out = torch.where(mask, out, y)
        return out[0].cpu().numpy()

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return _to_output(self.denoise(block, valid), valid, self.out_dtype, self.out_nodata)


def denoise_processor(
    denoiser_path: str | os.PathLike,
    image: RasterInfo,
    *,
    out_dtype: str = "same",
    device: str = "auto",
    chunk_size: int = 1024,
    backbone: str | None = None,
    max_whole_pixels: int = WHOLE_SCENE_PIXELS,
) -> tuple[DenoiseProcessor, list[int], int]:
    """Processor, input band positions and aligned chunk size for ``ndgeo denoise apply``.

    Bands are matched by name to the denoiser's. Nothing is read here: the scene statistics
    pass runs in :meth:`DenoiseProcessor.prepare`, inside the run. ``out_dtype="same"`` keeps
    the input type (rounded and clipped). Output nodata: the input's (it must fit the output
    type; a NaN one counts as none for integer output), else NaN for float output or the type's
    minimum for integer output. ``backbone``: the user backbone class the file records, named
    again by the user (see :func:`ndgeo.checkpoint.load_denoiser`). A global backbone runs on the
    whole scene (one chunk) up to ``max_whole_pixels`` and is refused above.
    """
    resolve_device(device)
    model, meta = load_denoiser(denoiser_path, backbone=backbone)
    positions = match_model_bands(meta, image)
    dtype = image.dtype if out_dtype == "same" else out_dtype
    if dtype not in SUPPORTED_DTYPES:
        raise NdgeoError(f"--dtype must be same or one of {', '.join(SUPPORTED_DTYPES)}, "
                         f"got {out_dtype!r}")
    integer = np.dtype(dtype).kind in "iu"
    if image.nodata is not None and not (integer and math.isnan(image.nodata)):
        nodata = image.nodata
        if not math.isnan(nodata):
            check_nodata(nodata, dtype, what=f"input nodata for --dtype {dtype}")
    else:  # no input nodata, or a NaN one that an integer type cannot hold
        nodata = float(np.iinfo(dtype).min) if integer else float("nan")
    halo = model_halo(model)
    whole = halo is None
    if whole:
        chunk, halo = whole_scene_chunk(model, image, max_whole_pixels), 0
    else:
        align = int(getattr(model, "tile_alignment", 1))
        chunk = aligned_chunk_size(chunk_size, image.block_shape, image.shape, align,
                                   name=image.path)
    processor = DenoiseProcessor(
        os.path.abspath(denoiser_path), float(meta["data_min"]), float(meta["data_range"]),
        halo, [image.bands[p].name for p in positions], positions=tuple(positions),
        pooling=model.pooling if isinstance(model, WNE) else "joint",
        out_dtype=dtype, out_nodata=nodata, device=device, backbone=backbone,
        whole_scene=whole, tags={"NDGEO_DENOISER": os.path.basename(denoiser_path)},
    )
    return processor, positions, chunk


def denoise_stage(
    denoiser_path: str | os.PathLike,
    image: RasterInfo,
    positions: Sequence[int],
    *,
    chunk_size: int,
    device: str = "auto",
    backbone: str | None = None,
) -> DenoiseProcessor:
    """The denoising stage of ``ndgeo apply --denoise``: ``.halo`` and ``.denoise(block, valid)``
    on blocks holding the image bands at ``positions`` (the classifier's).

    The denoiser's bands must be among them; its scene statistics are computed when the run
    prepares the classifier. ``chunk_size`` is the engine's: it must give tile origins on the
    denoiser's alignment.
    """
    processor, wanted, chunk = denoise_processor(
        denoiser_path, image, out_dtype="float32", device=device, chunk_size=chunk_size,
        backbone=backbone,
    )
    missing = [image.bands[p].name for p in wanted if p not in positions]
    if missing:
        raise NdgeoError(f"the denoiser needs band(s) {', '.join(missing)} that the model does "
                         f"not read; use a denoiser trained on the model's bands")
    if chunk_shape(chunk_size, image.block_shape, image.shape) != chunk_shape(
        chunk, image.block_shape, image.shape
    ):
        if processor.whole_scene:
            raise NdgeoError(f"the denoiser's backbone is global: it runs on the whole scene as "
                             f"one chunk; use --chunk-size {chunk}")
        raise NdgeoError(f"--chunk-size {chunk_size} breaks the denoiser's tile alignment; "
                         f"use --chunk-size {chunk}")
    processor.band_index = tuple(list(positions).index(p) for p in wanted)
    return processor


def _load_denoiser_on(path: str, device: torch.device, backbone: str | None = None) -> nn.Module:
    return load_denoiser(path, backbone=backbone)[0].to(device)
