"""A small, safe filter language for the rows of a results store (`report --rows`, `plot --rows`).

A filter compares columns with literals and nothing else::

    vision == 'dinov2-b' and seed == 0
    i2t_r10 > 0.5
    text in ['gte', 'minilm'] and not (seed == 1)
    0.3 <= `knn_top1@20` < 0.9

It is parsed with Python's `ast` and checked against a whitelist, then
evaluated as pandas boolean masks. Nothing is ever evaluated as code: a
filter comes from a command line or a shared script, and `DataFrame.query`
(whose `@name` reaches the caller's variables) ran shell commands from one.
"""
from __future__ import annotations

import ast
import operator
from typing import Any

import pandas as pd

from alignprobe.errors import ValidationError

ALLOWED = (
    "a filter compares columns with literals: ==, !=, <, <=, >, >=, in, not in, e.g. "
    "\"vision == 'dinov2-b' and seed == 0\", \"i2t_r10 > 0.5\", \"text in ['gte', 'minilm']\"; "
    "combine with and / or / not and parentheses; literals are strings, numbers, True, False, None "
    "and lists of them; quote a column name holding other characters in backticks (`knn_top1@20`); "
    "calls, attributes, @names, subscripts and arithmetic are not allowed"
)

_ORDER = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
# `3 < seed` is `seed > 3`: the literal-first form is flipped so every comparison has the column on the left.
_FLIPPED = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}
_SYMBOL = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
           ast.In: "in", ast.NotIn: "not in"}
_OTHER_SYMBOL = {ast.Is: "is", ast.IsNot: "is not"}
_LITERAL_TYPES = (str, int, float, bool, type(None))
_COLUMN_PREFIX = "__alignprobe_column_"
MAX_LENGTH = 4000


class _Refused(Exception):
    """A part of the filter outside the language; `filter_mask` turns it into one ValidationError."""


def filter_mask(df: pd.DataFrame, expr: str) -> pd.Series:
    """The boolean mask of the rows of `df` that satisfy the filter `expr` (see the module doc).

    Raises `ValidationError` naming what was refused and what is allowed, or
    the unknown column and the columns there are.
    """
    source, quoted = _unquote_columns(expr)
    if len(source) > MAX_LENGTH:  # a filter is a line a person types; a megabyte of parentheses is not one
        raise ValidationError(f"rows (--rows) filter is {len(source):,} characters long; at most {MAX_LENGTH:,} are read")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError) as err:  # ValueError: a NUL byte
        reason = err.msg if isinstance(err, SyntaxError) else str(err)
        raise ValidationError(f"rows {expr!r} (--rows) is not a valid filter ({reason}); {ALLOWED}") from None
    try:
        mask = _Evaluator(df, quoted, expr).condition(tree.body)
    except _Refused as err:
        raise ValidationError(f"rows {expr!r} (--rows): {err}; {ALLOWED}") from None
    except RecursionError:
        raise ValidationError(f"rows (--rows) filter is nested too deeply; {ALLOWED}") from None
    return mask.fillna(False).astype(bool)


