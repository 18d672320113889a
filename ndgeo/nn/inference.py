"""Inference forms of the pixel classifiers on band-major pixels ``(C, N)``.

Rasters are band-major: a ``(C, h, w)`` block reshaped to ``(C, h * w)`` is a view, while the
``(N, C)`` layout the trainable models take needs a transpose (a full copy of the block). These
eval-only modules take the view directly and fold every fixed affine step into the neighbouring
matrix (``band_scale`` and the MLP z-score into the first layer, BatchNorm or affine head norms
into the head), so a class map costs one GEMM per layer plus a few row-wise passes
(``benchmarks/apply_throughput.py --profile``). They compute the same function as the source
model, up to float rounding; the source model is not modified.

No input check is made: NaN columns (masked pixels) give NaN columns and cost nothing extra.
:func:`run_batched` feeds any of them (or a trainable model) batch by batch from numpy.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from ndgeo import kernels
from ndgeo.kernels import BandMajorWeights, batches
from ndgeo.nn.models import MLP, NDClassifier, _Affine


def _norm_as_affine(norm: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``norm(h) == h * scale + shift`` in eval mode."""
    if isinstance(norm, nn.Identity):
        return torch.ones(n), torch.zeros(n)
    if isinstance(norm, _Affine):
        return norm.weight.detach().clone(), norm.bias.detach().clone()
    if isinstance(norm, nn.BatchNorm1d):
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.affine:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.affine:
            shift = shift + norm.bias
        return scale.detach(), shift.detach()
    raise TypeError(f"cannot fold head normalisation {type(norm).__name__}")


