"""Pixel-classifier inference in numpy: the CPU path of ``ndgeo apply``, without torch.

The weights are those of :mod:`ndgeo.nn.inference`'s eval-only band-major modules, folded by
torch once per model file (:func:`ndgeo.checkpoint.band_major_weights` keeps them on disk), so
a CPU run never imports torch (~1.4 s of start-up on the project's machine). Every step is the
same IEEE operation in the same order as the torch module: GEMMs with a 10-64 long inner
dimension, elementwise add/divide, clamps that keep ``-0.0`` as torch's do. The GEMMs run
pixel-major (pixels as rows, on transposed views of the band-major data): the same sums, and
OpenBLAS is up to 3x faster with pixels as the long dimension of a 16-64 wide product.
tests/test_startup.py checks the outputs are bit-identical to the torch modules (on this
project's x86_64 machine MKL and OpenBLAS give the same sums for the one GEMM shape used, see
:data:`CACHE_COLUMNS`), and each machine checks it again when it first folds a model file (a
model whose kernels differ there stays on torch); inputs with GDAL scale/offset stay on torch,
whose ``addcmul`` fuses the multiply-add.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ndgeo.errors import NdgeoError


@dataclass(frozen=True)
class BandMajorWeights:
    """Folded weights of an ND classifier (``kind`` ``nd``) or an MLP (``mlp``).

    ``first`` (2K, C): numerator rows then denominator rows of the first ND layer (band scale
    folded in); ``hidden``: (difference, total) matrices of further ND layers; ``weights`` and
    ``biases`` (n, 1): the linear layers after them (head normalisation or z-score folded into
    the first). ``layout`` is how the GEMMs run: ``pixels`` (pixels as rows, the fast one) or
    ``bands`` (as the torch module); the fold keeps the first that reproduces torch.
    """

    kind: str
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    first: np.ndarray | None = None
    eps: tuple[float, ...] = ()
    hidden: tuple[np.ndarray, ...] = ()
    layout: str = "pixels"

    @property
    def n_indices(self) -> int:
        return 0 if self.first is None else self.first.shape[0] // 2

    @cached_property
    def _transposed(self) -> dict[int, np.ndarray]:
        """Contiguous transposes of the matrices, by ``id`` (a transposed view would make BLAS
        pick another kernel, with other last bits)."""
        mats = (*self.first_halves, *self.weights, *self.hidden)
        return {id(a): np.ascontiguousarray(a.T) for a in mats}

    @cached_property
    def first_halves(self) -> tuple[np.ndarray, ...]:
        """The numerator and denominator rows of ``first`` as contiguous arrays (none for an
        MLP)."""
        if self.first is None:
            return ()
        k = self.n_indices
        return np.ascontiguousarray(self.first[:k]), np.ascontiguousarray(self.first[k:])

    def matmul(self, a: np.ndarray, h: np.ndarray, name: str) -> np.ndarray:
        """``a @ h`` for ``h`` (K, N) in this layout, into the per-thread work array ``name``:
        (M, N), a transposed view of an (N, M) array in the ``pixels`` layout."""
        n = h.shape[1]
        if self.layout == "pixels":
            return np.matmul(h.T, self._transposed[id(a)], out=_scratch(name, n, a.shape[0])).T
        return np.matmul(a, h, out=_scratch(name, a.shape[0], n))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for ``numpy.savez`` (no pickle)."""
        out = {"kind": np.array(self.kind), "eps": np.asarray(self.eps, dtype=np.float64),
               "layout": np.array(self.layout)}
        if self.first is not None:
            out["first"] = self.first
        for name, seq in (("weight", self.weights), ("bias", self.biases),
                          ("hidden", self.hidden)):
            for i, a in enumerate(seq):
                out[f"{name}{i}"] = a
        return out

    @classmethod
    def from_arrays(cls, arrays) -> BandMajorWeights:
        def seq(name: str) -> tuple[np.ndarray, ...]:
            n = sum(1 for k in arrays if k.startswith(name) and k[len(name):].isdigit())
            return tuple(np.ascontiguousarray(arrays[f"{name}{i}"]) for i in range(n))

        return cls(kind=str(arrays["kind"]), weights=seq("weight"), biases=seq("bias"),
                   first=np.ascontiguousarray(arrays["first"]) if "first" in arrays else None,
                   eps=tuple(float(e) for e in arrays["eps"]), hidden=seq("hidden"),
                   layout=str(arrays["layout"]))


def clamp_min_zero(x: np.ndarray) -> np.ndarray:
    """``x.clamp_min(0)`` as torch does it, in place: negatives become 0, ``-0.0`` and NaN stay
    (the input clip, whose zeros reach the written indices)."""
    np.copyto(x, np.float32(0), where=x < 0)
    return x


_SCRATCH = threading.local()


def _scratch(name: str, rows: int, cols: int) -> np.ndarray:
    """A per-thread float32 work array reused from batch to batch: fresh multi-megabyte arrays
    cost page faults that took longer than the arithmetic (3.6 ms against 0.14 ms for a
    64 x 16384 bias add on the project's machine)."""
    store = _SCRATCH.__dict__.setdefault("arrays", {})
    array = store.get(name)
    if array is None or array.shape != (rows, cols):
        array = store[name] = np.empty((rows, cols), dtype=np.float32)
    return array


