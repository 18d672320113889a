"""A model's learned indices as Earth Engine and QGIS raster-calculator expressions.

Both compute :class:`ndgeo.formula.learned.ExactIndex` exactly: full-precision weights (written
as positional decimals, which every expression parser reads), the layer's eps, the conversion of
digital numbers to the model's units (``DN x scale + offset``) folded into the weights, and the
clip of negative values at 0 where an offset (or a signed pixel type) allows them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ndgeo.bands import SENSORS, normalize_sensor
from ndgeo.errors import NdgeoError
from ndgeo.formula.learned import ExactIndex


@dataclass(frozen=True)
class EECollection:
    """An Earth Engine image collection: its id, ASI letter -> band name, and the scale and
    offset that turn its digital numbers into surface reflectance."""

    id: str
    bands: Mapping[str, str]
    scale: float
    offset: float


_LANDSAT_OLI = {"A": "SR_B1", "B": "SR_B2", "G": "SR_B3", "R": "SR_B4", "N": "SR_B5",
                "S1": "SR_B6", "S2": "SR_B7"}

#: Surface-reflectance collections per ``--sensor`` preset (thermal bands have other units and
#: are left out).
EE_COLLECTIONS: dict[str, EECollection] = {
    "sentinel-2": EECollection(
        "COPERNICUS/S2_SR_HARMONIZED",
        {"A": "B1", "B": "B2", "G": "B3", "R": "B4", "RE1": "B5", "RE2": "B6", "RE3": "B7",
         "N": "B8", "N2": "B8A", "WV": "B9", "S1": "B11", "S2": "B12"}, 0.0001, 0.0),
    "landsat-8": EECollection("LANDSAT/LC08/C02/T1_L2", _LANDSAT_OLI, 0.0000275, -0.2),
    "landsat-9": EECollection("LANDSAT/LC09/C02/T1_L2", _LANDSAT_OLI, 0.0000275, -0.2),
    "landsat-7": EECollection(
        "LANDSAT/LE07/C02/T1_L2",
        {"B": "SR_B1", "G": "SR_B2", "R": "SR_B3", "N": "SR_B4", "S1": "SR_B5", "S2": "SR_B7"},
        0.0000275, -0.2),
}


def _number(value: float) -> str:
    """Shortest exact decimal, never in exponent notation."""
    return np.format_float_positional(float(value), unique=True, trim="-")


def _product(coef: float, term: str) -> str:
    text = _number(coef)
    return term if text == "1" else f"{text} * {term}"


def units_warning(model, scale: float) -> str | None:
    """A warning when ``DN x scale`` looks like other units than the model was trained in.

    The training bands' medians are ``1 / band_scale`` (``ndgeo train`` fits them): above 2
    they were digital numbers, at most 2 reflectance. ND indices ignore a common scale, but not
    the layer's eps, so feeding reflectance to a model trained on digital numbers (or the
    reverse) moves every index by about eps / denominator.
    """
    medians = 1.0 / model.band_scale.double().cpu().numpy()
    if np.allclose(medians, 1.0):
        return None  # no fitted scale: the training units are unknown
    trained_dn = float(np.median(medians)) > 2
    if trained_dn == (scale == 1):
        return None
    units = "digital numbers" if trained_dn else "reflectance"
    fix = "--scale 1 --offset 0" if trained_dn else "--scale and --offset to reflectance"
    return (f"the model was trained on {units} (band medians ~{np.median(medians):.3g}) but "
            f"the expression feeds it DN x {_number(scale)}: its eps then weighs differently; "
            f"give {fix} to reproduce it exactly")


def _expression(index: ExactIndex, variables: Mapping[str, str],
                scaling: Mapping[str, tuple[float, float]], clip: Mapping[str, bool],
                clip_form: str) -> str:
    """``(num) / (den)`` over ``variables`` (band -> how the expression reads it).

    Where ``clip[band]`` is False (unsigned digital numbers, offset >= 0) the scale and offset
    fold into the weights and a constant; elsewhere the band enters as ``clip_form`` of its
    physical value ``{v} * scale + offset``. Both sides are divided by the largest denominator
    weight (the same function, with readable numbers; eps is divided too).
    """
    sides: list[list[tuple[float, str]]] = [[], []]
    constants = [0.0, index.eps]
    for band, num, den in index.terms():
        scale, offset = scaling.get(band, (1.0, 0.0))
        for side, weight in enumerate((num, den)):
            if weight == 0:
                continue
            if clip[band]:
                physical = f"{variables[band]} * {_number(scale)} + {_number(offset)}"
                sides[side].append((weight, clip_form.format(v=physical)))
            else:
                sides[side].append((weight * scale, variables[band]))
                constants[side] += weight * offset
    top = max(c for c, _ in sides[1])
    texts = []
    for side, terms in enumerate(sides):
        parts = [("-" if c < 0 else "+", _product(abs(c) / top, t)) for c, t in terms]
        if constants[side] != 0 or not parts:
            parts.append(("-" if constants[side] < 0 else "+",
                          _number(abs(constants[side]) / top)))
        text = " ".join(f"{sign} {part}" for sign, part in parts)
        texts.append(text[2:] if text.startswith("+ ") else "-" + text[2:])
    return f"({texts[0]}) / ({texts[1]})"


def ee_collection(sensor: str | None, meta: Mapping) -> tuple[str, EECollection]:
    """The collection for ``--sensor`` (or the one sensor whose band ids name all the model's
    bands, e.g. Sentinel-2 ``B02 ... B8A``)."""
    if sensor is None:
        names = {b["name"] for b in meta["bands"]}
        matches = [s for s, ids in SENSORS.items() if names <= set(ids)]
        if len(matches) != 1:
            raise NdgeoError(
                "--format gee needs --sensor (the Earth Engine collection of the model's sensor: "
                f"{', '.join(EE_COLLECTIONS)}); the model's bands {sorted(names)} "
                + ("name no single sensor" if matches else "are no sensor's band ids"))
        sensor = matches[0]
    key = sensor.strip().lower().replace("_", "-").replace(" ", "-")
    key = "landsat-9" if key in ("l9", "landsat9", "landsat-9") else normalize_sensor(key)
    if key not in EE_COLLECTIONS:
        raise NdgeoError(f"no Earth Engine collection for --sensor {sensor}; choose one of "
                         f"{', '.join(EE_COLLECTIONS)}")
    return key, EE_COLLECTIONS[key]


def gee_expressions(
    indices: Sequence[ExactIndex], meta: Mapping, *, sensor: str | None = None,
    scale: float | None = None, offset: float | None = None,
) -> tuple[EECollection, dict[str, str], list[str]]:
    """(collection, variable -> Earth Engine band, one ``NAME = (...) / (...)`` per index).

    Variables are the model bands' ASI letters; the collection's digital numbers become the
    model's units as ``DN x scale + offset`` (default the collection's surface-reflectance
    scaling; give the units the model was trained in, e.g. ``scale=1, offset=0`` for a model
    trained on unscaled digital numbers).
    """
    key, collection = ee_collection(sensor, meta)
    scale = collection.scale if scale is None else float(scale)
    offset = collection.offset if offset is None else float(offset)
    if not scale > 0:
        raise NdgeoError(f"--scale must be a positive number, got {scale:g}")
    variables: dict[str, str] = {}
    mapping: dict[str, str] = {}
    preset = SENSORS.get("landsat-8" if key == "landsat-9" else key, {})
    for band in meta["bands"]:
        letter = band.get("letter") or preset.get(band["name"])
        if letter not in collection.bands:
            raise NdgeoError(
                f"model band {band['name']!r} (letter {letter}) has no band in {collection.id}; "
                f"it has {', '.join(f'{k}={v}' for k, v in collection.bands.items())}")
        variables[band["name"]] = letter
        mapping[letter] = collection.bands[letter]
    used = {b for i in indices for b, _, _ in i.terms()}
    mapping = {variables[b]: mapping[variables[b]] for b in variables if b in used}
    scaling = {b: (scale, offset) for b in variables}
    clip = {b: offset < 0 for b in variables}  # Earth Engine's DNs here are unsigned
    exprs = [f"{i.name} = " + _expression(i, variables, scaling, clip, "max({v}, 0)")
             for i in indices]
    return collection, mapping, exprs


def to_gee(indices: Sequence[ExactIndex], meta: Mapping, *, sensor: str | None = None,
           scale: float | None = None, offset: float | None = None) -> str:
    """An Earth Engine script (JavaScript, then Python) defining a function that adds the
    learned indices to an image of the sensor's collection, mapped over the collection."""
    collection, mapping, exprs = gee_expressions(indices, meta, sensor=sensor, scale=scale,
                                                 offset=offset)
    s = collection.scale if scale is None else scale
    o = collection.offset if offset is None else offset
    note = (f"model units = DN x {_number(s)} + {_number(o)}"
            + (", negative values clipped at 0 as the model does" if o < 0 else ""))
    js_map = ", ".join(f"{k}: image.select('{v}')" for k, v in mapping.items())
    py_map = ", ".join(f"'{k}': image.select('{v}')" for k, v in mapping.items())
    js = [f"// Earth Engine (JavaScript): ndgeo learned indices on {collection.id}; {note}",
          "function ndgeoIndices(image) {",
          f"  var bands = {{{js_map}}};",
          "  return image.addBands(ee.Image.cat(["]
    js += [f"    image.expression('{e}', bands)," for e in exprs]
    js[-1] = js[-1].rstrip(",")
    js += ["  ]));", "}",
           f"var withIndices = ee.ImageCollection('{collection.id}').map(ndgeoIndices);"]
    py = [f"# Earth Engine (Python): ndgeo learned indices on {collection.id}; {note}",
          "def ndgeo_indices(image):",
          f"    bands = {{{py_map}}}",
          "    return image.addBands(ee.Image.cat(["]
    py += [f"        image.expression('{e}', bands)," for e in exprs]
    py += ["    ]))", "",
           f"with_indices = ee.ImageCollection('{collection.id}').map(ndgeo_indices)"]
    return "\n".join(js) + "\n\n" + "\n".join(py)


