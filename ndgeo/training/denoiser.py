"""Training denoisers and the paper's noise-mismatch diagnostic.

Units: see :mod:`ndgeo.processors.denoise` (one fixed affine map to [0, 1] from the training
pixels' range, stored in the model file). Noise levels (``sigma``) and statistics are always
reported and stored in data units.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from ndgeo import stats
from ndgeo.bands import select_bands
from ndgeo.checkpoint import DENOISE_TASK, load_denoiser, match_model_bands
from ndgeo.config import DenoiseConfig, parse_sigma
from ndgeo.device import resolve_device
from ndgeo.errors import NdgeoError
from ndgeo.io.raster import RasterInfo, open_dataset, read_float_block
from ndgeo.io.tiles import halo_for
from ndgeo.nn.denoisers import build_denoiser, start_at_identity
from ndgeo.nn.wne import WNE, receptive_field_of, run_denoiser
from ndgeo.processors.denoise import DenoiseProcessor, model_halo
from ndgeo.training.patches import PatchSampler


def train_denoiser(
    images: Sequence[RasterInfo],
    config: DenoiseConfig,
    *,
    backbone_args: dict | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train a denoiser on clean patches of ``images`` with synthetic Gaussian noise.

    The bands are those of the first image (the others are matched by name). Each step draws
    ``batch_size`` patches with random dihedral transforms from a bounded cache, adds noise of
    std ``sigma`` to the valid pixels and minimizes the raw-space MSE over valid pixels. WNE
    statistics are those of each noisy training patch (the instance, as in the paper). The
    residual branch starts at zero (:func:`ndgeo.nn.denoisers.start_at_identity`): the model
    starts as the identity and every step improves on it.
    ``config.backbone`` may be a user class ``pkg.module:Class`` (imported: runs its code), built
    as ``Class(channels, **backbone_args)``; ``backbone_args`` also reach a built-in backbone's
    constructor. ``progress(step, steps, rmse)`` gets the running RMSE in data units. Returns the
    model (eval mode, CPU) and the metadata to save with it.
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
        kwargs = {**config.backbone_kwargs(), **(backbone_args or {})}
        model = start_at_identity(build_denoiser(
            config.backbone, len(bands), wne=config.wne, pooling=config.pooling,
            data_range=1.0, **kwargs,
        )).to(device)
        model.train()
        # Own generator: the same seed gives every backbone the same patches and noise.
        noise_gen = torch.Generator(device=device).manual_seed(config.seed)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        milestones = [config.steps // 2, (3 * config.steps) // 4]
        warmup = warmup_steps(config.steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(
            learning_rate_factor, warmup=warmup, milestones=tuple(milestones)))
        refresh = max(1, config.batch_size // 4)
        history: list[float] = []
        running = None
        for step in range(1, config.steps + 1):
            x = torch.from_numpy(sampler.batch(config.batch_size)).to(device)
            mask = ~torch.isnan(x).any(dim=1, keepdim=True)
            u = torch.where(mask, (x - lo) / span, 0.0)
            noise = torch.randn(u.shape, generator=noise_gen, dtype=u.dtype, device=device)
            y = u + (sigma / span) * noise
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
    field = receptive_field_of(model)  # declared, else measured on the trained weights (once)
    alignment = int(getattr(model, "tile_alignment", 1))
    tail = history[-max(1, len(history) // 10):]
    meta = {
        "task": DENOISE_TASK,
        "bands": [{"name": b.name, "letter": b.letter} for b in bands],
        "backbone": config.backbone,
        "wne": isinstance(model, WNE),
        "pooling": model.pooling if isinstance(model, WNE) else None,
        "backbone_args": backbone_args or {},
        "receptive_field": None if field is None else int(field),
        "global_field": field is None,
        "tile_alignment": alignment,
        "halo": None if field is None else halo_for(int(field), alignment),
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
            "lr_warmup_steps": warmup,
            "lr_halved_at": milestones,
            "seed": config.seed,
            "noise": "gaussian",
            "init": "identity (residual output zeroed; NE-arch: skip weight 0.9)",
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


def warmup_steps(steps: int) -> int:
    """Linear learning-rate warm-up length: 10% of the steps, at most 200."""
    return max(1, min(200, steps // 10))


def learning_rate_factor(step: int, *, warmup: int, milestones: tuple[int, ...]) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps: a linear warm-up
    from 1 / warmup, then halved at each milestone.

    Without the warm-up, Adam's first steps (each weight moves by about lr whatever its gradient)
    throw the zero-initialised output layer of a BatchNorm DnCNN far from the identity, and the
    rest of a CPU budget went to undoing it: the standard DnCNN ended at the identity.
    """
    factor = min(1.0, (step + 1) / warmup)
    return factor * 0.5 ** sum(step >= m for m in milestones)


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
    backbone: str | None = None,
) -> dict:
    """The paper's noise-mismatch diagnostic on ``image`` taken as clean.

    For each test noise level (``'5x'`` = 5 x the training sigma, ``'2%'`` of the denoiser's
    data range, or data units) Gaussian noise is added to the valid pixels ``draws`` times; the
    noisy scene's statistics are computed and the whole scene is denoised in memory (equal to the
    tiled path, see the module docstring; meant for test scenes or crops). PSNR over valid pixels
    with peak = max - min of the clean valid pixels, output clamped to [min, max], input not.
    ``backbone``: the user backbone class the file records, named again by the user.
    """
    if draws < 1:
        raise NdgeoError(f"--draws must be >= 1, got {draws}")
    model, meta = load_denoiser(denoiser_path, backbone=backbone)
    positions = match_model_bands(meta, image)
    with open_dataset(image.path) as src:
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
        model_halo(model) or 0, [image.bands[p].name for p in positions], device=device,
        pooling=model.pooling if isinstance(model, WNE) else "joint", backbone=backbone,
    )
    gen = np.random.default_rng(seed)
    rows = []
    for text, sigma in zip(sigmas, levels, strict=True):
        inp, out = [], []
        for _ in range(draws):
            noise = gen.standard_normal(clean.shape) * sigma
            noisy = np.where(valid, clean + noise, np.nan).astype(np.float32)
            processor.use_statistics(stats.summary(stats.moments(noisy[:, valid])))
            estimate = np.clip(processor.denoise(noisy, valid), lo, hi)
            inp.append(psnr(noisy, clean, valid, lo, hi))
            out.append(psnr(estimate, clean, valid, lo, hi))
        rows.append({"sigma": text, "sigma_data": sigma, "factor": sigma / meta["sigma"],
                     "input_psnr": float(np.mean(inp)), "output_psnr": float(np.mean(out))})
    return {"denoiser": os.path.abspath(denoiser_path), "image": image.path,
            "backbone": meta.get("backbone"), "wne": meta.get("wne"),
            "train_sigma": meta["sigma"], "peak": hi - lo, "draws": draws, "rows": rows}
