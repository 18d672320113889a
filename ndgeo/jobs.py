"""What a command runs on one scene, as a picklable recipe: its kind and plain arguments.

``ndgeo apply``, ``index`` and ``denoise apply`` build their processor from a :class:`Job`
for one scene, and batch mode (:mod:`ndgeo.batch`) sends the same job to the worker that runs
each scene, which builds it there: one way to turn options into a processor, wherever it runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ndgeo.engine import Processor
from ndgeo.io.raster import RasterInfo, open_raster


@dataclass(frozen=True)
class Job:
    """``kind`` (``apply``, ``index`` or ``denoise``), the builder's ``params`` and the
    ``open_options`` of :func:`ndgeo.io.raster.open_raster` (band names, sensor, nodata,
    scale/offset, STAC grid); ``chunk_size`` as the user gave it."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    open_options: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = 1024

    def open(self, image: str) -> RasterInfo:
        return open_raster(image, **self.open_options)

    def build(self, image: str | RasterInfo) -> tuple[Processor, RasterInfo, list[int], int]:
        """(processor, raster, input band positions, chunk size) for one scene."""
        info = image if isinstance(image, RasterInfo) else self.open(image)
        return _BUILDERS[self.kind](self, info)

    @property
    def legend(self) -> bool:
        """True when outputs are class maps that get legend sidecars."""
        return self.kind == "apply"


def apply_job(model: str | os.PathLike, *, outputs: list[str], batch_size: int, device: str,
              quantize: bool, denoise: str | os.PathLike | None, backbone: str | None,
              chunk_size: int, **open_options: Any) -> Job:
    """``ndgeo apply``: a classifier (optionally after a denoiser) on every scene."""
    return Job("apply", dict(model=os.path.abspath(model), outputs=list(outputs),
                             batch_size=batch_size, device=device, quantize=quantize,
                             denoise=os.path.abspath(denoise) if denoise else None,
                             backbone=backbone), open_options, chunk_size)


def index_job(*, names: list[str], formulas: list[str],
              formula_file: str | os.PathLike | None, chunk_size: int,
              **open_options: Any) -> Job:
    """``ndgeo index``: catalogue or exported indices on every scene."""
    return Job("index", dict(names=list(names), formulas=list(formulas),
                             formula_file=os.path.abspath(formula_file) if formula_file else
                             None), open_options, chunk_size)


def denoise_job(denoiser: str | os.PathLike, *, out_dtype: str, device: str,
                backbone: str | None, chunk_size: int, **open_options: Any) -> Job:
    """``ndgeo denoise apply``: a denoiser with each scene's own statistics."""
    return Job("denoise", dict(denoiser=os.path.abspath(denoiser), out_dtype=out_dtype,
                               device=device, backbone=backbone), open_options, chunk_size)


def _build_apply(job: Job, info: RasterInfo):
    from ndgeo.processors.classify import model_processor

    p = job.params
    processor, positions = model_processor(p["model"], info, outputs=p["outputs"],
                                           batch_size=p["batch_size"], device=p["device"],
                                           quantize_proba=p["quantize"])
    if p["denoise"] is not None:
        from ndgeo.processors.denoise import denoise_stage  # torch: only when denoising

        processor.set_denoiser(denoise_stage(p["denoise"], info, positions,
                                             chunk_size=job.chunk_size, device=p["device"],
                                             backbone=p["backbone"]))
    return processor, info, positions, job.chunk_size


def _build_index(job: Job, info: RasterInfo):
    from ndgeo.processors.index import index_processor

    p = job.params
    processor, positions = index_processor(info, names=p["names"], formulas=p["formulas"],
                                           formula_file=p["formula_file"])
    return processor, info, positions, job.chunk_size


def _build_denoise(job: Job, info: RasterInfo):
    from ndgeo.processors.denoise import denoise_processor

    p = job.params
    processor, positions, chunk = denoise_processor(
        p["denoiser"], info, out_dtype=p["out_dtype"], device=p["device"],
        chunk_size=job.chunk_size, backbone=p["backbone"])
    return processor, info, positions, chunk


_BUILDERS = {"apply": _build_apply, "index": _build_index, "denoise": _build_denoise}
