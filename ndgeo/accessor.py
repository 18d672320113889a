"""``DataArray.ndgeo``: ndgeo's processors on (band, y, x) DataArrays, lazy in and lazy out.

>>> import rioxarray, ndgeo.accessor
>>> scene = rioxarray.open_rasterio("scene.tif", chunks={"x": 1024, "y": 1024})
>>> classes = scene.ndgeo.classify("model.safetensors")          # dask-backed, not computed
>>> ndvi_like = scene.ndgeo.indices("model.safetensors")
>>> clean = scene.ndgeo.denoise("den.safetensors")

Each dask chunk runs :func:`ndgeo.engine.process_block` with the same processors as ``ndgeo
apply`` / ``ndgeo denoise apply`` (``ndgeo.processors``), so results equal the commands' files.
Bands are matched by name (``band`` coordinate, ``long_name`` or ``band_names=``); coordinates,
CRS and nodata are carried through. The validity rule is the reader's
(:func:`ndgeo.io.raster.valid_mask`); a GDAL mask band of the source file is not seen here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from ndgeo.engine import Processor, process_block
from ndgeo.io.raster import RasterInfo, info_from_dataarray, valid_mask


def _chunk(raw: np.ndarray, processor: Processor, nodata: float | None) -> np.ndarray:
    out = process_block(processor, raw, valid_mask(raw, nodata))
    if out is None:
        return np.full((processor.out_count, *raw.shape[1:]), processor.out_nodata,
                       dtype=processor.out_dtype)
    return out


@xr.register_dataarray_accessor("ndgeo")
class NdgeoAccessor:
    """ndgeo on a (band, y, x) DataArray; see the module docstring."""

    def __init__(self, data: xr.DataArray) -> None:
        self._data = data

    def _info(self, band_names, sensor, nodata) -> RasterInfo:
        return info_from_dataarray(self._data, bands=band_names, sensor=sensor, nodata=nodata)

    def _run(self, processor: Processor, info: RasterInfo, positions: Sequence[int],
             ) -> xr.DataArray:
        """The processor over every chunk of the selected bands, as a lazy DataArray."""
        source = self._data.isel(band=list(positions))
        array = source.data if isinstance(source.data, da.Array) else da.from_array(
            source.values, chunks=(-1, 1024, 1024))
        array = array.rechunk({0: -1})
        chunks = ((processor.out_count,), *array.chunks[1:])
        kwargs = dict(processor=processor, nodata=info.nodata, dtype=processor.out_dtype,
                      chunks=chunks, meta=np.array((), dtype=processor.out_dtype))
        if processor.halo:  # denoisers: as many bands out as in, so dask keeps the chunks
            if processor.out_count != array.shape[0]:
                raise ValueError("a processor with a halo must keep the band count")
            del kwargs["chunks"]
            out = da.map_overlap(_chunk, array, depth={0: 0, 1: processor.halo,
                                                       2: processor.halo},
                                 boundary="none", trim=True, **kwargs)
        else:
            out = da.map_blocks(_chunk, array, **kwargs)
        result = xr.DataArray(
            out, dims=("band", "y", "x"),
            coords={"band": list(processor.descriptions or range(processor.out_count)),
                    "y": self._data.coords["y"], "x": self._data.coords["x"]},
            attrs={k: str(v) for k, v in (processor.tags or {}).items()},
        )
        if info.crs is not None:
            result = result.rio.write_crs(info.crs)
        result = result.rio.write_transform(info.transform)
        return result.rio.write_nodata(processor.out_nodata, encoded=False)

    def classify(
        self, model: str | os.PathLike, products: Sequence[str] = ("class",), *,
        band_names: Sequence[str] | None = None, sensor: str | None = None,
        nodata: float | None = None, batch_size: int = 16384, device: str = "auto",
    ) -> xr.DataArray:
        """``ndgeo apply``'s products (class, proba, indices, entropy, margin) of ``model``."""
        from ndgeo.processors.classify import model_processor

        info = self._info(band_names, sensor, nodata)
        processor, positions = model_processor(model, info, outputs=products,
                                               batch_size=batch_size, device=device)
        processor.prepare(info)
        return self._run(processor, info, positions)

    def indices(self, model: str | os.PathLike, **options) -> xr.DataArray:
        """The learned first-layer indices of an ND model (float32, one band per index)."""
        return self.classify(model, ("indices",), **options)

    def denoise(
        self, denoiser: str | os.PathLike, *, band_names: Sequence[str] | None = None,
        sensor: str | None = None, nodata: float | None = None, dtype: str = "float32",
        device: str = "auto", backbone: str | None = None,
    ) -> xr.DataArray:
        """``ndgeo denoise apply``: the scene statistics are computed now (one dask pass over
        the array, as the command does before its run); the denoising itself stays lazy.
        ``backbone`` names the ``module:Class`` of a user-backbone file, as ``--backbone``."""
        from ndgeo import stats
        from ndgeo.processors.denoise import denoise_processor

        info = self._info(band_names, sensor, nodata)
        processor, positions, _ = denoise_processor(denoiser, info, out_dtype=dtype,
                                                    device=device, backbone=backbone)
        source = self._data.isel(band=list(positions))
        array = source.data if isinstance(source.data, da.Array) else da.from_array(
            source.values, chunks=(-1, 1024, 1024))
        blocks = array.rechunk({0: -1}).to_delayed().ravel()
        moments = dask.delayed(lambda raw: stats.moments(raw[:, valid_mask(raw, info.nodata)]))
        parts = dask.compute(*[moments(block) for block in blocks])
        total: tuple = (0, np.zeros(len(positions)), np.zeros(len(positions)))
        for part in parts:
            total = stats.merge(total, part)
        processor.use_statistics(stats.summary(total, name="the DataArray"))
        return self._run(processor, info, positions)
