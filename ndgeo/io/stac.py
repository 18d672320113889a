"""STAC Items as input rasters: one file per band (as Landsat and Sentinel-2 collections ship)
stacked into a GDAL VRT, so the one reader and the one engine see a single multi-band raster.

Bands are the Item's assets with ``eo:bands``, named by their ``common_name`` (``blue``,
``nir08``, ... which :mod:`ndgeo.bands` maps to ASI letters) when it is unique in the Item, else
by the band's own name (Sentinel-2's three ``rededge`` bands stay B05, B06, B07); ``nir08`` is
the NIR band ``N`` when the Item has no ``nir``, as in Landsat 8/9. Assets at other
resolutions are resampled (nearest, so values stay exact) onto the grid of one band
(``grid``, default the finest).
Nodata, scale and offset come from ``raster:bands``. The VRT is XML text, a GDAL dataset name
of its own: cluster workers receive the same name.
"""

from __future__ import annotations

import json
import os
import urllib.request
from xml.sax.saxutils import escape

import rasterio

from ndgeo.errors import NdgeoError

#: Seconds to wait for a remote Item document.
TIMEOUT = 30.0


def is_stac_item(name: str) -> bool:
    """True for a ``.json`` dataset name (local or URL) that is meant as a STAC Item."""
    return str(name).lower().split("?")[0].endswith(".json")


def _read_item(name: str) -> dict:
    try:
        if name.startswith(("http://", "https://")):
            with urllib.request.urlopen(name, timeout=TIMEOUT) as response:  # noqa: S310
                return json.load(response)
        with open(name, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise NdgeoError(f"cannot read STAC Item {name}: {exc}") from None


def _href(item_name: str, href: str) -> str:
    """An asset href as a GDAL dataset name, relative ones resolved against the Item."""
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith(("/", "s3://", "gs://")) or "://" in href:
        return href
    if item_name.startswith(("http://", "https://")):
        return "/vsicurl/" + item_name.rsplit("/", 1)[0] + "/" + href
    return os.path.join(os.path.dirname(os.path.abspath(item_name)), href)


def item_bands(item: dict, name: str) -> list[dict]:
    """One entry per band asset: ``{"key", "name", "href", "nodata", "scale", "offset"}``."""
    out = []
    for key, asset in (item.get("assets") or {}).items():
        bands = asset.get("eo:bands") or []
        if len(bands) != 1:
            continue  # previews, metadata, multi-band products
        raster = (asset.get("raster:bands") or [{}])[0]
        out.append({"key": key, "common": bands[0].get("common_name"),
                    "name": bands[0].get("name") or key,
                    "href": _href(name, asset["href"]), "nodata": raster.get("nodata"),
                    "scale": raster.get("scale", 1.0), "offset": raster.get("offset", 0.0)})
    if not out:
        raise NdgeoError(f"STAC Item {name} has no single-band assets with eo:bands")
    commons = [b["common"] for b in out]
    for b in out:  # a unique common name, else the band's own name (Sentinel-2 red edges)
        if b["common"] == "nir08" and "nir" not in commons:
            b["name"] = "nir"
        elif b["common"] and commons.count(b["common"]) == 1:
            b["name"] = b["common"]
    return out


def item_vrt(name: str, grid: str | None = None) -> str:
    """The VRT (XML text) stacking the band assets of the STAC Item ``name`` on the grid of
    band ``grid`` (asset key, band name or common name; default the finest resolution)."""
    item = _read_item(name)
    bands = item_bands(item, name)
    facts = []
    for b in bands:
        try:
            with rasterio.open(b["href"]) as src:
                facts.append((src.crs, src.transform, src.width, src.height, src.dtypes[0]))
        except rasterio.errors.RasterioError as exc:
            raise NdgeoError(f"cannot read asset {b['key']} of {name}: {exc}") from None
    if grid is None:
        ref = min(range(len(bands)), key=lambda i: abs(facts[i][1].a))
    else:
        match = [i for i, b in enumerate(bands) if grid in (b["key"], b["name"])]
        if not match:
            raise NdgeoError(f"--grid {grid!r} is not a band of {name}; bands: "
                             + ", ".join(b["key"] for b in bands))
        ref = match[0]
    crs, transform, width, height, _ = facts[ref]
    if any(f[0] != crs for f in facts):
        raise NdgeoError(f"the assets of {name} are in different CRSs; ndgeo stacks assets "
                         "of one CRS")
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"<SRS>{escape(crs.to_wkt())}</SRS>",
             "<GeoTransform>" + ", ".join(repr(v) for v in transform.to_gdal())
             + "</GeoTransform>"]
    gdal_types = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                  "int32": "Int32", "float32": "Float32", "float64": "Float64", "int8": "Int8"}
    for k, (b, (_, t, w, h, dtype)) in enumerate(zip(bands, facts, strict=True), start=1):
        x_off = (t.c - transform.c) / transform.a
        y_off = (t.f - transform.f) / transform.e
        x_size, y_size = w * t.a / transform.a, h * t.e / transform.e
        nodata = b["nodata"]
        parts += [f'<VRTRasterBand dataType="{gdal_types[dtype]}" band="{k}">',
                  f"<Description>{escape(b['name'])}</Description>"]
        if nodata is not None:
            parts.append(f"<NoDataValue>{nodata}</NoDataValue>")
        parts += [f"<Offset>{b['offset']}</Offset>", f"<Scale>{b['scale']}</Scale>",
                  '<ComplexSource resampling="nearest">',
                  f'<SourceFilename relativeToVRT="0">{escape(b["href"])}</SourceFilename>',
                  "<SourceBand>1</SourceBand>",
                  f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                  f'<DstRect xOff="{x_off!r}" yOff="{y_off!r}" xSize="{x_size!r}" '
                  f'ySize="{y_size!r}"/>']
        if nodata is not None:
            parts.append(f"<NODATA>{nodata}</NODATA>")
        parts += ["</ComplexSource>", "</VRTRasterBand>"]
    parts.append("</VRTDataset>")
    return "".join(parts)
