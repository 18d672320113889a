"""Throughput and memory of chunked application: ``ndgeo apply`` / ``ndgeo index`` vs an I/O floor.

Input: an 8-band uint16 tiled (256 x 256) DEFLATE GeoTIFF with Sentinel-2 band names, generated
window by window (never whole in memory). Variants, each in its own child process:

- ``floor``: plain ``rioxarray.open_rasterio(chunks=..., lock=False)`` -> dask arithmetic (a
  fixed ND threshold) -> ``rio.to_raster`` uint8 tiled DEFLATE (dask.array.store, threaded);
- ``floor-f32``: the same floor writing the float32 NDVI (ZSTD level 1, predictor 3, as
  ndgeo's writer does for float output), the floor for the same output as ``ndgeo index``;
- ``engine``: :func:`ndgeo.engine.run` with the floor's ND-threshold processor (engine overhead);
- ``apply``: ``ndgeo apply MODEL IMAGE --output class`` with a 16-index ND classifier;
- ``index``: ``ndgeo index IMAGE --name NDVI``.

The CLI variants call the Typer app inside the child (``ndgeo -q apply ...``), so "compute" is
the command itself and "wall" adds interpreter start-up and imports. The model is trained for a
few epochs on 20,000 pixels of the input labelled into 4 classes by quartiles of the NIR/red ND
(a real trained checkpoint with BatchNorm statistics, saved with ``ndgeo.checkpoint``).
Variants run back to back, ``--repeats`` times in alternating order; the fastest compute time
of each is reported (the least disturbed on a shared machine). Peak RSS is the child's own
``VmHWM`` (/proc/self/status, read when it finishes): ``os.wait4``'s ``ru_maxrss`` is not used
because on Linux a child started with vfork + exec inherits the parent's high-water mark (a
child running ``pass`` reports 827 MB while the parent holds 800 MB). ``ndgeo apply`` (and the
floor) also run on a 4096 and a 16384 input to show memory does not grow with raster size
(``--rss-sizes``; the 16384 input is skipped when ``df`` shows too little free space).

Usage: ``python benchmarks/apply_throughput.py [--size 8192] [--repeats 2]``; writes
benchmarks/results/apply_throughput.md (``--out``). ``--profile`` prints a per-stage breakdown
of ``apply`` and ``index`` on windows of the input instead.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from ndgeo.engine import Processor

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11")
RED, NIR = 2, 6  # positions of B04 and B08
THRESHOLD = 0.2
VARIANTS = ("floor", "floor-f32", "engine", "apply", "index")
ROOT = Path(__file__).resolve().parents[1]
GOALS = {"apply": ("floor", 1.5), "index": ("floor", 1.2)}
RSS_GOAL_MB = 1536


class NDThreshold(Processor):
    """Engine processor: 1 where (NIR - red) / (NIR + red) > THRESHOLD, else 0; 255 = nodata."""

    halo = 0
    out_count = 1
    out_dtype = "uint8"
    out_nodata = 255
    descriptions = ["nd_gt_0.2"]

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        nir, red = block[0], block[1]
        return ((nir - red) / (nir + red) > THRESHOLD).astype("uint8")[None]


def make_input(path: str, size: int, block: int = 256, step: int = 1024) -> None:
    """An 8-band uint16 tiled DEFLATE GeoTIFF with smooth fields, noise and a nodata border,
    written in ``step`` x ``step`` windows so memory stays small for any ``size``."""
    rng = np.random.default_rng(0)
    gains = rng.uniform(0.5, 1.5, len(BANDS)).astype("float32")
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=len(BANDS), dtype="uint16",
        crs="EPSG:32632", transform=Affine(10, 0, 600000, 0, -10, 5200000), nodata=0,
        tiled=True, blockxsize=block, blockysize=block, compress="deflate", predictor=2,
        BIGTIFF="IF_SAFER",
    ) as dst:
        dst.descriptions = BANDS
        for row in range(0, size, step):
            for col in range(0, size, step):
                h, w = min(step, size - row), min(step, size - col)
                y = np.arange(row, row + h, dtype="float32")[:, None] / size
                x = np.arange(col, col + w, dtype="float32")[None, :] / size
                field = 0.5 + 0.5 * np.sin(6 * x + 3 * y) * np.cos(4 * y - 2 * x)
                data = np.empty((len(BANDS), h, w), dtype="uint16")
                for b, gain in enumerate(gains):
                    noise = rng.normal(0, 0.02, (h, w)).astype("float32")
                    shift = field if b < RED + 1 else 1 - field
                    data[b] = np.clip((shift * gain + noise) * 3000 + 100, 1, 65535)
                data[:, :, : max(0, size // 50 - col)] = 0  # nodata strip on the left edge
                dst.write(data, window=Window(col, row, w, h))


def make_model(src: str, path: str) -> None:
    """Train a 16-index ND classifier on pixels of ``src`` and save it with ndgeo.checkpoint."""
    from ndgeo.checkpoint import save_model
    from ndgeo.io.labels import pixels_from_arrays
    from ndgeo.training.classifier import TrainConfig, train_model

    with rasterio.open(src) as ds:
        side = min(512, ds.width // 2)
        X = ds.read(window=Window(ds.width // 4, ds.height // 4, side, side))
    X = X.reshape(len(BANDS), -1).T.astype("float32")
    X = X[(X > 0).all(axis=1)]
    X = X[np.random.default_rng(0).permutation(len(X))[:20000]]
    nd = (X[:, NIR] - X[:, RED]) / (X[:, NIR] + X[:, RED])
    labels = np.digitize(nd, np.quantile(nd, [0.25, 0.5, 0.75]))
    pixels = pixels_from_arrays(X, [f"class{k}" for k in labels], BANDS)
    result = train_model(pixels, TrainConfig(n_indices=16, epochs=8, split="random"))
    save_model(path, result.model, result.metadata())


# -- variants (run in the child) --------------------------------------------------------------


def _floor_dataset(src: str, chunk: int):
    import rioxarray

    data = rioxarray.open_rasterio(
        src, chunks={"band": -1, "y": chunk, "x": chunk}, lock=False, masked=False
    )
    nir = data.isel(band=NIR).astype("float32")
    red = data.isel(band=RED).astype("float32")
    valid = (data.isel(band=[NIR, RED]) != 0).all("band")
    return nir, red, valid


def run_floor(src: str, out: str, chunk: int) -> None:
    """The I/O floor: plain rioxarray + dask, written with a lock (dask.array.store)."""
    import threading

    import xarray as xr

    nir, red, valid = _floor_dataset(src, chunk)
    cls = xr.where(valid, ((nir - red) / (nir + red) > THRESHOLD).astype("uint8"), 255)
    cls = cls.astype("uint8").drop_attrs().rio.write_nodata(255)
    cls.rio.to_raster(out, tiled=True, compress="DEFLATE", predictor=2, zlevel=6,
                      lock=threading.Lock(), BIGTIFF="IF_SAFER")


def run_floor_f32(src: str, out: str, chunk: int) -> None:
    """The floor for float32 output: NDVI written as ndgeo's writer would (ZSTD-1, predictor 3)."""
    import threading

    import xarray as xr

    nir, red, valid = _floor_dataset(src, chunk)
    ndvi = xr.where(valid, (nir - red) / (nir + red), np.float32(np.nan)).astype("float32")
    ndvi = ndvi.drop_attrs().rio.write_nodata(np.nan)
    ndvi.rio.to_raster(out, tiled=True, compress="ZSTD", predictor=3, zstd_level=1,
                       lock=threading.Lock(), BIGTIFF="IF_SAFER")


