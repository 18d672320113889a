"""A small synthetic, labelled Sentinel-2 scene whose best separating index is known.

The scene exists so that training, formula export and chunked application can be tried and
tested without downloading anything. It is built like a real L2A tile: per-pixel mixtures of
endmember spectra (crop canopy, grassland canopy, soil, water, built-up materials) laid out in
parcels, multiplied by terrain shading from a synthetic DEM (so raw brightness misleads), plus a
blue-weighted additive haze, a slight sensor blur and sensor noise, stored as uint16 reflectance
x 10000 with a nodata border and a clipped swath corner.

The ground truth is designed, not fitted: crop (high chlorophyll, red edge shifted to longer
wavelengths, partial canopy cover) and grassland (paler, closed sward) overlap in NDVI, in
brightness and in every single band, but ``(B08 - 2*B05)/(B08 + 2*B05) > 0`` separates them.
Everything is deterministic for a seed (one :class:`numpy.random.Generator`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import rasterio.features
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine, array_bounds
from scipy import ndimage

from ndgeo import __version__
from ndgeo.bands import letter_for
from ndgeo.errors import NdgeoError
from ndgeo.io.writer import ClassInfo, atomic_path, write_raster

#: Sentinel-2 bands of the scene, in file order, with their central wavelengths (nm).
BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
CENTRES_NM: tuple[int, ...] = (490, 560, 665, 705, 740, 783, 842, 865, 1610, 2190)

#: Classes in id order (ids start at 1; 0 is "unlabelled" in the label raster).
CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("crop", (230, 190, 40)),
    ("grassland", (100, 190, 80)),
    ("bare_soil", (150, 100, 60)),
    ("water", (40, 110, 210)),
    ("built_up", (200, 50, 50)),
)

#: Surface reflectance at the band centres (B02 ... B12).
ENDMEMBERS: dict[str, tuple[float, ...]] = {
    # Dense, chlorophyll-rich canopy: deep red absorption extending to 705 nm, high NIR plateau.
    "crop_canopy": (0.030, 0.075, 0.030, 0.095, 0.270, 0.390, 0.420, 0.430, 0.220, 0.100),
    # Paler sward with dry matter: red still absorbed, but the red edge sits at shorter
    # wavelengths (high 705 nm) and the NIR plateau is lower.
    "grass_canopy": (0.040, 0.085, 0.050, 0.152, 0.225, 0.245, 0.250, 0.255, 0.260, 0.150),
    "soil": (0.070, 0.100, 0.140, 0.165, 0.185, 0.205, 0.225, 0.235, 0.320, 0.270),
    "water": (0.060, 0.055, 0.030, 0.020, 0.012, 0.009, 0.007, 0.006, 0.003, 0.002),
    "concrete": (0.160, 0.180, 0.200, 0.210, 0.220, 0.230, 0.240, 0.240, 0.280, 0.250),
    "roof_tile": (0.070, 0.080, 0.170, 0.210, 0.230, 0.250, 0.270, 0.280, 0.330, 0.280),
    "metal_roof": (0.250, 0.270, 0.280, 0.290, 0.290, 0.300, 0.300, 0.300, 0.250, 0.200),
    "asphalt": (0.070, 0.075, 0.080, 0.085, 0.090, 0.095, 0.100, 0.100, 0.120, 0.110),
}
#: Suspended sediment added to water (times a 0..1 turbidity field).
SEDIMENT = (0.010, 0.020, 0.020, 0.012, 0.006, 0.004, 0.003, 0.002, 0.0, 0.0)
#: Additive haze (path radiance as reflectance) ~ wavelength^-3, times a 0.5..1.5 field.
HAZE = tuple(round(0.02 * (490 / c) ** 3, 5) for c in CENTRES_NM)

#: The designed separating index: crop where (B08 - 2*B05)/(B08 + 2*B05) > THRESHOLD.
TRUE_INDEX = {"positive": {"B08": 1.0}, "negative": {"B05": 2.0}}
THRESHOLD = 0.0
#: The classes the designed index separates (above, below the threshold).
TRUE_CLASSES = ("crop", "grassland")

CRS_EPSG = 32633  # WGS 84 / UTM zone 33N (farmland in Lower Austria)
ORIGIN = (560_000.0, 5_350_000.0)  # upper-left corner, metres
PIXEL = 10.0
SCALE = 10_000
NODATA = 0
BORDER = 4  # nodata pixels along every edge
BLOCK = 128
MIN_SIZE, MAX_SIZE = 64, 1024
ILLUMINATION_RANGE = (0.5, 1.3)
#: Label polygons: their pixels stay LABEL_MARGIN px inside a homogeneous region (mixed pixels,
#: sensor blur); radii between MIN_LABEL_RADIUS and MAX_LABEL_RADIUS px.
LABEL_MARGIN, MIN_LABEL_RADIUS, MAX_LABEL_RADIUS = 4.0, 3.0, 18.0

#: Files written by :func:`make_sample`, by role.
FILES = {
    "image": "scene.tif",
    "labels_raster": "labels.tif",
    "labels_vector": "labels.gpkg",
    "labels_two": "crop_vs_grass.gpkg",
    "classes": "classes.csv",
    "truth": "truth.json",
}
LABEL_LAYER = "labels"


@dataclass(frozen=True)
class SampleScene:
    """What :func:`make_sample` wrote: the paths and the ground truth (as in ``truth.json``)."""

    outdir: Path
    image: Path
    labels_raster: Path
    labels_vector: Path
    truth_json: Path
    truth: dict
    #: The crop and grassland polygons alone: the two classes the designed index separates.
    labels_two: Path | None = None
    #: ``value,name,color`` of the classes (``ndgeo train --classes``): the label raster's.
    classes_csv: Path | None = None


def make_sample(
    outdir: str | Path, *, seed: int = 0, size: int = 256, overwrite: bool = False
) -> SampleScene:
    """Write the sample scene (image, label raster, label polygons, truth) into ``outdir``.

    ``size`` is the width and height in pixels (10 m each). Existing files are refused unless
    ``overwrite``; every file is written to a temporary name beside it and renamed when complete.
    """
    outdir = Path(outdir)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise NdgeoError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if seed < 0:
        raise NdgeoError(f"seed must be a non-negative integer, got {seed}")
    if outdir.exists() and not outdir.is_dir():
        raise NdgeoError(f"output folder {str(outdir)!r} is a file")
    paths = {role: outdir / name for role, name in FILES.items()}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise NdgeoError(
            f"{str(outdir)!r} already holds {', '.join(existing)}; use --overwrite to replace them"
        )
    outdir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    transform = Affine(PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])
    valid = _valid_mask(size)
    illumination = _illumination(rng, size)
    layout = _layout(rng, size, valid)
    image = _render(rng, layout, illumination, valid)
    polygons = _label_polygons(rng, layout, transform)
    class_ids = {name: i for i, (name, _) in enumerate(CLASSES, start=1)}
    labels = rasterio.features.rasterize(
        [(geom, class_ids[name]) for name, geom in polygons],
        out_shape=(size, size),
        transform=transform,
        fill=0,
        dtype="uint8",
    )
    truth = _truth(seed, size, transform, labels)

    _write_image(paths["image"], image, transform, seed, size)
    _write_labels_raster(paths["labels_raster"], labels, transform)
    _write_labels_vector(paths["labels_vector"], polygons)
    two = TRUE_CLASSES
    _write_labels_vector(paths["labels_two"], [(n, g) for n, g in polygons if n in two])
    with atomic_path(paths["classes"]) as tmp:
        tmp.write_text(classes_csv(), encoding="utf-8")
    with atomic_path(paths["truth"]) as tmp:
        tmp.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return SampleScene(
        outdir=outdir,
        image=paths["image"],
        labels_raster=paths["labels_raster"],
        labels_vector=paths["labels_vector"],
        truth_json=paths["truth"],
        truth=truth,
        labels_two=paths["labels_two"],
        classes_csv=paths["classes"],
    )


def classes_csv() -> str:
    """The sample's classes as a ``--classes`` file: ``value,name,color`` lines."""
    rows = [f"{i},{name},#{r:02x}{g:02x}{b:02x}"
            for i, (name, (r, g, b)) in enumerate(CLASSES, start=1)]
    return "value,name,color\n" + "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- scene content


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, standardised to mean 0 and standard deviation 1.

    Wide fields are filtered on a grid ``step`` times coarser and interpolated back: the same
    look, without kernels hundreds of pixels long.
    """
    step = max(1, int(sigma // 4))
    coarse = -(-size // step) + 1
    field = ndimage.gaussian_filter(rng.standard_normal((coarse, coarse)), sigma / step)
    field = ndimage.zoom(field, step, order=1)[:size, :size]
    return (field - field.mean()) / field.std()


def _to_range(field: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly rescale a field onto [lo, hi]."""
    span = field.max() - field.min()
    return lo + (hi - lo) * (field - field.min()) / span


