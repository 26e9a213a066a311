"""featharm's covariate formula language: parsed and evaluated by featharm itself, never by Python.

A formula names the covariates whose effects harmonization keeps (``"age + sex"``). Formulas come from
users (the API, the command line) and from model files written by someone else, so no part of one is ever
handed to ``eval``: this module reads it with a small grammar, refuses anything outside it, and evaluates
the result with a closed set of numpy functions. The grammar (documented in the README)::

    formula  := sum                         (a leading "~" is allowed)
    sum      := product (("+" | "-") product)*        "- 1" / "0 +" remove the intercept: refused
    product  := inter (("*" | "/") inter)*            a*b = a + b + a:b;  a/b = a + a:b
    inter    := power (":" power)*                     interaction
    power    := atom ("**" INTEGER)?                   all interactions up to that order
    atom     := "(" sum ")" | "1" | factor
    factor   := NAME | `any column name` | C(NAME [, Treatment(LEVEL)]) | I(expr) | FUNCTION(expr ...)
    expr     := arithmetic of names, numbers, + - * / ** and parentheses, and FUNCTION calls

Functions: ``log``, ``log1p``, ``log2``, ``log10``, ``exp``, ``sqrt``, ``abs`` (also spelled ``np.log``
...), and the stateful transforms ``center``, ``scale``/``standardize`` and ``bs(x, df=..., knots=[...],
degree=..., lower_bound=..., upper_bound=...)``, whose state (mean, SD, knots) is frozen at fit.
``C(sex, Treatment("M"))`` (or ``contr.treatment("M")``) picks the baseline level. ``s(x)`` is a smooth
term, for :class:`~featharm.ComBatGAM` only. Attribute access, other calls, subscripts, strings outside
``C()``, lambdas and dunder names are errors that name the token.

The parsed factors are plain JSON-able lists (``["col", "age"]``, ``["op", "**", ["col", "age"],
["num", 2]]``); a fitted design stores them, with the transforms' state, and rebuilds its matrix from that
data alone. Column names and the choice of full- or reduced-rank coding of categorical factors in
interactions follow formulaic's conventions (terms ordered by degree; the rule
``(anything):(reduced) + (anything) -> (anything):(full)``), so designs built before featharm had its
own evaluator keep their columns.
"""

from __future__ import annotations

import ast
import functools
import itertools
import operator
import re
from typing import Any

import numpy as np

from .exceptions import FormulaError

__all__ = ["parse_formula", "ParsedFormula", "FUNCTIONS", "STATEFUL", "render", "clean_formula", "formula_columns"]

# elementwise functions a formula may call (also as np.NAME / numpy.NAME)
FUNCTIONS = {"log": np.log, "log1p": np.log1p, "log2": np.log2, "log10": np.log10, "exp": np.exp,
             "sqrt": np.sqrt, "abs": np.abs}
# transforms whose parameters are learned at fit and frozen
STATEFUL = ("center", "scale", "standardize", "bs", "poly")
_BS_KEYWORDS = ("df", "knots", "degree", "lower_bound", "upper_bound")
_ALLOWED = ("column names (`in backticks` for any other name), numbers, + - * : / ** and parentheses, "
            "C(column[, Treatment(level)]), I(arithmetic), "
            + ", ".join(f"{f}()" for f in [*FUNCTIONS, *STATEFUL]) + ", and s(column) for ComBatGAM")
_MAX_LENGTH = 10_000
_MAX_DEPTH = 50
MAX_TERMS = 1_000  # terms a formula may expand to (a*b*c... and (a+b+...)**k grow exponentially); far above real use
MAX_TERM_FACTORS = 10  # factors in one interaction term (its full-rank coding considers every subset of them)

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<quoted>`[^`]*`)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[^\W\d]\w*)
  | (?P<string>'[^'\\]*'|"[^"\\]*")
  | (?P<op>\*\*|[-+*/:(),=\[\].~])
""", re.VERBOSE)


class _Tok:
    __slots__ = ("kind", "text", "pos")

    def __init__(self, kind, text, pos):
        self.kind, self.text, self.pos = kind, text, pos

    def __repr__(self):
        return self.text


def _tokenize(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            what = ("a quote that is not closed" if ch in "'\"`" else f"the character {ch!r}")
            raise FormulaError(f"formula {text!r}: {what} at position {pos} is not part of featharm's formula "
                               f"language. Allowed: {_ALLOWED}.")
        kind = m.lastgroup
        if kind != "space":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


