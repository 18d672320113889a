"""Masked scene statistics in float64: per-band moments, Chan's parallel merge, summaries.

One implementation for the engine's blockwise pass over a scene of any size and for in-memory
blocks (``ndgeo denoise evaluate``), so both give numpy's whole-array result.
(``ndgeo.nn.wne`` computes differentiable per-instance moments in torch; that is the model's
arithmetic, not scene statistics.)
"""

from __future__ import annotations

import math

import numpy as np

from ndgeo.errors import NdgeoError

Moments = tuple[int, np.ndarray, np.ndarray]


def moments(values: np.ndarray) -> Moments:
    """Count, per-band mean and M2 (sum of squared deviations) of ``values`` (C, N), float64."""
    values = values.astype(np.float64)
    n = values.shape[1]
    if n == 0:
        zeros = np.zeros(values.shape[0])
        return 0, zeros, zeros
    mean = values.mean(axis=1)
    return n, mean, ((values - mean[:, None]) ** 2).sum(axis=1)


def merge(a: tuple, b: tuple) -> tuple:
    """Chan et al. merge of (count, mean, M2) summaries."""
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta**2 * (na * nb / n)


def summary(total: Moments, *, name: str = "the image") -> dict:
    """``{"count", "mean": [...], "std": [...], "joint_count", "joint_mean", "joint_std"}``:
    per band and over all bands pooled (population std)."""
    n, mean, m2 = total
    if n == 0:
        raise NdgeoError(f"{name} has no valid pixel in the selected bands")
    joint: tuple = (0, 0.0, 0.0)
    for b in range(len(mean)):  # all bands pooled: merge equal-sized per-band groups
        joint = merge(joint, (n, mean[b], m2[b]))
    return {
        "count": int(n),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in np.sqrt(m2 / n)],
        "joint_count": int(joint[0]),
        "joint_mean": float(joint[1]),
        "joint_std": float(math.sqrt(joint[2] / joint[0])),
    }
