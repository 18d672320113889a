"""The one chunked execution engine: plan and run a *processor* over the windows of a raster.

A processor (:class:`Processor`) is a small picklable object that knows nothing about files or
dask; the engine reads every attribute it declares, nothing else. :class:`Execution` is the one
execution context of a command: chunk size, scheduler (local threads, a LocalCluster it starts,
or a remote ``dask scheduler``), GDAL options. Entered once per command, it opens at most one
cluster, which every pass of the command (scene statistics, the run) shares.

Processors that need a torch model load it with :func:`ndgeo.checkpoint.cached_load` on first
call (once per process), so weights are never pickled into tasks; tasks return CPU numpy only.

Execution (why it is built this way, see docs/notes ecosystem.md sections 3-7):

- One task per output window reads exactly its window plus ``halo`` (clipped at the image
  edge, so a processor sees the true border just as on the whole image) straight from GDAL
  through one rasterio dataset per thread (:class:`WindowReader`), finds its valid pixels,
  calls the processor and crops the result back to the window. Slicing a dask-chunked array
  instead would read every neighbouring chunk (9 full chunks for a 1-pixel halo) and every band.
- Local runs use a plain thread pool over the windows: no dask graph, no xarray, nothing to
  import before the first pixel but rasterio and numpy (a dask task per window cost more than
  its bookkeeping on small windows, and importing xarray/dask ~0.8 s of start-up). Clusters get
  the same task function through ``distributed.Client.submit``.
- Windows whose pixels are all invalid are not processed; they are written as ``out_nodata``.
- The main process is the single writer: at most ``2 x workers`` windows are in flight and each
  finished window is written as it arrives, so memory stays flat and no lock or shared
  filesystem write is needed. Output is identical for local threads, a LocalCluster and a
  remote ``dask scheduler`` (workers need the input path; only the main process writes).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from ndgeo import stats
from ndgeo.errors import NdgeoError
from ndgeo.io.gdal_config import cache_megabytes, check_config_options
from ndgeo.io.raster import RasterInfo, check_nodata, read_block, to_float
from ndgeo.io.tiles import chunk_shape, grow, plan_windows
from ndgeo.io.writer import GeoTIFFWriter, check_output, creation_profile

#: GDAL settings applied in the main process and on every worker unless overridden.
DEFAULT_GDAL_ENV: dict[str, Any] = {"GDAL_CACHEMAX": 256, "GDAL_NUM_THREADS": 1}

Progress = Callable[[int, int], None]


class Processor:
    """Everything :func:`run` reads from a processor, with defaults (subclass and set).

    ``__call__(block, valid)``: ``block`` is float32 (C, h, w) with NaN where invalid (with
    ``raw_input``: as read, any value where invalid), ``valid`` bool (h, w); it returns
    (out_count, h, w). ``prepare(image, execution)`` is called once in the main process before
    any task.
    ``scaling`` (GDAL scale, offset per band), ``batch_size`` and ``device`` only feed the
    dry-run plan. ``raw_input`` saves a float32 copy of the whole block (about a third of the
    engine's own work on 8-band uint16 input) for processors that convert batch by batch.
    """

    halo: int = 0
    out_count: int
    out_dtype: str
    out_nodata: float
    descriptions: list[str] | None = None
    tags: dict | None = None
    band_tags: list[dict] | None = None
    colormap: dict | None = None
    classes: list | None = None
    raw_input: bool = False
    scaling: tuple | None = None
    batch_size: int | None = None
    device: str | None = None

    def inputs(self) -> list[str]:
        """Files the processor reads (model files): an output may never be one of them."""
        return []

    def prepare(self, image: RasterInfo, execution: Execution | None = None) -> None:
        """Called once in the main process, inside the command's execution context, before any
        task (default: nothing); a pass such as scene statistics may run here."""

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class RunResult:
    """Summary of a finished :func:`run`."""

    out_path: str
    windows: int
    skipped: int
    pixels: int
    seconds: float
    scheduler: str


class WindowReader:
    """Reads windows of the selected bands of one raster, one rasterio dataset per thread.

    Picklable (only the path and band choice travel; each worker process and thread opens its
    own handle on first read), so the same object serves local threads and cluster workers.
    GDAL datasets are not thread-safe, hence one per thread instead of a lock.
    """

    def __init__(self, image: RasterInfo, band_positions: Sequence[int]) -> None:
        self.path = image.path
        self.info = image
        self.positions = [int(p) for p in band_positions]
        self._init_local()

    def _init_local(self) -> None:
        self._local = threading.local()
        self._opened: list = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_local", "_opened", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_local()

    def dataset(self):
        """This thread's open dataset (opened on first use)."""
        src = getattr(self._local, "src", None)
        if src is None:
            src = self._local.src = rasterio.open(self.path)
            with self._lock:
                self._opened.append(src)
        return src

    def close(self) -> None:
        """Close every dataset opened by this object's threads (the end of a local run)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for src in opened:
            src.close()
        self._local = threading.local()

    def read(
        self, window: tuple[int, int, int, int], halo: int = 0
    ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Window (row, col, h, w) grown by ``halo``, clipped: the raw bands, their valid pixels
        (nodata, non-finite and the file's GDAL mask, if any) and the core's offset in them."""
        row, col, h, w = window
        grown, dr, dc = grow(Window(col, row, w, h), halo, self.info.shape)
        raw, valid = read_block(self.dataset(), self.info, self.positions, grown)
        return raw, valid, dr, dc


def process_block(
    processor: Processor, raw: np.ndarray, valid: np.ndarray,
    core: tuple[int, int, int, int] | None = None,
) -> np.ndarray | None:
    """Run ``processor`` on a raw (C, h, w) block and its valid pixels; return the ``core``
    (row, col, h, w; default the whole block) with ``out_nodata`` where invalid, in
    ``out_dtype``. None when the core has no valid pixel. What every engine task (and the
    xarray accessor, per dask chunk) computes."""
    dr, dc, h, w = core or (0, 0, *valid.shape)
    inside = valid[dr : dr + h, dc : dc + w]
    if not inside.any():
        return None
    block = raw if processor.raw_input else to_float(raw, valid)
    result = np.asarray(processor(block, valid))
    expected = (processor.out_count, *valid.shape)
    if result.shape != expected:
        raise ValueError(
            f"{type(processor).__name__} returned shape {result.shape}, expected {expected}"
        )
    result = result[:, dr : dr + h, dc : dc + w]
    return np.where(inside, result, processor.out_nodata).astype(processor.out_dtype)


def _process_window(
    reader: WindowReader,
    processor: Processor,
    gdal_env: dict[str, Any],
    window: tuple[int, int, int, int],
) -> np.ndarray | None:
    """One task: read, mask, process, crop. None when the window has no valid pixel."""
    with rasterio.Env(**gdal_env):
        raw, valid, dr, dc = reader.read(window, processor.halo)
    return process_block(processor, raw, valid, (dr, dc, *window[2:]))


def _window_stats(
    reader: WindowReader, gdal_env: dict[str, Any], window: tuple[int, int, int, int],
) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, per-band mean and M2 (sum of squared deviations) of the valid pixels, float64."""
    with rasterio.Env(**gdal_env):
        raw, valid, _, _ = reader.read(window)
    return stats.moments(raw[:, valid])


def _apply_gdal_env(env: dict[str, Any]) -> None:
    """Set GDAL options process-wide (run on each distributed worker before it reads)."""
    for key, value in env.items():
        os.environ[key] = str(value)
        rasterio.env.set_gdal_config(key, value)


#: Seconds to wait for a dask scheduler to answer (``--timeout``; overridable per command).
CONNECT_TIMEOUT = 30.0


def _quiet_distributed() -> None:
    """distributed logs cluster start-up at INFO (34 lines for two workers): keep its loggers
    at WARNING unless the user asked for more (``-v`` sets the root level)."""
    level = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    for name in ("distributed", "distributed.nanny", "distributed.scheduler",
                 "distributed.worker", "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(level)


@dataclass
class Execution:
    """The execution context of one command (rasterio builds one ``Env`` per command the same
    way): chunk size, where tasks run, GDAL options. Enter it once; every engine pass inside
    (scene statistics, the run) shares the one client, so ``--workers N`` starts one
    LocalCluster per command.

    ``scheduler``: None for local threads (``threads``, default all cores), a
    ``tcp://host:port`` address or a ``distributed.Client``; ``workers=N`` starts a local
    cluster of N single-threaded worker processes. ``timeout`` bounds every wait for a
    scheduler (connect and first answer).
    """

    chunk_size: int = 1024
    scheduler: object = None
    workers: int | None = None
    threads: int | None = None
    gdal_env: dict[str, Any] | None = None
    timeout: float = CONNECT_TIMEOUT
    client: Any = field(default=None, init=False, repr=False)
    name: str = field(default="", init=False)
    slots: int = field(default=0, init=False)
    clusters_started: int = field(default=0, init=False)
    _stack: ExitStack | None = field(default=None, init=False, repr=False)
    _depth: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise NdgeoError(f"--chunk-size must be >= 1, got {self.chunk_size}")
        if self.workers is not None and self.workers < 1:
            raise NdgeoError(f"--workers must be >= 1, got {self.workers}")
        if self.scheduler is not None and self.workers:
            raise NdgeoError("give either a scheduler address or a number of workers, not both")
        if self.threads is not None and self.threads < 1:
            raise NdgeoError(f"threads must be >= 1, got {self.threads}")
        if not (self.timeout > 0):
            raise NdgeoError(f"--timeout must be positive, got {self.timeout}")
        self.env = {**DEFAULT_GDAL_ENV,
                    **check_config_options(self.gdal_env or {}, _ram_bytes())}

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None or bool(self.workers)

    def describe(self) -> str:
        """Where tasks run, for plans and summaries (without starting anything)."""
        if self.client is not None:
            return self.name
        if self.workers:
            return f"LocalCluster ({self.workers} processes x 1 thread)"
        if self.scheduler is not None:
            return str(getattr(self.scheduler, "scheduler", self.scheduler))
        return f"threads ({self.local_threads})"

    @property
    def local_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def __enter__(self) -> Execution:
        self._depth += 1
        if self._stack is not None:
            return self  # re-entered by a pass inside the command: share it
        stack = ExitStack()
        try:
            stack.enter_context(rasterio.Env(**self.env))
            if self.distributed:
                self.client = stack.enter_context(self._connect())
                self.slots = max(1, sum(self.client.nthreads().values()))
                self.name = f"distributed {self.client.scheduler.address} ({self.slots} threads)"
            else:
                self.slots = self.local_threads
                self.name = f"threads ({self.slots})"
        except BaseException:
            self._depth -= 1
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        stack, self._stack = self._stack, None
        self.client = None
        if stack is not None:
            stack.close()

    @contextmanager
    def _connect(self):
        from distributed import Client, LocalCluster

        _quiet_distributed()
        if isinstance(self.scheduler, Client):
            yield self.scheduler
            return
        if isinstance(self.scheduler, str):
            if not self.scheduler.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
                raise NdgeoError(f"--scheduler must be an address like tcp://HOST:PORT, got "
                                 f"{self.scheduler!r}")
            client = _client_within(self.scheduler, self.timeout)
            cluster = None
        elif self.workers:
            # Our cluster logs at ERROR unless -v: a Ctrl-C would otherwise print one "task
            # cancelled" warning per running task from every worker process, and one "still
            # alive, killing" from the nanny for each worker closed inside a task.
            root = logging.getLogger().getEffectiveLevel()
            cluster_level = logging.ERROR if root >= logging.WARNING else root
            cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                   processes=True, dashboard_address=None,
                                   silence_logs=cluster_level)
            self.clusters_started += 1
            client = Client(cluster, timeout=self.timeout)
        else:
            raise NdgeoError(f"scheduler must be None, an address or a Client, got "
                             f"{self.scheduler!r}")
        try:
            client.run(_apply_gdal_env, self.env)
            yield client
        finally:
            client.close()
            if cluster is not None:
                nanny = logging.getLogger("distributed.nanny")
                before = nanny.level
                nanny.setLevel(cluster_level)
                try:
                    cluster.close()
                finally:
                    nanny.setLevel(before)


def _ram_bytes() -> float | None:
    """Physical memory, for a ``GDAL_CACHEMAX`` given as a share of it."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return None


def _client_within(address: str, timeout: float) -> Any:
    """``distributed.Client(address)`` bounded by ``timeout``: a peer that accepts the TCP
    connection but never speaks the dask protocol makes ``Client`` wait forever whatever its
    own ``timeout`` (distributed 2026.8), so it is built in a daemon thread abandoned at the
    deadline."""
    from distributed import Client

    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            box["client"] = Client(address, timeout=timeout)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=connect, name="ndgeo-connect", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        raise NdgeoError(f"dask scheduler {address} did not answer within {timeout:g} s (is a "
                         "dask scheduler listening there? raise --timeout for a slow one)")
    error = box.get("error")
    if isinstance(error, OSError | TimeoutError):
        raise NdgeoError(f"dask scheduler {address} cannot be reached within {timeout:g} s: "
                         f"{error}") from error
    if error is not None:
        raise error
    return box["client"]


def _execute(
    fn: Callable[[Any], Any], items: Iterable[tuple[Any, Any]], client: Any, slots: int,
    in_flight: int,
) -> Iterator[tuple[Any, Any]]:
    """``fn(arg)`` for ``(key, arg)`` pairs on ``slots`` local threads (``client`` None) or on
    a dask cluster, with at most ``in_flight`` pending; yield ``(key, result)`` as they finish.
    A failed task stops submission and raises here."""
    items = iter(items)
    if client is None:
        with ThreadPoolExecutor(slots, thread_name_prefix="ndgeo-engine") as pool:
            pending: dict = {}

            def submit() -> None:
                for key, arg in items:
                    pending[pool.submit(fn, arg)] = key
                    return

            try:
                for _ in range(in_flight):
                    submit()
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        key = pending.pop(future)
                        result = future.result()
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
        for key, arg in items:
            future = client.submit(fn, arg, pure=False)
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


def _check_processor(processor: Processor) -> None:
    if processor.halo < 0:
        raise ValueError(f"processor halo must be >= 0, got {processor.halo}")
    if processor.out_nodata is None:
        raise ValueError(f"{type(processor).__name__}.out_nodata must be set")
    check_nodata(processor.out_nodata, processor.out_dtype, what="output nodata")


def _writer_options(processor: Processor, image: RasterInfo, creation_options, cog) -> dict:
    return dict(
        width=image.width, height=image.height, count=processor.out_count,
        dtype=processor.out_dtype, crs=image.crs, transform=image.transform,
        nodata=processor.out_nodata, descriptions=processor.descriptions,
        tags=processor.tags, band_tags=processor.band_tags, colormap=processor.colormap,
        classes=processor.classes, creation_options=creation_options, cog=cog,
    )


def plan(
    processor: Processor,
    image: RasterInfo,
    band_positions: Sequence[int],
    out_path: str | os.PathLike,
    *,
    execution: Execution | None = None,
    overwrite: bool = False,
    cog: bool = False,
    creation_options: dict[str, object] | None = None,
) -> dict[str, Any]:
    """What :func:`run` would read, compute and write (JSON-serialisable); reads no pixel.

    Validates everything :func:`run` needs (bands, processor, creation options, output path
    unless it exists and ``overwrite``), so a refusal comes before any work.
    """
    execution = execution or Execution()
    positions = _check_bands(image, band_positions)
    _check_processor(processor)
    chunks = chunk_shape(execution.chunk_size, image.block_shape, image.shape)
    windows = plan_windows(image.shape, chunks)
    halo = processor.halo
    slots = execution.workers or (None if execution.scheduler is not None
                                  else execution.local_threads)
    in_flight = 2 * (slots or 1)
    read_px = (chunks[0] + 2 * halo) * (chunks[1] + 2 * halo)
    in_bytes = len(positions) * read_px * (np.dtype(image.dtype).itemsize + 4)
    out_bytes = processor.out_count * chunks[0] * chunks[1] * (
        4 + np.dtype(processor.out_dtype).itemsize
    )
    profile = creation_profile(processor.out_dtype, creation_options)
    cache_mb = cache_megabytes(execution.env.get("GDAL_CACHEMAX", 0), _ram_bytes()) or 0.0
    return {
        "input": image.path,
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
            "driver": "COG" if cog else "GTiff",
            "count": processor.out_count,
            "dtype": processor.out_dtype,
            "nodata": processor.out_nodata,
            "descriptions": list(processor.descriptions or []),
            "creation_options": profile,
        },
        **_batch_plan(processor, chunks),
        "scheduler": execution.describe(),
        "in_flight": in_flight if slots else "2 x worker threads",
        "gdal_env": {k: str(v) for k, v in execution.env.items()},
        "estimated_peak_memory_mb": round(
            (in_flight * (in_bytes + out_bytes)) / 2**20 + cache_mb, 1
        ),
    }


