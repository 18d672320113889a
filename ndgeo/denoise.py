"""Denoising multispectral GeoTIFFs: training, tiled application and the noise-mismatch diagnostic.

Units. Every denoiser works on data mapped by one fixed affine map u = (y - data_min) / data_range,
where ``data_min`` and ``data_range`` are the min and max - min of the training pixels (stored in
the model file). That is the paper's [0, 1] convention, which unwrapped backbones need; WNE and
NE-arch are indifferent to it (they are normalization-equivariant). Noise levels (``sigma``) and
statistics are always reported and stored in data units.

Tiling (docs: shared notes wne.md section 8, option 1). WNE normalizes with one (mean, std) per
*instance*: a training patch when training, the whole scene at inference. The scene statistics are
computed once (masked, float64, one pass of :func:`ndgeo.engine.scene_statistics`) and given to
every tile, the halo is the backbone's receptive field rounded up to its ``tile_alignment`` and
chunk origins are multiples of that alignment, so the tiled output equals whole-scene inference.
Invalid pixels are filled with the scene mean before the backbone (0 in normalized space) and
restored as nodata after.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from ndgeo import engine
from ndgeo.apply import match_model_bands
from ndgeo.bands import select_bands
from ndgeo.checkpoint import load_model
from ndgeo.config import DenoiseConfig
from ndgeo.device import one_torch_thread, resolve_device
from ndgeo.errors import NdgeoError
from ndgeo.nn.denoisers import build_denoiser, start_at_identity
from ndgeo.nn.wne import WNE, wne_stats
from ndgeo.raster import SUPPORTED_DTYPES, RasterInfo, check_nodata, read_float_block

#: Metadata ``task`` of denoiser files (classifier files have none).
TASK = "denoise"

# --------------------------------------------------------------------------- noise levels


def parse_sigma(
    text: str | float, *, data_range: float, train_sigma: float | None = None
) -> float:
    """A noise level in data units from ``'150'`` (data units), ``'2%'`` (of ``data_range``) or,
    when ``train_sigma`` is given, ``'5x'`` (times the training sigma)."""
    raw = str(text).strip().lower()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100 * data_range
        elif raw.endswith("x") and train_sigma is not None:
            value = float(raw[:-1]) * train_sigma
        else:
            value = float(raw)
    except ValueError:
        forms = "S, S% or Sx" if train_sigma is not None else "S or S%"
        raise NdgeoError(f"cannot read noise level {text!r}; expected {forms}") from None
    if not math.isfinite(value) or value <= 0:
        raise NdgeoError(f"noise level must be positive, got {text!r} ({value:g} data units)")
    return value


# --------------------------------------------------------------------------- training data


class PatchSampler:
    """Random clean patches from the training images, read window by window with rasterio.

    A bounded cache of ``cache_size`` patches is filled once and a few entries are replaced by
    fresh random windows every step, so memory stays bounded for scenes of any size. A patch is
    kept only when at most ``max_invalid`` of its pixels are nodata.
    """

    def __init__(
        self,
        sources: Sequence[tuple[RasterInfo, list[int]]],
        patch: int,
        cache_size: int,
        rng: np.random.Generator,
        max_invalid: float = 0.1,
    ) -> None:
        self.sources = list(sources)
        self.patch = patch
        self.rng = rng
        self.max_invalid = max_invalid
        areas = np.array([info.width * info.height for info, _ in self.sources], dtype=float)
        self.weights = areas / areas.sum()
        self._datasets = [rasterio.open(info.path) for info, _ in self.sources]
        try:
            self.cache = np.stack([self._read_one() for _ in range(cache_size)])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ds in self._datasets:
            ds.close()

    def __enter__(self) -> PatchSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_one(self, tries: int = 200) -> np.ndarray:
        p = self.patch
        for _ in range(tries):
            k = int(self.rng.choice(len(self.sources), p=self.weights))
            info, positions = self.sources[k]
            row = int(self.rng.integers(0, info.height - p + 1))
            col = int(self.rng.integers(0, info.width - p + 1))
            block, valid = read_float_block(self._datasets[k], info, positions,
                                            Window(col, row, p, p))
            if valid.mean() >= 1 - self.max_invalid:
                return block
        raise NdgeoError(
            f"found no {p}x{p} patch with at least {1 - self.max_invalid:.0%} valid pixels in "
            f"{tries} random windows of {', '.join(i.path for i, _ in self.sources)}"
        )

    def value_range(self) -> tuple[float, float]:
        """(min, max) of the valid pixels in the cache, all bands."""
        return float(np.nanmin(self.cache)), float(np.nanmax(self.cache))

    def batch(self, n: int) -> np.ndarray:
        """``n`` cached patches (N, C, p, p), NaN where invalid, each with a random dihedral
        transform (rot90 x flip)."""
        picks = self.rng.integers(0, len(self.cache), n)
        out = []
        for i in picks:
            x = np.rot90(self.cache[i], int(self.rng.integers(4)), axes=(1, 2))
            out.append(x[:, :, ::-1] if self.rng.integers(2) else x)
        return np.ascontiguousarray(np.stack(out))

    def refresh(self, n: int) -> None:
        """Replace ``n`` random cache entries with new random windows."""
        for i in self.rng.integers(0, len(self.cache), n):
            self.cache[i] = self._read_one()


# --------------------------------------------------------------------------- the model call


def run_denoiser(
    model: nn.Module,
    u: torch.Tensor,
    mask: torch.Tensor,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise ``u`` (N, C, H, W, normalized units) with ``mask`` (N, 1, H, W) True = valid.

    WNE models normalize with ``stats`` (mean, std) when given, else with the instance's own
    masked statistics. Other models (unwrapped, NE-arch) see invalid pixels filled with the same
    mean. Invalid pixels keep their input values.
    """
    if isinstance(model, WNE):
        return model(u, mask, stats=stats)
    mean = stats[0] if stats is not None else wne_stats(u, mask)[0]
    filled = torch.where(mask, u, mean.to(device=u.device, dtype=u.dtype))
    return torch.where(mask, model(filled), u)