def _valid_mask(size: int) -> np.ndarray:
    """True where the sensor saw the ground: a nodata border plus a clipped swath corner."""
    rows, cols = np.mgrid[0:size, 0:size]
    valid = np.zeros((size, size), dtype=bool)
    valid[BORDER:-BORDER, BORDER:-BORDER] = True
    return valid & (cols - 0.85 * rows <= 0.72 * size)


def _illumination(rng: np.random.Generator, size: int) -> np.ndarray:
    """Terrain shading factor (cos incidence / cos zenith) from a synthetic DEM, in 0.5..1.3.

    The DEM's relief is scaled so that the steepest 5% of slopes exceed 22 degrees, which with
    the sun 45 degrees from the zenith in the south-east spans the whole range.
    """
    dem = _smooth_field(rng, size, max(6.0, size / 12))
    dz_drow, dz_dcol = np.gradient(dem, PIXEL)
    steep = np.quantile(np.hypot(dz_drow, dz_dcol), 0.95)
    scale = np.tan(np.radians(22.0)) / steep
    dz_dx, dz_dy = dz_dcol * scale, -dz_drow * scale  # x east, y north
    zenith, azimuth = np.radians(55.0), np.radians(150.0)
    sun = (np.sin(zenith) * np.sin(azimuth), np.sin(zenith) * np.cos(azimuth), np.cos(zenith))
    cos_i = (-dz_dx * sun[0] - dz_dy * sun[1] + sun[2]) / np.sqrt(1 + dz_dx**2 + dz_dy**2)
    return np.clip(cos_i / np.cos(zenith), *ILLUMINATION_RANGE)