def run_engine(src: str, out: str, chunk: int) -> None:
    from ndgeo.engine import Execution, run
    from ndgeo.io.raster import open_raster

    run(NDThreshold(), open_raster(src), [NIR, RED], out, execution=Execution(chunk_size=chunk),
        overwrite=True)


def _cli(args: list[str]) -> None:
    from ndgeo.cli import app

    app(args=["-q", *args], prog_name="ndgeo", standalone_mode=False)


def run_apply(src: str, out: str, chunk: int, model: str) -> None:
    _cli(["apply", model, src, "-o", out, "--products", "class", "--chunk-size", str(chunk),
          "--overwrite"])


def run_index(src: str, out: str, chunk: int) -> None:
    _cli(["index", src, "-o", out, "--name", "NDVI", "--chunk-size", str(chunk), "--overwrite"])


def _child_main(args: argparse.Namespace) -> None:
    # Imports belong to start-up ("wall"), not to the timed command ("compute").
    if args.variant in ("apply", "index"):
        import typer._adapters  # noqa: F401  (pydantic, imported by typer on first parse)

        import ndgeo.cli  # noqa: F401
        import ndgeo.processors.classify  # noqa: F401  (the CLI imports the library when a command runs)
    elif args.variant == "engine":
        import ndgeo.engine  # noqa: F401
    else:
        import rioxarray  # noqa: F401
        import xarray  # noqa: F401
    warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
    start = time.perf_counter()
    if args.variant == "apply":
        run_apply(args.src, args.out, args.chunk, args.model)
    else:
        {"floor": run_floor, "floor-f32": run_floor_f32, "engine": run_engine,
         "index": run_index}[args.variant](args.src, args.out, args.chunk)
    seconds = time.perf_counter() - start
    print(seconds, _peak_rss_kib())  # read by child()