class BandMajorND(nn.Module):
    """:class:`NDClassifier` on ``(C, N)`` pixels: logits ``(n_classes, N)``, indices ``(K, N)``.

    The first layer is one GEMM with the numerator and denominator weights stacked as row blocks
    (``[alpha - beta; alpha + beta] * band_scale``), so both halves of its output are contiguous.
    """

    def __init__(self, model: NDClassifier) -> None:
        super().__init__()
        with torch.no_grad():
            first, *hidden = model.nd_layers
            alpha, beta = (torch.from_numpy(c).float() for c in first.coefficients())
            scale = model.band_scale.detach().float().cpu()
            self.register_buffer("first", torch.cat([alpha - beta, alpha + beta]) * scale)
            self.n_indices = first.n_indices
            self.eps = [first.eps] + [layer.eps for layer in hidden]
            self.hidden = nn.ParameterList()
            for layer in hidden:
                a, b = (torch.from_numpy(c).float() for c in layer.coefficients())
                self.hidden.append(nn.Parameter(a - b, requires_grad=False))
                self.hidden.append(nn.Parameter(a + b, requires_grad=False))
            # The head's linear layers; the normalisation folds into the first of them.
            linears = [m for m in model.head_layers if isinstance(m, nn.Linear)] + [model.head]
            weights = [m.weight.detach().cpu().float().clone() for m in linears]
            biases = [m.bias.detach().cpu().float().clone() for m in linears]
            norm_scale, norm_shift = _norm_as_affine(model.norm, linears[0].in_features)
            biases[0] = biases[0] + weights[0] @ norm_shift
            weights[0] = weights[0] * norm_scale
            self.head_weights = nn.ParameterList(
                nn.Parameter(w, requires_grad=False) for w in weights)
            self.head_biases = nn.ParameterList(
                nn.Parameter(b[:, None].contiguous(), requires_grad=False) for b in biases)

    def indices(self, x: torch.Tensor) -> torch.Tensor:
        """First-layer ND indices of band-major raw pixels ``x`` (C, N), in [-1, 1]."""
        return self._first_layer(x).clamp_(-1.0, 1.0)

    def _first_layer(self, x: torch.Tensor) -> torch.Tensor:
        # Without the clamp that keeps |y| <= 1 exact in float32: it moves values by a few ulps,
        # which only the exported indices need.
        both = self.first @ x
        k = self.n_indices
        return both[:k].div_(both[k:].add_(self.eps[0]))

    def from_indices(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``(n_classes, N)`` from first-layer indices ``(K, N)``."""
        for i, eps in enumerate(self.eps[1:]):
            diff, total = self.hidden[2 * i], self.hidden[2 * i + 1]
            h = (diff @ h).div_((total @ h.abs()).add_(eps)).clamp_(-1.0, 1.0)
        last = len(self.head_weights) - 1
        for i, (weight, bias) in enumerate(zip(self.head_weights, self.head_biases, strict=True)):
            h = torch.addmm(bias, weight, h)
            if i < last:
                h = h.clamp_(min=0)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_indices(self._first_layer(x))

    def numpy_weights(self) -> BandMajorWeights:
        """The same folded weights as numpy arrays, for :mod:`ndgeo.kernels` (torch-free CPU)."""
        return BandMajorWeights(
            kind="nd", first=self.first.numpy().copy(), eps=tuple(self.eps),
            hidden=tuple(p.detach().numpy().copy() for p in self.hidden),
            weights=tuple(w.detach().numpy().copy() for w in self.head_weights),
            biases=tuple(b.detach().numpy().copy() for b in self.head_biases),
        )


class BandMajorMLP(nn.Module):
    """:class:`MLP` on ``(C, N)`` pixels with the z-score folded into the first layer."""

    def __init__(self, model: MLP) -> None:
        super().__init__()
        with torch.no_grad():
            linears = [m for m in model.net if isinstance(m, nn.Linear)]
            weights = [m.weight.detach().cpu().float().clone() for m in linears]
            biases = [m.bias.detach().cpu().float().clone() for m in linears]
            std, mean = model.std.detach().cpu().float(), model.mean.detach().cpu().float()
            biases[0] = biases[0] - weights[0] @ (mean / std)
            weights[0] = weights[0] / std
        self.weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in weights)
        self.biases = nn.ParameterList(
            nn.Parameter(b[:, None].contiguous(), requires_grad=False) for b in biases
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.addmm(bias, weight, x)
            if i < last:
                x = x.clamp_(min=0)
        return x

    def numpy_weights(self) -> BandMajorWeights:
        """The same folded weights as numpy arrays, for :mod:`ndgeo.kernels` (torch-free CPU)."""
        return BandMajorWeights(
            kind="mlp", weights=tuple(w.detach().numpy().copy() for w in self.weights),
            biases=tuple(b.detach().numpy().copy() for b in self.biases),
        )


def band_major(model: nn.Module) -> nn.Module:
    """The eval-only band-major form of a pixel classifier (``NDClassifier`` or ``MLP``)."""
    if isinstance(model, NDClassifier):
        return BandMajorND(model).eval()
    if isinstance(model, MLP):
        return BandMajorMLP(model).eval()
    raise TypeError(f"no band-major form for {type(model).__name__}")


def argmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """Row index of the largest value in each column of ``scores`` (M, N), first on ties;
    uint8 for up to 255 rows, else int32 (:func:`ndgeo.kernels.argmax_rows` on the CPU)."""
    dtype = np.uint8 if scores.shape[0] <= 255 else np.int32
    if scores.device.type != "cpu":
        return scores.argmax(dim=0).to(getattr(torch, np.dtype(dtype).name))
    return torch.from_numpy(kernels.argmax_rows(scores.detach().numpy()))


__all__ = ["BandMajorMLP", "BandMajorND", "argmax_rows", "band_major", "batches", "run_batched",
           "run_pipelined", "DEVICE_BATCH"]


@torch.no_grad()
def run_batched(fn, x: np.ndarray, batch_size: int, device: torch.device, *,
                axis: int = 0) -> np.ndarray:
    """``fn`` over slices of ``x`` along ``axis`` in batches on ``device``; returns CPU numpy.

    ``axis=0``: rows of ``(N, C)`` pixels, ``fn`` returns ``(n, K)``; ``axis=1``: columns of
    band-major ``(C, N)`` pixels, ``fn`` returns ``(K, n)`` or ``(n,)``. Results keep ``fn``'s
    dtype (float results come back as float32) and are written into one preallocated array. On
    CPU a batch is a view of ``x`` (no copy); on CUDA it is copied to pinned memory (uint16 and
    uint32 as float32) and sent without blocking, and each result comes back before the next
    batch is sent.
    """
    n = x.shape[axis]
    cuda = device.type == "cuda"
    out: np.ndarray | None = None
    for part in batches(n, batch_size):
        index = (part,) if axis == 0 else (slice(None), part)
        if cuda:
            # torch's uint16/uint32 have little CUDA support: those become float32 on the host.
            host = x[index]
            dtype = np.float32 if host.dtype.kind == "u" and host.dtype.itemsize > 1 else None
            batch = torch.from_numpy(np.ascontiguousarray(host, dtype=dtype))
            batch = batch.pin_memory().to(device, non_blocking=True)
        else:
            batch = torch.from_numpy(x[index])
        result = fn(batch)
        if result.is_floating_point():
            result = result.float()
        result = result.cpu().numpy()
        if out is None:
            shape = list(result.shape)
            shape[0 if axis == 0 or result.ndim == 1 else 1] = n
            out = np.empty(shape, dtype=result.dtype)
        if axis == 0 or result.ndim == 1:
            out[part] = result
        else:
            out[:, part] = result
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out


#: Pixels per batch on a GPU at least (``--batch-size`` is the CPU's cache-sized unit): 2^20
#: pixels of 10 float32 bands are 40 MB, with a 32-index layer and a 64-wide head ~0.5 GB.
DEVICE_BATCH = 1 << 20

_LOCAL = threading.local()


def _thread_stream(device: torch.device):
    """This thread's CUDA stream on ``device`` (one per engine thread: their copies and
    kernels overlap instead of queueing on the default stream)."""
    streams = _LOCAL.__dict__.setdefault("streams", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device=device)
    return streams[device]


def _pinned(key: tuple, shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """A per-thread host buffer (page-locked for CUDA, so copies run asynchronously)."""
    buffers = _LOCAL.__dict__.setdefault("buffers", {})
    buf = buffers.get(key)
    if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype:
        buf = buffers[key] = torch.empty(shape, dtype=dtype, pin_memory=pin)
    return buf


@torch.no_grad()
def run_pipelined(fn, x: np.ndarray, batch_size: int, device: torch.device, *,
                  depth: int = 2) -> np.ndarray:
    """``fn`` over column batches of band-major ``x`` (C, N) on ``device``, pipelined.

    Each batch is converted to float32 on the host into one of ``depth`` pinned buffers, sent
    without blocking on this thread's CUDA stream, computed there, and its result copied back
    without blocking into a pinned output buffer of the same slot; an event marks the end.
    While the device works on batch ``i``, the host converts and enqueues batch ``i + 1``
    (:func:`ndgeo.pipeline.run_pipeline`: at most ``depth`` batches in flight, results in
    order). On the CPU the same steps run synchronously (what the tests exercise). ``fn``
    returns ``(K, n)`` or ``(n,)``; results come back as one numpy array (float as float32).
    """
    from ndgeo.pipeline import run_pipeline

    cuda = device.type == "cuda"
    stream = _thread_stream(device) if cuda else None
    n_bands, n = x.shape
    parts = list(batches(n, batch_size))
    out: list[np.ndarray | None] = [None]

    def submit(slot: int, part: slice):
        width = part.stop - part.start
        # Flat buffers viewed as contiguous (C, width): a strided pinned tensor would be copied
        # to pageable memory before an asynchronous transfer.
        flat = _pinned(("in", slot), (n_bands * min(batch_size, n),), torch.float32, cuda)
        host = flat[: n_bands * width].view(n_bands, width)
        np.copyto(host.numpy(), x[:, part], casting="unsafe")  # uint16 -> float32 on the host
        if not cuda:
            return part, _to_numpy(fn(host)), None
        with torch.cuda.stream(stream):
            result = fn(host.to(device, non_blocking=True))
            if result.is_floating_point():
                result = result.float()
            rows = result.shape[:-1]
            size = int(np.prod(rows, dtype=np.int64))
            back = _pinned(("out", slot), (size * min(batch_size, n),), result.dtype, True)
            back = back[: size * width].view(*rows, width)
            back.copy_(result, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return part, back, event

    def collect(handle) -> slice:
        part, values, event = handle
        if event is not None:
            event.synchronize()  # releases the GIL: other engine threads decode meanwhile
            values = values.numpy()
        if out[0] is None:
            out[0] = np.empty((*values.shape[:-1], n), dtype=values.dtype)
        out[0][..., part] = values  # a copy: the slot's buffers are free again
        return part

    for _ in run_pipeline(parts, submit, collect, depth):
        pass
    return out[0] if out[0] is not None else np.zeros((0, 0), dtype=np.float32)


def _to_numpy(result: torch.Tensor) -> np.ndarray:
    if result.is_floating_point():
        result = result.float()
    return result.numpy().copy()