def _unquote_columns(expr: str) -> tuple[str, dict[str, str]]:
    """Replace each `backticked name` (outside string literals) by a placeholder identifier."""
    if not isinstance(expr, str):
        raise ValidationError(f"a row filter must be a string, got {type(expr).__name__}")
    out, quoted, i, quote = [], {}, 0, None
    while i < len(expr):
        ch = expr[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(expr):
                out.append(expr[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "`":
            end = expr.find("`", i + 1)
            if end < 0:
                raise ValidationError(f"rows {expr!r} (--rows): a backtick-quoted column name is not closed; {ALLOWED}")
            name = f"{_COLUMN_PREFIX}{len(quoted)}"
            quoted[name] = expr[i + 1:end]
            out.append(f" {name} ")
            i = end
        else:
            out.append(ch)
        i += 1
    return "".join(out), quoted


class _Evaluator:
    def __init__(self, df: pd.DataFrame, quoted: dict[str, str], expr: str):
        self.df, self.quoted, self.expr = df, quoted, expr

    def condition(self, node: ast.AST) -> pd.Series:
        if isinstance(node, ast.BoolOp):
            masks = [self.condition(v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            out = masks[0]
            for m in masks[1:]:
                out = combine(out, m)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.condition(node.operand)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.Name):
            return self._boolean_column(node)
        raise _Refused(f"{_describe(node)} is not a condition")

    def _boolean_column(self, node: ast.Name) -> pd.Series:
        # A yes/no column (vision_is_control) is a condition by itself; `seed` alone is not one.
        name = self.column(node)
        column = self.df[name]
        if pd.api.types.is_bool_dtype(column.dtype):
            return column.fillna(False).astype(bool)
        raise _Refused(f"column {name!r} alone is not a condition: compare it with a value, e.g. {name} == ...")

    def _compare(self, node: ast.Compare) -> pd.Series:
        mask, left = None, node.left
        for op, right in zip(node.ops, node.comparators):  # a chain a < x < b is (a < x) and (x < b)
            part = self._pair(left, type(op), right)
            mask = part if mask is None else mask & part
            left = right
        return mask

    def _pair(self, left: ast.AST, op: type, right: ast.AST) -> pd.Series:
        if op not in _SYMBOL:
            hint = "; write == None / != None" if op in (ast.Is, ast.IsNot) else ""
            raise _Refused(f"the comparison '{_OTHER_SYMBOL.get(op, op.__name__)}' is not allowed{hint}")
        left_is_column, right_is_column = _is_column(left), _is_column(right)
        for side, is_column in ((left, left_is_column), (right, right_is_column)):
            if not is_column:
                literal(side)  # a call or subscript is named as such, not as "a literal"
        if left_is_column == right_is_column:
            what = "two columns" if left_is_column else "two literals"
            raise _Refused(f"'{_SYMBOL[op]}' compares {what}; compare a column with a literal")
        if right_is_column:
            if op in (ast.In, ast.NotIn):
                raise _Refused(f"'{_SYMBOL[op]}' needs the column on the left and a list on the right, "
                               "e.g. text in ['gte', 'minilm']")
            left, right, op = right, left, _FLIPPED[op]
        name, value = self.column(left), literal(right)
        return _apply(self.df[name], name, op, value, self.expr)

    def column(self, node: ast.Name) -> str:
        name = self.quoted.get(node.id, node.id)
        if name not in self.df.columns:
            raise ValidationError(f"rows {self.expr!r} (--rows): no column {name!r} in these results; columns: "
                                  f"{', '.join(map(str, self.df.columns))}")
        return name


def _is_column(node: ast.AST) -> bool:
    return isinstance(node, ast.Name)


def literal(node: ast.AST) -> Any:
    """The Python value of a literal node: str/int/float/bool/None, a negated number, or a list/tuple of those."""
    if isinstance(node, ast.Constant) and isinstance(node.value, _LITERAL_TYPES):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.Constant):
        raise _Refused(f"a {type(node.value).__name__} value ({node.value!r}) is not allowed")
    if isinstance(node, (ast.List, ast.Tuple)):
        if any(isinstance(e, (ast.List, ast.Tuple)) for e in node.elts):
            raise _Refused("a list inside a list is not allowed")
        return [literal(e) for e in node.elts]
    raise _Refused(f"{_describe(node)} is not a literal")


def _apply(column: pd.Series, name: str, op: type, value: Any, expr: str) -> pd.Series:
    if op in (ast.In, ast.NotIn):
        if not isinstance(value, list):
            raise _Refused(f"'{_SYMBOL[op]}' needs a list on the right, e.g. {name} in ['a', 'b']")
        mask = _isin(column, value)
        return ~mask if op is ast.NotIn else mask
    if isinstance(value, list):
        raise _Refused(f"'{_SYMBOL[op]}' compares {name} with a list; use 'in' for membership")
    if value is None:
        if op not in (ast.Eq, ast.NotEq):
            raise _Refused(f"None can only be compared with == or !=, not '{_SYMBOL[op]}'")
        return column.isna() if op is ast.Eq else column.notna()
    if op is ast.Eq:
        return column.eq(value).fillna(False)
    if op is ast.NotEq:
        return column.ne(value).fillna(True)
    try:
        return _ORDER[op](column, value).fillna(False)
    except TypeError:
        raise ValidationError(f"rows {expr!r} (--rows): cannot compare column {name!r} ({column.dtype}) with {value!r} "
                              f"using '{_SYMBOL[op]}'") from None


def _isin(column: pd.Series, values: list) -> pd.Series:
    mask = column.isin([v for v in values if v is not None])
    if any(v is None for v in values):
        mask = mask | column.isna()
    return mask.fillna(False)


def _describe(node: ast.AST) -> str:
    kinds = {ast.Call: "a call", ast.Attribute: "an attribute access", ast.Subscript: "a subscript",
             ast.BinOp: "arithmetic", ast.Lambda: "a lambda", ast.Constant: "a bare value",
             ast.Dict: "a dict", ast.Set: "a set", ast.IfExp: "an if-expression", ast.NamedExpr: "an assignment",
             ast.Starred: "a starred expression", ast.JoinedStr: "an f-string"}
    for kind, text in kinds.items():
        if isinstance(node, kind):
            return text
    try:
        return f"{type(node).__name__} ({ast.unparse(node)[:60]})"
    except Exception:  # unparse of an odd node must not hide the real message
        return type(node).__name__
