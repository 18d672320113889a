"""A model's learned indices as a GDAL VRT computed lazily from the image (``--format vrt``).

Only pixel functions of the GDAL that rasterio's wheels bundle (3.10) are used; its
``expression`` function is not among them. Each output band is ``div`` of two inline nested
VRTs: the numerator and the denominator, each a ``sum`` whose sources carry the band weights as
``ScaleRatio``/``ScaleOffset`` (the file's scale/offset folded in) and whose ``k`` adds the
model's eps. Everything is computed in Float64 and written as Float32, so GDAL, QGIS or rasterio
reproduce :class:`ndgeo.formula.learned.ExactIndex` with no Python.

ndgeo's pixel policy (:mod:`ndgeo.io.raster`) becomes a per-dataset mask band, also applied to
the values as NaN: a pixel is valid when every model band is finite and not nodata, some band is
above 0 in physical units (the all-zero rule) and the file's own mask (if any) keeps it.
GDAL evaluates that mask again for every index band (derived bands are not cached), about half
of a band's cost.
Negative physical values are clipped to 0 as the model does, as ``0.5 x + 0.5 |x|`` (exact),
where the pixel type or an offset allows them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

from ndgeo.errors import NdgeoError
from ndgeo.formula.learned import ExactIndex

#: Multiplier that turns any positive physical value into >= 255 (Byte saturation) in the
#: mask; values up to 1e108 stay finite.
_BIG = 1e200


@dataclass(frozen=True)
class VRTSource:
    """The image a VRT reads: its GDAL name, grid, pixel type, nodata and, per model band
    name, its 1-based band number and (scale, offset) to physical units."""

    path: str
    width: int
    height: int
    dtype: str
    crs_wkt: str | None
    geotransform: tuple[float, ...]
    nodata: float | None
    bands: Mapping[str, int]
    scaling: Mapping[str, tuple[float, float]]
    #: 1-based band whose GDAL mask (per-dataset mask or alpha band) also applies, else None.
    mask_band: int | None = None


def _num(value: float) -> str:
    return repr(float(value))


def _source(filename: str, band: int | str, ratio: float | None = None,
            offset: float = 0.0, nodata: float | None = None) -> str:
    """A ComplexSource; pixels equal to ``nodata`` take the reading band's NoDataValue."""
    scaling = ("" if ratio is None else
               f"<ScaleOffset>{_num(offset)}</ScaleOffset><ScaleRatio>{_num(ratio)}</ScaleRatio>")
    nodata_xml = "" if nodata is None else f"<NODATA>{_num(nodata)}</NODATA>"
    return (f"<ComplexSource><SourceFilename>{escape(filename)}</SourceFilename>"
            f"<SourceBand>{band}</SourceBand>{scaling}{nodata_xml}</ComplexSource>")


def _band(function: str, sources: Sequence[str], *, dtype: str = "Float64", number: int = 1,
          k: float | None = None, nodata: str | None = None, extra: str = "",
          transfer: str = "Float64") -> str:
    args = "" if k is None else f'<PixelFunctionArguments k="{_num(k)}"/>'
    attr = f' band="{number}"' if number else ""
    nodata_xml = "" if nodata is None else f"<NoDataValue>{nodata}</NoDataValue>"
    return (f'<VRTRasterBand dataType="{dtype}"{attr} subClass="VRTDerivedRasterBand">'
            f"{extra}{nodata_xml}<PixelFunctionType>{function}</PixelFunctionType>{args}"
            f"<SourceTransferType>{transfer}</SourceTransferType>{''.join(sources)}"
            "</VRTRasterBand>")


