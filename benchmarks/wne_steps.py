"""Does WNE's gain under noise mismatch grow with training steps? (issue 15, a diagnostic)

Standard DnCNN, unwrapped and WNE-wrapped, trained on ``sample_data/scene.tif`` exactly as in
``benchmarks/wne_mismatch.py`` (same sizes, sigma_train, recipe) for each ``--steps`` budget,
scored on the held-out sample image at sigma_test = 0.5/1/2/5/10 x sigma_train (output PSNR,
one seed, one noise draw). Run: ``python benchmarks/wne_steps.py --steps 200,800,3200`` (about
10 min on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from wne_mismatch import FACTORS, ROOT, config

from ndgeo.checkpoint import save_model
from ndgeo.io.raster import open_raster
from ndgeo.sample import make_sample
from ndgeo.training.denoiser import evaluate_denoiser, train_denoiser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="200,800,3200", help="comma-separated budgets")
    parser.add_argument("--pooling", default="joint", choices=("joint", "band"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    test = make_sample(tmp / "test", seed=1, size=256).image
    train = ROOT / "sample_data/scene.tif"
    print("steps | model | " + " | ".join(f"{f}x" for f in FACTORS) + " | train s")
    for steps in (int(s) for s in args.steps.split(",")):
        psnr = {}
        for wne in (False, True):
            start = time.perf_counter()
            cfg = replace(config("dncnn", wne, steps, args.seed), pooling=args.pooling)
            model, meta = train_denoiser([open_raster(train)], cfg)
            path = tmp / f"dncnn-{steps}-{wne}.safetensors"
            save_model(path, model, meta)
            rows = evaluate_denoiser(path, open_raster(test), [f"{f}x" for f in FACTORS],
                                     draws=1, seed=args.seed, device="cpu")["rows"]
            psnr[wne] = [r["output_psnr"] for r in rows]
            name = f"dncnn WNE ({args.pooling})" if wne else "dncnn"
            print(f"{steps} | {name} | " + " | ".join(f"{p:.2f}" for p in psnr[wne])
                  + f" | {time.perf_counter() - start:.0f}", flush=True)
        print(f"{steps} | WNE - unwrapped | "
              + " | ".join(f"{a - b:+.2f}" for a, b in zip(psnr[True], psnr[False], strict=True))
              + " |", flush=True)


if __name__ == "__main__":
    main()
