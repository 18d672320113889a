"""Band vocabularies and matching bands by name.

Three vocabularies meet here: sensor band ids (``B08``, ``SR_B5``), STAC common names (``nir``)
and Awesome Spectral Indices letters (``N``). Every band ndgeo handles is resolved to a
:class:`Band` carrying its name as found in the file and its ASI letter, so formulas can speak
ASI while files keep their own names.

The sensor tables are written out here rather than derived from ``spyndex.bands`` because the
catalogue files Landsat 8/9 B5 under ``N2`` although every index treats Landsat-OLI as an ``N``
sensor; here L8/9 B5 is ``N`` (and Sentinel-2 B8A stays ``N2``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ndgeo.errors import NdgeoError

#: ASI letter -> STAC common name (from the Awesome Spectral Indices band table).
ASI_COMMON_NAMES: dict[str, str] = {
    "A": "coastal",
    "B": "blue",
    "G": "green",
    "G1": "green05",
    "Y": "yellow",
    "R": "red",
    "RE1": "rededge071",
    "RE2": "rededge075",
    "RE3": "rededge078",
    "N": "nir",
    "N2": "nir08",
    "WV": "nir09",
    "S1": "swir16",
    "S2": "swir22",
    "T": "lwir",
    "T1": "lwir11",
    "T2": "lwir12",
}

#: Extra common names seen in STAC items and band descriptions.
_COMMON_ALIASES: dict[str, str] = {
    "rededge": "RE1",
    "rededge1": "RE1",
    "rededge2": "RE2",
    "rededge3": "RE3",
    "nir08": "N2",
    "swir1": "S1",
    "swir2": "S2",
    "cirrus": "",
    "wvp": "WV",
}

#: Sensor presets: band id -> ASI letter, in the sensor's band order.
SENSORS: dict[str, dict[str, str]] = {
    "sentinel-2": {
        "B01": "A", "B02": "B", "B03": "G", "B04": "R", "B05": "RE1", "B06": "RE2",
        "B07": "RE3", "B08": "N", "B8A": "N2", "B09": "WV", "B11": "S1", "B12": "S2",
    },
    "landsat-8": {
        "B1": "A", "B2": "B", "B3": "G", "B4": "R", "B5": "N", "B6": "S1", "B7": "S2",
        "B10": "T1", "B11": "T2",
    },
    "landsat-7": {
        "B1": "B", "B2": "G", "B3": "R", "B4": "N", "B5": "S1", "B6": "T", "B7": "S2",
    },
}
#: Band layouts a sensor preset names by position (files without band descriptions), by band
#: count: the products' full stacks, exactly. Any other count is an error, never a guess.
LAYOUTS: dict[str, dict[int, tuple[tuple[str, ...], str]]] = {
    "sentinel-2": {
        12: (("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
              "B12"), "L2A"),
        13: (("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
              "B11", "B12"), "L1C"),
    },
    "landsat-8": {
        7: (("B1", "B2", "B3", "B4", "B5", "B6", "B7"), "Collection 2 L2 surface reflectance"),
        9: (("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B10", "B11"), "reflective + thermal"),
        11: (("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"), "L1"),
    },
    "landsat-7": {
        6: (("B1", "B2", "B3", "B4", "B5", "B7"), "Collection 2 L2 surface reflectance"),
        7: (("B1", "B2", "B3", "B4", "B5", "B6", "B7"), "with thermal B6"),
    },
}
SENSOR_ALIASES = {
    "s2": "sentinel-2", "sentinel2": "sentinel-2", "sentinel-2": "sentinel-2",
    "l8": "landsat-8", "l9": "landsat-8", "landsat8": "landsat-8", "landsat9": "landsat-8",
    "landsat-8": "landsat-8", "landsat-9": "landsat-8",
    "l7": "landsat-7", "landsat7": "landsat-7", "landsat-7": "landsat-7",
    "generic": "generic",
}


@dataclass(frozen=True)
class Band:
    """One band: its name as the user or file calls it and its ASI letter (None if unknown)."""

    name: str
    letter: str | None = None

    @property
    def label(self) -> str:
        """The name to print in formulas: the ASI letter when known, else the band's own name."""
        return self.letter or self.name


def normalize_sensor(sensor: str) -> str:
    """Canonical sensor preset name, or a clear error listing the known ones."""
    key = sensor.strip().lower().replace("_", "-").replace(" ", "-")
    if key not in SENSOR_ALIASES:
        raise NdgeoError(
            f"unknown sensor {sensor!r}; known: sentinel-2, landsat-8 (also landsat-9), "
            "landsat-7, generic"
        )
    return SENSOR_ALIASES[key]


def _sentinel2_id(name: str) -> str | None:
    m = re.fullmatch(r"B0?(\d{1,2}A?)", name.strip().upper())
    if not m:
        return None
    num = m.group(1)
    return "B8A" if num == "8A" else f"B{int(num):02d}"


def _landsat_id(name: str) -> str | None:
    m = re.fullmatch(r"(?:SR_|ST_)?B(\d{1,2})", name.strip().upper())
    return f"B{int(m.group(1))}" if m else None


def letter_for(name: str, sensor: str | None = None) -> str | None:
    """The ASI letter of a band name: an ASI letter, a STAC common name or a sensor band id.

    Sensor band ids (``B08``) need a sensor preset (the same id means different bands on
    different sensors); without one they are tried as Sentinel-2 ids only when the name is
    unambiguous in that vocabulary (``B8A``, ``B11``, zero-padded ``B0x``).
    """
    text = name.strip()
    # Descriptions like "B08 (nir)" or "nir - 842 nm": try each word.
    for word in re.split(r"[\s,;:()\[\]/|-]+", text) if len(text.split()) > 1 else [text]:
        if not word:
            continue
        found = _letter_for_word(word, sensor)
        if found:
            return found
    return None