def _peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM, KiB): its own, not inherited at exec."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


# -- parent ----------------------------------------------------------------------------------


def child(variant: str, src: str, out: str, chunk: int, model: str) -> dict:
    """Run one variant in a child process: wall s (incl. start-up), compute s, peak RSS MB."""
    if os.path.exists(out):
        os.remove(out)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--variant", variant, "--src", src, "--out", out,
         "--chunk", str(chunk), "--model", model],
        stdout=subprocess.PIPE, text=True,
    )
    text = proc.stdout.read()
    status = proc.wait()
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{variant} failed with status {status}: {text[-2000:]}")
    seconds, rss_kib = text.split()[-2:]
    return {"variant": variant, "wall": wall, "compute": float(seconds),
            "rss": int(rss_kib) / 1024, "load": (load + os.getloadavg()[0]) / 2}


def _input(workdir: str, size: int) -> str:
    src = os.path.join(workdir, f"input_{size}.tif")
    if not os.path.exists(src):
        start = time.perf_counter()
        make_input(src + ".part", size)
        os.replace(src + ".part", src)
        print(f"generated {src} ({os.path.getsize(src) / 2**20:.0f} MB) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return src


def _compare(a: str, b: str) -> tuple[bool, float]:
    """(identical, max |a - b| ignoring NaN) of two single-band rasters, block by block."""
    same, diff = True, 0.0
    with rasterio.open(a) as da, rasterio.open(b) as db:
        for _, w in da.block_windows(1):
            x, y = da.read(1, window=w), db.read(1, window=w)
            same &= bool(np.array_equal(x, y, equal_nan=x.dtype.kind == "f"))
            if x.dtype.kind == "f":
                d = np.abs(x.astype("float64") - y)
                if np.isfinite(d).any():
                    diff = max(diff, float(np.nanmax(d)))
                same &= bool(np.array_equal(np.isnan(x), np.isnan(y)))
    return same, diff


def _class_counts(path: str) -> dict[int, int]:
    counts = np.zeros(256, dtype=np.int64)
    with rasterio.open(path) as ds:
        for _, w in ds.block_windows(1):
            counts += np.bincount(ds.read(1, window=w).ravel(), minlength=256)
    return {int(k): int(counts[k]) for k in np.flatnonzero(counts)}


def _versions() -> str:
    import dask
    import torch

    return (f"Python {platform.python_version()}, GDAL {rasterio.__gdal_version__}, rasterio "
            f"{rasterio.__version__}, dask {dask.__version__}, torch {torch.__version__}")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-sizes", default="4096,16384",
                        help="extra sizes for the memory runs (comma-separated; '' for none)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 16384 input")
    parser.add_argument("--workdir", default="/tmp/ndgeo-bench-apply")
    parser.add_argument("--out-md", type=Path,
                        default=ROOT / "benchmarks/results/apply_throughput.md")
    parser.add_argument("--profile", action="store_true", help="per-stage breakdown only")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _child_main(args)
        return

    os.makedirs(args.workdir, exist_ok=True)
    src = _input(args.workdir, args.size)
    model = os.path.join(args.workdir, "nd16.safetensors")
    if not os.path.exists(model):
        make_model(src, model)
    if args.profile:
        profile(src, model, args.chunk)
        return
    started = time.perf_counter()
    load_start = os.getloadavg()
    mpix = args.size * args.size / 1e6
    header = (f"input {args.size}x{args.size}x{len(BANDS)} uint16 tiled 256 DEFLATE "
              f"({os.path.getsize(src) / 2**20:.0f} MB on disk), chunk {args.chunk}, "
              f"{os.cpu_count()} cores, load average {load_start[0]:.1f}")
    print(header, flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    outs = {v: os.path.join(args.workdir, f"out_{v}.tif") for v in VARIANTS}
    for rep in range(args.repeats):
        order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
        for v in order:
            r = child(v, src, outs[v], args.chunk, model)
            runs[v].append(r)
            print(f"  {v:>9}: {r['compute']:7.2f} s compute ({r['wall']:6.2f} s wall)  "
                  f"peak RSS {r['rss']:6.0f} MB  load {r['load']:.1f}", flush=True)
    best = {v: min(rs, key=lambda r: r["compute"]) for v, rs in runs.items()}
    same, _ = _compare(outs["floor"], outs["engine"])
    _, ndvi_diff = _compare(outs["floor-f32"], outs["index"])
    classes = _class_counts(outs["apply"])

    rss_rows = []
    sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
    for size in sorted({*sizes, args.size}):
        if size == args.size:
            rss_rows.append((size, best["apply"]["rss"], best["floor"]["rss"],
                             best["apply"]["compute"], best["floor"]["compute"]))
            continue
        need = size * size * len(BANDS) * 2 * 0.8 / 2**30  # GiB on disk, generous
        free = shutil.disk_usage(args.workdir).free / 2**30
        if size > 8192 and (args.skip_large or free < need + 5):
            print(f"skipping {size}: {free:.0f} GiB free, ~{need:.1f} GiB needed "
                  f"(or --skip-large)", flush=True)
            continue
        big = _input(args.workdir, size)
        out = os.path.join(args.workdir, f"out_rss_{size}.tif")
        a = child("apply", big, out, args.chunk, model)
        f = child("floor", big, out, args.chunk, model)
        print(f"  size {size}: apply RSS {a['rss']:.0f} MB ({a['compute']:.1f} s), floor RSS "
              f"{f['rss']:.0f} MB ({f['compute']:.1f} s)", flush=True)
        rss_rows.append((size, a["rss"], f["rss"], a["compute"], f["compute"]))
        os.remove(out)

    load_end = os.getloadavg()
    floor = best["floor"]["compute"]
    rows = []
    for v in VARIANTS:
        b = best[v]
        rows.append([v, f"{b['compute']:.2f}", " / ".join(f"{r['compute']:.1f}" for r in runs[v]),
                     f"{b['wall']:.2f}", f"{mpix / b['compute']:.1f}",
                     f"{b['compute'] / floor:.2f}",
                     f"{b['compute'] / best['floor-f32']['compute']:.2f}",
                     f"{b['rss']:.0f}", f"{b['load']:.1f}"])
    goal_rows = []
    for v, (base, goal) in GOALS.items():
        ratio = best[v]["compute"] / best[base]["compute"]
        goal_rows.append([f"{v} / {base} compute", f"{ratio:.2f}", f"<= {goal}",
                          "met" if ratio <= goal else "NOT met"])
    ratio = best["index"]["compute"] / best["floor-f32"]["compute"]
    goal_rows.append(["index / floor-f32 compute (same output type)", f"{ratio:.2f}", "<= 1.2",
                      "met" if ratio <= 1.2 else "NOT met"])
    rss_max = max(r[1] for r in rss_rows)
    growth = rss_rows[-1][1] / rss_rows[0][1]
    goal_rows.append(["apply peak RSS (max over sizes)", f"{rss_max:.0f} MB",
                      f"< {RSS_GOAL_MB} MB", "met" if rss_max < RSS_GOAL_MB else "NOT met"])
    goal_rows.append([f"apply RSS {rss_rows[-1][0]} / {rss_rows[0][0]}", f"{growth:.2f}",
                      "flat (< 1.2)", "met" if growth < 1.2 else "NOT met"])
    md = [
        "# Apply throughput: `ndgeo apply` / `ndgeo index` vs a rioxarray + dask floor",
        "",
        f"Generated by `python benchmarks/apply_throughput.py --size {args.size} --repeats "
        f"{args.repeats}` on {datetime.date.today().isoformat()}, {platform.machine()} "
        f"{platform.platform()}, {os.cpu_count()} cores shared with other work (load average "
        f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end); {_versions()}. Total "
        f"{(time.perf_counter() - started) / 60:.1f} min.",
        "",
        f"Input: {header}. Each variant runs in its own process, back to back, "
        f"{args.repeats}x in alternating order; the table shows the fastest compute time "
        "(the command itself; wall adds interpreter start-up and imports), its peak RSS and "
        "the mean load average during it. Local threaded scheduler everywhere "
        f"({os.cpu_count()} threads). Model for `apply`: a 16-index depth-1 ND classifier "
        "(4 classes, BatchNorm head) trained 8 epochs on 20,000 input pixels labelled by "
        "quartiles of the NIR/red ND, saved with `ndgeo.checkpoint.save_model`.",
        "",
        _table(["variant", "best compute s", "all runs s", "wall s", "Mpx/s", "/ floor",
                "/ floor-f32", "peak RSS MB", "load"], rows),
        "",
        f"Checks: engine output identical to the floor's: {same}; `ndgeo index` NDVI vs the "
        f"float32 floor: max |diff| {ndvi_diff:.2g}; `apply` class pixel counts {classes}.",
        "",
        "## Goals",
        "",
        _table(["measure", "value", "goal", ""], goal_rows),
        "",
        "## Peak RSS against raster size",
        "",
        _table(["size", "input GiB uncompressed", "apply RSS MB", "floor RSS MB",
                "apply s", "floor s"],
               [[s, f"{s * s * len(BANDS) * 2 / 2**30:.1f}", f"{a:.0f}", f"{f:.0f}",
                 f"{ta:.1f}", f"{tf:.1f}"] for s, a, f, ta, tf in rss_rows]),
    ]
    text = "\n".join(md) + "\n"
    print(text)
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(text, encoding="utf-8")
    print(f"wrote {args.out_md}")