@dataclass
class _Layout:
    """Where everything is: class map, parcel map, per-parcel classes, label regions."""

    classes: np.ndarray  # (H, W) int, class ids 1..5
    parcels: np.ndarray  # (H, W) int, parcel ids 0..P-1 (meaningful on crop/grass/soil)
    parcel_class: np.ndarray  # (P,) class id per parcel
    lake: np.ndarray
    town: np.ndarray
    #: Candidate label regions: (class id, polygon radius in pixels, centre (row, col)).
    regions: list[tuple[int, float, tuple[int, int]]]


def _blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """An irregular roundish region (lake, town) around ``centre`` (row, col)."""
    rows, cols = np.mgrid[0:size, 0:size]
    dist = np.hypot(rows - centre[0], cols - centre[1]) / radius
    return dist + 0.3 * _smooth_field(rng, size, radius / 2) < 1.0


def _layout(rng: np.random.Generator, size: int, valid: np.ndarray) -> _Layout:
    """Draw layouts until every class has a region large enough to hold a label polygon.

    At the default size the first draw nearly always succeeds; small sizes may need a few.
    """
    for _ in range(100):
        layout = _draw_layout(rng, size, valid)
        if {c for c, r, _ in layout.regions if r >= MIN_LABEL_RADIUS} == set(range(1, 6)):
            return layout
    raise NdgeoError(f"could not lay out a labelled scene of {size} pixels; try a larger size")