def _letter_for_word(word: str, sensor: str | None) -> str | None:
    upper = word.upper()
    lower = word.lower()
    if sensor and sensor != "generic":
        table = SENSORS[normalize_sensor(sensor)]
        canon = (
            _sentinel2_id(word) if normalize_sensor(sensor) == "sentinel-2" else _landsat_id(word)
        )
        if canon and canon in table:
            return table[canon]
    if upper in ASI_COMMON_NAMES:
        return upper
    for letter, common in ASI_COMMON_NAMES.items():
        if lower == common:
            return letter
    if lower in _COMMON_ALIASES:
        return _COMMON_ALIASES[lower] or None
    if sensor is None and re.fullmatch(r"B(0\d|8A|1[12])", upper):
        return SENSORS["sentinel-2"][_sentinel2_id(upper)]
    return None


def resolve_bands(
    descriptions: Sequence[str | None],
    *,
    bands: Sequence[str] | None = None,
    sensor: str | None = None,
) -> list[Band]:
    """Name the bands of a raster.

    ``descriptions`` are the file's band descriptions (None where missing). ``bands`` overrides
    them: names, or 1-based indexes as strings, one per raster band. ``sensor`` resolves sensor
    band ids and, when the file has no descriptions, names the bands in the preset's order.
    """
    count = len(descriptions)
    names: list[str]
    if bands:
        if len(bands) != count:
            raise NdgeoError(
                f"--band-names gives {len(bands)} names but the raster has {count} bands: "
                f"{', '.join(map(str, bands))}; give one name per band, in file order"
            )
        names = [str(b).strip() for b in bands]
    elif all(descriptions):
        names = [str(d).strip() for d in descriptions]
    elif sensor and normalize_sensor(sensor) != "generic":
        preset = _layout(normalize_sensor(sensor), sensor, count, descriptions)
        names = [d.strip() if d else preset[i] for i, d in enumerate(descriptions)]
    else:
        names = [d.strip() if d else f"band_{i + 1}" for i, d in enumerate(descriptions)]
    if len(set(names)) != len(names):
        raise NdgeoError(f"band names are not unique: {names}")
    resolved = [Band(name=n, letter=letter_for(n, sensor)) for n in names]
    letters = [b.letter for b in resolved if b.letter]
    if len(set(letters)) != len(letters):
        dup = sorted({x for x in letters if letters.count(x) > 1})
        raise NdgeoError(f"several bands map to the same index letter {dup}: {names}")
    return resolved


def _layout(key: str, sensor: str, count: int, descriptions: Sequence[str | None]) -> tuple:
    """The band ids ``--sensor`` gives a file whose descriptions do not name every band: a
    layout of exactly ``count`` bands, else one error saying what was expected."""
    layouts = LAYOUTS[key]
    if count in layouts:
        return layouts[count][0]
    known = "; ".join(f"{n} bands ({ids[0]}..{ids[-1]}, {what})"
                      for n, (ids, what) in sorted(layouts.items()))
    described = sum(1 for d in descriptions if d)
    state = "no band descriptions" if not described else (
        f"descriptions on only {described} of them")
    example = ",".join(_EXAMPLE_NAMES[key][:count]) if count <= len(_EXAMPLE_NAMES[key]) else ""
    raise NdgeoError(
        f"--sensor {sensor} names bands by position only for its full band stacks: {known}; "
        f"this raster has {count} band(s) and {state}, so its bands cannot be named by "
        "position. Name every band with --band-names"
        + (f" (e.g. --band-names {example} in file order)" if example else " in file order")
    )


#: Example --band-names for error messages: the sensor's commonly stacked bands.
_EXAMPLE_NAMES = {
    "sentinel-2": ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12"),
    "landsat-8": ("B2", "B3", "B4", "B5", "B6", "B7"),
    "landsat-7": ("B1", "B2", "B3", "B4", "B5", "B7"),
}


def select_bands(wanted: Sequence[str], available: Sequence[Band]) -> list[int]:
    """0-based positions in ``available`` of the ``wanted`` bands, matched by name or letter.

    A wanted entry may be a band name, an ASI letter or a 1-based index. The error names every
    missing band and lists what the raster has.
    """
    positions: list[int] = []
    missing: list[str] = []
    for want in wanted:
        pos = _find(want, available)
        if pos is None:
            missing.append(want)
        else:
            positions.append(pos)
    if missing:
        have = ", ".join(f"{b.name} ({b.letter})" if b.letter else b.name for b in available)
        raise NdgeoError(f"band(s) {', '.join(missing)} not found in the raster; it has: {have}"
                         + _naming_hint(available))
    return positions


def _naming_hint(available: Sequence[Band]) -> str:
    """How to name the bands, for 'not found' errors."""
    unnamed = [b for b in available if not b.letter]
    if not unnamed:
        return ""
    ids = [b.name for b in unnamed if _sentinel2_id(b.name) or _landsat_id(b.name)]
    text = "; name the image bands with --band-names (one name per band, e.g. B02,B03,B04,B08)"
    if ids:
        text += (f" or, if {', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''} are sensor band "
                 "ids, give --sensor (sentinel-2, landsat-8, landsat-9, landsat-7)")
    return text


def _find(want: str, available: Sequence[Band]) -> int | None:
    text = str(want).strip()
    for i, band in enumerate(available):
        if band.name == text:
            return i
    letter = letter_for(text)
    for i, band in enumerate(available):
        if text.upper() == (band.letter or "") or (letter and letter == band.letter):
            return i
    for i, band in enumerate(available):
        if band.name.lower() == text.lower():
            return i
    if text.isdigit() and 1 <= int(text) <= len(available):
        return int(text) - 1
    return None