def profile(src: str, model: str, chunk: int, n_windows: int = 12) -> None:
    """Seconds per stage of ``apply`` and ``index`` on ``n_windows`` chunks, one thread."""
    import torch

    from ndgeo.engine import _lazy_bands
    from ndgeo.io.raster import open_raster, to_float, valid_mask
    from ndgeo.io.tiles import chunk_shape, plan_windows
    from ndgeo.io.writer import GeoTIFFWriter
    from ndgeo.nn.inference import argmax_rows, batches
    from ndgeo.processors.classify import model_processor
    from ndgeo.processors.index import index_processor

    info = open_raster(src)
    proc, positions = model_processor(model, info, outputs=["class"], device="cpu")
    proc.prepare(info)
    iproc, ipositions = index_processor(info, names=["NDVI"])
    windows = plan_windows(info.shape, chunk_shape(chunk, info.block_shape, info.shape))
    windows = windows[len(windows) // 3:][:n_windows]
    net = proc._model(torch.device("cpu"))
    t: dict[str, float] = {}

    def tick(name: str, t0: float) -> float:
        now = time.perf_counter()
        t[name] = t.get(name, 0.0) + now - t0
        return now

    for label, p, pos in (("apply", proc, positions), ("index", iproc, ipositions)):
        source = _lazy_bands(info, pos)
        out_path = os.path.join(os.path.dirname(src), f"profile_{label}.tif")
        with GeoTIFFWriter(out_path, width=info.width, height=info.height, count=p.out_count,
                           dtype=p.out_dtype, crs=info.crs, transform=info.transform,
                           nodata=p.out_nodata, overwrite=True) as dst:
            for w in windows:
                t0 = time.perf_counter()
                raw = source.isel(y=slice(w.row_off, w.row_off + w.height),
                                  x=slice(w.col_off, w.col_off + w.width)).values
                t0 = tick(f"{label}: read {len(pos)} bands", t0)
                valid = valid_mask(raw, info.nodata)
                t0 = tick(f"{label}: valid mask", t0)
                if getattr(p, "raw_input", False):
                    block = raw
                else:
                    block = to_float(raw, valid)
                    t0 = tick(f"{label}: to float32 with NaN", t0)
                if label == "apply":  # the processor's steps, timed one by one
                    x = torch.from_numpy(block.reshape(block.shape[0], -1))
                    with torch.no_grad():
                        for part in batches(x.shape[1], proc.batch_size):
                            batch = x[:, part].float()
                            t0 = tick("apply: batch to float32", t0)
                            indices = net.indices(batch)
                            t0 = tick("apply: ND layer (band-major)", t0)
                            logits = net.from_indices(indices)
                            t0 = tick("apply: folded head", t0)
                            argmax_rows(logits)
                            t0 = tick("apply: argmax", t0)
                result = p(block, valid)
                t0 = tick(f"{label}: processor call (total)", t0)
                result = np.where(valid, result, p.out_nodata).astype(p.out_dtype)
                t0 = tick(f"{label}: mask + cast", t0)
                dst.write(result, w)
                tick(f"{label}: write", t0)
        os.remove(out_path)
    mpix = sum(w.width * w.height for w in windows) / 1e6
    print(f"{len(windows)} windows of {chunk} px ({mpix:.1f} Mpx), 1 thread, torch threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    for name, sec in t.items():
        print(f"  {name:<36} {sec:7.2f} s  {sec / mpix * 1e3:7.1f} ms/Mpx")


if __name__ == "__main__":
    main()
