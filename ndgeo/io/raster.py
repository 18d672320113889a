"""Opening input rasters: validated facts about a raster, band names and the pixel policy.

:func:`open_raster` is the single entry point for input images. It opens the dataset (any GDAL
dataset name: a path, ``/vsicurl/...``, ``/vsizip/...``, an URL), reads its first and last
blocks (so a truncated or corrupt file fails here, with its name, rather than halfway through a
long run), checks the dtype and the nodata value, and names the bands through
:func:`ndgeo.bands.resolve_bands`. Every reader of pixels goes through this module:

- :func:`valid_mask` (+ the GDAL mask, :func:`read_block`) is the one definition of a valid
  pixel: finite, no selected band at nodata, not masked by the file's GDAL mask or alpha band;
- :func:`to_physical` applies the GDAL scale/offset (after the nodata test);
- :func:`any_positive` is the all-zero rule: a pixel with no band above 0 in physical units is
  nodata to ND models (an index is undefined there; usually undeclared nodata); negative
  reflectance is clipped to 0 before models see it (``ndgeo.io.labels`` documents the order).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ndgeo.bands import Band, resolve_bands
from ndgeo.errors import NdgeoError
from ndgeo.io.stac import is_stac_item, item_vrt

#: Endings of raster file names: label files read as rasters, and model names refused (a model
#: file named like a raster would pass for one).
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".png", ".jpg", ".nc")

#: Pixel types ndgeo reads; every block is converted to float32 for processing.
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class RasterInfo:
    """What ndgeo needs to know about an input raster; small and picklable (no open handle)."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    bands: tuple[Band, ...]
    block_shape: tuple[int, int]
    bounds: tuple[float, float, float, float]
    res: tuple[float, float]
    #: The file has a GDAL per-dataset mask or an alpha band; 0 there means invalid.
    has_mask: bool = False
    #: GDAL band scale and offset metadata (physical value = raw * scale + offset), per band.
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    @property
    def band_names(self) -> list[str]:
        """The resolved band names, in file order."""
        return [b.name for b in self.bands]


def open_raster(
    path: str | os.PathLike,
    *,
    bands: Sequence[str] | None = None,
    sensor: str | None = None,
    nodata: float | None = None,
    scale: float | None = None,
    offset: float | None = None,
    what: str = "input raster",
    grid: str | None = None,
) -> RasterInfo:
    """Open and validate an input raster (``what`` names it in error messages). A STAC Item
    (``.json``) becomes the VRT of its band assets (:mod:`ndgeo.io.stac`) on the grid of band
    ``grid`` (default the finest).

    ``bands`` renames the bands (one name per band), ``sensor`` resolves sensor band ids, and
    ``nodata`` overrides the file's nodata value (it must fit the pixel type). ``scale`` and
    ``offset`` (physical = raw x scale + offset) override the GDAL metadata of every band.
    """
    path = dataset_name(path)
    if grid is not None and not is_stac_item(path):
        raise NdgeoError("--grid picks a band grid of a STAC Item; this input is not one")
    if is_stac_item(path):
        path = item_vrt(path, grid)
    if not is_remote(path):
        if not os.path.exists(path):
            raise NdgeoError(f"{what} not found: {path}")
        if os.path.isdir(path):
            raise NdgeoError(f"{what} is a directory: {path}")
    try:
        with open_dataset(path, what=what) as src:
            dtypes = set(src.dtypes)
            if len(dtypes) != 1:
                raise NdgeoError(f"{path}: bands have different pixel types {sorted(dtypes)}")
            dtype = src.dtypes[0]
            if dtype not in SUPPORTED_DTYPES:
                raise NdgeoError(
                    f"{path}: unsupported pixel type {dtype!r}; "
                    f"supported: {', '.join(SUPPORTED_DTYPES)}"
                )
            _check_readable(src)
            descriptions = list(src.descriptions)
            block_h, block_w = src.block_shapes[0]
            file_nodata = src.nodata
            mask_flags = src.mask_flag_enums
            info = dict(
                scales=tuple(float(v) for v in src.scales),
                offsets=tuple(float(v) for v in src.offsets),
                width=src.width,
                height=src.height,
                count=src.count,
                crs=src.crs,
                transform=src.transform,
                bounds=tuple(src.bounds),
                res=tuple(src.res),
            )
    except NdgeoError:
        raise
    except RasterioError as exc:
        raise NdgeoError(f"cannot read {path} as a raster (corrupt or truncated?): {exc}") from exc
    if nodata is not None:
        check_nodata(nodata, dtype, what="--nodata")
    info.update(override_scaling(info["scales"], info["offsets"], scale, offset))
    effective = nodata if nodata is not None else file_nodata
    names = resolve_bands(descriptions, bands=bands, sensor=sensor)
    has_mask = any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in mask_flags)
    return RasterInfo(
        path=path,
        dtype=dtype,
        has_mask=has_mask,
        nodata=None if effective is None else float(effective),
        bands=tuple(names),
        block_shape=(int(block_h), int(block_w)),
        **info,
    )


