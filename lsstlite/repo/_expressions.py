"""Query expressions: a hand-written tokenizer and recursive-descent parser.

Two syntaxes are accepted.

LSST style::

    band = 'r' AND visit IN (1, 3, 10..20:2) AND NOT detector > 2
    exposure.day_obs = 20220526 OR (band != "g" AND exposure.mjd < 59000.5)
    visit IN (my_visits)            -- names found in ``bind`` are values

Data-ID style (space-separated terms are ANDed, ``^`` separates
alternatives, ``a..b[:step]`` is an inclusive range)::

    visit=1..9:2^12 detector=0^3 band=r

The grammar of the LSST style (keywords are case-insensitive)::

    expr     := and_expr ("OR" and_expr)*
    and_expr := not_expr ("AND" not_expr)*
    not_expr := "NOT" not_expr | "(" expr ")" | test
    test     := operand cmp_op operand | operand ["NOT"] "IN" "(" item ("," item)* ")"
    item     := literal | literal ".." literal [":" int] | bind_name
    operand  := name | literal
    literal  := ["-"] number | 'string' | "string"

An expression compiles to a function of a :class:`pandas.DataFrame`
returning a boolean numpy array (vectorised; no per-row Python).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._errors import ExpressionError

__all__ = ["Predicate", "compile_expression"]

Predicate = Callable[[pd.DataFrame], np.ndarray]

# kind codes: "i" integer, "f" float, "s" string
ColumnSpec = Mapping[str, tuple[str, str]]  # expression name -> (frame column, kind)

_KEYWORDS = {"AND", "OR", "NOT", "IN"}
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<float>\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)
  | (?P<int>\d+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<string>'[^']*'|"[^"]*")
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<range>\.\.)
  | (?P<punct>[(),:\-])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # int float name string op range punct kw end
    text: str
    pos: int
    value: Any = None


def _tokenize(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            ch = expr[pos]
            if ch in "'\"":
                raise ExpressionError("unterminated string literal", expr, pos)
            raise ExpressionError(f"unexpected character {ch!r}", expr, pos)
        kind = m.lastgroup or ""
        text = m.group()
        if kind != "ws":
            value: Any = None
            if kind == "int":
                value = int(text)
            elif kind == "float":
                value = float(text)
            elif kind == "string":
                value = text[1:-1]
            elif kind == "name" and text.upper() in _KEYWORDS:
                kind, value = "kw", text.upper()
            toks.append(_Tok(kind, text, pos, value))
        pos = m.end()
    toks.append(_Tok("end", "", len(expr)))
    return toks


# ---------------------------------------------------------------- AST


@dataclass(frozen=True)
class _Name:
    name: str
    pos: int


@dataclass(frozen=True)
class _Lit:
    value: Any
    pos: int


@dataclass(frozen=True)
class _Range:
    start: int
    stop: int
    step: int
    pos: int


@dataclass(frozen=True)
class _Cmp:
    op: str
    left: _Name | _Lit
    right: _Name | _Lit
    pos: int


@dataclass(frozen=True)
class _In:
    operand: _Name | _Lit
    items: tuple[_Lit | _Range | _Name, ...]
    negated: bool
    pos: int


@dataclass(frozen=True)
class _Bool:
    op: str  # "and" | "or" | "not"
    args: tuple[Any, ...]


_Node = _Cmp | _In | _Bool


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokenize(expr)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, msg: str, tok: _Tok | None = None) -> ExpressionError:
        tok = tok or self.tok
        where = "end of expression" if tok.kind == "end" else repr(tok.text)
        return ExpressionError(f"{msg} (at {where})", self.expr, tok.pos)

    def next(self) -> _Tok:
        tok = self.tok
        self.i += 1
        return tok

    def accept(self, kind: str, text: str | None = None) -> _Tok | None:
        tok = self.tok
        if tok.kind == kind and (text is None or tok.value == text or tok.text == text):
            self.i += 1
            return tok
        return None

    def expect(self, kind: str, text: str, what: str) -> _Tok:
        tok = self.accept(kind, text)
        if tok is None:
            raise self.error(f"expected {what}")
        return tok

    def parse(self) -> _Node:
        node = self.parse_or()
        if self.tok.kind != "end":
            raise self.error("unexpected token; expected AND, OR or the end")
        return node

    def parse_or(self) -> _Node:
        args = [self.parse_and()]
        while self.accept("kw", "OR"):
            args.append(self.parse_and())
        return args[0] if len(args) == 1 else _Bool("or", tuple(args))

    def parse_and(self) -> _Node:
        args = [self.parse_not()]
        while self.accept("kw", "AND"):
            args.append(self.parse_not())
        return args[0] if len(args) == 1 else _Bool("and", tuple(args))

    def parse_not(self) -> _Node:
        if self.accept("kw", "NOT"):
            return _Bool("not", (self.parse_not(),))
        if self.accept("punct", "("):
            node = self.parse_or()
            self.expect("punct", ")", "')'")
            return node
        return self.parse_test()

    def parse_operand(self) -> _Name | _Lit:
        tok = self.tok
        if tok.kind == "name":
            self.next()
            return _Name(tok.text, tok.pos)
        if tok.kind in ("int", "float", "string"):
            self.next()
            return _Lit(tok.value, tok.pos)
        if tok.kind == "punct" and tok.text == "-":
            self.next()
            num = self.tok
            if num.kind not in ("int", "float"):
                raise self.error("expected a number after '-'")
            self.next()
            return _Lit(-num.value, tok.pos)
        raise self.error("expected a name or a value")

    def parse_test(self) -> _Node:
        left = self.parse_operand()
        tok = self.tok
        if tok.kind == "op":
            self.next()
            op = {"==": "=", "<>": "!="}.get(tok.text, tok.text)
            right = self.parse_operand()
            return _Cmp(op, left, right, tok.pos)
        negated = False
        if tok.kind == "kw" and tok.value == "NOT":
            self.next()
            negated = True
        in_tok = self.tok
        if self.accept("kw", "IN"):
            self.expect("punct", "(", "'(' after IN")
            items = [self.parse_item()]
            while self.accept("punct", ","):
                items.append(self.parse_item())
            self.expect("punct", ")", "',' or ')'")
            return _In(left, tuple(items), negated, in_tok.pos)
        raise self.error("expected a comparison operator (=, !=, <, <=, >, >=) or IN")

    def parse_item(self) -> _Lit | _Range | _Name:
        first = self.parse_operand()
        if self.accept("range"):
            stop = self.parse_operand()
            step = 1
            if self.accept("punct", ":"):
                st = self.tok
                if st.kind != "int" or st.value <= 0:
                    raise self.error("expected a positive integer step after ':'")
                step = self.next().value
            for part in (first, stop):
                if not isinstance(part, _Lit) or not isinstance(part.value, int):
                    raise ExpressionError("range bounds must be integers", self.expr, part.pos)
            assert isinstance(first, _Lit) and isinstance(stop, _Lit)
            return _Range(first.value, stop.value, step, first.pos)
        return first


# ---------------------------------------------------------- data-ID syntax

_DATAID_TERM = r"[A-Za-z_][A-Za-z0-9_.]*=[^\s()'\"=<>!,]+"
_DATAID_RE = re.compile(rf"\s*{_DATAID_TERM}(?:\s+{_DATAID_TERM})*\s*")
_DATAID_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?::(\d+))?$")


def _parse_data_id_syntax(expr: str, columns: ColumnSpec) -> _Node:
    terms: list[_Node] = []
    for m in re.finditer(r"\S+", expr):
        term, start = m.group(), m.start()
        name, _, values = term.partition("=")
        spec = columns.get(name)
        if spec is None:
            raise _unknown_name(expr, name, start, columns)
        kind = spec[1]
        alts: list[_Node] = []
        pos = start + len(name) + 1
        for value in values.split("^"):
            if value == "":
                raise ExpressionError(f"empty value for {name!r}", expr, pos)
            rng = _DATAID_RANGE.match(value)
            if rng and kind in "if":
                step = int(rng.group(3) or 1)
                if step <= 0:
                    raise ExpressionError("range step must be positive", expr, pos)
                item = _Range(int(rng.group(1)), int(rng.group(2)), step, pos)
                alts.append(_In(_Name(name, start), (item,), False, pos))
            else:
                lit: Any = value
                if kind in "if":
                    try:
                        lit = int(value) if kind == "i" else float(value)
                    except ValueError:
                        raise ExpressionError(
                            f"{name!r} takes numbers; {value!r} is not one", expr, pos
                        ) from None
                alts.append(_Cmp("=", _Name(name, start), _Lit(lit, pos), pos))
            pos += len(value) + 1
        terms.append(alts[0] if len(alts) == 1 else _Bool("or", tuple(alts)))
    return terms[0] if len(terms) == 1 else _Bool("and", tuple(terms))


# ---------------------------------------------------------------- compiler


def _unknown_name(expr: str, name: str, pos: int, columns: ColumnSpec) -> ExpressionError:
    known = ", ".join(sorted(n for n in columns if "." not in n))
    return ExpressionError(
        f"unknown name {name!r} in expression; known dimensions: {known} "
        "(and exposure.<field>/visit.<field>, or pass values through bind)",
        expr,
        pos,
    )


def _lit_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int | np.integer):
        return "i"
    if isinstance(value, float | np.floating):
        return "f"
    if isinstance(value, str):
        return "s"
    return "?"


def _as_bool(result: Any) -> np.ndarray:
    if isinstance(result, pd.Series):
        return result.to_numpy(dtype=bool, na_value=False)
    return np.asarray(result, dtype=bool)


class _Compiler:
    def __init__(self, expr: str, columns: ColumnSpec, bind: Mapping[str, Any]) -> None:
        self.expr = expr
        self.columns = columns
        self.bind = bind

    def err(self, msg: str, pos: int) -> ExpressionError:
        return ExpressionError(msg, self.expr, pos)

    def operand(self, node: _Name | _Lit) -> tuple[str, Any, int]:
        """Return (kind, value-or-column, pos); column operands have kind 'col:<k>'."""
        if isinstance(node, _Lit):
            return _lit_kind(node.value), node.value, node.pos
        if node.name in self.bind:
            value = self.bind[node.name]
            kind = _lit_kind(value)
            if kind == "?":
                raise self.err(
                    f"bind value {node.name!r} must be an int, float or str, got {value!r}",
                    node.pos,
                )
            return kind, value, node.pos
        spec = self.columns.get(node.name)
        if spec is None:
            raise _unknown_name(self.expr, node.name, node.pos, self.columns)
        return "col:" + spec[1], spec[0], node.pos

    def check_kinds(self, name: str, ckind: str, vkind: str, value: Any, pos: int) -> None:
        numeric = {"i", "f"}
        if (ckind in numeric) != (vkind in numeric) or vkind == "b":
            want = "a number" if ckind in numeric else "a string"
            raise self.err(f"{name!r} takes {want}; {value!r} is not one", pos)

    def compile(self, node: _Node) -> Predicate:
        if isinstance(node, _Bool):
            parts = [self.compile(a) for a in node.args]
            if node.op == "not":
                inner = parts[0]
                return lambda df: ~inner(df)
            if node.op == "and":
                return lambda df: np.logical_and.reduce([p(df) for p in parts])
            return lambda df: np.logical_or.reduce([p(df) for p in parts])
        if isinstance(node, _Cmp):
            return self.compile_cmp(node)
        return self.compile_in(node)

    def compile_cmp(self, node: _Cmp) -> Predicate:
        lk, lv, lpos = self.operand(node.left)
        rk, rv, rpos = self.operand(node.right)
        op = node.op
        if not lk.startswith("col:") and rk.startswith("col:"):
            flip = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
            lk, lv, lpos, rk, rv, rpos = rk, rv, rpos, lk, lv, lpos
            op = flip.get(op, op)
            node = _Cmp(op, node.right, node.left, node.pos)
        if not lk.startswith("col:"):
            # constant comparison: evaluate once
            const = _compare_values(op, lv, rv)
            return lambda df: np.full(len(df), const, dtype=bool)
        lname = node.left.name if isinstance(node.left, _Name) else str(lv)
        if rk.startswith("col:"):
            if (lk[4:] == "s") != (rk[4:] == "s"):
                raise self.err(f"cannot compare {lname!r} with a column of another type", rpos)
            lcol, rcol = lv, rv
            return lambda df: _as_bool(_compare_values(op, df[lcol], df[rcol]))
        self.check_kinds(lname, lk[4:], rk, rv, rpos)
        col, value = lv, rv
        return lambda df: _as_bool(_compare_values(op, df[col], value))

    def compile_in(self, node: _In) -> Predicate:
        kind, col, _ = self.operand(node.operand)
        name = node.operand.name if isinstance(node.operand, _Name) else str(col)
        values: list[Any] = []
        ranges: list[_Range] = []
        for item in node.items:
            if isinstance(item, _Range):
                if kind.startswith("col:"):
                    self.check_kinds(name, kind[4:], "i", f"{item.start}..{item.stop}", item.pos)
                ranges.append(item)
                continue
            if isinstance(item, _Name) and item.name in self.bind:
                bound = self.bind[item.name]
                seq = list(bound) if isinstance(bound, list | tuple | set | frozenset) else [bound]
                items = [(v, item.pos) for v in seq]
            elif isinstance(item, _Name):
                if item.name in self.columns:
                    raise self.err(f"IN lists take values, not the name {item.name!r}", item.pos)
                raise _unknown_name(self.expr, item.name, item.pos, self.columns)
            else:
                items = [(item.value, item.pos)]
            for v, pos in items:
                vk = _lit_kind(v)
                if kind.startswith("col:"):
                    self.check_kinds(name, kind[4:], vk, v, pos)
                values.append(v)
        negated = node.negated
        if not kind.startswith("col:"):
            const = col in values or any(_in_range(col, r) for r in ranges)
            return lambda df: np.full(len(df), const != negated, dtype=bool)

        def pred(df: pd.DataFrame) -> np.ndarray:
            series = df[col]
            out = _as_bool(series.isin(values)) if values else np.zeros(len(df), bool)
            for r in ranges:
                lo, hi = min(r.start, r.stop), max(r.start, r.stop)
                hit = (series >= lo) & (series <= hi)
                if r.step != 1:
                    hit &= (series - r.start) % r.step == 0
                out |= _as_bool(hit)
            if negated:
                # NOT IN is false where the value is missing, like SQL.
                return ~out & series.notna().to_numpy(dtype=bool)
            return out

        return pred


def _in_range(value: Any, r: _Range) -> bool:
    lo, hi = min(r.start, r.stop), max(r.start, r.stop)
    return isinstance(value, int) and lo <= value <= hi and (value - r.start) % r.step == 0


def _compare_values(op: str, a: Any, b: Any) -> Any:
    if op == "=":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    raise AssertionError(op)  # pragma: no cover


def compile_expression(
    expr: str | None,
    columns: ColumnSpec,
    bind: Mapping[str, Any] | None = None,
) -> Predicate:
    """Parse ``expr`` and compile it to a vectorised predicate.

    Parameters
    ----------
    expr : str or None
        The expression (LSST or data-ID syntax). Empty or None matches all.
    columns : mapping
        Names usable in the expression → (column of the frame, kind), kind
        being ``"i"``, ``"f"`` or ``"s"``.
    bind : mapping, optional
        Values for names used in the expression (scalars, or sequences for
        ``IN``).

    Returns
    -------
    callable
        ``predicate(frame) -> numpy bool array``.

    Raises
    ------
    ExpressionError
        With a caret under the offending token.
    """
    bind = dict(bind or {})
    if expr is None or not expr.strip():
        return lambda df: np.ones(len(df), dtype=bool)
    if _DATAID_RE.fullmatch(expr) and not re.search(r"\b(AND|OR|NOT|IN)\b", expr, re.I):
        tree = _parse_data_id_syntax(expr, columns)
    else:
        tree = _Parser(expr).parse()
    return _Compiler(expr, columns, bind).compile(tree)


def referenced_names(expr: str | None) -> Sequence[str]:
    """Names (identifiers) appearing in an LSST-style expression."""
    if not expr:
        return []
    try:
        return [t.text for t in _tokenize(expr) if t.kind == "name"]
    except ExpressionError:
        return []