def to_qgis(indices: Sequence[ExactIndex], *, band_numbers: Mapping[str, int],
            scaling: Mapping[str, tuple[float, float]], image: str | None = None,
            layer: str | None = None, signed: bool = False) -> str:
    """One QGIS raster-calculator expression per index over ``"layer@band"`` references.

    ``layer`` defaults to ``image``'s file name without extension (the name QGIS gives the
    layer), else ``IMAGE``. Bands are clipped at 0 (``(x > 0) * x``, which every QGIS version
    reads) where an offset or a ``signed`` pixel type makes negative values possible. QGIS
    writes nodata wherever an input band is nodata.
    """
    if layer is None:
        layer = (os.path.splitext(os.path.basename(image))[0] if image else "IMAGE")
    if '"' in layer:
        raise NdgeoError(f"layer name {layer!r} contains a double quote")
    variables = {b: f'"{layer}@{n}"' for b, n in band_numbers.items()}
    clip = {b: signed or scaling.get(b, (1.0, 0.0))[1] < 0 for b in band_numbers}
    listing = ", ".join(f"{b}={layer}@{n}" for b, n in band_numbers.items())
    names = ", ".join(i.name for i in indices)
    lines = [f"# QGIS raster calculator, one expression per index ({names}); bands: {listing}"]
    lines += [_expression(i, variables, scaling, clip, "(({v}) > 0) * ({v})") for i in indices]
    return "\n".join(lines)