def run(
    processor: Processor,
    image: RasterInfo,
    band_positions: Sequence[int],
    out_path: str | os.PathLike,
    *,
    execution: Execution | None = None,
    overwrite: bool = False,
    cog: bool = False,
    creation_options: dict[str, object] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run ``processor`` over ``image`` chunk by chunk and write a GeoTIFF at ``out_path``.

    ``band_positions`` (0-based) select and order the bands the processor receives;
    ``execution`` says where tasks run (default: local threads, 1024 px chunks).
    ``progress(done_pixels, total_pixels)`` is called after each window.
    """
    execution = execution or Execution()
    positions = _check_bands(image, band_positions)
    _check_processor(processor)
    out_abs = check_output(out_path, overwrite=overwrite,
                           inputs=[image.path, *processor.inputs()])
    chunks = chunk_shape(execution.chunk_size, image.block_shape, image.shape)
    windows = plan_windows(image.shape, chunks)
    writer_options = _writer_options(processor, image, creation_options, cog)
    reader = WindowReader(image, positions)
    total = image.width * image.height
    done = skipped = 0
    start = time.perf_counter()
    with execution, closing(reader):
        processor.prepare(image, execution)
        task = partial(_process_window, reader, processor, execution.env)
        items = ((w, _as_tuple(w)) for w in windows)
        slots = execution.slots
        with GeoTIFFWriter(out_abs, overwrite=overwrite, **writer_options) as dst:
            for window, result in _execute(task, items, execution.client, slots, 2 * slots):
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
        name = execution.name
    return RunResult(out_abs, len(windows), skipped, total, time.perf_counter() - start, name)


def _scaling_plan(processor: Processor, image: RasterInfo,
                  positions: Sequence[int]) -> dict[str, list[float]] | None:
    """The GDAL scale/offset the processor applies, by band name (None: none)."""
    if processor.scaling is None:
        return None
    return {image.bands[p].name: [s, o]
            for p, s, o in zip(positions, *processor.scaling, strict=True)}


def _batch_plan(processor: Processor, chunks: tuple[int, int]) -> dict[str, Any]:
    """Model batches per chunk, for processors that run a model in batches."""
    if not processor.batch_size:
        return {}
    plan: dict[str, Any] = {
        "batch_size": int(processor.batch_size),
        "batches_per_chunk": math.ceil(chunks[0] * chunks[1] / processor.batch_size),
    }
    if processor.device is not None:
        plan["device"] = str(processor.device)
    return plan


def scene_statistics(
    image: RasterInfo,
    band_positions: Sequence[int],
    *,
    execution: Execution | None = None,
) -> dict[str, Any]:
    """Masked count, mean and population std of the valid pixels, per band and over all bands.

    Computed in float64 blockwise (:mod:`ndgeo.stats`, Chan's parallel merge), so it equals
    numpy on the whole array without holding it; bands in ``band_positions`` order.
    """
    execution = execution or Execution()
    positions = _check_bands(image, band_positions)
    windows = plan_windows(image.shape, chunk_shape(execution.chunk_size, image.block_shape,
                                                    image.shape))
    reader = WindowReader(image, positions)
    total: tuple = (0, np.zeros(len(positions)), np.zeros(len(positions)))
    with execution, closing(reader):
        task = partial(_window_stats, reader, execution.env)
        items = ((w, _as_tuple(w)) for w in windows)
        for _, part in _execute(task, items, execution.client, execution.slots,
                                2 * execution.slots):
            total = stats.merge(total, part)
    return stats.summary(total, name=image.path)
