"""Throughput of chunked application: the ndgeo engine against a plain rioxarray + dask floor.

Both variants compute the same per-pixel normalized-difference threshold on an 8-band uint16
tiled DEFLATE GeoTIFF and write a uint8 tiled DEFLATE GeoTIFF:

- ``floor``: ``rioxarray.open_rasterio(chunks=..., lock=False)`` -> dask arithmetic ->
  ``rio.to_raster(tiled=True, lock=threading.Lock())`` (dask.array.store, threaded);
- ``engine``: :func:`ndgeo.engine.run` with an equivalent processor.

Each variant runs in its own child process; the parent reports wall time and the child's peak
RSS (``os.wait4``). Usage: ``python benchmarks/apply_throughput.py --size 4096``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11")
RED, NIR = 2, 6  # positions of B04 and B08
THRESHOLD = 0.2


class NDThreshold:
    """Engine processor: 1 where (NIR - red) / (NIR + red) > THRESHOLD, else 0; 255 = nodata."""

    halo = 0
    out_count = 1
    out_dtype = "uint8"
    out_nodata = 255
    descriptions = ["nd_gt_0.2"]

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        nir, red = block[0], block[1]
        return ((nir - red) / (nir + red) > THRESHOLD).astype("uint8")[None]


def make_input(path: str, size: int, block: int = 256) -> None:
    """An 8-band uint16 tiled DEFLATE GeoTIFF with smooth fields, noise and a nodata border."""
    rng = np.random.default_rng(0)
    gains = rng.uniform(0.5, 1.5, len(BANDS)).astype("float32")
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=len(BANDS), dtype="uint16",
        crs="EPSG:32632", transform=Affine(10, 0, 600000, 0, -10, 5200000), nodata=0,
        tiled=True, blockxsize=block, blockysize=block, compress="deflate", predictor=2,
    ) as dst:
        dst.descriptions = BANDS
        step = 1024
        for row in range(0, size, step):
            h = min(step, size - row)
            y = np.arange(row, row + h, dtype="float32")[:, None] / size
            x = np.arange(size, dtype="float32")[None, :] / size
            field = 0.5 + 0.5 * np.sin(6 * x + 3 * y) * np.cos(4 * y - 2 * x)
            data = np.empty((len(BANDS), h, size), dtype="uint16")
            for b, gain in enumerate(gains):
                noise = rng.normal(0, 0.02, (h, size)).astype("float32")
                shift = field if b < RED + 1 else 1 - field
                data[b] = np.clip((shift * gain + noise) * 3000 + 100, 1, 65535)
            data[:, :, : size // 50] = 0  # nodata strip on the left edge
            dst.write(data, window=Window(0, row, size, h))


def run_floor(src: str, out: str, chunk: int) -> None:
    """The I/O floor: plain rioxarray + dask, written with a lock (dask.array.store)."""
    import threading

    import rioxarray
    import xarray as xr

    data = rioxarray.open_rasterio(
        src, chunks={"band": -1, "y": chunk, "x": chunk}, lock=False, masked=False
    )
    nir = data.isel(band=NIR).astype("float32")
    red = data.isel(band=RED).astype("float32")
    valid = (data.isel(band=[NIR, RED]) != 0).all("band")
    cls = xr.where(valid, ((nir - red) / (nir + red) > THRESHOLD).astype("uint8"), 255)
    cls = cls.astype("uint8").drop_attrs().rio.write_nodata(255)
    cls.rio.to_raster(out, tiled=True, compress="DEFLATE", predictor=2, zlevel=6,
                      lock=threading.Lock(), BIGTIFF="IF_SAFER")


def run_engine(src: str, out: str, chunk: int) -> None:
    from ndgeo.engine import run
    from ndgeo.raster import open_raster

    run(NDThreshold(), open_raster(src), [NIR, RED], out, chunk_size=chunk, overwrite=True)


def child(variant: str, src: str, out: str, chunk: int) -> tuple[float, float, float]:
    """Run one variant in a child process: (wall s incl. start-up, compute s, peak RSS MB)."""
    if os.path.exists(out):
        os.remove(out)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--variant", variant, "--src", src, "--out", out,
         "--chunk", str(chunk)],
        stdout=subprocess.PIPE, text=True,
    )
    compute = float(proc.stdout.read().split()[-1])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{variant} failed with status {status}")
    return wall, compute, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--workdir", default="/tmp/ndgeo-bench")
    parser.add_argument("--variant", choices=["floor", "engine"], help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        start = time.perf_counter()
        {"floor": run_floor, "engine": run_engine}[args.variant](args.src, args.out, args.chunk)
        print(time.perf_counter() - start)  # compute time, read by child()
        return

    os.makedirs(args.workdir, exist_ok=True)
    src = os.path.join(args.workdir, f"input_{args.size}.tif")
    if not os.path.exists(src):
        start = time.perf_counter()
        make_input(src + ".part", args.size)
        os.replace(src + ".part", src)
        print(f"generated {src} in {time.perf_counter() - start:.1f} s")
    mpix = args.size * args.size / 1e6
    disk_mb = os.path.getsize(src) / 2**20
    print(f"input {args.size}x{args.size}x{len(BANDS)} uint16 ({disk_mb:.0f} MB on disk), "
          f"chunk {args.chunk}, {os.cpu_count()} cores")
    results = {}
    for variant in ("floor", "engine"):
        out = os.path.join(args.workdir, f"out_{variant}.tif")
        wall, compute, rss = child(variant, src, out, args.chunk)
        results[variant] = (compute, out)
        print(f"{variant:>7}: {compute:6.2f} s compute ({wall:6.2f} s with start-up)  "
              f"{mpix / compute:6.1f} Mpx/s  peak RSS {rss:6.0f} MB")
    ratio = results["engine"][0] / results["floor"][0]
    print(f"engine / floor compute-time ratio: {ratio:.2f}")
    with rasterio.open(results["floor"][1]) as a, rasterio.open(results["engine"][1]) as b:
        same = all(
            np.array_equal(a.read(window=w), b.read(window=w)) for _, w in a.block_windows(1)
        )
    print(f"outputs identical: {same}")


if __name__ == "__main__":
    main()