#: Prefixes of GDAL dataset names that are not local files (checked by GDAL, not os.path).
_REMOTE_PREFIXES = ("/vsi", "http://", "https://", "ftp://", "s3://", "gs://", "az://",
                    "<VRTDataset")


def is_remote(name: str) -> bool:
    """True for GDAL virtual file systems, URLs (``/vsicurl/...``, ``https://...``) and inline
    VRT XML (a STAC Item's band stack): names GDAL checks, not ``os.path``."""
    return str(name).startswith(_REMOTE_PREFIXES)


def dataset_name(path: str | os.PathLike) -> str:
    """The name GDAL gets: absolute for local files, untouched for remote ones."""
    name = os.fspath(path)
    return name if is_remote(name) else os.path.abspath(name)


def open_dataset(path: str | os.PathLike, *, what: str = "raster") -> rasterio.DatasetReader:
    """``rasterio.open`` for reading, with GDAL's own message in one NdgeoError line."""
    name = dataset_name(path)
    try:
        return rasterio.open(name)
    except RasterioError as exc:
        raise NdgeoError(f"cannot read {what} {name} (corrupt or truncated?): {exc}") from exc


def _check_readable(src: rasterio.DatasetReader) -> None:
    """Decode the first and last block of every band: catches truncated and corrupt files."""
    block_h, block_w = src.block_shapes[0]
    last_row = ((src.height - 1) // block_h) * block_h
    last_col = ((src.width - 1) // block_w) * block_w
    for row, col in {(0, 0), (last_row, last_col)}:
        window = Window(
            col, row, min(block_w, src.width - col), min(block_h, src.height - row)
        )
        src.read(window=window)


def check_nodata(value: float, dtype: str, *, what: str = "nodata") -> None:
    """Raise NdgeoError when ``value`` cannot be stored exactly in ``dtype``."""
    value = float(value)
    kind = np.dtype(dtype).kind
    if kind in "iu":
        limits = np.iinfo(dtype)
        if not value.is_integer() or not limits.min <= value <= limits.max:
            raise NdgeoError(
                f"{what} {value:g} does not fit pixel type {dtype} "
                f"(integers {limits.min}..{limits.max})"
            )
    elif math.isfinite(value) and abs(value) > np.finfo(dtype).max:
        raise NdgeoError(f"{what} {value:g} does not fit pixel type {dtype}")


def valid_mask(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """Valid pixels of a (bands, h, w) block: finite in every band and nodata in none.

    Where the file has a GDAL mask or alpha band (``RasterInfo.has_mask``), readers also drop
    the pixels it marks 0 (:func:`read_block`). Computed band by band into one mask: a
    (bands, h, w) comparison array took twice as long on 8-band blocks.
    """
    valid = np.ones(block.shape[1:], dtype=bool)
    scratch = np.empty_like(valid)
    check_value = nodata is not None and not math.isnan(nodata)
    value = _as_pixel_type(nodata, block.dtype) if check_value else None
    for band in block:
        if block.dtype.kind == "f":
            valid &= np.isfinite(band, out=scratch)
        if check_value:
            valid &= np.not_equal(band, value, out=scratch)
    return valid


def override_scaling(
    scales: Sequence[float], offsets: Sequence[float], scale: float | None,
    offset: float | None,
) -> dict[str, tuple[float, ...]]:
    """``{"scales", "offsets"}`` per band with ``--scale`` / ``--offset`` replacing the file's
    metadata where given (for files that do not declare it, e.g. Sentinel-2 SAFE JP2)."""
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise NdgeoError(f"--scale must be a positive number, got {scale:g}")
    if offset is not None and not math.isfinite(offset):
        raise NdgeoError(f"--offset must be a finite number, got {offset:g}")
    return {
        "scales": tuple(scales) if scale is None else (float(scale),) * len(scales),
        "offsets": tuple(offsets) if offset is None else (float(offset),) * len(offsets),
    }


def physical_scaling(
    scales: Sequence[float], offsets: Sequence[float], positions: Sequence[int]
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(scale, offset) of the bands at 0-based ``positions``, or None when every one is the
    identity. ND indices are invariant to a common scale but not to offsets (e.g. Sentinel-2
    L2A from processing baseline 04.00 stores reflectance + 0.1, Landsat C2 L2 reflectance +
    0.2), so values are converted to physical units wherever they reach a model or formula."""
    scale = tuple(float(scales[p]) if p < len(scales) else 1.0 for p in positions)
    offset = tuple(float(offsets[p]) if p < len(offsets) else 0.0 for p in positions)
    if all(v == 1.0 for v in scale) and all(v == 0.0 for v in offset):
        return None
    bad = [v for v in scale if not (math.isfinite(v) and v > 0)]
    if bad:
        raise NdgeoError(f"band scale metadata must be positive and finite, got {bad[0]:g}")
    return scale, offset


def _as_pixel_type(value: float, dtype: np.dtype) -> float | np.generic:
    """``value`` in ``dtype`` when it is exactly representable (a cheaper comparison), else
    as is: a file's nodata such as 7.25 on uint16 pixels matches no pixel."""
    try:
        typed = dtype.type(value)
    except (OverflowError, ValueError):
        return value
    return typed if float(typed) == value else value


def read_block(
    src: rasterio.DatasetReader, info: RasterInfo, positions: Sequence[int],
    window: Window | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw bands at 0-based ``positions`` of the open ``src`` (file type) and their valid
    pixels (nodata, non-finite, GDAL mask)."""
    raw = src.read([p + 1 for p in positions], window=window)
    valid = valid_mask(raw, info.nodata)
    if info.has_mask:
        valid &= src.read_masks(positions[0] + 1, window=window) != 0
    return raw, valid


def to_physical(raw: np.ndarray, scaling: tuple | None) -> np.ndarray:
    """float32 (C, ...) values in physical units (``raw x scale + offset`` per band)."""
    values = raw.astype(np.float32, copy=scaling is None)
    if scaling is None:
        return values
    scale, offset = (np.asarray(v, dtype=np.float32).reshape(-1, *([1] * (raw.ndim - 1)))
                     for v in scaling)
    return values * scale + offset


def any_positive(block: np.ndarray, scaling: tuple | None) -> np.ndarray:
    """Pixels of a raw ``block`` (C, ...) with a band above 0 in physical units: the all-zero
    rule (pixels with none are nodata to every ND model, in training and in apply)."""
    if scaling is None:
        return (block > 0).any(axis=0)
    positive = np.zeros(block.shape[1:], dtype=bool)
    with np.errstate(invalid="ignore"):
        for band, scale, offset in zip(block, *scaling, strict=True):
            positive |= band > -offset / scale  # scale > 0 (physical_scaling checks it)
    return positive


def to_float(raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 copy of a raw (bands, h, w) block with NaN where ``valid`` is False."""
    block = raw.astype(np.float32, copy=True)
    if not valid.all():
        np.copyto(block, np.float32(np.nan), where=~valid)
    return block


def read_float_block(
    src: rasterio.DatasetReader, info: RasterInfo, positions: Sequence[int],
    window: Window | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bands at 0-based ``positions`` of the open ``src`` as float32 with NaN at invalid
    pixels (nodata, non-finite, GDAL mask), and the valid mask."""
    raw, valid = read_block(src, info, positions, window)
    return to_float(raw, valid), valid


def info_from_dataarray(
    data, *, bands: Sequence[str] | None = None, sensor: str | None = None,
    nodata: float | None = None,
) -> RasterInfo:
    """RasterInfo of a (band, y, x) DataArray (e.g. ``rioxarray.open_rasterio(path,
    chunks=...)``): band names from ``bands``, a string ``band`` coordinate or the
    ``long_name`` attribute; CRS, transform and nodata from ``.rio``; GDAL scale/offset from
    the ``scale_factor`` / ``add_offset`` attributes."""
    import rioxarray  # noqa: F401  (registers .rio)

    if data.ndim != 3 or data.dims[0] != "band":
        raise NdgeoError(f"need a (band, y, x) DataArray, got dims {data.dims}")
    count, height, width = (int(n) for n in data.shape)
    dtype = str(data.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise NdgeoError(f"unsupported pixel type {dtype!r}; supported: "
                         f"{', '.join(SUPPORTED_DTYPES)}")
    descriptions = [None] * count
    coord = data.coords["band"].values if "band" in data.coords else []
    if len(coord) == count and all(isinstance(v, str) for v in coord):
        descriptions = [str(v) for v in coord]
    elif isinstance(data.attrs.get("long_name"), tuple | list):
        descriptions = [str(v) for v in data.attrs["long_name"]]
    if nodata is not None:
        check_nodata(nodata, dtype, what="nodata")
    file_nodata = data.rio.nodata if nodata is None else nodata
    chunks = getattr(data, "chunks", None)
    block = (int(chunks[1][0]), int(chunks[2][0])) if chunks else (height, width)

    def per_band(name: str, default: float) -> tuple[float, ...]:
        value = data.attrs.get(name, default)
        values = value if isinstance(value, tuple | list) else [value] * count
        return tuple(float(v) for v in values)

    return RasterInfo(
        path=str(data.encoding.get("source", "<DataArray>")), width=width, height=height,
        count=count, dtype=dtype, crs=data.rio.crs, transform=data.rio.transform(),
        nodata=None if file_nodata is None else float(file_nodata),
        bands=tuple(resolve_bands(descriptions, bands=bands, sensor=sensor)),
        block_shape=block, bounds=tuple(data.rio.bounds()),
        res=tuple(abs(r) for r in data.rio.resolution()),
        scales=per_band("scale_factor", 1.0), offsets=per_band("add_offset", 0.0),
    )
