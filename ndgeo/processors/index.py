"""``ndgeo index``: catalogue indices, free formulas or a model's exported indices, per pixel."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ndgeo.bands import select_bands
from ndgeo.engine import Processor
from ndgeo.errors import NdgeoError
from ndgeo.formula import (
    catalogue_constants,
    catalogue_expression,
    evaluate,
    expression_variables,
)
from ndgeo.io.raster import RasterInfo, physical_scaling


@dataclass
class IndexProcessor(Processor):
    """Band-math formulas (catalogue indices or exported learned ones) as float32 bands."""

    expressions: Sequence[tuple[str, str]]  # (name, formula)
    variables: Sequence[str]  # formula variable of each input band, in engine band order
    constants: dict = field(default_factory=dict)
    halo: int = 0
    out_dtype: str = "float32"
    out_nodata: float = float("nan")
    #: (scale, offset) per input band from the file's GDAL metadata or --scale/--offset.
    scaling: tuple | None = None

    def __post_init__(self) -> None:
        self.out_count = len(self.expressions)
        self.descriptions = [f"{name} = {text}" for name, text in self.expressions]
        self.tags = {"NDGEO_INDICES": json.dumps(dict(self.expressions))}
        if self.scaling is not None:
            self.tags["NDGEO_INPUT_SCALING"] = json.dumps(
                dict(zip(self.variables, zip(*self.scaling, strict=True), strict=True))
            )

    def __call__(self, block: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.scaling is None:
            arrays = {var: block[i] for i, var in enumerate(self.variables)}
        else:
            gains, shifts = self.scaling
            arrays = {var: block[i] * gains[i] + shifts[i]
                      for i, var in enumerate(self.variables)}
        # A formula without bands (K=1/0 beside NDVI=...) is a constant: one value everywhere.
        out = np.stack([np.broadcast_to(np.asarray(evaluate(text, arrays, self.constants),
                                                   dtype=np.float32), valid.shape)
                        for _, text in self.expressions])
        out[~np.isfinite(out)] = np.nan
        return out


def index_processor(
    image: RasterInfo,
    *,
    names: Sequence[str] = (),
    formulas: Sequence[str] = (),
    formula_file: str | os.PathLike | None = None,
) -> tuple[IndexProcessor, list[int]]:
    """Build the processor and input band positions for ``ndgeo index``.

    ``names`` are spyndex catalogue indices (with their default constants); ``formulas`` are
    ``NAME=EXPR`` or bare expressions over band names or ASI letters; ``formula_file`` is a JSON
    document in the Awesome Spectral Indices layout (as ``ndgeo formula --format asi`` writes).
    """
    exprs: list[tuple[str, str]] = []
    constants: dict[str, float | None] = {}
    for name in names:
        text, _, consts = catalogue_expression(name)
        exprs.append((name, text))
        constants.update(consts)
    for k, text in enumerate(formulas, start=1):
        label, sep, body = text.partition("=")
        if sep and label.strip().isidentifier() and body.strip():
            exprs.append((label.strip(), body.strip()))
        else:
            exprs.append((f"F{k}", text.strip()))
    if formula_file is not None:
        exprs += _read_formula_file(formula_file)
    if not exprs:
        raise NdgeoError("give at least one --name, --formula or --formula-file")
    known_constants = catalogue_constants()
    variables: list[str] = []
    for _, text in exprs:
        for var in sorted(expression_variables(text)):
            if var in known_constants and known_constants[var] is not None:
                constants.setdefault(var, known_constants[var])
            elif var not in variables:
                variables.append(var)
    if not variables:
        raise NdgeoError(
            f"{', '.join(f'{n}={t}' for n, t in exprs)} use(s) no band: a constant is the same on "
            "every pixel; give at least one formula over the image bands"
        )
    positions = select_bands(variables, image.bands)
    scaling = physical_scaling(image.scales, image.offsets, positions)
    return IndexProcessor(exprs, variables, constants, scaling=scaling), positions


def _read_formula_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise NdgeoError(f"formula file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise NdgeoError(f"cannot read formula file {path}: {err}") from None
    entries = doc.get("SpectralIndices") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise NdgeoError(
            f"{path} is not an Awesome Spectral Indices document "
            '({"SpectralIndices": {NAME: {"formula": ...}}})'
        )
    out = []
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("formula"), str):
            raise NdgeoError(f"{path}: entry {key!r} has no formula")
        out.append((str(entry.get("short_name", key)), entry["formula"]))
    return out


