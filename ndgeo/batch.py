"""Batch mode: one job (:class:`ndgeo.jobs.Job`) over many scenes, ``OUTDIR/<stem>.tif`` each.

Locally the scenes run one after another, each over all threads. On a dask.distributed
cluster (``--workers N`` or ``--scheduler``) each scene is one task: the worker that runs it
opens the scene, computes it with its own threads and writes the output itself (atomically,
so the directory must be shared storage), and only a small summary travels back, never the
pixels. Finished outputs are skipped on a re-run (resumable); a failed scene is reported and
the others go on.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ndgeo.engine import Execution, run
from ndgeo.errors import NdgeoError
from ndgeo.io.raster import RasterInfo, is_remote
from ndgeo.io.writer import check_output, publish_class_legend
from ndgeo.jobs import Job

#: Errors that fail one scene and let the others go on (anything else is a bug: raised).
SCENE_ERRORS: tuple[type[BaseException], ...] = (NdgeoError, OSError)


def is_batch(image: str, out: str | os.PathLike) -> bool:
    """True when IMAGE is a glob pattern or OUT names a directory (ends with / or is one)."""
    text = os.fspath(out)
    return (not is_remote(image) and glob.has_magic(image)) or text.endswith(os.sep) \
        or os.path.isdir(text)


def batch_scenes(image: str, out: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(input, OUTDIR/<stem>.tif)`` for every scene IMAGE names, sorted; one line of error
    for no match, a missing OUTDIR, two scenes with the same stem or an output that is an
    input."""
    names = sorted(glob.glob(image)) if glob.has_magic(image) else [image]
    names = [n for n in names if not os.path.isdir(n)]
    if not names:
        raise NdgeoError(f"no scene matches {image!r}")
    outdir = Path(out)
    if not outdir.is_dir():
        raise NdgeoError(f"output directory {outdir} does not exist (batch mode writes "
                         "OUTDIR/<scene>.tif; create it first)")
    pairs, seen = [], {}
    for name in names:
        target = outdir.resolve() / f"{Path(name).stem}.tif"
        if target in seen:
            raise NdgeoError(f"scenes {seen[target]} and {name} would both write {target}; "
                             "give them distinct names")
        seen[target] = name
        pairs.append((name, target))
    inputs = {os.path.realpath(n) for n in names}
    for name, target in pairs:
        if os.path.realpath(target) in inputs:
            raise NdgeoError(f"output {target} would replace the input {name}; choose another "
                             "OUTDIR")
    return pairs


@dataclass
class BatchResult:
    """What a batch did: outputs written, skipped (already there) and failed (input, error)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    pixels: int = 0
    seconds: float = 0.0
    scheduler: str = ""


def run_scene(job: Job, image: str | RasterInfo, out: str | os.PathLike, execution: Execution, *,
              overwrite: bool, cog: bool, creation_options: dict | None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Build ``job`` for one scene and write its output (and class legend): the unit of work
    of batch mode, run by the client locally or by a worker on a cluster."""
    processor, info, positions, chunk = job.build(image)
    execution = replace(execution, chunk_size=chunk) if chunk != execution.chunk_size \
        else execution
    result = run(processor, info, positions, out, execution=execution, overwrite=overwrite,
                 cog=cog, creation_options=creation_options, progress=progress)
    if job.legend:
        publish_class_legend(result.out_path, getattr(processor, "classes", None))
    return {"pixels": result.pixels, "seconds": result.seconds}


def _worker_scene(job: Job, image: str, out: str, gdal_env: dict | None, options: dict
                  ) -> dict[str, Any]:
    """A cluster task: one scene with the worker's own threads; errors come back as text."""
    from distributed import get_worker

    threads = max(1, get_worker().state.nthreads)
    execution = Execution(chunk_size=job.chunk_size, threads=threads, gdal_env=gdal_env)
    try:
        return run_scene(job, image, out, execution, **options)
    except SCENE_ERRORS as exc:
        return {"error": str(exc)}


def run_batch(job: Job, scenes: Sequence[tuple[str, Path]], execution: Execution, *,
              overwrite: bool = False, cog: bool = False,
              creation_options: dict | None = None,
              progress: Callable[[int, int], None] | None = None,
              on_scene: Callable[[str, Path, str | None], None] | None = None) -> BatchResult:
    """Run ``job`` on every ``(input, output)`` scene; outputs that exist are skipped unless
    ``overwrite``. ``progress(done, total)`` counts pixels over all scenes; ``on_scene(input,
    output, error)`` is called as each scene ends (error None on success)."""
    result = BatchResult()
    todo = []
    for image, out in scenes:
        if out.exists() and not overwrite:
            result.skipped.append(out)
        else:
            check_output(out, overwrite=overwrite, inputs=[image])
            todo.append((image, out))
    infos = {image: _open(job, image) for image, _ in todo}
    sizes = {image: 0 if info is None else info.width * info.height
             for image, info in infos.items()}
    total, done = sum(sizes.values()), 0
    options = dict(overwrite=overwrite, cog=cog, creation_options=creation_options)
    start = time.perf_counter()

    def finished(image: str, out: Path, outcome: dict[str, Any]) -> None:
        nonlocal done
        error = outcome.get("error")
        if error is None:
            result.written.append(out)
            result.pixels += outcome["pixels"]
        else:
            result.failed.append((image, error))
        done += sizes[image]
        if progress is not None:
            progress(done, total)
        if on_scene is not None:
            on_scene(image, out, error)

    with execution:
        result.scheduler = execution.name
        if execution.client is None:
            for image, out in todo:
                base = done

                def scene_progress(scene_done: int, _total: int, base: int = base) -> None:
                    if progress is not None:
                        progress(base + scene_done, total)

                try:
                    outcome = run_scene(job, infos[image] or image, out, execution,
                                        progress=scene_progress, **options)
                except SCENE_ERRORS as exc:
                    outcome = {"error": str(exc)}
                finished(image, out, outcome)
        else:
            _run_on_cluster(job, todo, execution, options, finished)
    result.seconds = time.perf_counter() - start
    return result


def _run_on_cluster(job: Job, todo, execution: Execution, options: dict, finished) -> None:
    """One task per scene on the command's cluster, results taken as they finish."""
    from distributed import as_completed

    client = execution.client
    futures = {}
    for i, (image, out) in enumerate(todo):
        future = client.submit(_worker_scene, job, image, str(out), execution.gdal_env,
                               options, key=f"ndgeo-scene-{i}-{os.getpid()}-{time.time_ns()}",
                               pure=False)
        futures[future] = (image, out)
    try:
        for future in as_completed(futures):
            image, out = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # a worker died or the task failed unexpectedly
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
            finished(image, out, outcome)
    except BaseException:
        client.cancel(list(futures))
        raise


def _open(job: Job, image: str) -> RasterInfo | None:
    """The scene opened once in the client (its size for the progress total, and what a local
    run processes), or None where it cannot be opened: it then fails with its own message."""
    try:
        return job.open(image)
    except SCENE_ERRORS:
        return None
