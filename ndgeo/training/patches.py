"""Random clean patches for denoiser training, read window by window through the one reader."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window

from ndgeo.errors import NdgeoError
from ndgeo.io.raster import RasterInfo, open_dataset, read_float_block


class PatchSampler:
    """Random clean patches from the training images, read window by window with rasterio.

    A bounded cache of ``cache_size`` patches is filled once and a few entries are replaced by
    fresh random windows every step, so memory stays bounded for scenes of any size. A patch is
    kept only when at most ``max_invalid`` of its pixels are nodata.
    """

    def __init__(
        self,
        sources: Sequence[tuple[RasterInfo, list[int]]],
        patch: int,
        cache_size: int,
        rng: np.random.Generator,
        max_invalid: float = 0.1,
    ) -> None:
        self.sources = list(sources)
        self.patch = patch
        self.rng = rng
        self.max_invalid = max_invalid
        areas = np.array([info.width * info.height for info, _ in self.sources], dtype=float)
        self.weights = areas / areas.sum()
        self._datasets = [open_dataset(info.path) for info, _ in self.sources]
        try:
            self.cache = np.stack([self._read_one() for _ in range(cache_size)])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ds in self._datasets:
            ds.close()

    def __enter__(self) -> PatchSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_one(self, tries: int = 200) -> np.ndarray:
        p = self.patch
        for _ in range(tries):
            k = int(self.rng.choice(len(self.sources), p=self.weights))
            info, positions = self.sources[k]
            row = int(self.rng.integers(0, info.height - p + 1))
            col = int(self.rng.integers(0, info.width - p + 1))
            block, valid = read_float_block(self._datasets[k], info, positions,
                                            Window(col, row, p, p))
            if valid.mean() >= 1 - self.max_invalid:
                return block
        raise NdgeoError(
            f"found no {p}x{p} patch with at least {1 - self.max_invalid:.0%} valid pixels in "
            f"{tries} random windows of {', '.join(i.path for i, _ in self.sources)}"
        )

    def value_range(self) -> tuple[float, float]:
        """(min, max) of the valid pixels in the cache, all bands."""
        return float(np.nanmin(self.cache)), float(np.nanmax(self.cache))

    def batch(self, n: int) -> np.ndarray:
        """``n`` cached patches (N, C, p, p), NaN where invalid, each with a random dihedral
        transform (rot90 x flip)."""
        picks = self.rng.integers(0, len(self.cache), n)
        out = []
        for i in picks:
            x = np.rot90(self.cache[i], int(self.rng.integers(4)), axes=(1, 2))
            out.append(x[:, :, ::-1] if self.rng.integers(2) else x)
        return np.ascontiguousarray(np.stack(out))

    def refresh(self, n: int) -> None:
        """Replace ``n`` random cache entries with new random windows."""
        for i in self.rng.integers(0, len(self.cache), n):
            self.cache[i] = self._read_one()
