"""Forward+backward throughput of ND layers/models (closed-form vs autograd) vs equal-size MLPs.

Run: ``python benchmarks/nd_layer.py [--pixels 65536] [--repeats 15] [--threads 2]``: one batch
of random reflectances, all models in this one process. "saved" is the size of the
tensors the forward keeps for the backward (measured with saved_tensors_hooks).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torch import nn

from ndgeo.nn import MLP, NDClassifier, NDLayer, mlp_hidden_for_budget


def _step(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward+backward (sum of outputs as the loss)."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(x).sum().backward()
    return time.perf_counter() - t0


def _interleaved_seconds(runs: list[tuple[nn.Module, torch.Tensor]], repeats: int) -> list[float]:
    """Fastest step of each run, the runs taking turns so load from other processes hits all of
    them alike (the minimum is the least disturbed measurement on a shared machine)."""
    times: list[list[float]] = [[] for _ in runs]
    for i in range(repeats + 2):
        for t, (model, x) in zip(times, runs, strict=True):
            if i >= 2:
                t.append(_step(model, x))
            else:
                _step(model, x)
    return [min(t) for t in times]


def _saved_megabytes(model: nn.Module, x: torch.Tensor) -> float:
    """Megabytes of distinct tensors autograd keeps between forward and backward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.sum().backward()
    return sum(seen.values()) / 1e6


class _Switch(nn.Module):
    """Runs ``model`` with its ND layers on the closed-form or the autograd backward."""

    def __init__(self, model: nn.Module, closed: bool) -> None:
        super().__init__()
        self.model, self.closed = model, closed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model.modules():
            if isinstance(layer, NDLayer):
                layer.closed_form = self.closed
        return self.model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pixels", type=int, default=65536)
    parser.add_argument("--bands", type=int, default=12)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, c = args.bands, args.classes
    x = torch.rand(args.pixels, n) * 0.6 + 0.01
    signed_x = torch.rand(args.pixels, 8) * 2 - 1

    cases = [
        ("ND layer 12->8", NDLayer(n, 8), x),
        ("ND layer 8->8 signed", NDLayer(8, 8, signed=True), signed_x),
        ("ND layer 12->32", NDLayer(n, 32), x),
        ("NDClassifier K=8 d=1", NDClassifier(n, c, n_indices=8), x),
        ("NDClassifier K=8 d=2", NDClassifier(n, c, n_indices=8, depth=2), x),
        ("NDClassifier K=32 d=1", NDClassifier(n, c, n_indices=32), x),
    ]
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, batch {args.pixels} px, best of {args.repeats}")
    header = (f"{'case':<22}{'params':>7}{'closed Mpx/s':>13}{'autograd':>10}{'cl/ag':>7}"
              f"{'saved MB cl/ag':>16}{'MLP hidden':>15}{'MLP Mpx/s':>10}{'ND/MLP':>8}")
    print(header)
    print("-" * len(header))
    for name, model, inp in cases:
        params = model.n_parameters()
        mlp = MLP(n, c, hidden=mlp_hidden_for_budget(n, c, params))
        closed_run, auto_run = _Switch(model, True), _Switch(model, False)
        closed, auto, t_mlp = _interleaved_seconds(
            [(closed_run, inp), (auto_run, inp), (mlp, x)], args.repeats
        )
        saved_closed = _saved_megabytes(closed_run, inp)
        saved_auto = _saved_megabytes(auto_run, inp)
        best = min(closed, auto)
        rate = args.pixels / 1e6
        print(f"{name:<22}{params:>7}{rate / closed:>13.2f}{rate / auto:>10.2f}"
              f"{auto / closed:>7.2f}{f'{saved_closed:.1f}/{saved_auto:.1f}':>16}"
              f"{str(tuple(mlp.hidden)) + ' ' + str(mlp.n_parameters()):>15}"
              f"{rate / t_mlp:>10.2f}{t_mlp / best:>8.2f}")
    print("cl/ag > 1: closed-form backward faster; ND/MLP > 1: ND (faster path) faster than MLP.")


if __name__ == "__main__":
    main()