def first_layer(w: BandMajorWeights, x: np.ndarray) -> np.ndarray:
    """First-layer ND values ``(K, N)`` of float32 band-major pixels ``x`` (C, N), unclamped
    (a per-thread work array: valid until the next call in the thread)."""
    if w.layout == "pixels":  # two GEMMs: the divide then runs on contiguous rows
        num, den = (w.matmul(half, x, f"first{i}") for i, half in enumerate(w.first_halves))
    else:
        both = w.matmul(w.first, x, "first")
        num, den = both[:w.n_indices], both[w.n_indices:]
    den += np.float32(w.eps[0])
    num /= den
    return num


def indices(w: BandMajorWeights, x: np.ndarray) -> np.ndarray:
    """The learned indices ``(K, N)`` of ``x``, in [-1, 1] (a new array)."""
    return np.clip(first_layer(w, x), -1.0, 1.0)


def from_indices(w: BandMajorWeights, h: np.ndarray) -> np.ndarray:
    """Logits ``(n_classes, N)`` from first-layer values ``(K, N)`` (for an MLP: pixels), a
    per-thread work array.

    The hidden ReLU is ``np.maximum``, which turns torch's ``-0.0`` into ``+0.0``: a signed
    zero only changes the sign of a later sum that is exactly zero, which neither an argmax
    nor a softmax (``exp(-0) == exp(0)``) can see.
    """
    for i, eps in enumerate(w.eps[1:]):
        den = w.matmul(w.hidden[2 * i + 1], np.abs(h), f"den{i}")
        den += np.float32(eps)
        out = w.matmul(w.hidden[2 * i], h, f"nd{i}")
        out /= den
        h = np.clip(out, -1.0, 1.0, out=out)
    last = len(w.weights) - 1
    for i, (weight, bias) in enumerate(zip(w.weights, w.biases, strict=True)):
        out = w.matmul(weight, h, f"head{i}")
        out += bias
        h = out if i == last else np.maximum(out, 0, out=out)
    return h


def forward(w: BandMajorWeights, x: np.ndarray) -> np.ndarray:
    """Logits ``(n_classes, N)`` of float32 band-major pixels ``x`` (C, N)."""
    return from_indices(w, first_layer(w, x) if w.kind == "nd" else x)


def argmax_rows(values: np.ndarray) -> np.ndarray:
    """Row index of the largest value in each column of ``values`` (M, N), first on ties.

    uint8 for up to 255 rows (so 1-based class ids cannot wrap), else int32: M - 1
    compare-and-select passes (torch's strided ``argmax(dim=0)`` took ~250 ns/pixel for 4 rows
    on this project's CPU, this ~1). Columns holding NaN (masked pixels) give an arbitrary row.
    """
    rows, n = values.shape
    index = np.zeros(n, dtype=np.uint8 if rows <= 255 else np.int32)
    best = values[0].copy()
    better = np.empty(n, dtype=bool)
    for m in range(1, rows):
        np.greater(values[m], best, out=better)
        np.copyto(index, m, where=better)
        if m < rows - 1:
            np.maximum(best, values[m], out=best)
    return index


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise NdgeoError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


#: Every step is exactly this many pixels (a last partial one padded with zeros): one GEMM
#: shape per model, the one :func:`ndgeo.checkpoint.classifier_inference` checks against torch.
#: BLAS libraries pick kernels by shape, and OpenBLAS's small-matrix kernels (taken up to ~3000
#: pixels here) give other last bits than MKL's. The widest work array (4096 x 64 float32,
#: 1 MB) stays in L2 between the GEMM, the bias, the ReLU and the next GEMM (2048-4096 ran up
#: to 1.5x faster than 16384 on the project's machine).
CACHE_COLUMNS = 4096


_BLAS = {"limited": False}
_BLAS_LOCK = threading.Lock()


def one_blas_thread() -> None:
    """Limit numpy's BLAS (OpenBLAS) to one thread, once per process: the engine runs one task
    per core, and OpenBLAS's own threads inside two engine threads made CPU inference 5-15x
    slower on the project's 2 cores (as torch's did, :func:`ndgeo.device.one_torch_thread`).
    Per-column sums do not depend on it."""
    if _BLAS["limited"]:
        return
    with _BLAS_LOCK:
        if not _BLAS["limited"]:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # pragma: no cover - installed with scikit-learn
                pass
            else:
                threadpool_limits(1, user_api="blas")
            _BLAS["limited"] = True


def run_columns(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                batch_size: int = CACHE_COLUMNS) -> np.ndarray:
    """``fn`` over steps of ``batch_size`` pixels (at most :data:`CACHE_COLUMNS`) of band-major
    ``x`` (C, N), each copied into a float32 buffer of exactly :data:`CACHE_COLUMNS` pixels,
    zero-padded (the conversion stays in cache); ``fn`` returns ``(K, n)`` or ``(n,)``. One
    output array."""
    one_blas_thread()
    n = x.shape[1]
    out: np.ndarray | None = None
    for part in batches(n, min(batch_size, CACHE_COLUMNS)):
        width = part.stop - part.start
        buf = _scratch("batch", x.shape[0], CACHE_COLUMNS)
        buf[:, :width] = x[:, part]
        buf[:, width:] = 0
        result = fn(buf)[..., :width]
        if out is None:
            out = np.empty((*result.shape[:-1], n), dtype=result.dtype)
        out[..., part] = result
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def probe_pixels(n_bands: int, seed: int = 0) -> np.ndarray:
    """float32 band-major pixels over the ranges models meet (reflectance 0-1 and x 10000
    integers), with a zero-padded last step: what :func:`ndgeo.checkpoint.classifier_inference`
    runs through both the torch module and these kernels before trusting the kernels."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 1, (n_bands, 2048))
    large = rng.integers(1, 12000, (n_bands, 2048 + 37))
    return np.concatenate([small, large], axis=1).astype(np.float32)
