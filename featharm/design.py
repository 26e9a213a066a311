"""Design matrices: covariate formulas frozen at fit time and batch indicators.

The covariates to preserve are given as the right-hand side of a formula over columns of the covariate
table (``"age + sex"``, ``"age * sex + C(scanner_field)"``, ``"log(age) + I(age**2)"``, stateful
transforms such as ``center(age)``). The formula is read by featharm's own grammar
(:mod:`featharm.formula`) and evaluated by featharm, never by Python's ``eval``. :class:`CovariateDesign`
freezes everything needed to encode new rows identically:

* string, categorical and boolean columns (and numeric columns used inside ``C()``) are categorical; their
  levels are the sorted unique values seen at fit, the first one being the baseline of the treatment
  coding (pick another with ``C(sex, Treatment("M"))``); a level unseen at fit is an error;
* numeric columns are continuous;
* the factors (as data), the state of stateful transforms (centres, scales, spline knots), the full- or
  reduced-rank coding of each block, and the column names and order.

The frozen design is plain JSON data (see :meth:`CovariateDesign.to_dict`): a saved model rebuilds its
matrix from that data alone, without reading the formula text again. There is no intercept column: the
batch indicators span it (docs/methods.md §0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg as sla

from . import formula as _fm
from ._validation import check_categorical_covariate, show_columns, warn_near_duplicate_levels
from .exceptions import (
    ColumnNotFoundError,
    ConfoundingError,
    FormulaError,
    InputError,
    MissingValueError,
    ModelFileError,
    CollinearityWarning,
    UnseenLevelError,
    warn,
)

__all__ = ["CovariateDesign", "batch_indicators", "check_full_rank"]

SPEC_VERSION = 1


def _numeric_categories(dtype: pd.CategoricalDtype) -> bool:
    cats = dtype.categories
    return pd.api.types.is_numeric_dtype(cats) and not pd.api.types.is_bool_dtype(cats)


def _is_categorical_dtype(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def _first_ids(index, mask, k: int = 5) -> str:
    ids = list(index[np.asarray(mask)][:k])
    more = int(np.sum(mask)) - len(ids)
    return ", ".join(map(repr, ids)) + (f" and {more} more" if more > 0 else "")


def _show_levels(values, k: int = 8) -> str:
    vals = list(dict.fromkeys(values))
    return ", ".join(map(repr, vals[:k])) + (f" and {len(vals) - k} more" if len(vals) > k else "")


def _level_key(v):
    """A level as stored (float for numeric levels, else text)."""
    return v


class CovariateDesign:
    """A covariate formula frozen at fit time; builds the covariate block X (no intercept) for any rows.

    Use :meth:`fit` on the training covariates, then :meth:`transform` on any covariate table; the
    columns (names, order, categorical levels, transform state) are the same every time.

    Attributes
    ----------
    formula : str
        The right-hand side, without ``~`` (``""`` for no covariates); kept for display only.
    variables : list of str
        Covariate columns the formula uses.
    levels : dict
        For each categorical variable, its sorted levels (the first is the baseline).
    columns : list of str
        Names of the design columns, in order.
    ranges : dict
        For each continuous variable, its ``[min, max]`` at fit time.
    spec : dict
        The frozen design as data: the factors (parsed expression trees, categorical references), the
        state of the stateful transforms, and the coding of each block of columns.
    """

    def __init__(self, formula: str = "", variables=(), levels=None, columns=(), transform_state=None,
                 ranges=None, float32: bool = False, spec=None):
        self.formula = formula
        self.variables = list(variables)
        self.levels = dict(levels or {})
        self.columns = list(columns)
        self.transform_state = transform_state  # models saved before featharm 0.2: formulaic's state
        self.ranges = dict(ranges or {})
        self.float32 = bool(float32)
        self.spec = spec

    # ------------------------------------------------------------------ fit / transform
    @classmethod
    def fit(cls, formula: str | None, covariates: pd.DataFrame, *, float32: bool = False,
            exclude=()) -> tuple["CovariateDesign", np.ndarray]:
        """Freeze ``formula`` on ``covariates``; return the design and the training block X (n × q)."""
        parsed = _fm.parse_formula(formula)
        f = parsed.text
        if not f:
            return cls(formula="", float32=float32, spec=_empty_spec()), np.zeros((len(covariates), 0))
        smooth = parsed.smooth_terms()
        if smooth:
            raise FormulaError(f"formula {formula!r} has the smooth term s({smooth[0]}); smooth terms are for "
                               "ComBatGAM (featharm.ComBatGAM or --method gam).")
        names = parsed.variables()
        cols = list(covariates.columns)
        colset = set(map(str, cols))
        absent = [v for v in names if v not in colset]
        if absent:
            raise ColumnNotFoundError(
                f"formula {formula!r} names {absent[0]!r}, which is not a covariate column; "
                f"columns present: {show_columns(covariates.columns)}."
            )
        variables = names
        in_c = parsed.categorical_variables()
        bad = [v for v in variables if v in set(map(str, exclude))]
        if bad:
            raise FormulaError(
                f"formula {formula!r} uses the batch column {bad[0]!r} as a covariate; the batch is added "
                "by the model itself. Remove it from the formula."
            )
        levels: dict[str, list] = {}
        ranges: dict[str, list[float]] = {}
        for v in variables:
            s = covariates[v]
            _check_no_missing(s, v)
            if v not in in_c:
                check_categorical_covariate(s, v)
            if _is_categorical_dtype(s) or v in in_c:
                if isinstance(s.dtype, pd.CategoricalDtype) and _numeric_categories(s.dtype):
                    lev = sorted(float(x) for x in pd.unique(s.astype(float)))
                elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
                    lev = sorted(float(x) for x in pd.unique(s))
                else:
                    lev = sorted(pd.unique(s.astype(str)).tolist())
                    warn_near_duplicate_levels(lev, v, "covariate")
                levels[v] = lev
            else:
                vals = _finite_values(s, v)
                ranges[v] = [float(vals.min()), float(vals.max())]
        factors = []
        for node in parsed.factors:
            name = _fm.render(node)
            if node[0] == "C" or (node[0] == "col" and node[1] in levels):
                var = node[1]
                ref = node[2] if node[0] == "C" else None
                if ref is not None:
                    ref = _match_level(ref, levels[var], var, formula)
                factors.append({"name": name, "kind": "categorical", "variable": var, "reference": ref})
            else:
                factors.append({"name": name, "kind": "numerical", "node": node})
        by_name = {fa["name"]: fa for fa in factors}
        terms = [tuple(dict.fromkeys(_fm.render(n) for n in t)) for t in parsed.terms]
        categorical = {fa["name"] for fa in factors if fa["kind"] == "categorical"}
        blocks = _fm.scoped_terms(terms, categorical)
        spec = {"version": SPEC_VERSION, "factors": factors,
                "blocks": [[[f, bool(r)] for f, r in b] for b in blocks], "state": {}}
        design = cls(formula=f, variables=variables, levels=levels, ranges=ranges, float32=float32, spec=spec)
        X, columns = design._build(covariates, fitting=True)
        design.columns = columns
        del by_name
        return design, X

    def _prepare(self, covariates: pd.DataFrame) -> pd.DataFrame:
        """The used covariate columns, checked: categorical ones with the frozen levels, floats for the others."""
        missing = [v for v in self.variables if v not in covariates.columns]
        if missing:
            raise ColumnNotFoundError(
                f"covariates lack the column(s) {missing} used by formula {self.formula!r}; "
                f"columns present: {show_columns(covariates.columns)}."
            )
        out = {}
        for v in self.variables:
            s = covariates[v]
            _check_no_missing(s, v)
            if v in self.levels:
                lev = self.levels[v]
                numeric_levels = bool(lev) and isinstance(lev[0], float)
                if numeric_levels:
                    vals = pd.to_numeric(s.astype(object) if isinstance(s.dtype, pd.CategoricalDtype) else s,
                                         errors="coerce")
                    text = ~np.isfinite(np.asarray(vals, dtype=float))
                    if text.any():
                        raise UnseenLevelError(
                            f"covariate {v!r} was coded as numbers at fit (levels {_show_levels(lev)}) but holds "
                            f"{_show_levels(s[text].astype(str).tolist())} at rows "
                            f"{_first_ids(covariates.index, text)}. Code it as at fit time."
                        )
                    vals = pd.Series(np.asarray(vals, dtype=float), index=s.index)
                else:
                    vals = s.astype(str)
                unseen = ~vals.isin(lev).to_numpy()
                if unseen.any():
                    new = sorted(pd.unique(vals[unseen]).tolist(), key=str)
                    recoded = ""
                    if not numeric_levels and pd.api.types.is_numeric_dtype(s) \
                            and not pd.api.types.is_bool_dtype(s):
                        recoded = " (it was text at fit time and holds numbers now: code it as at fit time)"
                    raise UnseenLevelError(
                        f"covariate {v!r} has level(s) {new} that were not seen at fit time "
                        f"(known levels: {lev}){recoded}, at rows {_first_ids(covariates.index, unseen)}. "
                        "Recode them to a known level or refit the model with them."
                    )
                out[v] = pd.Categorical(vals.to_numpy(), categories=lev)
            else:
                if _is_categorical_dtype(s) and not pd.api.types.is_bool_dtype(s):
                    num = pd.to_numeric(s.astype(object), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
                    text = ~np.isfinite(num)
                    if text.any():
                        raise InputError(
                            f"covariate {v!r} was numeric at fit time but holds text now: "
                            f"{_show_levels(s[text].astype(str).tolist())} at rows "
                            f"{_first_ids(covariates.index, text)}. Give numbers, as at fit time."
                        )
                    s = pd.Series(num, index=s.index)
                vals = _finite_values(s, v)
                if self.float32:
                    vals = vals.astype(np.float32).astype(np.float64)
                out[v] = vals
        return pd.DataFrame(out, index=pd.RangeIndex(len(covariates)))

    def transform(self, covariates: pd.DataFrame) -> np.ndarray:
        """The covariate block X (n × q, float64) for ``covariates``, encoded as at fit time."""
        n = len(covariates)
        if not self.formula:
            return np.zeros((n, 0))
        X, columns = self._build(covariates, fitting=False)
        if columns != self.columns:
            raise FormulaError(
                f"the formula {self.formula!r} produced columns {columns} on these covariates but "
                f"{self.columns} at fit time."
            )
        return X

    def _build(self, covariates: pd.DataFrame, *, fitting: bool) -> tuple[np.ndarray, list[str]]:
        spec = self._spec()
        n = len(covariates)
        frame = self._prepare(covariates)
        factors = {fa["name"]: fa for fa in spec["factors"]}
        numeric = {v: frame[v].to_numpy() for v in frame if v not in self.levels}
        ev = _fm._Evaluator(numeric, spec["state"], fitting, set(self.levels), self.formula)
        cache: dict[str, Any] = {}

        def columns_of(name: str, reduced: bool):
            fa = factors[name]
            if fa["kind"] == "categorical":
                var = fa["variable"]
                lev = self.levels[var]
                codes = np.asarray(frame[var].cat.codes)
                ref = 0 if fa["reference"] is None else lev.index(fa["reference"])
                return [(f"{name}[T.{lv}]" if reduced else f"{name}[{lv}]", (codes == k).astype(np.float64))
                        for k, lv in enumerate(lev) if not (reduced and k == ref)]
            if name not in cache:
                vals = ev(fa["node"])
                cache[name] = [(name + suffix, np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)))
                               for suffix, v in vals.items()]
            return cache[name]

        blocks = [[(f, bool(r)) for f, r in b] for b in spec["blocks"]]
        with np.errstate(all="ignore"):  # log(0) and the like: reported below with the rows
            names, cols = _fm.product_columns(blocks, columns_of)
        X = np.column_stack(cols) if cols else np.zeros((n, 0))
        X = np.ascontiguousarray(X, dtype=np.float64)
        if not np.isfinite(X).all():
            bad = ~np.isfinite(X).all(axis=1)
            raise MissingValueError(
                f"formula {self.formula!r} gives non-finite values (e.g. log or sqrt of a non-positive number) "
                f"at rows {_first_ids(covariates.index, bad)}."
            )
        return X, names

    def _spec(self) -> dict:
        if self.spec is None:  # a model saved before featharm had its own evaluator
            self.spec = _spec_from_formulaic_state(self)
        return self.spec

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        spec = self._spec() if self.formula else _empty_spec()
        return {
            "formula": self.formula,
            "variables": self.variables,
            "levels": self.levels,
            "columns": self.columns,
            "ranges": self.ranges,
            "float32": self.float32,
            # the frozen parameters of the stateful transforms (plain JSON), and the rest of the design data
            "transform_state": dict(spec["state"]),
            "spec": {k: v for k, v in spec.items() if k != "state"},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CovariateDesign":
        """Rebuild a frozen design from its data, validating every part (it may come from someone else's
        file): a :class:`~featharm.exceptions.ModelFileError` names what is wrong."""
        if not isinstance(d, dict):
            raise ModelFileError(f"the stored design is a {type(d).__name__}, not an object.")
        allowed = {"formula", "variables", "levels", "columns", "ranges", "float32", "spec", "transform_state"}
        extra = sorted(set(d) - allowed)
        if extra:
            raise ModelFileError(f"the stored design has unknown entries {extra}.")
        formula = d.get("formula", "")
        if not isinstance(formula, str):
            raise ModelFileError("the stored design's formula is not text.")
        variables = d.get("variables", [])
        if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables) \
                or len(set(variables)) != len(variables):
            raise ModelFileError("the stored design's variables are not a list of distinct column names.")
        levels = d.get("levels", {})
        if not isinstance(levels, dict) or any(
                k not in variables or not isinstance(v, list) or not v or len(v) != len(set(map(repr, v)))
                or not (all(isinstance(x, str) for x in v)
                        or all(isinstance(x, float) and np.isfinite(x) for x in v))
                for k, v in levels.items()):
            raise ModelFileError("the stored design's categorical levels are malformed (each variable needs a "
                                 "list of distinct texts or of distinct finite numbers).")
        columns = d.get("columns", [])
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns) \
                or len(set(columns)) != len(columns):
            raise ModelFileError("the stored design's columns are not a list of distinct names.")
        ranges = d.get("ranges", {})
        if not isinstance(ranges, dict) or any(
                not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                for v in ranges.values()):
            raise ModelFileError("the stored design's ranges are malformed.")
        float32 = d.get("float32", False)
        if not isinstance(float32, bool):
            raise ModelFileError("the stored design's float32 flag is not true/false.")
        design = cls(formula=formula, variables=variables, levels=levels, columns=columns,
                     transform_state=d.get("transform_state"), ranges=ranges, float32=float32)
        spec = d.get("spec")
        if spec is not None:  # featharm >= 0.2: the state is plain JSON beside the spec
            if not isinstance(spec, dict) or "state" in spec:
                raise ModelFileError("the stored design's spec is malformed.")
            state = d.get("transform_state", {})
            design.transform_state = None
            design.spec = _check_spec({**spec, "state": state}, design)
        elif formula:
            try:
                design.spec = _spec_from_formulaic_state(design)
            except FormulaError as exc:
                raise ModelFileError(f"the stored design cannot be rebuilt: {exc}") from None
        else:
            design.spec = _empty_spec()
        if not formula and (columns or variables):
            raise ModelFileError("the stored design has columns but no formula.")
        if formula and spec is not None:  # the text is only displayed, but it must be what the data say
            try:
                parsed = _fm.parse_formula(formula)
            except FormulaError as exc:
                raise ModelFileError(f"the stored design's formula is not one featharm reads: {exc}") from None
            said = {_fm.render(n) for n in parsed.factors}
            stored = {fa["name"] for fa in design.spec["factors"]}
            if said != stored:
                raise ModelFileError(
                    f"the stored design's formula {formula[:80]!r} names the factors {sorted(said)[:6]} but its "
                    f"data hold {sorted(stored)[:6]}."
                )
        if formula:
            try:
                _check_spec_columns(design)
            except FormulaError as exc:
                raise ModelFileError(f"the stored design is inconsistent: {exc}") from None
        return design

    def __repr__(self) -> str:
        return f"CovariateDesign(formula={self.formula!r}, columns={self.columns})"


def _empty_spec() -> dict:
    return {"version": SPEC_VERSION, "factors": [], "blocks": [], "state": {}}


def _match_level(ref, lev: list, var: str, formula) -> Any:
    for lv in lev:
        if (isinstance(lv, float) and not isinstance(ref, str) and float(ref) == lv) or str(lv) == str(ref) \
                or (isinstance(lv, float) and isinstance(ref, str) and _float_or_none(ref) == lv):
            return lv
    raise FormulaError(f"formula {formula!r}: the baseline level {ref!r} is not a level of {var!r} "
                       f"(levels: {_show_levels(lev)}).")


def _float_or_none(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def _check_spec(spec, design: CovariateDesign) -> dict:
    """Validate a stored design spec (types, references, known functions); return it."""
    def bad(what):
        return ModelFileError(f"the stored design is malformed: {what}.")

    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise bad(f"unknown design spec version {spec.get('version') if isinstance(spec, dict) else spec!r}")
    factors, blocks, state = spec.get("factors"), spec.get("blocks"), spec.get("state")
    if not isinstance(factors, list) or not isinstance(blocks, list) or not isinstance(state, dict):
        raise bad("'factors', 'blocks' and 'state' must be a list, a list and an object")
    names = set()
    for fa in factors:
        if not isinstance(fa, dict) or not isinstance(fa.get("name"), str) or fa["name"] in names:
            raise bad("each factor needs a distinct name")
        names.add(fa["name"])
        if fa.get("kind") == "categorical":
            var = fa.get("variable")
            if var not in design.levels:
                raise bad(f"categorical factor {fa['name']!r} has no stored levels")
            if set(fa) != {"name", "kind", "variable", "reference"}:
                raise bad(f"factor {fa['name']!r} has unexpected entries")
            if fa["reference"] is not None and fa["reference"] not in design.levels[var]:
                raise bad(f"the baseline of {fa['name']!r} is not one of its levels")
        elif fa.get("kind") == "numerical" and set(fa) == {"name", "kind", "node"}:
            try:
                _fm.check_node(fa["node"])
            except FormulaError as exc:
                raise bad(str(exc)) from None
            used = [v for v in _fm.node_variables(fa["node"]) if v not in design.variables]
            if used:
                raise bad(f"factor {fa['name']!r} uses {used[0]!r}, which is not a stored variable")
        else:
            raise bad(f"factor {str(fa)[:60]} is neither categorical nor numerical")
    for b in blocks:
        if not isinstance(b, list) or not b or not all(
                isinstance(x, list) and len(x) == 2 and x[0] in names and isinstance(x[1], bool) for x in b):
            raise bad("each block must list [factor name, reduced] pairs of known factors")
    for key, st in state.items():
        if not isinstance(st, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                or (k in ("alpha", "norms2") and isinstance(v, list) and v
                    and all(isinstance(x, (int, float)) and np.isfinite(x) for x in v))
                or (k == "knots" and isinstance(v, list) and v
                    and all(isinstance(x, (int, float)) and np.isfinite(x) for x in v)
                    and all(a <= b for a, b in zip(v, v[1:])))
                for k, v in st.items()):
            raise bad(f"the state of {key!r} must hold finite numbers (and sorted knots)")
        if "scale" in st and not st["scale"] > 0:
            raise bad(f"the scale of {key!r} must be positive")
        if "degree" in st and not (isinstance(st["degree"], int) and 0 <= st["degree"] <= 10
                                   and len(st.get("knots", [])) >= 2 * (st["degree"] + 1)):
            raise bad(f"the spline state of {key!r} is inconsistent")
    return spec


def _check_spec_columns(design: CovariateDesign) -> None:
    """The columns the spec builds must be the stored columns (checked without data)."""
    spec = design.spec
    factors = {fa["name"]: fa for fa in spec["factors"]}

    def columns_of(name, reduced):
        fa = factors[name]
        if fa["kind"] == "categorical":
            lev = design.levels[fa["variable"]]
            ref = 0 if fa["reference"] is None else lev.index(fa["reference"])
            return [(f"{name}[T.{lv}]" if reduced else f"{name}[{lv}]", 0.0)
                    for k, lv in enumerate(lev) if not (reduced and k == ref)]
        node = fa["node"]
        if node[0] == "call" and node[1] == "bs":
            st = spec["state"].get(name)
            if st is None:
                raise FormulaError(f"the spline state of {name!r} is missing")
            nb = len(st["knots"]) - 1 - int(st["degree"])
            return [(f"{name}[{i}]", 0.0) for i in range(1, nb)]
        if node[0] == "call" and node[1] == "poly":
            return [(f"{name}[{i}]", 0.0) for i in range(1, _fm.poly_degree(node) + 1)]
        return [(name, 0.0)]

    names, _ = _fm.product_columns([[(f, r) for f, r in b] for b in spec["blocks"]], columns_of)
    if names != design.columns:
        raise FormulaError(f"its formula data give the columns {names[:6]} but it lists {design.columns[:6]}")


def _spec_from_formulaic_state(design: CovariateDesign) -> dict:
    """The spec of a design saved by featharm 0.1 (formula text + formulaic's transform state).

    The text is parsed by featharm's grammar (never evaluated); the stateful transforms' parameters are
    taken from the stored state.
    """
    from . import formula as fm

    parsed = fm.parse_formula(design.formula)
    state_in = _from_json(design.transform_state) if design.transform_state is not None else {}
    if not isinstance(state_in, dict):
        raise FormulaError("the stored transform state is not an object")
    factors, state = [], {}
    for node in parsed.factors:
        name = fm.render(node)
        if node[0] == "C" or (node[0] == "col" and node[1] in design.levels):
            ref = node[2] if node[0] == "C" else None
            if ref is not None:
                ref = _match_level(ref, design.levels.get(node[1], []), node[1], design.formula)
            factors.append({"name": name, "kind": "categorical", "variable": node[1], "reference": ref})
            continue
        factors.append({"name": name, "kind": "numerical", "node": node})
        if node[0] == "call" and node[1] in fm.STATEFUL:
            st = state_in.get(name)
            if not isinstance(st, dict):
                raise FormulaError(f"the stored state of {name!r} is missing")
            if node[1] == "poly":
                a, nr = st["alpha"], st["norms2"]
                state[name] = {"alpha": [float(a[k]) for k in sorted(a)],
                               "norms2": [float(nr[k]) for k in sorted(nr)]}
            elif node[1] == "bs":
                knots = [float(k) for k in st["knots"]]
                degree = int(node[3].get("degree", 3))
                state[name] = {"knots": knots, "lower_bound": float(st["lower_bound"]),
                               "upper_bound": float(st["upper_bound"]), "degree": degree}
            else:
                entry = {"center": float(np.asarray(st["center"]))}
                if node[1] != "center":
                    entry["scale"] = float(np.asarray(st["scale"]))
                state[name] = entry
        elif any(n[0] == "call" and n[1] in fm.STATEFUL for n in _walk(node)):
            raise FormulaError(f"{name!r} nests a stateful transform, which featharm 0.1 files store in a form "
                               "that cannot be rebuilt; refit the model")
    terms = [tuple(dict.fromkeys(fm.render(n) for n in t)) for t in parsed.terms]
    categorical = {fa["name"] for fa in factors if fa["kind"] == "categorical"}
    blocks = fm.scoped_terms(terms, categorical)
    return {"version": SPEC_VERSION, "factors": factors,
            "blocks": [[[f, bool(r)] for f, r in b] for b in blocks], "state": state}


def _walk(node):
    yield node
    if not isinstance(node, list):
        return
    for x in node[1:]:
        if isinstance(x, list) and x and isinstance(x[0], str):
            yield from _walk(x)
        elif isinstance(x, list):
            for y in x:
                if isinstance(y, list):
                    yield from _walk(y)


def _from_json(obj: Any, depth: int = 0) -> Any:
    """Formulaic's transform state as featharm 0.1 stored it (tagged JSON), as plain Python values."""
    if depth > 20:
        raise FormulaError("the stored transform state is nested too deeply")
    if isinstance(obj, dict):
        if "__dict__" in obj:
            return {_from_json(k, depth + 1): _from_json(v, depth + 1) for k, v in obj["__dict__"]}
        if "__ndarray__" in obj:
            if str(obj.get("dtype")) not in ("float64", "float32", "int64", "int32"):
                raise FormulaError("the stored transform state holds an array of an unexpected type")
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        if "__tuple__" in obj:
            return tuple(_from_json(v, depth + 1) for v in obj["__tuple__"])
        return {k: _from_json(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v, depth + 1) for v in obj]
    return obj


def _check_no_missing(s: pd.Series, name: str) -> None:
    na = s.isna().to_numpy()
    if na.any():
        raise MissingValueError(
            f"covariate column {name!r} has missing values at rows {_first_ids(s.index, na)}; "
            "fill them or drop those rows before harmonizing (ComBat and CovBat can leave them out with "
            "missing_covariates='exclude'; command line: --missing-covariates exclude)."
        )


def _finite_values(s: pd.Series, name: str) -> np.ndarray:
    vals = s.to_numpy(dtype=float)
    if not np.isfinite(vals).all():
        raise MissingValueError(
            f"covariate column {name!r} has infinite values at rows "
            f"{_first_ids(s.index, ~np.isfinite(vals))}; fix or drop those rows."
        )
    return vals


def batch_indicators(codes: np.ndarray, n_batches: int, ref: int | None = None) -> np.ndarray:
    """The n × m batch indicator block; with a reference batch its column is all ones (§1.5)."""
    B = np.zeros((codes.shape[0], n_batches))
    B[np.arange(codes.shape[0]), codes] = 1.0
    if ref is not None:
        B[:, ref] = 1.0
    return B


def check_full_rank(B: np.ndarray, X: np.ndarray, columns, batch_name: str = "batch",
                    rank_rtol: float = 1e-6, rtol: float = 1e-2, warn_rtol: float = 1e-1) -> None:
    """Refuse a rank-deficient design ``[B | X]`` or covariates (nearly) confounded with the batch.

    Two checks, each naming the covariate column:

    1. *Rank.* Each covariate column is projected out of the span of the batch indicators and the columns
       before it; if less than ``rank_rtol`` of its variation about its mean is left, the design is rank
       deficient (:class:`ConfoundingError`): the column is a function of the batch (a diagnosis present in
       one site only) or of the batch and earlier covariates (``age`` and ``2 * age``).
    2. *Confounding with the batch.* Harmonization removes the batch part of the fit and keeps the
       covariate part, so what matters is how well the two are told apart. Over every combination of the
       (centred) covariate columns, the smallest fraction of variation that lies *within* batches,
       ``rho`` (the smallest singular value of the orthonormalized covariate space projected off the batch
       indicators), measures it: the preserved part is uncertain by roughly ``1 / rho`` times the noise.
       ``rho <= rtol`` is an error (the covariate's effect cannot be separated from the site effect:
       preserving it would add amplified noise); ``rho <= warn_rtol`` is a :class:`CollinearityWarning`.
       Collinearity among covariates alone (``age`` and ``age**2``) does not move the preserved part and
       is not flagged.
    """
    q = X.shape[1]
    if q == 0:
        return
    # projection off the batch indicators through their (small, well-conditioned) Gram matrix: no tall
    # QR, whose LAPACK call is slow for a few columns when BLAS threads compete
    Bt = np.ascontiguousarray(B.T)
    Gb = sla.cho_factor(Bt @ B, check_finite=False)

    def off_batch(M: np.ndarray) -> np.ndarray:
        return M - B @ sla.cho_solve(Gb, Bt @ M, check_finite=False)

    Xb = off_batch(X)
    Xb = off_batch(Xb)  # a second pass removes what rounding left
    basis = np.zeros((X.shape[0], 0))
    for j, name in enumerate(columns):
        col = X[:, j]
        spread = np.linalg.norm(col - col.mean())
        r = Xb[:, j] - basis @ (basis.T @ Xb[:, j])
        r -= basis @ (basis.T @ r)  # re-orthogonalize (classical Gram-Schmidt twice is enough)
        rel = np.linalg.norm(r) / spread if spread > 0 else 0.0
        if rel <= rank_rtol:
            rb = Xb[:, j]
            raise rank_deficiency_error(columns, j, batch_name,
                                        within_batch=spread == 0 or np.linalg.norm(rb) / spread <= rank_rtol)
        basis = np.column_stack([basis, r / np.linalg.norm(r)])
    Xc = X - X.mean(axis=0)
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    keep = S > 1e-9 * S[0]
    U, S, Vt = U[:, keep], S[keep], Vt[keep]
    R = off_batch(off_batch(U))
    _, s, at = np.linalg.svd(R, full_matrices=False)
    rho = float(s[-1])
    if rho > warn_rtol:
        return
    coef = Vt.T @ (at[-1] / S)  # the covariate combination most aligned with the batch
    weight = np.abs(coef) * np.linalg.norm(Xc, axis=0)
    report_near_confounding(rho, weight, columns, q, batch_name, rtol)


def rank_deficiency_error(columns, j: int, batch_name: str, *, within_batch: bool) -> ConfoundingError:
    """The error for covariate column ``j`` explained by the batch indicators (``within_batch``: constant
    within each batch) or by them and the columns before it; shared by the fit from rows and from statistics."""
    name = columns[j]
    if within_batch:
        return ConfoundingError(
            f"covariate column {name!r} is confounded with {batch_name!r}: it is constant within "
            f"each {batch_name} (or a combination of {batch_name} indicators), so its effect cannot "
            f"be told apart from the {batch_name} effect. Drop it from the formula, or merge the "
            f"{batch_name}s it separates."
        )
    return ConfoundingError(
        f"covariate column {name!r} is a linear combination of {batch_name!r} and the covariate "
        f"columns before it ({show_columns(columns[:j])}); the design is rank deficient. Remove it or "
        "the redundant term from the formula."
    )


def report_near_confounding(rho: float, weight: np.ndarray, columns, q: int, batch_name: str, rtol: float) -> None:
    """Error (``rho <= rtol``) or warning for a covariate combination with only a fraction ``rho`` of its
    variation within batches; ``weight`` says which covariate column carries it."""
    name = columns[int(np.argmax(weight))]
    what = (f"covariate column {name!r}" if np.sort(weight)[-2:][0] < 0.1 * weight.max() or q == 1
            else f"covariate column {name!r} (with the other covariates)")
    if rho <= rtol:
        raise ConfoundingError(
            f"{what} is nearly confounded with {batch_name!r}: only a fraction {rho:.1e} of its variation "
            f"lies within {batch_name}s, so its effect cannot be separated from the {batch_name} effect "
            f"(preserving it would add noise amplified about {1 / max(rho, 1e-300):.0e} times). Drop it "
            f"from the formula, or harmonize only {batch_name}s where it varies."
        )
    warn(
        f"{what} is nearly confounded with {batch_name!r}: only a fraction {rho:.2f} of its variation lies "
        f"within {batch_name}s, so its effect is poorly identified and the preserved part is uncertain "
        f"(about {1 / rho:.0f} times the noise). Check its balance across {batch_name}s, or drop it.",
        CollinearityWarning,
    )