def _draw_layout(rng: np.random.Generator, size: int, valid: np.ndarray) -> _Layout:
    """Voronoi parcels of crop / grassland / bare soil, one lake and one town."""
    crop, grass, soil, water, built = range(1, 6)
    # Lake and town in two different quadrants, never the clipped top-right one.
    anchors = np.array([[0.27, 0.27], [0.73, 0.27], [0.73, 0.73]])
    lake_q, town_q = rng.permutation(3)[:2]
    lake_c = (anchors[lake_q] + rng.uniform(-0.05, 0.05, 2)) * size
    town_c = (anchors[town_q] + rng.uniform(-0.05, 0.05, 2)) * size
    lake = _blob(rng, size, lake_c, max(0.11 * size, 10.0))
    town = _blob(rng, size, town_c, max(0.13 * size, 12.0)) & ~lake

    n_parcels = max(8, round(size * size / 40**2))
    seeds = np.zeros((size, size), dtype=np.int64)
    seed_rc = rng.integers(0, size, (n_parcels, 2))
    seeds[seed_rc[:, 0], seed_rc[:, 1]] = np.arange(1, n_parcels + 1)
    _, (ir, ic) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    parcels = seeds[ir, ic] - 1  # duplicate seed points just merge two parcels

    # Classes: the three most labellable parcels get crop, grassland and bare soil in random
    # order, so each class can be labelled; the rest are drawn at random.
    open_land = valid & ~lake & ~town
    inner = _inscribed(np.where(open_land, parcels + 1, 0), n_parcels)
    order = np.argsort([-r for r, _ in inner], kind="stable")
    parcel_class = rng.choice([crop, grass, soil], size=n_parcels, p=[0.42, 0.42, 0.16])
    parcel_class[order[:3]] = rng.permutation([crop, grass, soil])

    classes = parcel_class[parcels]
    classes[lake] = water
    classes[town] = built
    regions = [(int(c), r, rc) for c, (r, rc) in zip(parcel_class, inner, strict=True)]
    water_town = _inscribed(np.where(valid, lake * 1 + town * 2, 0), 2)
    regions += [(water, *water_town[0]), (built, *water_town[1])]
    return _Layout(classes, parcels, parcel_class, lake, town, regions)


