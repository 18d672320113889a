"""Batch mode against the same scenes run one at a time, measured in the same run (issue 16.5).

Scenes: ``--scenes`` copies of a 10-band uint16 GeoTIFF (``--size`` px, tiled 512, DEFLATE,
Sentinel-2 band names; ``apply_throughput.make_input``) and a 16-index ND classifier
(``apply_throughput.make_model``). Variants, ``--repeats`` times in alternating order, the
fastest of each reported:

- ``singles``: :func:`ndgeo.batch.run_scene` on each scene in turn (the unit a single-scene
  ``ndgeo apply`` runs, local threads over all cores), the sum of their times;
- ``batch local``: :func:`ndgeo.batch.run_batch` over all scenes on local threads;
- ``batch --workers N``: the same on a LocalCluster of N single-threaded processes, each scene
  built, computed and written by one worker; reported with and without the cluster's start.

Usage: ``python benchmarks/batch_mode.py [--scenes 8] [--size 2048] [--workers 2]
[--repeats 2]``; writes benchmarks/results/batch_mode.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from apply_throughput import make_input, make_model  # noqa: E402

from ndgeo.batch import run_batch, run_scene  # noqa: E402
from ndgeo.engine import Execution  # noqa: E402
from ndgeo.jobs import apply_job  # noqa: E402


def _job(model: str):
    return apply_job(model, outputs=["class"], batch_size=16384, device="cpu", quantize=False,
                     denoise=None, backbone=None, chunk_size=1024)


def singles(job, scenes: list[str], outdir: Path) -> float:
    total = 0.0
    for scene in scenes:
        start = time.perf_counter()
        run_scene(job, scene, outdir / Path(scene).name, Execution(chunk_size=1024),
                  overwrite=True, cog=False, creation_options=None)
        total += time.perf_counter() - start
    return total


def batch(job, scenes: list[str], outdir: Path, workers: int | None) -> tuple[float, float]:
    """(wall time with the cluster's start, the cluster's start alone)."""
    pairs = [(s, outdir / Path(s).name) for s in scenes]
    start = time.perf_counter()
    execution = Execution(chunk_size=1024, workers=workers)
    with execution:  # entered once here to time the start; run_batch shares it
        started = time.perf_counter() - start
        result = run_batch(job, pairs, execution, overwrite=True)
    assert not result.failed, result.failed
    return time.perf_counter() - start, started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out-md", default=str(Path(__file__).parent / "results" /
                                                "batch_mode.md"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ndgeo-batch-bench-"))
    try:
        first = str(work / "scene0.tif")
        make_input(first, args.size)
        scenes = [first] + [str(work / f"scene{i}.tif") for i in range(1, args.scenes)]
        for scene in scenes[1:]:
            shutil.copy(first, scene)
        model = str(work / "model.safetensors")
        make_model(first, model)
        job = _job(model)
        for name in ("singles", "local", "workers"):
            (work / name).mkdir()
        best = {"singles": float("inf"), "local": float("inf"), "workers": float("inf"),
                "workers_net": float("inf"), "start": float("inf")}
        for repeat in range(args.repeats):
            order = ["singles", "local", "workers"]
            if repeat % 2:
                order.reverse()
            for name in order:
                if name == "singles":
                    best["singles"] = min(best["singles"], singles(job, scenes, work / name))
                elif name == "local":
                    best["local"] = min(best["local"], batch(job, scenes, work / name, None)[0])
                else:
                    wall, start = batch(job, scenes, work / name, args.workers)
                    best["workers"] = min(best["workers"], wall)
                    best["workers_net"] = min(best["workers_net"], wall - start)
                    best["start"] = min(best["start"], start)
                print(f"repeat {repeat + 1}: {name} done", flush=True)
        mpx = args.scenes * args.size**2 / 1e6
        rows = [
            ("singles (sum of per-scene runs, local threads)", best["singles"]),
            ("batch, local threads", best["local"]),
            (f"batch, --workers {args.workers} (with cluster start)", best["workers"]),
            (f"batch, --workers {args.workers} (without the {best['start']:.1f} s cluster "
             "start)", best["workers_net"]),
        ]
        lines = [
            "# Batch mode vs per-scene runs (issue 16.5)", "",
            f"Command: `python benchmarks/batch_mode.py --scenes {args.scenes} --size "
            f"{args.size} --workers {args.workers} --repeats {args.repeats}`  ",
            f"Date: {datetime.date.today()}; machine: {platform.platform()}, "
            f"{os.cpu_count()} CPUs, shared with other jobs (absolute seconds are noisy; the "
            "variants alternate in one run and the fastest of each is kept).", "",
            f"{args.scenes} scenes of {args.size}² px, 10 bands uint16 (tiled 512, DEFLATE), "
            "16-index ND classifier, class map out.", "",
            "| variant | seconds | Mpx/s | / singles |", "|---|---|---|---|",
        ]
        for label, seconds in rows:
            lines.append(f"| {label} | {seconds:.1f} | {mpx / seconds:.2f} | "
                         f"{seconds / best['singles']:.2f} |")
        ratio = best["workers"] / best["singles"]
        lines += ["", f"Goal (batch over {args.scenes} scenes on --workers {args.workers} within "
                  f"1.2x the sum of single-scene times): {ratio:.2f}x with the cluster start: "
                  f"{'MET' if ratio <= 1.2 else 'NOT MET'}."]
        text = "\n".join(lines) + "\n"
        print(text)
        Path(args.out_md).write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
