"""Learned indices as formulas: build them (``learned``), match them to the spyndex catalogue
(``catalogue``), render them (``render``; GDAL VRT: ``vrt``; Earth Engine and QGIS: ``gis``) and
evaluate band math safely (``expr``)."""

from ndgeo.formula.catalogue import (
    catalogue_constants,
    catalogue_expression,
    catalogue_nd_vectors,
    nearest_catalogue,
    same_bands_as,
)
from ndgeo.formula.expr import Expr, evaluate, expression_variables, parse_expression
from ndgeo.formula.gis import (
    EE_COLLECTIONS,
    ee_collection,
    gee_expressions,
    to_gee,
    to_qgis,
    units_warning,
)
from ndgeo.formula.learned import (
    ExactIndex,
    IndexFormula,
    Term,
    exact_indices,
    formulas_from_coefficients,
    model_formulas,
)
from ndgeo.formula.render import (
    FORMATS,
    MACHINE_FORMATS,
    ND_LAYER_REFERENCE,
    approximation,
    render,
    to_asi,
    to_gdal_calc,
    to_json,
    to_latex,
    to_numexpr,
    to_plain,
    to_text,
)
from ndgeo.formula.vrt import VRTSource, to_vrt

#: Formats that compute the model's own indices where GIS users work (``ndgeo formula``).
GIS_FORMATS = ("vrt", "gee", "qgis")

__all__ = [
    "EE_COLLECTIONS", "ExactIndex", "Expr", "FORMATS", "GIS_FORMATS", "IndexFormula",
    "MACHINE_FORMATS", "ND_LAYER_REFERENCE", "Term", "VRTSource", "approximation",
    "catalogue_constants", "catalogue_expression", "catalogue_nd_vectors", "ee_collection",
    "evaluate", "exact_indices", "expression_variables", "formulas_from_coefficients",
    "gee_expressions", "model_formulas", "nearest_catalogue", "parse_expression", "render",
    "same_bands_as", "to_asi", "to_gdal_calc", "to_gee", "to_json", "to_latex", "to_numexpr",
    "to_plain", "to_qgis", "to_text", "to_vrt", "units_warning",
]