def _inscribed(regions: np.ndarray, count: int) -> list[tuple[float, tuple[int, int]]]:
    """For regions 1..count of a label image: the radius of the label polygon each can hold,
    and its centre pixel (row, col).

    The radius is the largest distance from a pixel of the region to the outside, less
    :data:`LABEL_MARGIN`, capped at :data:`MAX_LABEL_RADIUS`; each region is measured in its
    own bounding box.
    """
    out: list[tuple[float, tuple[int, int]]] = []
    for value, box in enumerate(ndimage.find_objects(regions, max_label=count), start=1):
        if box is None:
            out.append((-LABEL_MARGIN, (0, 0)))
            continue
        dist = ndimage.distance_transform_edt(np.pad(regions[box] == value, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
        radius = min(MAX_LABEL_RADIUS, float(dist[row, col]) - LABEL_MARGIN)
        out.append((radius, (int(row) + box[0].start, int(col) + box[1].start)))
    return out


def _render(
    rng: np.random.Generator, layout: _Layout, illumination: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """Mix the endmembers per pixel, shade, blur, add haze and noise: uint16 (10, H, W)."""
    size = layout.classes.shape[0]
    n_parcels = layout.parcel_class.size
    em = {k: np.asarray(v, dtype=float)[:, None, None] for k, v in ENDMEMBERS.items()}

    # Soil everywhere (background under canopies and the bare parcels), moisture darkens it.
    moisture = _to_range(_smooth_field(rng, size, size / 10), 0.8, 1.1)
    soil = em["soil"] * moisture
    # Per parcel: a spectral jitter, a brightness (canopy structure) and a canopy cover.
    jitter = 1 + 0.02 * rng.standard_normal((n_parcels, len(BANDS)))
    brightness = rng.uniform(0.65, 1.35, n_parcels)
    cover_lo = np.where(layout.parcel_class == 1, 0.52, 0.78)
    cover_hi = np.where(layout.parcel_class == 1, 0.65, 1.00)
    cover_p = rng.uniform(cover_lo, cover_hi)
    cover = np.clip(cover_p[layout.parcels] + 0.03 * _smooth_field(rng, size, 4.0), 0.48, 1.0)
    canopy = np.where(layout.classes == 1, em["crop_canopy"], em["grass_canopy"])
    canopy = canopy * jitter[layout.parcels].transpose(2, 0, 1)
    vegetated = cover * canopy + (1 - cover) * soil
    surface = np.where(np.isin(layout.classes, (1, 2)), vegetated, soil)
    surface = surface * brightness[layout.parcels]

    # Water: clear to turbid.
    turbidity = _to_range(_smooth_field(rng, size, size / 16), 0.0, 1.0)
    water = em["water"] + turbidity * np.asarray(SEDIMENT)[:, None, None]
    surface = np.where(layout.lake, water, surface)

    # Town: a street grid of asphalt, blocks of one roof material each, with some gardens.
    rows, cols = np.mgrid[0:size, 0:size]
    off = rng.integers(0, 12, 2)
    street = ((rows + off[0]) % 12 < 2) | ((cols + off[1]) % 12 < 2)
    block = ((rows + off[0]) // 12) * (size // 12 + 2) + (cols + off[1]) // 12
    n_blocks = int(block.max()) + 1
    roofs = np.stack([em["concrete"], em["roof_tile"], em["metal_roof"]])
    roof = roofs[rng.integers(0, 3, n_blocks)][block][..., 0, 0].transpose(2, 0, 1)
    garden = rng.uniform(0.0, 0.35, n_blocks)[block]
    town = np.where(street, em["asphalt"], garden * em["grass_canopy"] + (1 - garden) * roof)
    surface = np.where(layout.town, town, surface)

    # Terrain shading (a lake surface is flat), a slight sensor blur, haze, noise.
    shade = np.where(layout.lake, 1.0, illumination)
    signal = ndimage.gaussian_filter(surface * shade, sigma=(0, 0.5, 0.5), mode="nearest")
    haze = _to_range(_smooth_field(rng, size, size / 4), 0.5, 1.5)
    signal = signal + haze * np.asarray(HAZE)[:, None, None]
    noise_sd = np.sqrt(0.0015**2 + (0.01 * signal) ** 2)
    signal = signal + noise_sd * rng.standard_normal(signal.shape)
    dn = np.clip(np.rint(signal * SCALE), 1, np.iinfo(np.uint16).max).astype(np.uint16)
    dn[:, ~valid] = NODATA
    return dn


def _label_polygons(
    rng: np.random.Generator, layout: _Layout, transform: Affine
) -> list[tuple[str, shapely.Polygon]]:
    """Hand-drawn-like polygons well inside homogeneous regions (about 70% of the parcels).

    Each polygon is star-shaped around the region's most interior pixel and stays within a
    disk whose covered pixels all lie at least 3 pixels from the region's edge.
    """
    polygons: list[tuple[str, shapely.Polygon]] = []
    labelled: set[int] = set()
    for class_id, radius, (row, col) in layout.regions:
        if radius < MIN_LABEL_RADIUS:
            continue
        keep = rng.random() < 0.7
        if not keep and class_id in labelled:
            continue
        labelled.add(class_id)
        n = int(rng.integers(5, 9))
        step = 2 * np.pi / n
        angles = rng.uniform(0, 2 * np.pi) + step * (np.arange(n) + rng.uniform(-0.25, 0.25, n))
        radii = radius * rng.uniform(0.6, 1.0, n)
        px = col + 0.5 + radii * np.cos(angles)
        py = row + 0.5 + radii * np.sin(angles)
        xs, ys = transform.c + transform.a * px, transform.f + transform.e * py
        ring = np.round(np.column_stack([xs, ys]), 2)
        polygons.append((CLASSES[class_id - 1][0], shapely.Polygon(ring)))
    return polygons


def _truth(seed: int, size: int, transform: Affine, labels: np.ndarray) -> dict:
    """The machine-readable ground truth written to ``truth.json``."""
    letters = {b: letter_for(b) for b in BANDS}
    counts = np.bincount(labels.ravel(), minlength=len(CLASSES) + 1)
    return {
        "generator": "ndgeo.sample.make_sample",
        "ndgeo_version": __version__,
        "seed": seed,
        "size": size,
        "crs": f"EPSG:{CRS_EPSG}",
        "transform": list(transform)[:6],
        "pixel_size_m": PIXEL,
        "nodata": NODATA,
        "reflectance_scale": SCALE,
        "files": dict(FILES),
        "label_layer": LABEL_LAYER,
        "label_field": "class",
        "bands": [
            {"name": b, "letter": letters[b], "center_nm": c}
            for b, c in zip(BANDS, CENTRES_NM, strict=True)
        ],
        "classes": [
            {"id": i, "name": name, "color": list(rgb), "labelled_pixels": int(counts[i])}
            for i, (name, rgb) in enumerate(CLASSES, start=1)
        ],
        "separating_index": {
            "name": "ND(B08, 2*B05)",
            "classes": list(TRUE_CLASSES),
            "positive": dict(TRUE_INDEX["positive"]),
            "negative": dict(TRUE_INDEX["negative"]),
            "letters": {
                "positive": {letters[b]: w for b, w in TRUE_INDEX["positive"].items()},
                "negative": {letters[b]: w for b, w in TRUE_INDEX["negative"].items()},
            },
            "formula": "(N - 2*RE1)/(N + 2*RE1)",
            "formula_bands": "(B08 - 2*B05)/(B08 + 2*B05)",
            "threshold": THRESHOLD,
            "above": "crop",
            "below": "grassland",
            "note": (
                "Any ND of B08 and B05 ranks pixels the same way; with a zero threshold the "
                "coefficient ratio B05/B08 = 2 is what separates the classes (unit-coefficient "
                "NDRE needs the threshold 1/3 instead)."
            ),
        },
        "endmembers": {k: list(v) for k, v in ENDMEMBERS.items()},
        "haze": list(HAZE),
        "illumination_range": list(ILLUMINATION_RANGE),
    }


# --------------------------------------------------------------------------- writing


def _write_image(path: Path, image: np.ndarray, transform: Affine, seed: int, size: int) -> None:
    write_raster(
        path, image, crs=CRS.from_epsg(CRS_EPSG), transform=transform, nodata=NODATA,
        block_size=BLOCK, overwrite=True, descriptions=BANDS,
        creation_options={"COMPRESS": "DEFLATE", "PREDICTOR": "2", "INTERLEAVE": "PIXEL"},
        tags={
            "NDGEO_GENERATOR": "ndgeo.sample.make_sample",
            "NDGEO_VERSION": __version__,
            "SEED": str(seed),
            "SIZE": str(size),
            "REFLECTANCE_SCALE": str(SCALE),
            "TRUE_INDEX": "crop where (B08 - 2*B05)/(B08 + 2*B05) > 0, else grassland",
            "DESCRIPTION": (
                "Synthetic Sentinel-2-like scene: endmember mixtures (crop, grassland, bare "
                "soil, water, built-up) x terrain shading 0.5-1.3 + blue-weighted haze + "
                "sensor blur and noise; reflectance x 10000; nodata border and swath corner"
            ),
        },
        band_tags=[{"CENTER_WAVELENGTH_NM": str(centre), "ASI_LETTER": letter_for(band)}
                   for band, centre in zip(BANDS, CENTRES_NM, strict=True)],
    )


def _write_labels_raster(path: Path, labels: np.ndarray, transform: Affine) -> None:
    classes = [ClassInfo(i, name, rgb) for i, (name, rgb) in enumerate(CLASSES, start=1)]
    write_raster(
        path, labels.astype("uint8"), crs=CRS.from_epsg(CRS_EPSG), transform=transform,
        nodata=0, block_size=BLOCK, overwrite=True, descriptions=["class"],
        creation_options={"COMPRESS": "DEFLATE", "PREDICTOR": "1"},
        classes=classes, tags={"UNLABELLED": "0"},
    )


def _write_labels_vector(path: Path, polygons: list[tuple[str, shapely.Polygon]]) -> None:
    geometry = np.array([shapely.to_wkb(g) for _, g in polygons], dtype=object)
    names = np.array([name for name, _ in polygons], dtype=object)
    with atomic_path(path) as tmp:
        pyogrio.raw.write(
            str(tmp),
            geometry,
            [names],
            ["class"],
            layer=LABEL_LAYER,
            driver="GPKG",
            geometry_type="Polygon",
            crs=CRS.from_epsg(CRS_EPSG).to_wkt(),
        )


# --------------------------------------------------------------------------- inspection


def describe_scene(path: str | Path, labels: str | Path | None = None) -> dict:
    """Facts about a GeoTIFF (bands, CRS, size, nodata, valid fraction) and optional labels.

    With ``labels`` (a class-id raster on the same grid), adds the labelled pixel count per
    class, named from the raster's ``CLASSES`` tag when it has one. Reads block by block.
    """
    path = Path(path)
    if not path.exists():
        raise NdgeoError(f"no such raster: {str(path)!r}")
    with rasterio.open(path) as src:
        valid = sum(
            int(np.count_nonzero(src.read_masks(1, window=w))) for _, w in src.block_windows(1)
        )
        info = {
            "path": str(path),
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs.to_string() if src.crs else None,
            "resolution": list(src.res),
            "bounds": list(src.bounds),
            "nodata": src.nodata,
            "valid_fraction": valid / (src.width * src.height),
            "bands": [
                {"name": d, "letter": letter_for(d) if d else None} for d in src.descriptions
            ],
        }
    if labels is not None:
        info["classes"] = _class_counts(Path(labels))
    return info


def _class_counts(path: Path) -> list[dict]:
    if not path.exists():
        raise NdgeoError(f"no such label raster: {str(path)!r}")
    with rasterio.open(path) as src:
        names = json.loads(src.tags().get("CLASSES", "{}"))
        counts = np.zeros(256, dtype=np.int64)
        for _, window in src.block_windows(1):
            block = src.read(1, window=window)
            if block.dtype != np.uint8:
                raise NdgeoError(f"label raster {str(path)!r} must be uint8, got {block.dtype}")
            counts += np.bincount(block.ravel(), minlength=256)
    return [
        {"id": i, "name": names.get(str(i), f"class_{i}"), "pixels": int(counts[i])}
        for i in range(1, 256)
        if counts[i] or str(i) in names
    ]


def validate_sample(outdir: str | Path) -> list[str]:
    """Check that ``outdir`` holds a consistent sample scene; return the problems found.

    Checks: all files exist; truth.json is readable; the image has the truth's bands (as band
    descriptions), CRS, uint16 dtype, nodata 0 and a nodata border; the label raster and the
    label polygons share the image's grid and CRS, name only known classes, lie on valid
    pixels, and the polygons rasterize exactly onto the label raster. Empty list: all good.
    """
    outdir = Path(outdir)
    paths = {role: outdir / name for role, name in FILES.items()}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        return [f"missing file(s) in {str(outdir)!r}: {', '.join(missing)}"]
    try:
        truth = json.loads(paths["truth"].read_text(encoding="utf-8"))
        bands = [b["name"] for b in truth["bands"]]
        class_ids = {c["name"]: int(c["id"]) for c in truth["classes"]}
        crs = CRS.from_user_input(truth["crs"])
    except (OSError, ValueError, KeyError, TypeError, rasterio.errors.CRSError) as exc:
        return [f"truth.json is not a valid sample truth: {exc}"]

    problems: list[str] = []
    with rasterio.open(paths["image"]) as src:
        image = src.read()
        grid = (src.crs, src.transform, src.width, src.height)
        if list(src.descriptions) != bands:
            problems.append(f"scene.tif band descriptions {src.descriptions} != {bands}")
        if src.crs != crs:
            problems.append(f"scene.tif CRS {src.crs} != {truth['crs']}")
        if src.dtypes[0] != "uint16":
            problems.append(f"scene.tif dtype {src.dtypes[0]} != uint16")
        if src.nodata != NODATA:
            problems.append(f"scene.tif nodata {src.nodata} != {NODATA}")
    invalid = (image == NODATA).all(axis=0)
    if ((image == NODATA).any(axis=0) & ~invalid).any():
        problems.append("scene.tif has pixels that are nodata in some bands only")
    edges = np.concatenate([invalid[0], invalid[-1], invalid[:, 0], invalid[:, -1]])
    if not edges.all():
        problems.append("scene.tif has no nodata border (valid pixels on the image edge)")
    if invalid.all():
        problems.append("scene.tif holds no valid pixel")

    with rasterio.open(paths["labels_raster"]) as src:
        labels = src.read(1)
        if (src.crs, src.transform, src.width, src.height) != grid:
            problems.append("labels.tif is not on the grid of scene.tif (CRS, transform, size)")
            return problems
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *class_ids.values()})
    if unknown:
        problems.append(f"labels.tif holds unknown class ids {unknown}")
    if (labels[invalid] != 0).any():
        problems.append("labels.tif labels nodata pixels of scene.tif")
    absent = [n for n, i in class_ids.items() if not (labels == i).any()]
    if absent:
        problems.append(f"labels.tif has no pixel of class(es) {absent}")

    meta, _, geometry, fields = pyogrio.raw.read(paths["labels_vector"], layer=LABEL_LAYER)
    if "class" not in list(meta["fields"]):
        return [*problems, f"labels.gpkg has no 'class' field: {list(meta['fields'])}"]
    if CRS.from_user_input(meta["crs"]) != crs:
        problems.append(f"labels.gpkg CRS {meta['crs']} != {truth['crs']}")
    names = fields[list(meta["fields"]).index("class")]
    unknown_names = sorted(set(names.tolist()) - set(class_ids))
    if unknown_names:
        return [*problems, f"labels.gpkg names unknown classes {unknown_names}"]
    geoms = shapely.from_wkb(geometry)
    left, bottom, right, top = array_bounds(grid[3], grid[2], grid[1])
    gx0, gy0, gx1, gy1 = shapely.total_bounds(geoms)
    if gx0 < left or gy0 < bottom or gx1 > right or gy1 > top:
        problems.append("labels.gpkg polygons reach outside scene.tif")
    burned = rasterio.features.rasterize(
        [(g, class_ids[n]) for g, n in zip(geoms, names, strict=True)],
        out_shape=labels.shape,
        transform=grid[1],
        fill=0,
        dtype="uint8",
    )
    if not np.array_equal(burned, labels):
        problems.append(
            f"labels.gpkg rasterizes differently from labels.tif on "
            f"{int((burned != labels).sum())} pixel(s)"
        )
    _, _, two_geometry, two_fields = pyogrio.raw.read(paths["labels_two"], layer=LABEL_LAYER)
    two_names = set(two_fields[0].tolist())
    if two_names != set(TRUE_CLASSES):
        problems.append(f"crop_vs_grass.gpkg names {sorted(two_names)}, not {list(TRUE_CLASSES)}")
    kept = {shapely.to_wkb(g) for g, n in zip(geoms, names, strict=True) if n in TRUE_CLASSES}
    if {shapely.to_wkb(g) for g in shapely.from_wkb(two_geometry)} != kept:
        problems.append("crop_vs_grass.gpkg is not the crop and grassland polygons of labels.gpkg")
    if paths["classes"].read_text(encoding="utf-8") != classes_csv():
        problems.append("classes.csv does not list the sample's classes")
    return problems