# --------------------------------------------------------------------------- training


def halo_for(model: nn.Module) -> int:
    """The receptive-field radius rounded up to a multiple of the model's tile alignment."""
    align = int(getattr(model, "tile_alignment", 1))
    return -(-int(model.receptive_field) // align) * align


def train_denoiser(
    images: Sequence[RasterInfo],
    config: DenoiseConfig,
    *,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train a denoiser on clean patches of ``images`` with synthetic Gaussian noise.

    The bands are those of the first image (the others are matched by name). Each step draws
    ``batch_size`` patches with random dihedral transforms from a bounded cache, adds noise of
    std ``sigma`` to the valid pixels and minimizes the raw-space MSE over valid pixels. WNE
    statistics are those of each noisy training patch (the instance, as in the paper). The
    residual branch starts at zero (:func:`ndgeo.nn.denoisers.start_at_identity`): the model
    starts as the identity and every step improves on it.
    ``progress(step, steps, rmse)`` gets the running RMSE in data units. Returns the model (eval
    mode, CPU) and the metadata to save with it.
    """
    if not images:
        raise NdgeoError("give at least one training image")
    for name, value in (("--steps", config.steps), ("--batch-size", config.batch_size)):
        if value < 1:
            raise NdgeoError(f"{name} must be >= 1, got {value}")
    if config.lr <= 0:
        raise NdgeoError(f"--lr must be positive, got {config.lr}")
    smallest = min(min(info.shape) for info in images)
    if config.patch < 8:
        raise NdgeoError(f"--patch must be >= 8 pixels, got {config.patch}")
    patch = min(config.patch, smallest)
    device = resolve_device(config.device)
    bands = list(images[0].bands)
    names = [b.name for b in bands]
    sources = [(info, select_bands(names, info.bands)) for info in images]
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    patch_bytes = 4 * len(bands) * patch * patch
    cache_size = int(max(config.batch_size, min(256, config.cache_mb * 2**20 // patch_bytes)))
    start = time.perf_counter()
    with PatchSampler(sources, patch, cache_size, rng) as sampler:
        lo, hi = sampler.value_range()
        span = hi - lo
        if not span > 0:
            raise NdgeoError(f"training pixels are constant ({lo:g}); nothing to learn")
        sigma = parse_sigma(config.sigma, data_range=span)
        model = start_at_identity(build_denoiser(
            config.backbone, len(bands), wne=config.wne, pooling=config.pooling,
            data_range=1.0, **config.backbone_kwargs(),
        )).to(device)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        milestones = [config.steps // 2, (3 * config.steps) // 4]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.5)
        refresh = max(1, config.batch_size // 4)
        history: list[float] = []
        running = None
        for step in range(1, config.steps + 1):
            x = torch.from_numpy(sampler.batch(config.batch_size)).to(device)
            mask = ~torch.isnan(x).any(dim=1, keepdim=True)
            u = torch.where(mask, (x - lo) / span, 0.0)
            y = u + (sigma / span) * torch.randn_like(u)
            err = torch.where(mask, run_denoiser(model, y, mask) - u, 0.0)
            loss = err.square().sum() / (mask.sum() * u.shape[1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sampler.refresh(refresh)
            value = float(loss.detach())
            running = value if running is None else 0.95 * running + 0.05 * value
            history.append(value)
            if progress is not None:
                progress(step, config.steps, math.sqrt(running) * span)
    model = model.cpu().eval()
    tail = history[-max(1, len(history) // 10):]
    meta = {
        "task": TASK,
        "bands": [{"name": b.name, "letter": b.letter} for b in bands],
        "backbone": config.backbone,
        "wne": isinstance(model, WNE),
        "pooling": model.pooling if isinstance(model, WNE) else None,
        "receptive_field": int(model.receptive_field),
        "tile_alignment": int(getattr(model, "tile_alignment", 1)),
        "halo": halo_for(model),
        "sigma": sigma,
        "data_min": lo,
        "data_range": span,
        "input_dtype": images[0].dtype,
        "training": {
            "images": [info.path for info in images],
            "steps": config.steps,
            "batch_size": config.batch_size,
            "patch": patch,
            "lr": config.lr,
            "lr_halved_at": milestones,
            "seed": config.seed,
            "noise": "gaussian",
            "init": "identity (residual output zeroed)",
            "loss": "raw-space MSE over valid pixels",
            "final_rmse": math.sqrt(float(np.mean(tail))) * span,
            "rmse_every_10pct": [
                math.sqrt(float(np.mean(history[i:i + max(1, len(history) // 10)]))) * span
                for i in range(0, len(history), max(1, len(history) // 10))
            ],
            "seconds": round(time.perf_counter() - start, 2),
        },
    }
    return model, meta


# --------------------------------------------------------------------------- application


def load_denoiser(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a denoiser file; a classifier or foreign model is a user error."""
    model, meta = load_model(path)
    if meta.get("task") != TASK:
        raise NdgeoError(f"{path} is not a denoiser (made by `ndgeo denoise train`)")
    return model, meta


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
class DenoiseProcessor:
    """Engine processor (and ``ndgeo apply --denoise`` stage) running one denoiser per block.

    Holds the scene statistics (data units, one value for joint pooling or one per band) and no
    weights: the model is loaded with :func:`ndgeo.engine.cached_load` once per process.
    ``band_index`` picks the denoiser's bands out of a wider block (the classifier's, for
    ``apply --denoise``); other bands pass through unchanged.
    """

    denoiser_path: str
    data_min: float
    data_range: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    halo: int
    descriptions: list[str]
    out_dtype: str = "float32"
    out_nodata: float = float("nan")
    device: str = "cpu"
    band_index: tuple[int, ...] | None = None
    tags: dict = field(default_factory=dict)

    @property
    def out_count(self) -> int:
        return len(self.descriptions)

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
        model = engine.cached_load(self.denoiser_path, partial(_load_denoiser_on, device=device),
                                   key=("denoiser", str(device)))
        y = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)[None]
        mask = torch.from_numpy(np.ascontiguousarray(valid)).to(device)[None, None]
        u = ((y.double() - self.data_min) / self.data_range).float()
        out = run_denoiser(model, u, mask, self._stats(device))
        out = (out.double() * self.data_range + self.data_min).float()
        out = torch.where(mask, out, y)
        return out[0].cpu().numpy()

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return _to_output(self.denoise(block, valid), valid, self.out_dtype, self.out_nodata)


def aligned_chunk_size(chunk_size: int, image: RasterInfo, alignment: int) -> int:
    """``chunk_size`` adjusted so that every engine chunk origin is a multiple of ``alignment``.

    The engine rounds the chunk to the file's blocks; the result is rounded to a common multiple
    of the blocks and the alignment (dimensions read as a single chunk need nothing).
    """
    if chunk_size < 1:
        raise NdgeoError(f"chunk size must be positive, got {chunk_size}")
    steps = [min(b, s) for b, s in zip(image.block_shape, image.shape, strict=True)]
    multiple = alignment
    for step, size in zip(steps, image.shape, strict=True):
        if step < size:
            multiple = math.lcm(multiple, step)
    size = max(multiple, round(chunk_size / multiple) * multiple)
    chunks = engine.chunk_shape(size, image.block_shape, image.shape)
    for chunk, full in zip(chunks, image.shape, strict=True):
        if chunk % alignment and chunk < full:
            raise NdgeoError(
                f"cannot align chunks {chunks} of {image.path} (blocks {image.block_shape}) to "
                f"{alignment} pixels; rewrite the image with {alignment}-multiple tiles"
            )
    return size


def _stats_for(model: nn.Module, stats: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(model, WNE) and model.pooling == "band":
        return tuple(stats["mean"]), tuple(stats["std"])
    return (stats["joint_mean"],), (stats["joint_std"],)


def denoise_processor(
    denoiser_path: str | os.PathLike,
    image: RasterInfo,
    *,
    out_dtype: str = "same",
    device: str = "auto",
    chunk_size: int = 1024,
    compute_stats: bool = True,
    scheduler: object = None,
    workers: int | None = None,
    gdal_env: dict | None = None,
) -> tuple[DenoiseProcessor, list[int], int]:
    """Processor, input band positions and aligned chunk size for ``ndgeo denoise apply``.

    Bands are matched by name to the denoiser's. The scene statistics are computed here, once,
    with :func:`ndgeo.engine.scene_statistics` on ``scheduler`` / ``workers`` with ``gdal_env``;
    ``compute_stats=False`` (dry runs) leaves them at 0. ``out_dtype="same"`` keeps the input
    type (rounded and clipped). Output nodata: the input's (it must fit the output type; a
    NaN one counts as none for integer output), else NaN for float output or the type's minimum
    for integer output.
    """
    resolve_device(device)
    model, meta = load_denoiser(denoiser_path)
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
    align = int(getattr(model, "tile_alignment", 1))
    chunk = aligned_chunk_size(chunk_size, image, align)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (0.0,)
    if compute_stats:
        stats = engine.scene_statistics(image, positions, chunk_size=chunk, scheduler=scheduler,
                                        workers=workers, gdal_env=gdal_env)
        mean, std = _stats_for(model, stats)
    processor = DenoiseProcessor(
        os.path.abspath(denoiser_path), float(meta["data_min"]), float(meta["data_range"]),
        mean, std, halo_for(model), [image.bands[p].name for p in positions],
        out_dtype=dtype, out_nodata=nodata, device=device,
        tags={"NDGEO_DENOISER": os.path.basename(denoiser_path),
              "NDGEO_SCENE_MEAN": ",".join(f"{v:.6g}" for v in mean),
              "NDGEO_SCENE_STD": ",".join(f"{v:.6g}" for v in std)},
    )
    return processor, positions, chunk


def denoise_stage(
    denoiser_path: str | os.PathLike,
    image: RasterInfo,
    positions: Sequence[int],
    *,
    chunk_size: int,
    device: str = "auto",
    compute_stats: bool = True,
    scheduler: object = None,
    workers: int | None = None,
    gdal_env: dict | None = None,
) -> DenoiseProcessor:
    """The denoising stage of ``ndgeo apply --denoise``: ``.halo`` and ``.denoise(block, valid)``
    on blocks holding the image bands at ``positions`` (the classifier's).

    The denoiser's bands must be among them; the scene statistics are computed here, once (as
    in :func:`denoise_processor`). ``chunk_size`` is the engine's: it must give tile origins on
    the denoiser's alignment.
    """
    processor, wanted, chunk = denoise_processor(
        denoiser_path, image, out_dtype="float32", device=device, chunk_size=chunk_size,
        compute_stats=compute_stats, scheduler=scheduler, workers=workers, gdal_env=gdal_env,
    )
    missing = [image.bands[p].name for p in wanted if p not in positions]
    if missing:
        raise NdgeoError(f"the denoiser needs band(s) {', '.join(missing)} that the model does "
                         f"not read; use a denoiser trained on the model's bands")
    if engine.chunk_shape(chunk_size, image.block_shape, image.shape) != engine.chunk_shape(
        chunk, image.block_shape, image.shape
    ):
        raise NdgeoError(f"--chunk-size {chunk_size} breaks the denoiser's tile alignment; "
                         f"use --chunk-size {chunk}")
    processor.band_index = tuple(list(positions).index(p) for p in wanted)
    return processor


# --------------------------------------------------------------------------- mismatch diagnostic


def _load_denoiser_on(path: str, device: torch.device) -> nn.Module:
    return load_denoiser(path)[0].to(device)


def array_stats(block: np.ndarray, valid: np.ndarray, pooling: str = "joint") -> dict:
    """Masked float64 scene statistics of an in-memory block, in the engine's format."""
    values = block[:, valid].astype(np.float64)
    if values.size == 0:
        raise NdgeoError("the image has no valid pixel")
    return {"mean": values.mean(axis=1).tolist(), "std": values.std(axis=1).tolist(),
            "joint_mean": float(values.mean()), "joint_std": float(values.std()),
            "pooling": pooling}


def psnr(estimate: np.ndarray, clean: np.ndarray, valid: np.ndarray, lo: float, hi: float) -> float:
    """PSNR (dB) over valid pixels with peak ``hi - lo``."""
    diff = estimate[:, valid].astype(np.float64) - clean[:, valid]
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10 * math.log10((hi - lo) ** 2 / mse)


def evaluate_denoiser(
    denoiser_path: str | os.PathLike,
    image: RasterInfo,
    sigmas: Sequence[str],
    *,
    draws: int = 3,
    seed: int = 0,
    device: str = "auto",
) -> dict:
    """The paper's noise-mismatch diagnostic on ``image`` taken as clean.

    For each test noise level (``'5x'`` = 5 x the training sigma, ``'2%'`` of the denoiser's
    data range, or data units) Gaussian noise is added to the valid pixels ``draws`` times; the
    noisy scene's statistics are computed and the whole scene is denoised in memory (equal to the
    tiled path, see the module docstring; meant for test scenes or crops). PSNR over valid pixels
    with peak = max - min of the clean valid pixels, output clamped to [min, max], input not.
    """
    if draws < 1:
        raise NdgeoError(f"--draws must be >= 1, got {draws}")
    model, meta = load_denoiser(denoiser_path)
    positions = match_model_bands(meta, image)
    with rasterio.open(image.path) as src:
        clean, valid = read_float_block(src, image, positions)
    if not valid.any():
        raise NdgeoError(f"{image.path} has no valid pixel in the denoiser's bands")
    lo, hi = float(clean[:, valid].min()), float(clean[:, valid].max())
    levels = [parse_sigma(s, data_range=meta["data_range"], train_sigma=meta["sigma"])
              for s in sigmas]
    if not levels:
        raise NdgeoError("give at least one noise level")
    processor = DenoiseProcessor(
        os.path.abspath(denoiser_path), float(meta["data_min"]), float(meta["data_range"]),
        (0.0,), (0.0,), halo_for(model), [image.bands[p].name for p in positions], device=device,
    )
    pooling = model.pooling if isinstance(model, WNE) else "joint"
    gen = np.random.default_rng(seed)
    rows = []
    for text, sigma in zip(sigmas, levels, strict=True):
        inp, out = [], []
        for _ in range(draws):
            noise = gen.standard_normal(clean.shape) * sigma
            noisy = np.where(valid, clean + noise, np.nan).astype(np.float32)
            processor.mean, processor.std = _stats_for(model, array_stats(noisy, valid, pooling))
            estimate = np.clip(processor.denoise(noisy, valid), lo, hi)
            inp.append(psnr(noisy, clean, valid, lo, hi))
            out.append(psnr(estimate, clean, valid, lo, hi))
        rows.append({"sigma": text, "sigma_data": sigma, "factor": sigma / meta["sigma"],
                     "input_psnr": float(np.mean(inp)), "output_psnr": float(np.mean(out))})
    return {"denoiser": os.path.abspath(denoiser_path), "image": image.path,
            "backbone": meta.get("backbone"), "wne": meta.get("wne"),
            "train_sigma": meta["sigma"], "peak": hi - lo, "draws": draws, "rows": rows}
