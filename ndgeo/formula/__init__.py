"""Learned indices as formulas: build them (``learned``), match them to the spyndex catalogue
(``catalogue``), render them (``render``) and evaluate band math safely (``expr``)."""

from ndgeo.formula.catalogue import (
    catalogue_constants,
    catalogue_expression,
    catalogue_nd_vectors,
    nearest_catalogue,
    same_bands_as,
)
from ndgeo.formula.expr import Expr, evaluate, expression_variables, parse_expression
from ndgeo.formula.learned import IndexFormula, Term, formulas_from_coefficients, model_formulas
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

__all__ = [
    "FORMATS", "MACHINE_FORMATS", "ND_LAYER_REFERENCE", "Expr", "IndexFormula", "Term",
    "approximation", "catalogue_constants", "catalogue_expression", "catalogue_nd_vectors",
    "evaluate", "expression_variables", "formulas_from_coefficients", "model_formulas",
    "nearest_catalogue", "parse_expression", "render", "same_bands_as", "to_asi",
    "to_gdal_calc", "to_json", "to_latex", "to_numexpr", "to_plain", "to_text",
]
