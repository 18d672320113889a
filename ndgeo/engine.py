"""The one chunked execution engine: run a *processor* over the windows of a raster with dask.

A processor is a small picklable object that knows nothing about files or dask::

    halo: int            # pixels of context needed on each side (0 for per-pixel work)
    out_count: int       # output bands
    out_dtype: str       # output pixel type
    out_nodata: float    # written where the input is invalid (must fit out_dtype)
    descriptions: list[str] | None          # output band descriptions
    tags, band_tags, colormap               # optional, passed to the writer
    prepare(image: RasterInfo) -> None      # optional, called once in the main process
    raw_input: bool                         # optional: True -> block in the file's own type
    __call__(block, valid) -> np.ndarray    # block: float32 (C, h, w), NaN where invalid
                                            # (raw_input: as read, any value where invalid);
                                            # valid: bool (h, w); returns (out_count, h, w)

``raw_input`` saves a float32 copy of the whole block (about a third of the engine's own work
on 8-band uint16 input) for processors that convert batch by batch anyway.

Processors that need a torch model load it with :func:`cached_load` on first call (once per
process), so weights are never pickled into tasks; tasks return CPU numpy only.

Execution (why it is built this way, see docs/notes ecosystem.md sections 3-7):

- One dask task per output window reads exactly its window plus ``halo`` (clipped at the image
  edge, so a processor sees the true border just as on the whole image) from a lazy, lock-free
  ``rioxarray.open_rasterio`` array, converts invalid pixels to NaN, calls the processor and
  crops the result back to the window. Slicing a dask-chunked array instead would read every
  neighbouring chunk (9 full chunks for a 1-pixel halo) and every band.
- Windows whose pixels are all invalid are not processed; they are written as ``out_nodata``.
- The main process is the single writer: at most ``2 x workers`` windows are in flight and each
  finished window is written as it arrives, so memory stays flat and no lock or shared
  filesystem write is needed. Output is identical for local threads, a LocalCluster and a
  remote ``dask scheduler`` (workers need the input path; only the main process writes).
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from threading import Lock
from typing import Any, Protocol

import dask
import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.windows import Window

from ndgeo.errors import NdgeoError
from ndgeo.raster import RasterInfo, check_nodata, read_gdal_mask, to_float, valid_mask
from ndgeo.writer import GeoTIFFWriter, check_output, creation_profile

#: GDAL settings applied in the main process and on every worker unless overridden.
DEFAULT_GDAL_ENV: dict[str, Any] = {"GDAL_CACHEMAX": 256, "GDAL_NUM_THREADS": 1}

Progress = Callable[[int, int], None]


class Processor(Protocol):
    """What :func:`run` needs from a processor (see the module docstring)."""

    halo: int
    out_count: int
    out_dtype: str
    out_nodata: float

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RunResult:
    """Summary of a finished :func:`run`."""

    out_path: str
    windows: int
    skipped: int
    pixels: int
    seconds: float
    scheduler: str


#: Models kept per process: a job needs one or two (classifier, denoiser); a long-lived
#: distributed worker serving many jobs keeps only the most recently used ones.
CACHE_SIZE = 4
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = Lock()


def cached_load(
    path: str | os.PathLike, loader: Callable[[str], Any], *, key: object = None
) -> Any:
    """``loader(path)`` once per process (keyed by path, mtime and ``key``), then cached.

    Use it inside ``Processor.__call__`` so each worker process loads a model once and no
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


def chunk_shape(
    chunk_size: int, block_shape: tuple[int, int], shape: tuple[int, int]
) -> tuple[int, int]:
    """Chunk (rows, cols): ``chunk_size`` rounded to a multiple of the file's block, clipped."""
    if chunk_size < 1:
        raise NdgeoError(f"chunk size must be positive, got {chunk_size}")
    out = []
    for block, size in zip(block_shape, shape, strict=True):
        step = min(block, size)
        out.append(min(size, max(step, round(chunk_size / step) * step)))
    return out[0], out[1]