class _Parser:
    """Recursive descent over the tokens; builds factor nodes and term lists, never evaluates."""

    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    # -- helpers
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def accept(self, text: str) -> bool:
        if self.tok.kind in ("op", "name") and self.tok.text == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            self.fail(f"expected {text!r}")

    def fail(self, what: str, tok: _Tok | None = None):
        tok = tok or self.tok
        where = "at the end" if tok.kind == "end" else f"at {tok.text!r} (position {tok.pos})"
        raise FormulaError(f"formula {self.text!r}: {what} {where}. Allowed: {_ALLOWED}.")

    def nest(self):
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise FormulaError(f"formula {self.text[:80]!r}...: nested more than {_MAX_DEPTH} levels deep.")

    # -- formula level: returns a list of terms, each a tuple of factor keys (() is the intercept)
    def formula(self):
        terms = self.sum()
        if self.tok.kind != "end":
            self.fail("unexpected token")
        return terms

    def sum(self):
        self.nest()
        if self.accept("-"):  # a leading "- 1"
            self.removal(self.product())
            terms = []
        else:
            terms = self.product()
        while True:
            if self.accept("+"):
                terms = self.bounded(_union(terms, self.product()))
            elif self.accept("-"):
                removed = self.product()
                self.removal(removed)
                drop = {frozenset(t) for t in removed}
                terms = [t for t in terms if frozenset(t) not in drop]
            else:
                break
        self.depth -= 1
        return terms

    def removal(self, terms) -> None:
        if any(len(t) == 0 for t in terms):
            raise FormulaError(
                f"formula {self.text!r} removes the intercept ('- 1' or '0 +'); featharm adds the batch "
                "indicators in place of the intercept, so leave it in (write e.g. 'age + sex')."
            )

    def product(self):
        terms = self.inter()
        while True:
            if self.accept("*"):
                right = self.inter()
                terms = self.bounded(_union(_union(terms, right), self.interact(terms, right)))
            elif self.accept("/"):
                right = self.inter()
                left_all = tuple(dict.fromkeys(f for t in terms for f in t))
                terms = self.bounded(_union(terms, self.interact([left_all], right)))
            else:
                return terms

    def inter(self):
        terms = self.power()
        while self.accept(":"):
            terms = self.interact(terms, self.power())
        return terms

    def power(self):
        terms = self.atom()
        if self.accept("**"):
            tok = self.take()
            if tok.kind != "number" or not tok.text.isdigit() or int(tok.text) < 1:
                self.fail("'**' between terms takes a positive whole number", tok)
            base = terms
            for _ in range(int(tok.text) - 1):
                grown = self.bounded(_union(terms, self.interact(terms, base)))
                if len(grown) == len(terms):  # every interaction is there: a higher power adds nothing
                    break
                terms = grown
        return terms

    def bounded(self, terms):
        """``terms``, or a FormulaError if there are more than MAX_TERMS of them."""
        if len(terms) > MAX_TERMS:
            raise FormulaError(f"formula {self.text[:80]!r}{'...' if len(self.text) > 80 else ''} expands to more "
                               f"than {MAX_TERMS} terms, the most featharm accepts (interactions such as a*b*c*... "
                               "or (a+b+...)**k multiply); write the terms the model needs.")
        return terms

    def interact(self, a, b):
        """The interactions of the terms ``a`` with ``b``, stopping as soon as there are too many."""
        seen, out = set(), []
        for ta in a:
            for tb in b:
                t = tuple(dict.fromkeys(ta + tb))
                if len(t) > MAX_TERM_FACTORS:
                    raise FormulaError(
                        f"formula {self.text[:80]!r}{'...' if len(self.text) > 80 else ''} has an interaction of "
                        f"{len(t)} factors; featharm accepts at most {MAX_TERM_FACTORS} in one term.")
                k = frozenset(t)
                if k not in seen:
                    seen.add(k)
                    out.append(t)
                    self.bounded(out)
        return out

    def atom(self):
        tok = self.tok
        if self.accept("("):
            terms = self.sum()
            self.expect(")")
            return terms
        if tok.kind == "number":
            self.take()
            if tok.text in ("1", "1.0"):
                return [()]
            if tok.text in ("0", "0.0"):
                self.removal([()])
            self.fail("a number on its own is not a term (only 1, the intercept)", tok)
        key = self.factor()
        return [(key,)]

    # -- factors
    def factor(self) -> str:
        node = self.call_or_name(top=True)
        return _key(node)

    def call_or_name(self, top: bool = False):
        tok = self.tok
        if tok.kind == "quoted":
            self.take()
            name = tok.text[1:-1]
            if not name:
                self.fail("an empty `` name", tok)
            return ["col", name]
        if tok.kind != "name":
            self.fail("expected a column name or a function call")
        self.take()
        name = tok.text
        if self.accept("."):
            attr = self.take()
            if attr.kind != "name":
                self.fail("expected a name after '.'", attr)
            dotted = f"{name}.{attr.text}"
            if name in ("np", "numpy") and attr.text in FUNCTIONS and self.tok.text == "(":
                return self.function(dotted, attr.text)
            self.fail(f"attribute access ({dotted!r}) is not allowed; the functions are "
                      f"{', '.join(FUNCTIONS)} (also as np.NAME)", attr)
        if name.startswith("__") or name in ("lambda", "import"):
            self.fail(f"the name {name!r} is not allowed", tok)
        if self.tok.text != "(" or self.tok.kind != "op":
            return ["col", name]
        if name == "C":
            if not top:
                self.fail("C() is only allowed as a term of the formula, not inside an expression", tok)
            return self.categorical()
        if name == "I":
            self.expect("(")
            self.nest()
            node = ["I", self.expr()]
            self.depth -= 1
            self.expect(")")
            return node
        if name == "s":
            if not top:
                self.fail("s() is only allowed as a term of the formula", tok)
            self.expect("(")
            col = self.column_arg()
            self.expect(")")
            return ["smooth", col]
        if name in FUNCTIONS:
            return self.function(name, name)
        if name in STATEFUL:
            return self.stateful(name)
        if name == "Q":
            arg = self.toks[self.i + 1] if self.i + 1 < len(self.toks) else tok
            shown = arg.text[1:-1] if arg.kind == "string" else "Age (years)"
            self.fail(f"Q() is not supported: column names with spaces or symbols go in backticks: `{shown}`",
                      tok)
        close = self.text.find(")", tok.pos)
        guess = self.text[tok.pos:close + 1] if close > 0 else name
        self.fail(f"the function {name!r} is not allowed (if {guess!r} is a column name, column names with "
                  f"spaces or symbols go in backticks: `{guess}`)", tok)

    def column_arg(self) -> str:
        tok = self.take()
        if tok.kind == "quoted" and len(tok.text) > 2:
            return tok.text[1:-1]
        if tok.kind == "name" and not tok.text.startswith("__"):
            return tok.text
        self.fail("expected a column name", tok)

    def categorical(self):
        self.expect("(")
        col = self.column_arg()
        ref, form = None, None
        if self.accept(","):
            tok = self.take()
            if tok.kind == "name" and tok.text == "contr" and self.accept("."):
                t2 = self.take()
                if t2.text != "treatment":
                    self.fail("only contr.treatment(level) is supported as a contrast", t2)
                func = "contr.treatment"
            elif tok.kind == "name" and tok.text == "Treatment":
                func = "Treatment"
            else:
                self.fail("C() takes a column and optionally Treatment(level) or contr.treatment(level)", tok)
            self.expect("(")
            keyword = None
            if self.tok.kind == "name" and self.tok.text in ("reference", "base") and \
                    self.toks[self.i + 1].text == "=":
                keyword = self.take().text
                self.take()
            ref = self.literal()
            self.expect(")")
            form = [func, keyword]
        self.expect(")")
        return ["C", col, ref] if form is None else ["C", col, ref, form]

    def literal(self):
        tok = self.take()
        neg = False
        if tok.kind == "op" and tok.text == "-":
            neg, tok = True, self.take()
        if tok.kind == "string" and not neg:
            return tok.text[1:-1]
        if tok.kind == "number":
            v = _number(tok.text)
            return -v if neg else v
        if tok.kind == "name" and tok.text in ("True", "False") and not neg:
            return tok.text
        self.fail("expected a number or a quoted level", tok)

    def function(self, spelled: str, name: str):
        self.expect("(")
        self.nest()
        arg = self.expr()
        self.depth -= 1
        self.expect(")")
        return ["call", spelled, [arg], {}]

    def stateful(self, name: str):
        self.expect("(")
        self.nest()
        arg = self.expr()
        self.depth -= 1
        kwargs = {}
        args = [arg]
        if name == "poly":
            if self.accept(","):
                if self.tok.kind == "name" and self.tok.text == "degree" and self.toks[self.i + 1].text == "=":
                    self.take()
                    self.take()
                    kwargs["degree"] = self.degree_literal()
                else:
                    args.append(["num", self.degree_literal()])
            self.expect(")")
            return ["call", name, args, kwargs]
        while self.accept(","):
            if name != "bs":
                self.fail(f"{name}() takes one argument")
            k = self.take()
            if k.kind != "name" or k.text not in _BS_KEYWORDS or not self.accept("="):
                self.fail(f"bs() takes the keywords {', '.join(_BS_KEYWORDS)}", k)
            if k.text in kwargs:
                self.fail(f"bs() keyword {k.text!r} is given twice", k)
            if k.text == "knots":
                self.expect("[")
                vals = []
                if not self.accept("]"):
                    vals.append(self.number_literal())
                    while self.accept(","):
                        vals.append(self.number_literal())
                    self.expect("]")
                kwargs["knots"] = vals
            else:
                kwargs[k.text] = self.number_literal()
        self.expect(")")
        return ["call", name, [arg], kwargs]

    def degree_literal(self) -> int:
        tok = self.take()
        if tok.kind != "number" or not tok.text.isdigit() or not 1 <= int(tok.text) <= 20:
            self.fail("poly() takes a degree from 1 to 20", tok)
        return int(tok.text)

    def number_literal(self):
        v = self.literal()
        if isinstance(v, str):
            self.fail("expected a number", self.toks[self.i - 1])
        return v

    # -- arithmetic inside I() and function calls
    def expr(self):
        node = self.term()
        while self.tok.kind == "op" and self.tok.text in ("+", "-"):
            op = self.take().text
            node = ["op", op, node, self.term()]
        return node

    def term(self):
        node = self.unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/"):
            op = self.take().text
            node = ["op", op, node, self.unary()]
        return node

    def unary(self):
        if self.tok.kind == "op" and self.tok.text in ("-", "+"):
            op = self.take().text
            self.nest()
            node = self.unary()
            self.depth -= 1
            return ["neg", node] if op == "-" else ["pos", node]
        return self.pow_expr()

    def pow_expr(self):
        base = self.primary()
        if self.tok.kind == "op" and self.tok.text == "**":
            self.take()
            self.nest()
            node = ["op", "**", base, self.unary()]
            self.depth -= 1
            return node
        return base

    def primary(self):
        tok = self.tok
        if tok.kind == "number":
            self.take()
            return ["num", _number(tok.text)]
        if self.accept("("):
            self.nest()
            node = self.expr()
            self.depth -= 1
            self.expect(")")
            return node
        if tok.kind == "string":
            self.fail("text is not allowed in arithmetic", tok)
        return self.call_or_name(top=False)


