"""A restricted evaluator for band-math formulas (exported ND indices, spyndex, ``--formula``).

Formulas are parsed with Python's ``ast`` and only numbers, variable names, ``+ - * / **``,
unary ``+ -`` and parentheses are accepted; nothing is ever passed to ``eval``/``exec``.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ndgeo.errors import NdgeoError

_MAX_EXPRESSION_CHARS = 10_000

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_UNARYOPS = {ast.UAdd: "+", ast.USub: "-"}
_REFUSED_OPS = {
    ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
    ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&", ast.Not: "not", ast.Invert: "~",
}
_REFUSED_WORDS = {
    ast.Call: "function call",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.Lambda: "lambda",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.NamedExpr: "assignment expression",
    ast.JoinedStr: "f-string",
    ast.Starred: "starred expression",
}


@dataclass(frozen=True)
class Expr:
    """A parsed, validated formula: its text, syntax tree and variable names."""

    text: str
    tree: ast.expr = field(repr=False, compare=False)
    variables: frozenset[str] = field(compare=False)


def _where(node: ast.AST) -> str:
    line = getattr(node, "lineno", 1)
    col = getattr(node, "col_offset", 0) + 1
    return f"column {col}" if line == 1 else f"line {line}, column {col}"


def _refuse(node: ast.AST, text: str, what: str | None = None) -> NdgeoError:
    if what is None:
        what = _REFUSED_WORDS.get(type(node), type(node).__name__)
    segment = ast.get_source_segment(text, node) or ""
    return NdgeoError(
        f"refused {what} {segment!r} at {_where(node)} in {text!r}: formulas may only use "
        "numbers, variable names, + - * / **, unary + - and parentheses"
    )


def _check(node: ast.AST, text: str, names: set[str]) -> None:
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise _refuse(node, text, f"operator {_REFUSED_OPS.get(type(node.op), '?')!r}")
        _check(node.left, text, names)
        _check(node.right, text, names)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARYOPS:
            raise _refuse(node, text, f"operator {_REFUSED_OPS.get(type(node.op), '?')!r}")
        _check(node.operand, text, names)
    elif isinstance(node, ast.Name):
        names.add(node.id)
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(node, text, f"{type(value).__name__} literal")
    else:
        raise _refuse(node, text)


def parse_expression(text: str | Expr) -> Expr:
    """Parse and validate a formula; refuse anything beyond plain arithmetic with NdgeoError."""
    if isinstance(text, Expr):
        return text
    if not isinstance(text, str):
        raise NdgeoError(f"a formula must be a string, got {type(text).__name__}")
    if len(text) > _MAX_EXPRESSION_CHARS:
        raise NdgeoError(f"formula is {len(text)} characters long; at most "
                         f"{_MAX_EXPRESSION_CHARS} are accepted")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise NdgeoError(f"formula {text!r} is not valid arithmetic: {exc.msg}{where}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise NdgeoError(f"formula {text[:80]!r} cannot be parsed: {exc}") from None
    names: set[str] = set()
    try:
        _check(tree.body, text.strip(), names)
    except RecursionError:
        raise NdgeoError(f"formula {text[:80]!r} is nested too deeply") from None
    return Expr(text=text.strip(), tree=tree.body, variables=frozenset(names))


def expression_variables(text: str | Expr) -> set[str]:
    """The variable (band and constant) names a formula uses."""
    return set(parse_expression(text).variables)


def evaluate(
    expr: str | Expr,
    arrays: Mapping[str, Any],
    constants: Mapping[str, float | None] | None = None,
) -> np.ndarray:
    """Compute a formula over named arrays (and scalar ``constants``), numpy-style.

    Names are looked up in ``arrays`` first, then in ``constants``; a missing name (or a
    constant without a value) raises NdgeoError listing what is available. Integer arrays are
    computed in float64 so that differences of unsigned digital numbers do not wrap around.
    Division by zero and overflow give nan/inf as numpy does, without warnings: callers mask
    non-finite results (the engine writes them as nodata).
    """
    parsed = parse_expression(expr)
    namespace: dict[str, Any] = {}
    constants = constants or {}
    missing = []
    for name in sorted(parsed.variables):
        if name in arrays:
            value = arrays[name]
            if isinstance(value, np.ndarray) and value.dtype.kind in "biu":
                value = value.astype(np.float64)
            namespace[name] = value
        elif constants.get(name) is not None:
            namespace[name] = float(constants[name])
        else:
            missing.append(name)
    if missing:
        no_default = [m for m in missing if m in constants]
        hint = f" (no default value for {', '.join(no_default)})" if no_default else ""
        raise NdgeoError(
            f"formula {parsed.text!r} needs {', '.join(missing)}{hint}; available: "
            f"{', '.join(sorted(set(arrays) | {k for k, v in constants.items() if v is not None}))}"
        )
    try:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = _eval(parsed.tree, namespace)
    except RecursionError:
        raise NdgeoError(f"formula {parsed.text[:80]!r} is nested too deeply") from None
    except (OverflowError, ZeroDivisionError) as exc:
        raise NdgeoError(f"formula {parsed.text!r} fails on scalar values: {exc}") from None
    return result if hasattr(result, "shape") else np.asarray(result, dtype=np.float64)


def _eval(node: ast.expr, namespace: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, namespace), _eval(node.right, namespace)
        op = type(node.op)
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        if op is ast.Div:
            return np.true_divide(left, right) if _is_scalar(left, right) else left / right
        return np.power(left, right) if _is_scalar(left, right) else left**right
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, namespace)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.Name):
        return namespace[node.id]
    return float(node.value)  # ast.Constant, validated by _check


def _is_scalar(*values: Any) -> bool:
    """Both operands are plain floats: use numpy so 1/0 gives inf instead of raising."""
    return all(isinstance(v, float) for v in values)