class _Builder:
    """Nested VRT pieces over one :class:`VRTSource`."""

    def __init__(self, src: VRTSource, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in src.bands]
        if missing:
            raise NdgeoError(f"no band of {src.path} for model band(s) {missing}")
        self.src, self.names = src, list(names)

    def dataset(self, band_xml: str) -> str:
        return (f'<VRTDataset rasterXSize="{self.src.width}" rasterYSize="{self.src.height}">'
                f"{band_xml}</VRTDataset>")

    def nested(self, band_xml: str, ratio: float | None = None, offset: float = 0.0) -> str:
        return _source(self.dataset(band_xml), 1, ratio, offset)

    def raw(self, name: str, ratio: float | None = None, offset: float = 0.0,
            nodata: float | None = None) -> str:
        return _source(self.src.path, self.src.bands[name], ratio, offset, nodata)

    def scaling(self, name: str) -> tuple[float, float]:
        return self.src.scaling.get(name, (1.0, 0.0))

    def may_be_negative(self, name: str) -> bool:
        return np.dtype(self.src.dtype).kind != "u" or self.scaling(name)[1] < 0

    def weighted(self, name: str, weight: float) -> list[str]:
        """Sources adding ``weight x max(physical, 0)`` of band ``name`` to a ``sum``."""
        scale, offset = self.scaling(name)
        if not self.may_be_negative(name):
            return [self.raw(name, weight * scale, weight * offset)]
        absolute = _band("mod", [self.raw(name, scale, offset)])
        return [self.raw(name, 0.5 * weight * scale, 0.5 * weight * offset),
                self.nested(absolute, 0.5 * weight)]

    def zero(self) -> str:
        """A source that is 0 everywhere (pads a ``sum`` to the two sources it needs)."""
        return self.raw(self.names[0], 0.0, 0.0)

    def mask(self, number: int = 1) -> str:
        """Byte band: 255 where ndgeo's pixel policy keeps the pixel, else 0 (``number`` 0:
        without a band number, as a ``<MaskBand>``)."""
        nodata = self.src.nodata
        if nodata is not None and math.isnan(nodata):
            nodata = None  # NaN propagates by itself
        # sum_i (x_i - x_i): 0 where every band is finite, NaN where one is nodata (the
        # sources' NODATA become the band's NaN), NaN or infinite.
        pairs = [self.raw(n, sign, 0.0, nodata) for n in self.names for sign in (1.0, -1.0)]
        invalid_nan = _band("sum", pairs, nodata="nan")
        # max_i (raw_i + offset_i / scale_i) > 0  <=>  some band > 0 in physical units,
        # compared exactly as ndgeo.io.raster.any_positive does (raw > -offset / scale).
        shifted = [self.raw(n, 1.0, self.scaling(n)[1] / self.scaling(n)[0])
                   for n in self.names]
        positive = _band("max", shifted)
        sources = [self.nested(positive, _BIG), self.nested(invalid_nan)]
        if self.src.mask_band is None:
            return _band("sum", sources, dtype="Byte", number=number)
        valid = _band("sum", sources, dtype="Byte")
        file_mask = _source(self.src.path, f"mask,{self.src.mask_band}")
        return _band("min", [self.nested(valid), file_mask], dtype="Byte", number=number,
                     transfer="Byte")

    def index(self, index: ExactIndex, number: int, description: str, nan_where_invalid: str
              ) -> str:
        num: list[str] = [nan_where_invalid]
        den: list[str] = []
        for name, n, d in index.terms():
            if n != 0:
                num += self.weighted(name, n)
            den += self.weighted(name, d)
        num += [self.zero()] * max(0, 2 - len(num))
        den += [self.zero()] * max(0, 2 - len(den))
        numerator = _band("sum", num)
        denominator = _band("sum", den, k=index.eps)
        meta = (f"<Description>{escape(description)}</Description>"
                f'<Metadata><MDI key="NDGEO_INDEX">{escape(index.name)}</MDI></Metadata>')
        return _band("div", [self.nested(numerator), self.nested(denominator)],
                     dtype="Float32", number=number, nodata="nan", extra=meta)


def to_vrt(indices: Sequence[ExactIndex], src: VRTSource, *,
           descriptions: Sequence[str] = (), metadata: Mapping[str, str] | None = None) -> str:
    """A VRT document computing ``indices`` from ``src`` as Float32 bands, NaN and masked
    (per-dataset mask band) where ndgeo's pixel policy makes a pixel nodata.

    ``descriptions`` name the output bands (default the index names); ``metadata`` becomes
    dataset metadata items.
    """
    if not indices:
        raise NdgeoError("no index to write")
    build = _Builder(src, indices[0].bands)
    # 0 where the pixel is valid, NaN where not: added to every numerator. A derived band
    # writes in the type it is read in, so the mask is read as Byte (saturating) here.
    nan_where_invalid = build.nested(
        _band("replace_nodata", [build.nested(build.mask())], nodata="0", transfer="Byte"),
        1.0, -255.0)
    names = list(descriptions) or [i.name for i in indices]
    bands = "\n".join(build.index(i, k + 1, names[k], nan_where_invalid)
                    for k, i in enumerate(indices))
    head = ""
    if src.crs_wkt:
        head += f"<SRS>{escape(src.crs_wkt)}</SRS>"
    head += "<GeoTransform>" + ", ".join(_num(v) for v in src.geotransform) + "</GeoTransform>"
    items = "".join(f'<MDI key="{escape(k)}">{escape(str(v))}</MDI>'
                    for k, v in (metadata or {}).items())
    if items:
        head += f"<Metadata>{items}</Metadata>"
    return (f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">\n{head}\n'
            f"{bands}\n<MaskBand>{build.mask(number=0)}</MaskBand>\n</VRTDataset>\n")