def _number(text: str):
    try:
        if re.fullmatch(r"\d+", text):
            return int(text)
        return float(text)
    except (ValueError, OverflowError):
        raise FormulaError(f"{text!r} is not a number featharm can use.") from None


# ---------------------------------------------------------------------------------------- term algebra
# A factor is identified by its key: the JSON text of its node. Terms are tuples of keys.
_NODES: dict[str, list] = {}


def _key(node) -> str:
    import json

    k = json.dumps(node, separators=(",", ":"))
    _NODES[k] = node
    return k


def _union(a, b):
    seen = {frozenset(t) for t in a}
    out = list(a)
    for t in b:
        if frozenset(t) not in seen:
            seen.add(frozenset(t))
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------- rendering
_OPS = {"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div, "**": ast.Pow}
_IDENT = re.compile(r"[^\W\d]\w*")


def _name_ast(name: str):
    return ast.Name(id=name if _IDENT.fullmatch(name) else f"`{name}`")


def _const(v):
    if isinstance(v, (int, float)) and v < 0:
        return ast.UnaryOp(op=ast.USub(), operand=ast.Constant(-v))
    return ast.Constant(v)


def _to_ast(node):
    kind = node[0]
    if kind == "col":
        return _name_ast(node[1])
    if kind == "num":
        return _const(node[1])
    if kind == "op":
        return ast.BinOp(left=_to_ast(node[2]), op=_OPS[node[1]](), right=_to_ast(node[3]))
    if kind == "neg":
        return ast.UnaryOp(op=ast.USub(), operand=_to_ast(node[1]))
    if kind == "pos":
        return ast.UnaryOp(op=ast.UAdd(), operand=_to_ast(node[1]))
    if kind == "I":
        return ast.Call(func=ast.Name(id="I"), args=[_to_ast(node[1])], keywords=[])
    if kind == "smooth":
        return ast.Call(func=ast.Name(id="s"), args=[_name_ast(node[1])], keywords=[])
    if kind == "C":
        args = [_name_ast(node[1])]
        if node[2] is not None:
            ref = node[2]
            lit = ast.Name(id=ref) if ref in ("True", "False") else _const(ref)
            func, keyword = node[3] if len(node) > 3 else ("contr.treatment", None)
            f_ast = (ast.Attribute(value=ast.Name(id="contr"), attr="treatment") if func == "contr.treatment"
                     else ast.Name(id="Treatment"))
            call = (ast.Call(func=f_ast, args=[], keywords=[ast.keyword(arg=keyword, value=lit)]) if keyword
                    else ast.Call(func=f_ast, args=[lit], keywords=[]))
            args.append(call)
        return ast.Call(func=ast.Name(id="C"), args=args, keywords=[])
    if kind == "call":
        fname = node[1]
        if "." in fname:
            mod, attr = fname.split(".", 1)
            func = ast.Attribute(value=ast.Name(id=mod), attr=attr)
        else:
            func = ast.Name(id=fname)
        kws = [ast.keyword(arg=k, value=ast.List(elts=[_const(x) for x in v]) if isinstance(v, list) else _const(v))
               for k, v in node[3].items()]
        return ast.Call(func=func, args=[_to_ast(a) for a in node[2]], keywords=kws)
    raise FormulaError(f"unknown formula node {kind!r}")


def render(node) -> str:
    """The factor's name, as formulaic (and Python's own formatter) would write it."""
    if node[0] == "col":  # a column on its own is named as it is, backticks or not
        return node[1]
    return ast.unparse(_to_ast(node))


# ---------------------------------------------------------------------------------------- parsed formula
class ParsedFormula:
    """A formula read by the grammar: its terms (tuples of factor nodes), in model order."""

    def __init__(self, text: str, terms: list[tuple]):
        self.text = text
        self.terms = terms  # without the intercept, ordered by degree (stable)

    @property
    def factors(self) -> list:
        """Distinct factor nodes, in order of first appearance."""
        seen: dict[str, Any] = {}
        for t in self.terms:
            for node in t:
                seen.setdefault(render(node), node)
        return list(seen.values())

    def variables(self) -> list[str]:
        """Column names the formula uses, in order of appearance."""
        out: list[str] = []
        for node in self.factors:
            for v in node_variables(node):
                if v not in out:
                    out.append(v)
        return out

    def categorical_variables(self) -> set[str]:
        """Columns used inside C()."""
        return {node[1] for node in self.factors if node[0] == "C"}

    def smooth_terms(self) -> list[str]:
        return [t[0][1] for t in self.terms if len(t) == 1 and t[0][0] == "smooth"]

    def without_smooth(self) -> str:
        """The formula text of the terms that are not s() terms ('' if none)."""
        keep = [t for t in self.terms if not any(n[0] == "smooth" for n in t)]
        return " + ".join(":".join(render(n) for n in t) for t in keep)


def node_variables(node) -> list[str]:
    kind = node[0]
    if kind in ("col", "smooth", "C"):
        return [node[1]]
    if kind == "num":
        return []
    if kind == "op":
        return node_variables(node[2]) + node_variables(node[3])
    if kind in ("neg", "pos", "I"):
        return node_variables(node[1])
    if kind == "call":
        return [v for a in node[2] for v in node_variables(a)]
    return []


def clean_formula(formula) -> str:
    """The right-hand side without ``~`` ('' for no covariates); a left-hand side is an error."""
    if formula is None:
        return ""
    if not isinstance(formula, str):
        raise FormulaError(
            f"The 'formula' parameter must be a string such as 'age + sex' or None. Got {formula!r} instead."
        )
    if len(formula) > _MAX_LENGTH:
        raise FormulaError(f"formula of {len(formula)} characters is longer than featharm accepts ({_MAX_LENGTH}).")
    f = formula.strip()
    if f.startswith("~"):
        f = f[1:].strip()
    if "~" in f:
        raise FormulaError(
            f"formula {formula!r} has a left-hand side; give only the covariates to preserve, "
            "e.g. 'age + sex' (the features are the response)."
        )
    if f in ("", "1"):
        return ""
    return f


@functools.lru_cache(maxsize=256)
def _parse_cached(text: str) -> tuple:
    parser = _Parser(text)
    keyed = parser.formula()
    import json

    terms = [tuple(json.loads(k) for k in t) for t in keyed if t]
    terms.sort(key=len)  # formulaic's "degree" ordering (stable)
    return tuple(terms)


def parse_formula(formula) -> ParsedFormula:
    """Parse a formula (``"age * sex + C(site_field)"``) with featharm's grammar; nothing is evaluated.

    Raises :class:`~featharm.exceptions.FormulaError` naming the offending token for anything outside
    the grammar (see the module docstring).
    """
    text = clean_formula(formula)
    if not text:
        return ParsedFormula("", [])
    terms = [tuple(_copy(n) for n in t) for t in _parse_cached(text)]
    return ParsedFormula(text, terms)


def formula_columns(formula, columns) -> list[str]:
    """The columns among ``columns`` that ``formula`` uses, in model order (``[]`` for no formula).

    The formula is parsed by the grammar, so a formula outside it is an error here already.
    """
    names = set(map(str, columns))
    return [v for v in parse_formula(formula).variables() if v in names]


def _copy(node):
    import json

    return json.loads(json.dumps(node))


# ---------------------------------------------------------------------------------------- evaluation
def check_node(node, depth: int = 0) -> None:
    """Validate a factor node read from a file: only known kinds, allowed functions, finite literals."""
    if depth > _MAX_DEPTH:
        raise FormulaError("a stored formula factor is nested too deeply")
    if not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise FormulaError(f"a stored formula factor is malformed: {str(node)[:80]}")
    kind = node[0]
    if kind == "col" and len(node) == 2 and isinstance(node[1], str) and node[1]:
        return
    if kind == "num" and len(node) == 2 and isinstance(node[1], (int, float)) and not isinstance(node[1], bool) \
            and np.isfinite(node[1]):
        return
    if kind == "op" and len(node) == 4 and node[1] in _OPS:
        check_node(node[2], depth + 1)
        check_node(node[3], depth + 1)
        return
    if kind in ("neg", "pos", "I") and len(node) == 2:
        check_node(node[1], depth + 1)
        return
    if kind == "C" and len(node) in (3, 4) and isinstance(node[1], str) and \
            (node[2] is None or isinstance(node[2], (str, int, float)) and not isinstance(node[2], bool)):
        return
    if kind == "call" and len(node) == 4 and node[1] == "poly" and isinstance(node[2], list) \
            and isinstance(node[3], dict) and set(node[3]) <= {"degree"} and (
                (len(node[2]) == 2 and not node[3] and node[2][1][:1] == ["num"]
                 and isinstance(node[2][1][1], int) and 1 <= node[2][1][1] <= 20)
                or (len(node[2]) == 1 and isinstance(node[3].get("degree", 1), int)
                    and 1 <= node[3].get("degree", 1) <= 20)):
        check_node(node[2][0], depth + 1)
        return
    if kind == "call" and len(node) == 4 and isinstance(node[2], list) and len(node[2]) == 1 \
            and isinstance(node[3], dict):
        fname = node[1]
        base = fname.split(".", 1)[1] if isinstance(fname, str) and fname.startswith(("np.", "numpy.")) else fname
        if base in FUNCTIONS and not node[3]:
            check_node(node[2][0], depth + 1)
            return
        if fname in STATEFUL and fname != "poly" and (fname == "bs" or not node[3]) and all(k in _BS_KEYWORDS for k in node[3]):
            check_node(node[2][0], depth + 1)
            return
        raise FormulaError(f"a stored formula calls {str(fname)[:40]!r}, which is not one of featharm's functions")
    raise FormulaError(f"a stored formula factor is malformed: {str(node)[:80]}")


class _Evaluator:
    """Evaluates numerical factor nodes on a frame of float64 columns, with frozen transform state.

    ``state`` maps the rendered text of each stateful call to its parameters; when ``fitting``, missing
    entries are learned from the data (and added to ``state``); otherwise they must be present.
    """

    def __init__(self, columns: dict[str, np.ndarray], state: dict, fitting: bool, categorical: set,
                 formula: str = ""):
        self.columns, self.state, self.fitting = columns, state, fitting
        self.categorical, self.formula = categorical, formula

    def __call__(self, node) -> dict[str, np.ndarray]:
        """Columns of a numerical factor: ``{"": values}``, or ``{"[1]": ..., "[2]": ...}`` for a basis."""
        if node[0] == "call" and node[1] == "bs":
            return self.bspline(node)
        if node[0] == "call" and node[1] == "poly":
            return self.poly(node)
        return {"": self.scalar(node)}

    def scalar(self, node) -> np.ndarray:
        kind = node[0]
        if kind == "col":
            name = node[1]
            if name in self.categorical:
                raise FormulaError(
                    f"formula {self.formula!r} uses the categorical column {name!r} in arithmetic or a "
                    "function; use it as a term on its own (or in C())."
                )
            return self.columns[name]
        if kind == "num":
            return node[1]
        if kind == "op":
            a, b = self.scalar(node[2]), self.scalar(node[3])
            return {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
                    "**": operator.pow}[node[1]](a, b)
        if kind == "neg":
            return -self.scalar(node[1])
        if kind == "pos":
            return +self.scalar(node[1])
        if kind == "I":
            return self.scalar(node[1])
        if kind == "call":
            fname = node[1]
            if fname in ("center", "scale", "standardize"):
                return self.scale(node)
            if fname in ("bs", "poly"):
                raise FormulaError(f"formula {self.formula!r}: {fname}() must be a term of its own (or in an "
                                   "interaction), not inside arithmetic.")
            base = fname.split(".", 1)[1] if "." in fname else fname
            return FUNCTIONS[base](np.asarray(self.scalar(node[2][0]), dtype=np.float64))
        raise FormulaError(f"formula {self.formula!r}: {render(node)} cannot be evaluated as a number.")

    def _state_of(self, node) -> dict | None:
        key = render(node)
        st = self.state.get(key)
        if st is None and not self.fitting:
            raise FormulaError(f"the frozen state of {key!r} is missing from the model's design.")
        return st

    def scale(self, node) -> np.ndarray:
        x = np.array(self.scalar(node[2][0]), dtype=np.float64)
        if np.ndim(x) == 0:
            raise FormulaError(f"formula {self.formula!r}: {render(node)} of a constant.")
        st = self._state_of(node)
        if st is None:
            center = float(np.mean(x, axis=0))
            st = {"center": center}
            if node[1] != "center":
                d = x - center
                ddof = 1 if node[1] == "scale" else 0  # scale(): sample SD (as R); standardize(): population SD
                st["scale"] = float(np.sqrt(np.sum(d ** 2, axis=0) / (x.shape[0] - ddof)))
                if not st["scale"] > 0:
                    raise FormulaError(f"formula {self.formula!r}: {render(node)} of a constant column.")
            self.state[render(node)] = st
        out = x - st["center"]
        if node[1] != "center":
            out = out / st["scale"]
        return out

    def poly(self, node) -> dict[str, np.ndarray]:
        """Orthogonal polynomials by the three-term recurrence, their coefficients frozen at fit."""
        x = np.array(self.scalar(node[2][0]), dtype=np.float64)
        degree = poly_degree(node)
        st = self._state_of(node)
        training = st is None
        alpha = {} if training else {int(k): float(v) for k, v in enumerate(st["alpha"])}
        norms2 = {} if training else {int(k): float(v) for k, v in enumerate(st["norms2"])}
        P = np.empty((x.shape[0], degree + 1))
        P[:, 0] = 1

        def get_alpha(k):
            if training and k not in alpha:
                alpha[k] = np.sum(x * P[:, k] ** 2) / np.sum(P[:, k] ** 2)
            return alpha[k]

        def get_norm(k):
            if training and k not in norms2:
                norms2[k] = np.sum(P[:, k] ** 2)
            return norms2[k]

        for i in range(1, degree + 1):
            P[:, i] = (x - get_alpha(i - 1)) * P[:, i - 1]
            if i >= 2:
                P[:, i] -= get_norm(i - 1) / get_norm(i - 2) * P[:, i - 2]
        P /= np.array([np.sqrt(get_norm(k)) for k in range(0, degree + 1)])
        if training:
            self.state[render(node)] = {"alpha": [float(alpha[k]) for k in range(degree)],
                                        "norms2": [float(norms2[k]) for k in range(degree + 1)]}
        return {f"[{i}]": P[:, i] for i in range(1, degree + 1)}

    def bspline(self, node) -> dict[str, np.ndarray]:
        x = np.asarray(self.scalar(node[2][0]), dtype=np.float64)
        kw = node[3]
        degree = int(kw.get("degree", 3))
        st = self._state_of(node)
        if st is None:
            if "df" in kw and "knots" in kw:
                raise FormulaError(f"formula {self.formula!r}: bs() takes df or knots, not both.")
            if degree < 0 or degree > 10:
                raise FormulaError(f"formula {self.formula!r}: bs() degree must be 0 to 10.")
            lower = float(kw["lower_bound"]) if "lower_bound" in kw else float(np.min(x))
            upper = float(kw["upper_bound"]) if "upper_bound" in kw else float(np.max(x))
            inner = [float(k) for k in kw.get("knots", [])]
            if "df" in kw:
                nk = int(kw["df"]) - degree
                if nk < 0:
                    raise FormulaError(f"formula {self.formula!r}: bs() df must be at least the degree "
                                       f"({degree}).")
                inner = np.quantile(x, np.linspace(0, 1, nk + 2))[1:-1].tolist()
            knots = [lower] * (degree + 1) + inner + [upper] * (degree + 1)
            st = {"knots": knots, "lower_bound": lower, "upper_bound": upper, "degree": degree}
            self.state[render(node)] = st
        knots = [float(k) for k in st["knots"]]
        lower, upper, degree = float(st["lower_bound"]), float(st["upper_bound"]), int(st["degree"])
        out = (x < lower) | (x > upper)
        if out.any():
            from .exceptions import OutOfRangeError

            raise OutOfRangeError(
                f"{render(node)} was fitted on values from {lower:g} to {upper:g}; "
                f"{int(out.sum())} row(s) lie outside (e.g. {x[out][0]:g}). A B-spline is not extrapolated: "
                "keep new data within the training range or refit."
            )
        return _bspline_basis(x, knots, degree)


def poly_degree(node) -> int:
    return node[2][1][1] if len(node[2]) == 2 else int(node[3].get("degree", 1))


def _bspline_basis(x: np.ndarray, knots: list[float], degree: int) -> dict[str, np.ndarray]:
    """B-spline basis by the Cox-de Boor recursion (the first basis function dropped, as bs() does)."""
    nb = len(knots) - 1
    last = nb - degree - 1  # the interval closed on the right (the upper boundary)
    cur = {}
    for i in range(nb):
        right = (x <= knots[i + 1]) if i == last else (x < knots[i + 1])
        cur[i] = ((x >= knots[i]) & right).astype(float)

    def alpha(i, j):
        return (x - knots[i]) / (knots[i + j] - knots[i]) if knots[i + j] != knots[i] else 0

    for d in range(1, degree + 1):
        cur = {i: alpha(i, d) * cur[i] + (1 - alpha(i + 1, d)) * cur[i + 1] for i in range(nb - d)}
    return {f"[{i}]": cur[i] for i in sorted(cur) if i > 0}


# ---------------------------------------------------------------------------------------- full-rank coding
def scoped_terms(terms: list[tuple[str, ...]], categorical: set[str]) -> list[list[tuple[str, bool]]]:
    """Which factors of each term are coded in full and which in reduced rank, so the design is full rank.

    ``terms``: tuples of factor names, in model order, the intercept implied first; ``categorical``: the
    names of categorical factors. Returns, per output block, ``[(factor, reduced), ...]`` in the term's
    factor order. Each term spans the products of its numerical factors with every subset of its
    categorical ones (as contrasts); what earlier terms span is removed, and a block that differs from a
    kept one by one reduced factor is merged into it with that factor in full (formulaic's rule).
    """
    spanned = {frozenset()}  # the intercept
    blocks: list[tuple] = []
    for term in terms:
        options = [((f, True), None) if f in categorical else ((f, False),) for f in term]
        span: list[tuple] = []
        seen = set()
        for combo in itertools.product(*options):
            st = tuple(c for c in combo if c is not None)
            k = frozenset(st)
            if k not in seen:
                seen.add(k)
                span.append(st)
        new = [st for st in span if frozenset(st) not in spanned]
        blocks.extend(_simplify(new))
        spanned.update(frozenset(st) for st in new)
    return [list(b) for b in blocks]


def _simplify(scoped: list[tuple]) -> list[tuple]:
    out: list[tuple] = []
    for st in sorted(scoped, key=len):
        factors = set(st)
        merged = False
        for existing in out:
            co = set(existing)
            diff = factors - co
            if len(factors) - 1 != len(co) or len(diff) != 1:
                continue
            (fname, reduced), = diff
            if reduced:
                full = tuple((f, False) if (f, r) == (fname, reduced) else (f, r) for f, r in st)
                rest = [t for t in out if frozenset(t) != frozenset(existing)]
                if frozenset(full) not in {frozenset(t) for t in rest}:
                    rest.append(full)
                out = _simplify(rest)
                merged = True
                break
        if not merged and frozenset(st) not in {frozenset(t) for t in out}:
            out.append(st)
    return out


def product_columns(blocks, factor_columns) -> tuple[list[str], list[np.ndarray]]:
    """Names and values of the design columns: per block, the row-wise product of its factors' columns,
    the first factor varying fastest. ``factor_columns(name, reduced)`` gives ``[(name, values), ...]``."""
    names, cols = [], []
    for block in blocks:
        parts = [factor_columns(f, reduced) for f, reduced in block]
        for rev in itertools.product(*reversed(parts)):
            combo = rev[::-1]
            names.append(":".join(c[0] for c in combo))
            cols.append(functools.reduce(operator.mul, (c[1] for c in combo)))
    return names, cols