def plan_windows(shape: tuple[int, int], chunks: tuple[int, int]) -> list[Window]:
    """Row-major windows of ``chunks`` covering ``shape``; the last row/column may be smaller."""
    height, width = shape
    ch, cw = chunks
    return [
        Window(col, row, min(cw, width - col), min(ch, height - row))
        for row in range(0, height, ch)
        for col in range(0, width, cw)
    ]


def _lazy_bands(image: RasterInfo, band_positions: Sequence[int]) -> xr.DataArray:
    """Lazily indexed (not dask-chunked) bands: each slice reads exactly its window."""
    data = rioxarray.open_rasterio(image.path, lock=False, cache=False, masked=False)
    return data.isel(band=list(band_positions))


def _read(
    source: xr.DataArray,
    window: tuple[int, int, int, int],
    halo: int,
    shape: tuple[int, int],
    nodata: float | None,
    mask: tuple[str, int] | None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Read window (row, col, h, w) grown by ``halo``, clipped: the raw bands, their valid
    pixels (nodata, non-finite and, with ``mask`` = (path, band), the file's GDAL mask) and the
    core's offset in them."""
    row, col, h, w = window
    row0, col0 = max(0, row - halo), max(0, col - halo)
    row1, col1 = min(shape[0], row + h + halo), min(shape[1], col + w + halo)
    raw = source.isel(y=slice(row0, row1), x=slice(col0, col1)).values
    valid = valid_mask(raw, nodata)
    if mask is not None:
        valid &= read_gdal_mask(mask[0], Window(col0, row0, col1 - col0, row1 - row0), mask[1])
    return raw, valid, row - row0, col - col0


def _process_window(
    source: xr.DataArray,
    processor: Processor,
    nodata: float | None,
    shape: tuple[int, int],
    gdal_env: dict[str, Any],
    mask: tuple[str, int] | None,
    window: tuple[int, int, int, int],
) -> np.ndarray | None:
    """One task: read, mask, process, crop. None when the window has no valid pixel."""
    with rasterio.Env(**gdal_env):
        raw, valid, dr, dc = _read(source, window, processor.halo, shape, nodata, mask)
    block = raw if getattr(processor, "raw_input", False) else to_float(raw, valid)
    h, w = window[2:]
    core = valid[dr : dr + h, dc : dc + w]
    if not core.any():
        return None
    result = np.asarray(processor(block, valid))
    expected = (processor.out_count, *valid.shape)
    if result.shape != expected:
        raise ValueError(
            f"{type(processor).__name__} returned shape {result.shape}, expected {expected}"
        )
    result = result[:, dr : dr + h, dc : dc + w]
    return np.where(core, result, processor.out_nodata).astype(processor.out_dtype)


def _window_stats(
    source: xr.DataArray,
    nodata: float | None,
    shape: tuple[int, int],
    gdal_env: dict[str, Any],
    mask: tuple[str, int] | None,
    window: tuple[int, int, int, int],
) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, per-band mean and M2 (sum of squared deviations) of the valid pixels, float64."""
    with rasterio.Env(**gdal_env):
        raw, valid, _, _ = _read(source, window, 0, shape, nodata, mask)
    values = raw[:, valid].astype(np.float64)
    n = values.shape[1]
    if n == 0:
        zeros = np.zeros(values.shape[0])
        return 0, zeros, zeros
    mean = values.mean(axis=1)
    return n, mean, ((values - mean[:, None]) ** 2).sum(axis=1)


def _mask_source(image: RasterInfo, positions: Sequence[int]) -> tuple[str, int] | None:
    """(path, 1-based band) of the GDAL mask to read, or None when the file has none."""
    return (image.path, positions[0] + 1) if image.has_mask else None


def _merge(a: tuple, b: tuple) -> tuple:
    """Chan et al. merge of (count, mean, M2) summaries."""
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta**2 * (na * nb / n)


def _apply_gdal_env(env: dict[str, Any]) -> None:
    """Set GDAL options process-wide (run on each distributed worker before it reads)."""
    for key, value in env.items():
        os.environ[key] = str(value)
        rasterio.env.set_gdal_config(key, value)


@contextmanager
def _client(scheduler: object, workers: int | None, gdal_env: dict[str, Any]):
    """Yield (client or None, description, number of parallel task slots)."""
    if scheduler is None and not workers:
        yield None, "threads", None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None and workers:
        raise NdgeoError("give either a scheduler address or a number of workers, not both")
    if isinstance(scheduler, Client):
        client, owned, cluster = scheduler, False, None
    elif isinstance(scheduler, str):
        try:
            client, owned, cluster = Client(scheduler), True, None
        except OSError as exc:
            raise NdgeoError(f"cannot connect to dask scheduler {scheduler}: {exc}") from exc
    elif workers:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client, owned = Client(cluster), True
    else:
        raise NdgeoError(f"scheduler must be None, an address or a Client, got {scheduler!r}")
    try:
        client.run(_apply_gdal_env, gdal_env)
        slots = max(1, sum(client.nthreads().values()))
        yield client, f"distributed {client.scheduler.address} ({slots} threads)", slots
    finally:
        if owned:
            client.close()
        if cluster is not None:
            cluster.close()


def _execute(
    tasks: Iterable[tuple[Any, Any]], client: Any, slots: int, in_flight: int
) -> Iterator[tuple[Any, Any]]:
    """Compute ``(key, delayed)`` pairs with at most ``in_flight`` pending; yield as they finish."""
    tasks = iter(tasks)
    if client is None:
        with ThreadPoolExecutor(slots) as pool:
            pending: dict = {}

            def submit() -> None:
                for key, task in tasks:
                    pending[pool.submit(task.compute, scheduler="sync")] = key
                    return

            try:
                for _ in range(in_flight):
                    submit()
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        key = pending.pop(future)
                        result = future.result()  # a failed task stops submission here
                        submit()
                        yield key, result
            finally:
                for future in pending:
                    future.cancel()
        return

    from distributed import as_completed

    keys: dict = {}
    running = as_completed()

    def submit_remote() -> None:
        for key, task in tasks:
            future = client.compute(task)
            keys[future.key] = (key, future)
            running.add(future)
            return

    try:
        for _ in range(in_flight):
            submit_remote()
        for future in running:
            key, _ = keys.pop(future.key)
            result = future.result()
            submit_remote()
            yield key, result
    finally:
        client.cancel([f for _, f in keys.values()])


def _as_tuple(window: Window) -> tuple[int, int, int, int]:
    return int(window.row_off), int(window.col_off), int(window.height), int(window.width)


def _gdal_env(gdal_env: dict[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_GDAL_ENV, **(gdal_env or {})}


def _check_bands(image: RasterInfo, band_positions: Sequence[int]) -> list[int]:
    positions = [int(p) for p in band_positions]
    if not positions:
        raise NdgeoError("no input bands selected")
    bad = [p for p in positions if not 0 <= p < image.count]
    if bad:
        raise NdgeoError(
            f"band positions {bad} out of range for {image.count} bands in {image.path}"
        )
    return positions


def run(
    processor: Processor,
    image: RasterInfo,
    band_positions: Sequence[int],
    out_path: str | os.PathLike,
    *,
    chunk_size: int = 1024,
    scheduler: object = None,
    workers: int | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    cog: bool = False,
    creation_options: dict[str, object] | None = None,
    progress: Progress | None = None,
    dry_run: bool = False,
    gdal_env: dict[str, Any] | None = None,
) -> RunResult | dict[str, Any]:
    """Run ``processor`` over ``image`` chunk by chunk and write a GeoTIFF at ``out_path``.

    ``band_positions`` (0-based) select and order the bands the processor receives.
    ``scheduler``: None for local threads (``threads``, default all cores), a
    ``tcp://host:port`` address or a ``distributed.Client``; ``workers=N`` starts a local
    cluster of N single-threaded worker processes. ``progress(done_pixels, total_pixels)`` is
    called after each window. With ``dry_run`` nothing is read or written and the plan (a
    JSON-serialisable dict) is returned.
    """
    positions = _check_bands(image, band_positions)
    if workers is not None and workers < 1:
        raise NdgeoError(f"--workers must be >= 1, got {workers}")
    halo = int(getattr(processor, "halo", 0))
    if halo < 0:
        raise ValueError(f"processor halo must be >= 0, got {halo}")
    if processor.out_nodata is None:
        raise ValueError(f"{type(processor).__name__}.out_nodata must be set")
    check_nodata(processor.out_nodata, processor.out_dtype, what="output nodata")
    prepare = getattr(processor, "prepare", None)
    if prepare is not None:
        prepare(image)
    env = _gdal_env(gdal_env)
    chunks = chunk_shape(chunk_size, image.block_shape, image.shape)
    windows = plan_windows(image.shape, chunks)
    local_threads = threads or os.cpu_count() or 1
    writer_options = dict(
        width=image.width,
        height=image.height,
        count=processor.out_count,
        dtype=processor.out_dtype,
        crs=image.crs,
        transform=image.transform,
        nodata=processor.out_nodata,
        descriptions=getattr(processor, "descriptions", None),
        tags=getattr(processor, "tags", None),
        band_tags=getattr(processor, "band_tags", None),
        colormap=getattr(processor, "colormap", None),
        creation_options=creation_options,
        cog=cog,
    )
    if dry_run:
        return _plan(image, positions, out_path, processor, chunks, windows, writer_options,
                     scheduler, workers, local_threads, env, overwrite)
    out_abs = check_output(out_path, overwrite=overwrite)
    if os.path.exists(out_abs) and os.path.samefile(out_abs, image.path):
        raise NdgeoError(f"output {out_abs} is the input raster")
    source = _lazy_bands(image, positions)
    total = image.width * image.height
    done = skipped = 0
    start = time.perf_counter()
    # Static arguments ride in a partial so dask does not traverse (or rebuild) the processor.
    task = dask.delayed(
        partial(_process_window, source, processor, image.nodata, image.shape, env,
                _mask_source(image, positions)),
        pure=False,
    )
    with rasterio.Env(**env), _client(scheduler, workers, env) as (client, name, slots):
        slots = slots or local_threads
        tasks = (
            (w, task(_as_tuple(w))) for w in windows
        )
        with GeoTIFFWriter(out_abs, overwrite=overwrite, **writer_options) as dst:
            for window, result in _execute(tasks, client, slots, 2 * slots):
                if result is None:
                    skipped += 1
                    result = np.full(
                        (processor.out_count, window.height, window.width),
                        processor.out_nodata,
                        dtype=processor.out_dtype,
                    )
                dst.write(result, window)
                done += int(window.width * window.height)
                if progress is not None:
                    progress(done, total)
    name = name if client is not None else f"threads ({local_threads})"
    return RunResult(out_abs, len(windows), skipped, total, time.perf_counter() - start, name)


def _plan(image, positions, out_path, processor, chunks, windows, writer_options, scheduler,
          workers, local_threads, env, overwrite) -> dict[str, Any]:
    """The dry-run plan: what :func:`run` would read, compute and write."""
    halo = int(getattr(processor, "halo", 0))
    if workers:
        sched, slots = f"LocalCluster ({workers} processes x 1 thread)", workers
    elif scheduler is not None:
        sched, slots = str(getattr(scheduler, "scheduler", scheduler)), None
    else:
        sched, slots = f"threads ({local_threads})", local_threads
    in_flight = 2 * (slots or 1)
    read_px = (chunks[0] + 2 * halo) * (chunks[1] + 2 * halo)
    in_bytes = len(positions) * read_px * (np.dtype(image.dtype).itemsize + 4)
    out_bytes = processor.out_count * chunks[0] * chunks[1] * (
        4 + np.dtype(processor.out_dtype).itemsize
    )
    profile = creation_profile(processor.out_dtype, writer_options["creation_options"])
    cache_mb = float(env.get("GDAL_CACHEMAX", 0))
    return {
        "input": os.path.abspath(image.path),
        "output": os.path.abspath(os.fspath(out_path)),
        "output_exists": os.path.exists(out_path),
        "overwrite": overwrite,
        "size": [image.height, image.width],
        "bands": [image.bands[p].name for p in positions],
        "band_positions": positions,
        "input_nodata": image.nodata,
        "input_gdal_mask": image.has_mask,
        "input_scaling": _scaling_plan(processor, image, positions),
        "input_block_shape": list(image.block_shape),
        "chunk_shape": list(chunks),
        "chunks": len(windows),
        "chunk_grid": [math.ceil(image.height / chunks[0]), math.ceil(image.width / chunks[1])],
        "halo": halo,
        "read_shape": [min(image.height, chunks[0] + 2 * halo),
                       min(image.width, chunks[1] + 2 * halo)],
        "output_profile": {
            "driver": "COG" if writer_options["cog"] else "GTiff",
            "count": processor.out_count,
            "dtype": processor.out_dtype,
            "nodata": processor.out_nodata,
            "descriptions": list(writer_options["descriptions"] or []),
            "creation_options": profile,
        },
        **_batch_plan(processor, chunks),
        "scheduler": sched,
        "in_flight": in_flight if slots else "2 x worker threads",
        "gdal_env": {k: str(v) for k, v in env.items()},
        "estimated_peak_memory_mb": round(
            (in_flight * (in_bytes + out_bytes)) / 2**20 + cache_mb, 1
        ),
    }


def _scaling_plan(processor: Processor, image: RasterInfo,
                  positions: Sequence[int]) -> dict[str, list[float]] | None:
    """The GDAL scale/offset the processor applies, by band name (None: none)."""
    scaling = getattr(processor, "scaling", None)
    if scaling is None:
        return None
    return {image.bands[p].name: [s, o] for p, s, o in zip(positions, *scaling, strict=True)}


def _batch_plan(processor: Processor, chunks: tuple[int, int]) -> dict[str, Any]:
    """Model batches per chunk, for processors that run a model in batches."""
    batch_size = getattr(processor, "batch_size", None)
    if not batch_size:
        return {}
    plan: dict[str, Any] = {
        "batch_size": int(batch_size),
        "batches_per_chunk": math.ceil(chunks[0] * chunks[1] / batch_size),
    }
    device = getattr(processor, "device", None)
    if device is not None:
        plan["device"] = str(device)
    return plan


def scene_statistics(
    image: RasterInfo,
    band_positions: Sequence[int],
    *,
    chunk_size: int = 1024,
    scheduler: object = None,
    workers: int | None = None,
    threads: int | None = None,
    gdal_env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Masked count, mean and population std of the valid pixels, per band and over all bands.

    Computed in float64 blockwise (Chan's parallel merge), so it equals numpy on the whole
    array without holding it. Returns ``{"count", "mean": [...], "std": [...], "joint_count",
    "joint_mean", "joint_std"}`` with bands in ``band_positions`` order.
    """
    positions = _check_bands(image, band_positions)
    env = _gdal_env(gdal_env)
    windows = plan_windows(image.shape, chunk_shape(chunk_size, image.block_shape, image.shape))
    source = _lazy_bands(image, positions)
    task = dask.delayed(
        partial(_window_stats, source, image.nodata, image.shape, env,
                _mask_source(image, positions)),
        pure=False,
    )
    k = len(positions)
    total = (0, np.zeros(k), np.zeros(k))
    with rasterio.Env(**env), _client(scheduler, workers, env) as (client, _, slots):
        slots = slots or threads or os.cpu_count() or 1
        tasks = ((w, task(_as_tuple(w))) for w in windows)
        for _, part in _execute(tasks, client, slots, 2 * slots):
            total = _merge(total, part)
    n, mean, m2 = total
    if n == 0:
        raise NdgeoError(f"{image.path} has no valid pixel in the selected bands")
    # Joint (all bands pooled): merge the per-band summaries as equal-sized groups.
    joint = (0, 0.0, 0.0)
    for b in range(k):
        joint = _merge(joint, (n, mean[b], m2[b]))
    return {
        "count": int(n),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in np.sqrt(m2 / n)],
        "joint_count": int(joint[0]),
        "joint_mean": float(joint[1]),
        "joint_std": float(math.sqrt(joint[2] / joint[0])),
    }
