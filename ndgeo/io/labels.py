"""Labels -> training pixels: band values under labelled pixels, read window by window.

Labels are either a class raster (0 or its nodata = unlabelled) or vector features (polygons or
points) with a class field. Both are brought onto the image grid tile by tile; only the image
windows that hold labels are read, so memory follows the labelled pixels, never the scene.

Values are in physical units: a band's GDAL scale and offset metadata is applied after the
nodata test (:func:`ndgeo.raster.physical_scaling`). Pixel policy (documented, applied in this
order, counted in ``TrainingPixels.excluded``):

- ``nodata``: any selected band equals the image nodata (or the ``nodata`` override), or the
  dataset mask marks the pixel invalid;
- ``nonfinite``: any band is NaN or infinite;
- ``negative``: any band is negative. With ``negative="clip"`` (default) such values are set to 0
  and counted in ``TrainingPixels.clipped`` instead: surface reflectance of water in the SWIR is
  often slightly negative, and dropping those pixels would bias the water class. ND layers need
  non-negative input, so prediction must apply the same clipping;
- ``zero``: every band is 0 (an ND index is undefined there; usually undeclared nodata).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
import rasterio.windows
import shapely
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ndgeo.bands import Band, resolve_bands, select_bands
from ndgeo.errors import NdgeoError
from ndgeo.io.raster import (
    RASTER_SUFFIXES,
    RasterInfo,
    is_remote,
    open_dataset,
    open_raster,
    physical_scaling,
    read_block,
    to_physical,
)
from ndgeo.io.tiles import plan_windows, tile_window, tiles_touched
from ndgeo.io.writer import ClassInfo, read_classes

EXCLUSION_REASONS = ("nodata", "nonfinite", "negative", "zero")
#: Side of the square tiles (pixels) in which labels are rasterised and their footprint found.
TILE = 512


@dataclass
class TrainingPixels:
    """Labelled pixels of one or more scenes, ready for training.

    ``X`` holds raw band values (float32, (N, C), in ``bands`` order), ``y`` class ids indexing
    ``classes``; ``rows``/``cols``/``scene`` locate each pixel for spatially blocked splits.
    """

    X: np.ndarray
    y: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    scene: np.ndarray
    classes: list[str]
    bands: list[Band]
    scene_ids: list[str]
    excluded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXCLUSION_REASONS, 0))
    clipped: int = 0
    pixels_read: int = 0
    subsampled_from: int | None = None
    warnings: list[str] = field(default_factory=list)
    #: Per class, in ``classes`` order: the value class maps write, its name and colour (from
    #: the label raster's values and colour table, integer fields or a ``--classes`` file;
    #: :func:`default_class_info` when empty).
    class_info: list[ClassInfo] = field(default_factory=list)

    @property
    def scene_id(self) -> str:
        """The scene id (several scenes are joined with '+')."""
        return "+".join(self.scene_ids)

    @property
    def class_counts(self) -> dict[str, int]:
        """Pixels per class name."""
        counts = np.bincount(self.y, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts, strict=True)}

    def small_classes(self, min_class_pixels: int = 10) -> list[str]:
        """Classes with fewer than ``min_class_pixels`` pixels."""
        return [k for k, n in self.class_counts.items() if n < min_class_pixels]

    def __len__(self) -> int:
        return len(self.y)

    def classes_info(self) -> list[ClassInfo]:
        """:attr:`class_info`, or the defaults (values 1..n, colours by name)."""
        return list(self.class_info) or default_class_info(self.classes)

    def describe(self) -> str:
        """One readable line: pixels, bands by name, classes, what was excluded."""
        values = {c.name: c.value for c in self.classes_info()}
        classes = ", ".join(f"{k} (value {values.get(k, '?')}) {n} px"
                            for k, n in self.class_counts.items())
        dropped = ", ".join(f"{k} {n}" for k, n in self.excluded.items() if n)
        text = (f"{len(self)} labelled pixels from {', '.join(self.scene_ids)}; "
                f"{len(self.bands)} bands {', '.join(b.name for b in self.bands)}; "
                f"classes: {classes}")
        if dropped:
            text += f"; excluded: {dropped}"
        if self.clipped:
            text += f"; {self.clipped} with negative values clipped to 0"
        if self.subsampled_from:
            text += f"; sampled from {self.subsampled_from}"
        return text

    def summary(self) -> dict:
        """JSON-able description (for logs, checkpoints and ``--dry-run``)."""
        return {
            "scenes": self.scene_ids,
            "n_pixels": len(self),
            "bands": [b.name for b in self.bands],
            "class_counts": self.class_counts,
            "class_values": {c.name: c.value for c in self.classes_info()},
            "excluded": dict(self.excluded),
            "clipped_negative": self.clipped,
            "pixels_read": self.pixels_read,
            "subsampled_from": self.subsampled_from,
            "warnings": list(self.warnings),
        }


@dataclass
class _Scene:
    """Raw pixels of one scene before classes are mapped: ``keys[code]`` is the class key."""

    X: np.ndarray
    codes: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    rand: np.ndarray
    keys: dict[int, str | int]
    bands: list[Band]
    excluded: dict[str, int]
    clipped: int
    pixels_read: int
    labelled: int
    n_valid: int
    warnings: list[str]
    value_names: dict[int, str] = field(default_factory=dict)
    #: RGB of label raster values (its colour table).
    value_colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)


def load_training_pixels(
    image_path: str | Path,
    labels_path: str | Path,
    *,
    label_field: str = "class",
    bands: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    sensor: str | None = None,
    nodata: float | None = None,
    negative: str = "clip",
    classes: Sequence[str] | None = None,
    class_names: Mapping[int, str] | None = None,
    class_table: Sequence[ClassInfo] | str | Path | None = None,
    max_pixels: int | None = None,
    min_class_pixels: int = 10,
    seed: int = 0,
    scale: float | None = None,
    offset: float | None = None,
) -> TrainingPixels:
    """Band values of the labelled pixels of one image.

    ``bands`` selects bands (names, ASI letters or 1-based indexes; default all), ``band_names``
    renames the raster's bands (one per band, overriding descriptions), ``sensor`` resolves
    sensor band ids. ``classes`` fixes the class list (e.g. a trained model's, for evaluation;
    a label outside it is an error and one class is then enough); otherwise classes are the
    sorted label values and at least two are required. ``class_names`` names integer label
    values (raster labels or integer fields); a label raster's ``CLASSES`` tag (JSON
    ``{"1": "crop"}``, as written by ``ndgeo sample``) names them too. ``max_pixels`` keeps a
    uniform random sample of that size, drawn while reading so memory stays bounded.

    Each class keeps a value (what class maps write) and a colour (``TrainingPixels.
    class_info``): a label raster's own values and colour table; an integer field's integers;
    string classes get 1..n in name order. ``class_table`` (a ``--classes`` file or
    :class:`ClassInfo` list, :func:`read_class_table`) sets values, names and colours: labels
    match its entries by value or by name, and a label it does not list is an error. Classes are
    ordered by value. Colours default to :func:`default_color`.
    """
    return load_many(
        [(image_path, labels_path)],
        label_field=label_field,
        bands=bands,
        band_names=band_names,
        sensor=sensor,
        nodata=nodata,
        negative=negative,
        classes=classes,
        class_names=class_names,
        class_table=class_table,
        max_pixels=max_pixels,
        min_class_pixels=min_class_pixels,
        seed=seed,
        scale=scale,
        offset=offset,
    )


def load_many(
    pairs: Sequence[tuple[str | Path, str | Path]],
    *,
    label_field: str = "class",
    bands: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    sensor: str | None = None,
    nodata: float | None = None,
    negative: str = "clip",
    classes: Sequence[str] | None = None,
    class_names: Mapping[int, str] | None = None,
    class_table: Sequence[ClassInfo] | str | Path | None = None,
    max_pixels: int | None = None,
    min_class_pixels: int = 10,
    seed: int = 0,
    scale: float | None = None,
    offset: float | None = None,
) -> TrainingPixels:
    """Labelled pixels of several ``(image, labels)`` scenes with one class mapping.

    Bands are matched by name (or ASI letter) across scenes, in the first scene's order.
    Options are those of :func:`load_training_pixels`; ``scale`` / ``offset`` override every
    scene's GDAL scale/offset metadata (:func:`ndgeo.raster.override_scaling`).
    """
    if not pairs:
        raise NdgeoError("no (image, labels) pairs given")
    if negative not in ("clip", "exclude"):
        raise NdgeoError(f"negative must be 'clip' or 'exclude', got {negative!r}")
    if max_pixels is not None and max_pixels < 1:
        raise NdgeoError(f"max_pixels must be positive, got {max_pixels}")
    if isinstance(class_table, str | Path):
        class_table = read_class_table(class_table)
    rng = np.random.default_rng(seed)
    scenes: list[_Scene] = []
    ref_bands: list[Band] | None = None
    for image_path, labels_path in pairs:
        scene = _read_scene(
            _dataset(image_path), _dataset(labels_path), label_field=label_field,
            bands=bands if ref_bands is None else [b.letter or b.name for b in ref_bands],
            band_names=band_names, sensor=sensor, nodata=nodata, negative=negative,
            max_pixels=max_pixels, rng=rng, scale=scale, offset=offset,
        )
        ref_bands = ref_bands or scene.bands
        scenes.append(scene)
    return _merge(
        scenes, [_dataset(p[0]) for p in pairs], classes=classes, class_names=class_names,
        class_table=class_table, max_pixels=max_pixels, min_class_pixels=min_class_pixels,
    )


def pixels_from_arrays(
    X, labels, band_names: Sequence[str], *, sensor: str | None = None, scene_id: str = "table",
) -> TrainingPixels:
    """TrainingPixels from a table of pixels (e.g. ``spyndex.datasets.open("spectral")``).

    ``labels`` are class names or integers per row; rows get ``rows = index, cols = 0`` so only
    a random split is meaningful. Pixels must be finite and non-negative.
    """
    X = np.asarray(X, dtype=np.float32)
    labels = np.asarray(labels, dtype=object)
    if X.ndim != 2 or len(labels) != len(X) or X.shape[1] != len(band_names):
        raise NdgeoError(f"need X (N, {len(band_names)}) and N labels, got {X.shape}, "
                         f"{labels.shape}")
    if not np.all(np.isfinite(X)) or np.any(X < 0):
        raise NdgeoError("pixel table holds negative or non-finite values")
    keys = _class_keys(labels)
    classes = [str(k) for k in keys]
    index = {k: i for i, k in enumerate(keys)}
    n = len(X)
    return TrainingPixels(
        X=X, y=np.array([index[_key(v)] for v in labels], dtype=np.int64),
        rows=np.arange(n, dtype=np.int64), cols=np.zeros(n, np.int64),
        scene=np.zeros(n, np.int64), classes=classes,
        bands=resolve_bands(list(band_names), sensor=sensor), scene_ids=[scene_id],
    )


def _dataset(path: str | Path) -> str | Path:
    """A local path as a Path; a GDAL dataset name (URL, /vsi...) untouched (Path would fold
    the ``//`` of ``http://``)."""
    return str(path) if is_remote(str(path)) else Path(path)


def _base(path: str | Path) -> str:
    return os.path.basename(str(path))


def match_chips(images: str, labels: str) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(image, labels)`` pairs of a labelled tile folder, as datasets ship: ``images`` is a
    glob (``chips/*.tif``), ``labels`` a pattern with ``{stem}`` (and/or ``{name}``) of each
    image (``masks/{stem}.tif``). Returns the pairs and the images without a label file."""
    import glob

    found = sorted(Path(p) for p in glob.glob(os.path.expanduser(images)))
    if not found:
        raise NdgeoError(f"--images {images!r} matches no file")
    if "{stem}" not in labels and "{name}" not in labels:
        raise NdgeoError(f"--labels {labels!r} must name each image's label file with {{stem}} "
                         "or {name}, e.g. 'masks/{stem}.tif'")
    pairs, missing = [], []
    for image in found:
        label = Path(labels.format(stem=image.stem, name=image.name))
        (pairs.append((image, label)) if label.exists() else missing.append(image))
    if not pairs:
        raise NdgeoError(f"no image of {images!r} has a label file {labels!r} (first looked "
                         f"for: {labels.format(stem=found[0].stem, name=found[0].name)})")
    return pairs, missing


def read_manifest(path: str | Path) -> list[tuple[Path, Path]]:
    """``(image, labels)`` pairs from a manifest; relative paths are relative to the manifest.

    CSV (``.csv``/``.txt``): one ``image,labels`` line per scene; a header line naming
    ``image,labels``, blank lines and ``#`` comments are skipped. TOML (``.toml``): ``[[scene]]``
    tables with ``image`` and ``labels`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise NdgeoError(f"manifest not found: {path}")
    base = path.parent
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise NdgeoError(f"manifest {path} is not valid TOML: {exc}") from exc
        for i, entry in enumerate(data.get("scene", [])):
            if not isinstance(entry, dict) or "image" not in entry or "labels" not in entry:
                raise NdgeoError(f"manifest {path}: [[scene]] #{i + 1} needs image and labels")
            rows.append((str(entry["image"]), str(entry["labels"])))
    else:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.lstrip().startswith("#")]
        for n, row in enumerate(csv.reader(lines), start=1):
            cells = [c.strip() for c in row]
            if [c.lower() for c in cells] == ["image", "labels"]:
                continue
            if len(cells) != 2 or not all(cells):
                raise NdgeoError(f"manifest {path}, entry {n}: expected 'image,labels', got {row}")
            rows.append((cells[0], cells[1]))
    if not rows:
        raise NdgeoError(f"manifest {path} lists no scenes")
    def resolve(name: str):  # GDAL dataset names (URLs, /vsi...) stay as they are
        return name if is_remote(name) else base / name

    return [(resolve(img), resolve(lab)) for img, lab in rows]


# -- one scene -------------------------------------------------------------------------------


def _read_scene(
    image_path: str | Path, labels_path: str | Path, *, label_field: str, bands, band_names,
    sensor,
    nodata, negative: str, max_pixels: int | None, rng: np.random.Generator,
    scale: float | None = None, offset: float | None = None,
) -> _Scene:
    info = open_raster(image_path, bands=band_names, sensor=sensor, nodata=nodata, scale=scale,
                       offset=offset, what="image")
    if not is_remote(str(labels_path)) and not Path(labels_path).exists():
        raise NdgeoError(f"labels not found: {labels_path}")
    positions = select_bands(bands, info.bands) if bands else list(range(info.count))
    chosen = [info.bands[i] for i in positions]
    acc = _Accumulator(max_pixels, rng)
    with open_dataset(info.path) as src:
        reader = _PixelReader(src, info, positions, negative)
        value_colors: dict[int, tuple[int, int, int]] = {}
        if os.path.splitext(str(labels_path))[1].lower() in RASTER_SUFFIXES:
            tiles, value_names, notes, value_colors = _raster_label_tiles(src, labels_path)
            keys = None
        else:
            tiles, keys, notes = _vector_label_tiles(src, labels_path, label_field)
            value_names = {}
        for window, lab in tiles:
            rows, cols = np.nonzero(lab)
            if rows.size == 0:
                continue
            r0, c0 = rows.min(), cols.min()
            sub = Window(window.col_off + c0, window.row_off + r0,
                         cols.max() - c0 + 1, rows.max() - r0 + 1)
            values, valid = reader.read(sub)
            X, ok = reader.clean(values[:, rows - r0, cols - c0].T, valid[rows - r0, cols - c0])
            acc.add(X[ok], lab[rows, cols][ok], rows[ok] + window.row_off,
                    cols[ok] + window.col_off)
    return _Scene(
        *acc.result(), keys=keys, bands=chosen, excluded=reader.excluded,
        clipped=reader.clipped, pixels_read=reader.pixels_read, labelled=reader.labelled,
        n_valid=acc.seen, warnings=notes, value_names=value_names, value_colors=value_colors,
    )


class _PixelReader:
    """Reads image windows through :mod:`ndgeo.io.raster` (validity, physical units) and
    applies the training pixel policy, counting what it drops."""

    def __init__(self, src, info: RasterInfo, positions: list[int], negative: str):
        self.src = src
        self.info = info
        self.positions = positions
        self.scaling = physical_scaling(info.scales, info.offsets, positions)
        self.negative = negative
        self.excluded = dict.fromkeys(EXCLUSION_REASONS, 0)
        self.clipped = 0
        self.pixels_read = 0
        self.labelled = 0

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(values (C, h, w) float32 in physical units, valid (h, w)) of one image window."""
        self.pixels_read += int(window.width * window.height)
        raw, valid = read_block(self.src, self.info, self.positions, window)
        return to_physical(raw, self.scaling), valid

    def clean(self, X: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, keep) for labelled pixels X (n, C) and their validity."""
        self.labelled += len(X)
        ok = valid.copy()
        # Invalid pixels are counted as non-finite when a band is NaN/inf (and NaN is not the
        # declared nodata), else as nodata (value or GDAL mask).
        nan_nodata = self.info.nodata is not None and math.isnan(self.info.nodata)
        nonfinite = ~ok & ~np.all(np.isfinite(X), axis=1) & (not nan_nodata)
        self.excluded["nonfinite"] += int(nonfinite.sum())
        self.excluded["nodata"] += int((~ok & ~nonfinite).sum())
        neg = ok & np.any(X < 0, axis=1)
        if self.negative == "clip":
            self.clipped += int(neg.sum())
            X = np.where(ok[:, None], np.maximum(X, 0), X)
        else:
            self.excluded["negative"] += int(neg.sum())
            ok &= ~neg
        zero = ok & ~np.any(X > 0, axis=1)  # the all-zero rule of ndgeo.io.raster.any_positive
        self.excluded["zero"] += int(zero.sum())
        return X, ok & ~zero


class _Accumulator:
    """Collects pixels; with a cap keeps the ``cap`` smallest random keys (uniform sample)."""

    def __init__(self, cap: int | None, rng: np.random.Generator):
        self.cap = cap
        self.rng = rng
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.size = 0
        self.seen = 0

    def add(self, X, codes, rows, cols) -> None:
        rand = self.rng.random(len(codes))
        self.parts.append((X.astype("float32"), codes.astype("int64"), rows.astype("int64"),
                           cols.astype("int64"), rand))
        self.size += len(codes)
        self.seen += len(codes)
        if self.cap is not None and self.size > 2 * self.cap:
            self.parts = [_keep_smallest(self._joined(), self.cap)]
            self.size = len(self.parts[0][1])

    def _joined(self) -> tuple[np.ndarray, ...]:
        if not self.parts:
            return (np.zeros((0, 0), "float32"), *(np.zeros(0, "int64") for _ in range(3)),
                    np.zeros(0))
        return tuple(np.concatenate(p) for p in zip(*self.parts, strict=True))

    def result(self) -> tuple[np.ndarray, ...]:
        joined = self._joined()
        return _keep_smallest(joined, self.cap) if self.cap is not None else joined


def _keep_smallest(parts: tuple[np.ndarray, ...], cap: int) -> tuple[np.ndarray, ...]:
    rand = parts[-1]
    if len(rand) <= cap:
        return parts
    keep = np.sort(np.argpartition(rand, cap - 1)[:cap])
    return tuple(p[keep] for p in parts)


# -- raster labels ---------------------------------------------------------------------------


def _raster_label_tiles(src, labels_path: Path):
    """(window, codes) per image tile from a class raster, warped onto the image grid if needed,
    and the class names of its values from a ``CLASSES`` tag (JSON ``{"1": "crop", ...}``)."""
    lab = open_dataset(labels_path, what="label raster")
    if lab.count != 1:
        count = lab.count
        lab.close()
        raise NdgeoError(f"label raster {_base(labels_path)} has {count} bands; a class raster "
                         "has one band of class values (the image comes first: ndgeo train "
                         "IMAGE LABELS)")
    notes: list[str] = []
    same_grid = (lab.transform == src.transform and lab.shape == src.shape)
    if src.crs is None or lab.crs is None:
        if not (same_grid or (src.crs is None and lab.crs is None and lab.shape == src.shape)):
            lab.close()
            raise NdgeoError(
                f"{labels_path} and the image are not both georeferenced and do not share a "
                f"grid (labels {lab.shape}, crs {lab.crs}; image {src.shape}, crs {src.crs})"
            )
        vrt = None
    else:
        label_crs = _compatible_crs(lab.crs, src.crs, labels_path, notes)
        if same_grid and label_crs == src.crs:
            vrt = None
        else:
            _check_overlap(rasterio.warp.transform_bounds(label_crs, src.crs, *lab.bounds),
                           src, labels_path)
            fill = lab.nodata if lab.nodata is not None else 0
            vrt = WarpedVRT(lab, src_crs=label_crs, crs=src.crs, transform=src.transform,
                            width=src.width, height=src.height, resampling=Resampling.nearest,
                            nodata=fill)
            notes.append(f"label raster {_base(labels_path)} warped onto the image grid (nearest)")
    reader = vrt or lab
    if not np.issubdtype(np.dtype(lab.dtypes[0]), np.integer):
        notes.append(f"label raster {_base(labels_path)} is {lab.dtypes[0]}; values are truncated")
    declared, unread = read_classes(lab)
    notes += unread
    value_names = {c.value: c.name for c in declared}
    try:
        value_colors = {int(v): tuple(int(x) for x in rgba[:3])
                        for v, rgba in lab.colormap(1).items() if len(rgba) < 4 or rgba[3]}
    except ValueError:  # no colour table
        value_colors = {}
    # A NaN nodata needs no entry: non-finite label values become 0 (unlabelled) when read.
    unlabeled = {0} | ({int(lab.nodata)} if lab.nodata is not None and lab.nodata == lab.nodata
                       else set())

    def tiles():
        try:
            for window in plan_windows(src.shape, (TILE, TILE)):
                values = reader.read(1, window=window)
                codes = np.nan_to_num(values, nan=0, posinf=0, neginf=0).astype("int64")
                codes[np.isin(codes, list(unlabeled)) | (codes < 0)] = 0
                yield window, codes
        finally:
            if vrt is not None:
                vrt.close()
            lab.close()

    return tiles(), value_names, notes, value_colors


# -- vector labels ---------------------------------------------------------------------------


def _vector_label_tiles(src, labels_path: Path, label_field: str):
    """(window, codes) per image tile from vector features rasterised onto the image grid."""
    import pyogrio
    import pyogrio.errors

    try:
        info = pyogrio.read_info(labels_path)
    except pyogrio.errors.DataSourceError as exc:
        raise NdgeoError(f"cannot read labels {labels_path}: {exc}") from exc
    if info.get("geometry_type") is None:  # a plain table, e.g. a CSV of x/y points
        raise NdgeoError(
            f"labels {labels_path} have no geometries (a table such as a CSV of x/y points is not "
            f"supported); give a class raster ({', '.join(sorted(RASTER_SUFFIXES))}) or vector "
            "features (GeoPackage, Shapefile, GeoJSON, FlatGeobuf: any OGR format), e.g. "
            "`ogr2ogr -oo X_POSSIBLE_NAMES=x -oo Y_POSSIBLE_NAMES=y -a_srs EPSG:32633 "
            "points.gpkg points.csv`"
        )
    fields = list(info["fields"])
    if label_field not in fields:
        raise NdgeoError(
            f"label field {label_field!r} not found in {labels_path}; available fields: "
            f"{', '.join(fields) or '(none)'}"
        )
    if src.crs is None:
        raise NdgeoError(
            f"image has no georeferencing (CRS), so vector labels {labels_path} cannot be placed "
            "on it; georeference the image or give a label raster on its grid"
        )
    _, _, wkb, (values,) = pyogrio.raw.read(labels_path, columns=[label_field])[:4]
    notes: list[str] = []
    geoms = shapely.from_wkb(wkb)
    valid = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    valid &= np.array([v is not None and v == v for v in values], dtype=bool)
    if not valid.all():
        notes.append(f"{int((~valid).sum())} feature(s) without geometry or class skipped")
    geoms, values = geoms[valid], np.asarray(values, dtype=object)[valid]
    label_crs = CRS.from_user_input(info["crs"]) if info["crs"] else None
    if label_crs is None:
        notes.append(f"{_base(labels_path)} has no CRS; assuming the image CRS")
    else:
        label_crs = _compatible_crs(label_crs, src.crs, labels_path, notes)
        if label_crs != src.crs:
            geoms = _reproject(geoms, label_crs, src.crs)
    if len(geoms) == 0:
        raise NdgeoError(
            f"no features with a geometry and a {label_field!r} value in {labels_path}"
        )
    _check_overlap(shapely.total_bounds(geoms), src, labels_path)
    keys = _class_keys(values)
    index = {k: i + 1 for i, k in enumerate(keys)}
    codes = np.array([index[_key(v)] for v in values], dtype="int64")
    # Tiles touched by each feature's bounding box, from its pixel-space bounds.
    inv = ~src.transform
    bounds = shapely.bounds(geoms)
    corners = [inv @ (bounds[:, i], bounds[:, j]) for i, j in ((0, 1), (0, 3), (2, 1), (2, 3))]
    cmin = np.floor(np.min([c[0] for c in corners], axis=0))
    cmax = np.ceil(np.max([c[0] for c in corners], axis=0))
    rmin = np.floor(np.min([c[1] for c in corners], axis=0))
    rmax = np.ceil(np.max([c[1] for c in corners], axis=0))
    tile_of: dict[tuple[int, int], list[int]] = {}
    for i in range(len(geoms)):
        for key in tiles_touched((rmin[i], rmax[i]), (cmin[i], cmax[i]), TILE, src.shape):
            tile_of.setdefault(key, []).append(i)

    def tiles():
        for (tr, tc), members in sorted(tile_of.items()):
            window = tile_window(tr, tc, TILE, src.shape)
            if window.width <= 0 or window.height <= 0:
                continue
            burned = rasterio.features.rasterize(
                zip(geoms[members], codes[members], strict=True),
                out_shape=(int(window.height), int(window.width)),
                transform=rasterio.windows.transform(window, src.transform),
                fill=0, all_touched=False, dtype="int32",
            )
            yield window, burned.astype("int64")

    return tiles(), {i + 1: k for i, k in enumerate(keys)}, notes


def _key(value) -> str | int:
    """Class key of a field value: integers stay integers (also 3.0), the rest become strings."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return str(value).strip()


def _class_keys(values) -> list[str | int]:
    keys = {_key(v) for v in values}
    return sorted(keys, key=lambda k: (isinstance(k, str), k))


def _reproject(geoms: np.ndarray, src_crs: CRS, dst_crs: CRS) -> np.ndarray:
    def fn(coords: np.ndarray) -> np.ndarray:
        xs, ys = rasterio.warp.transform(src_crs, dst_crs, coords[:, 0], coords[:, 1])
        return np.column_stack([xs, ys])

    return shapely.transform(geoms, fn)


# -- CRS handling ----------------------------------------------------------------------------

_ELLIPSOID_OF_DATUM = {"WGS84": "WGS84", "NAD83": "GRS80", "NAD27": "clrk66"}
_SAME_ELLIPSOIDS = {"WGS84": "GRS80"}  # differ by 0.1 mm in the semi-minor axis
_IGNORED_PROJ_KEYS = {"no_defs", "type", "wktext", "datum", "ellps", "towgs84"}


def _projection_signature(crs: CRS) -> tuple | None:
    """Projection parameters and ellipsoid of a CRS, ignoring datum realisations."""
    try:
        params = crs.to_dict()
    except Exception:  # noqa: BLE001 - CRSs without a PROJ.4 form are compared strictly
        return None
    ellps = params.get("ellps") or _ELLIPSOID_OF_DATUM.get(str(params.get("datum")))
    if ellps is None:
        return None
    towgs84 = str(params.get("towgs84", "0,0,0,0,0,0,0"))
    if any(float(v) != 0 for v in towgs84.split(",")):
        return None
    rest = tuple(sorted(
        (k, round(v, 9) if isinstance(v, float) else v)
        for k, v in params.items() if k not in _IGNORED_PROJ_KEYS
    ))
    return (_SAME_ELLIPSOIDS.get(ellps, ellps), rest)


def _compatible_crs(label_crs: CRS, image_crs: CRS, labels_path: Path, notes: list[str]) -> CRS:
    """The CRS to treat the labels as being in: the image's if equivalent in practice."""
    if label_crs == image_crs:
        return image_crs
    sig = _projection_signature(label_crs)
    if sig is not None and sig == _projection_signature(image_crs):
        msg = (f"labels {_base(labels_path)} CRS {label_crs.to_string()} differs from the "
               f"image CRS {image_crs.to_string()} only by datum realisation; treated as the same")
        warnings.warn(msg, stacklevel=4)
        notes.append(msg)
        return image_crs
    return label_crs


def _check_overlap(bounds, src, labels_path: Path) -> None:
    left, bottom, right, top = bounds
    img = src.bounds
    if right <= img.left or left >= img.right or top <= img.bottom or bottom >= img.top:
        raise NdgeoError(
            f"labels {labels_path} (bounds {tuple(round(b, 3) for b in bounds)}) do not overlap "
            f"the image (bounds {tuple(round(b, 3) for b in img)})"
        )


# -- merging scenes --------------------------------------------------------------------------


#: More distinct label values than this is a mistake (a continuous raster or field as labels).
MAX_CLASSES = 1000


def _merge(scenes: list[_Scene], images: list[Path], *, classes, class_names, max_pixels,
           min_class_pixels, class_table=None) -> TrainingPixels:
    table = list(class_table or [])
    table_names = {c.value: c.name for c in table}
    names: list[dict[int, str]] = []
    found: dict[str, list] = {}  # class name -> [value or None, colour or None]
    notes: list[str] = []
    for s in scenes:
        keys = s.keys
        if keys is None:  # raster labels: the codes are the class values
            keys = {int(v): int(v) for v in np.unique(s.codes)}
        lookup = {**s.value_names, **(class_names or {}), **table_names}
        m: dict[int, str] = {}
        for code, key in keys.items():
            name = m[int(code)] = _name(key, lookup)
            value = key if isinstance(key, int) else None
            entry = found.setdefault(name, [value, None])
            if entry[0] is None:
                entry[0] = value
            elif value is not None and value != entry[0]:
                notes.append(f"class {name!r} has value {value} in one scene and {entry[0]} in "
                             f"another; class maps write {entry[0]}")
            if entry[1] is None and value is not None:
                entry[1] = s.value_colors.get(value)
        names.append(m)
    all_names = sorted(found, key=_name_order)
    if len(all_names) > MAX_CLASSES:
        raise NdgeoError(f"the labels hold {len(all_names)} distinct classes (more than "
                         f"{MAX_CLASSES}): labels must be class values, not measurements; check "
                         "the label file and --label-field")
    info: list[ClassInfo] = []
    if classes is not None:
        class_list = [str(c) for c in classes]
        unknown = sorted(set(all_names) - set(class_list), key=_name_order)
        if unknown:
            raise NdgeoError(f"label classes {unknown} are not among the classes {class_list}")
    else:
        info = _class_values(found, table, notes)
        class_list = [c.name for c in info]
    lookup = {n: i for i, n in enumerate(class_list)}
    ys = []
    for s, m in zip(scenes, names, strict=True):
        table = np.full(max(m, default=0) + 1, -1, dtype="int64")
        for code, n in m.items():
            table[code] = lookup[n]
        ys.append(table[s.codes])
    stack = [np.concatenate(a) for a in zip(
        *((s.X.reshape(len(s.codes), len(s.bands)), y, s.rows, s.cols,
           np.full(len(y), i, "int64"), s.rand) for i, (s, y) in enumerate(zip(scenes, ys,
                                                                             strict=True))),
        strict=True)]
    total = sum(s.n_valid for s in scenes)
    if max_pixels is not None and len(stack[1]) > max_pixels:
        stack = list(_keep_smallest(tuple(stack), max_pixels))
    X, y, rows, cols, scene, _ = stack
    excluded = {r: sum(s.excluded[r] for s in scenes) for r in EXCLUSION_REASONS}
    ids = _scene_ids(images)
    if sum(s.labelled for s in scenes) == 0:
        raise NdgeoError(f"the labels cover no pixel of {', '.join(ids)}")
    if len(y) == 0:
        raise NdgeoError(
            f"no labelled pixels left in {', '.join(ids)} after masking (excluded: {excluded})"
        )
    present = sorted({class_list[i] for i in np.unique(y)}, key=_name_order)
    if classes is None and len(present) < 2:
        raise NdgeoError(f"labels hold only one class {present}; training needs at least two")
    pixels = TrainingPixels(
        X=X.astype("float32"), y=y, rows=rows, cols=cols, scene=scene, classes=class_list,
        bands=scenes[0].bands, scene_ids=ids, excluded=excluded,
        clipped=sum(s.clipped for s in scenes), pixels_read=sum(s.pixels_read for s in scenes),
        subsampled_from=total if total > len(y) else None,
        warnings=[w for s in scenes for w in s.warnings] + notes, class_info=info,
    )
    small = pixels.small_classes(min_class_pixels)
    if small:
        pixels.warnings.append(
            f"classes with fewer than {min_class_pixels} pixels: "
            + ", ".join(f"{k} ({pixels.class_counts[k]})" for k in small)
        )
    return pixels


#: Largest class value a class map holds (uint16; 0 is nodata).
MAX_CLASS_VALUE = 65535


def _class_values(found: dict[str, list], table: list[ClassInfo],
                  notes: list[str]) -> list[ClassInfo]:
    """Value, name and colour of every class, ordered by value: a ``--classes`` table's entry,
    else the label's own integer value, else the next free value from 1 (in name order)."""
    listed = {c.name: c for c in table}
    if table:
        missing = sorted(set(found) - set(listed), key=_name_order)
        if missing:
            raise NdgeoError(
                f"label class(es) {', '.join(map(repr, missing))} are not listed in --classes "
                f"(it lists {', '.join(f'{c.value}={c.name}' for c in table)})"
            )
    values: dict[str, int] = {}
    colors: dict[str, tuple[int, int, int] | None] = {}
    used: set[int] = set()
    pending: list[str] = []
    for name in sorted(found, key=lambda n: (found[n][0] is None, found[n][0] or 0,
                                             _name_order(n))):
        value, color = found[name]
        if name in listed:
            value, color = listed[name].value, listed[name].color or color
        colors[name] = color
        if value is not None and 0 < value <= MAX_CLASS_VALUE and value not in used:
            values[name] = value
            used.add(value)
        else:
            if value is not None:
                notes.append(f"class {name!r}: value {value} cannot be written to a class map "
                             f"(0 is nodata, values are 1..{MAX_CLASS_VALUE}, each once); "
                             "another value is used")
            pending.append(name)
    free = (v for v in range(1, MAX_CLASS_VALUE + 1) if v not in used)
    for name in sorted(pending, key=_name_order):
        values[name] = next(free)
    ordered = sorted(values, key=values.get)
    taken = {c for c in colors.values() if c is not None}
    out = []
    for i, name in enumerate(ordered):
        color = colors[name] or default_color(name, i, taken)
        taken.add(color)
        out.append(ClassInfo(values[name], name, tuple(int(v) for v in color)))
    return out


#: Default class colours by what a class name says (checked in this order).
_NAMED_COLOURS: tuple[tuple[tuple[str, ...], tuple[int, int, int]], ...] = (
    (("water", "lake", "river", "sea", "ocean", "pond", "reservoir"), (40, 110, 210)),
    (("wetland", "marsh", "swamp", "bog"), (100, 160, 190)),
    (("snow", "ice", "glacier"), (235, 240, 250)),
    (("cloud",), (190, 190, 190)),
    (("forest", "tree", "wood", "conifer", "broadleaf"), (30, 110, 40)),
    (("shrub", "bush", "scrub"), (140, 160, 60)),
    (("grass", "meadow", "pasture", "prairie", "steppe"), (100, 190, 80)),
    (("crop", "field", "agri", "cereal", "maize", "corn", "wheat", "rice", "arable"),
     (230, 190, 40)),
    (("built", "urban", "city", "town", "road", "building", "settlement", "impervious"),
     (200, 50, 50)),
    (("soil", "bare", "sand", "rock", "desert", "barren"), (150, 100, 60)),
)
#: Colours for other classes (matplotlib tab10 without its green, red and brown).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (148, 103, 189), (227, 119, 194), (127, 127, 127),
    (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (197, 176, 213),
)


def default_color(name: str, index: int = 0,
                  taken: set[tuple[int, int, int]] | None = None) -> tuple[int, int, int]:
    """A class colour from its name (water blue, forest dark green, crop yellow, built-up red,
    bare soil brown, ...), else the first palette colour not ``taken`` (from ``index``)."""
    taken = taken or set()
    lower = name.lower()
    for words, color in _NAMED_COLOURS:
        if any(w in lower for w in words) and color not in taken:
            return color
    free = [c for c in PALETTE if c not in taken] or list(PALETTE)
    return free[index % len(free)]


def default_class_info(classes: Sequence[str]) -> list[ClassInfo]:
    """Values 1..n in order and colours by name, for classes known only by name."""
    taken: set[tuple[int, int, int]] = set()
    out = []
    for i, name in enumerate(classes):
        color = default_color(str(name), i, taken)
        taken.add(color)
        out.append(ClassInfo(i + 1, str(name), color))
    return out


def read_class_table(path: str | Path) -> list[ClassInfo]:
    """Class values, names and colours from a ``--classes`` file.

    CSV: ``value,name[,color]`` lines (a header line naming the columns is skipped, ``#``
    comments too); JSON: a list of ``{"value", "name", "color"}`` objects or an object
    ``{"1": "crop"}`` / ``{"1": {"name": "crop", "color": "#e6be28"}}``. Colours are
    ``#rrggbb`` or ``R G B`` (0-255); missing ones get the defaults.
    """
    path = Path(path)
    if not path.is_file():
        raise NdgeoError(f"--classes file not found: {path}")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[object, object, object]] = []
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise NdgeoError(f"--classes {path} is not valid JSON: {exc}") from None
        if isinstance(doc, dict):
            for value, entry in doc.items():
                entry = entry if isinstance(entry, dict) else {"name": entry}
                rows.append((value, entry.get("name"), entry.get("color")))
        elif isinstance(doc, list) and all(isinstance(e, dict) for e in doc):
            rows = [(e.get("value"), e.get("name"), e.get("color")) for e in doc]
        else:
            raise NdgeoError(f"--classes {path}: expected a list of {{value, name, color}} "
                             "objects or an object {value: name}")
    else:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        for n, row in enumerate(csv.reader(lines), start=1):
            cells = [c.strip() for c in row]
            if n == 1 and cells and cells[0].lower() == "value":
                continue
            if len(cells) not in (2, 3):
                raise NdgeoError(f"--classes {path}, line {n}: expected value,name[,color], "
                                 f"got {row}")
            rows.append((cells[0], cells[1], cells[2] if len(cells) == 3 else None))
    out: list[ClassInfo] = []
    for value, name, color in rows:
        try:
            number = int(str(value))
        except ValueError:
            raise NdgeoError(f"--classes {path}: class value {value!r} is not an integer") from None
        if not 0 < number <= MAX_CLASS_VALUE:
            raise NdgeoError(f"--classes {path}: class value {number} is outside "
                             f"1..{MAX_CLASS_VALUE} (0 is nodata in class maps)")
        if not name or not str(name).strip():
            raise NdgeoError(f"--classes {path}: class value {number} has no name")
        out.append(ClassInfo(number, str(name).strip(), _parse_color(color, path)))
    if not out:
        raise NdgeoError(f"--classes {path} lists no classes")
    for attr in ("value", "name"):
        seen = [getattr(c, attr) for c in out]
        dup = sorted({str(v) for v in seen if seen.count(v) > 1})
        if dup:
            raise NdgeoError(f"--classes {path}: {attr}(s) {', '.join(dup)} listed twice")
    return out


def _parse_color(color, path: Path) -> tuple[int, int, int] | None:
    if color is None or (isinstance(color, str) and not color.strip()):
        return None  # type: ignore[return-value]
    if isinstance(color, str):
        text = color.strip()
        if text.startswith("#") and len(text) == 7:
            try:
                return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
            except ValueError:
                pass
        parts = text.replace(";", " ").split()
    else:
        parts = list(color) if isinstance(color, list | tuple) else []
    try:
        rgb = tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise NdgeoError(f"--classes {path}: cannot read colour {color!r}; use #rrggbb or R G B")
    return rgb  # type: ignore[return-value]


def _name(key: str | int, class_names: Mapping[int, str] | None) -> str:
    if class_names and isinstance(key, int) and key in class_names:
        return str(class_names[key])
    return str(key)


def _name_order(name: str) -> tuple:
    """Numeric class names sort numerically, before other names."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _scene_ids(images: list[Path]) -> list[str]:
    ids: list[str] = []
    for p in images:
        stem = os.path.splitext(_base(p))[0]
        sid, n = stem, 2
        while sid in ids:
            sid, n = f"{stem}_{n}", n + 1
        ids.append(sid)
    return ids
