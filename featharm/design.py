"""Design matrices: covariate formulas frozen at fit time and batch indicators.

The covariates to preserve are given as the right-hand side of a formula over columns of the covariate
table (``"age + sex"``, ``"age * sex + C(scanner_field)"``, ``"np.log(age) + I(age**2)"``, stateful
transforms such as ``center(age)``). :class:`CovariateDesign` evaluates it with ``formulaic`` and freezes
everything needed to encode new rows identically:

* string, categorical and boolean columns (and numeric columns used inside ``C()``) are categorical; their
  levels are the sorted unique values seen at fit, the first one being the baseline of the treatment
  coding (pick another with ``C(sex, contr.treatment("M"))``); a level unseen at fit is an error;
* numeric columns are continuous;
* the state of stateful transforms (centres, scales, spline knots) and the column names and order.

The frozen state is plain JSON (see :meth:`CovariateDesign.to_dict`), so saved models never pickle.
There is no intercept column: the batch indicators span it (``../methods.md`` §0).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg as sla

from ._validation import check_categorical_covariate, show_columns, warn_near_duplicate_levels
from .exceptions import (
    ColumnNotFoundError,
    ConfoundingError,
    FormulaError,
    MissingValueError,
    CollinearityWarning,
    UnseenLevelError,
    warn,
)

__all__ = ["CovariateDesign", "batch_indicators", "check_full_rank"]

# Python identifiers, Unicode included ("Geschlecht", "sexé"); other names go in backticks
_IDENT = re.compile(r"`([^`]+)`|([^\W\d]\w*)")
_PLAIN_NAME = re.compile(r"[^\W\d]\w*")
_C_CALL = re.compile(r"\bC\(\s*(?:`([^`]+)`|([^\W\d]\w*))")


def _clean_formula(formula: str | None) -> str:
    if formula is None:
        return ""
    if not isinstance(formula, str):
        raise FormulaError(
            f"The 'formula' parameter must be a string such as 'age + sex' or None. Got {formula!r} instead."
        )
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


def _formula_variables(formula: str, columns) -> tuple[list[str], set[str]]:
    """Covariate columns a formula uses, and those used inside ``C()``."""
    cols = set(map(str, columns))
    used: list[str] = []
    for m in _IDENT.finditer(formula):
        name = m.group(1) or m.group(2)
        if name in cols and name not in used:
            used.append(name)
    in_c = {m.group(1) or m.group(2) for m in _C_CALL.finditer(formula)}
    return used, in_c & cols


def _numeric_categories(dtype: pd.CategoricalDtype) -> bool:
    cats = dtype.categories
    return pd.api.types.is_numeric_dtype(cats) and not pd.api.types.is_bool_dtype(cats)


def _is_categorical_dtype(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


# -- tagged JSON for formulaic's transform state -------------------------------------------------------
def _to_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {"__dict__": [[_to_json(k), _to_json(v)] for k, v in obj.items()]}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise FormulaError(
        f"featharm cannot store the state of a formula term of type {type(obj).__name__}; "
        "use plain columns, C(), I(), numpy functions, center(), scale(), poly() or bs()."
    )


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__dict__" in obj:
            return {_from_json(k): _from_json(v) for k, v in obj["__dict__"]}
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        if "__tuple__" in obj:
            return tuple(_from_json(v) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _first_ids(index, mask, k: int = 5) -> str:
    ids = list(index[np.asarray(mask)][:k])
    more = int(np.sum(mask)) - len(ids)
    return ", ".join(map(repr, ids)) + (f" and {more} more" if more > 0 else "")


class CovariateDesign:
    """A covariate formula frozen at fit time; builds the covariate block X (no intercept) for any rows.

    Use :meth:`fit` on the training covariates, then :meth:`transform` on any covariate table; the
    columns (names, order, categorical levels, transform state) are the same every time.

    Attributes
    ----------
    formula : str
        The right-hand side, without ``~`` (``""`` for no covariates).
    variables : list of str
        Covariate columns the formula uses.
    levels : dict
        For each categorical variable, its sorted levels (the first is the baseline).
    columns : list of str
        Names of the design columns, in order.
    ranges : dict
        For each continuous variable, its ``[min, max]`` at fit time.
    """

    def __init__(self, formula: str = "", variables=(), levels=None, columns=(), transform_state=None,
                 ranges=None, float32: bool = False):
        self.formula = formula
        self.variables = list(variables)
        self.levels = dict(levels or {})
        self.columns = list(columns)
        self.transform_state = transform_state  # JSON-tagged form
        self.ranges = dict(ranges or {})
        self.float32 = bool(float32)

    # ------------------------------------------------------------------ fit / transform
    @classmethod
    def fit(cls, formula: str | None, covariates: pd.DataFrame, *, float32: bool = False,
            exclude=()) -> tuple["CovariateDesign", np.ndarray]:
        """Freeze ``formula`` on ``covariates``; return the design and the training block X (n × q)."""
        f = _clean_formula(formula)
        if not f:
            return cls(formula="", float32=float32), np.zeros((len(covariates), 0))
        variables, in_c = _formula_variables(f, covariates.columns)
        bad = [v for v in variables if v in set(exclude)]
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
        design = cls(formula=f, variables=variables, levels=levels, ranges=ranges, float32=float32)
        frame = design._prepare(covariates)
        names = design._additive_columns()
        if names is not None:  # a plain additive formula: no formulaic parse needed (see _additive_matrix)
            design.transform_state = _to_json({})
            design.columns = names
            return design, design.transform(covariates)
        import formulaic

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mm = formulaic.model_matrix(f, frame, ensure_full_rank=True, na_action="ignore")
        except Exception as exc:  # formulaic's own errors: re-raise with the user's terms
            raise _formula_error(formula, exc, covariates.columns) from None
        if "Intercept" not in mm.columns:
            raise FormulaError(
                f"formula {formula!r} removes the intercept ('- 1' or '0 +'); featharm adds the batch "
                "indicators in place of the intercept, so leave it in (write e.g. 'age + sex')."
            )
        design.transform_state = _to_json(dict(mm.model_spec.transform_state))
        design.columns = [c for c in mm.columns if c != "Intercept"]
        X = design.transform(covariates)
        return design, X

    def _prepare(self, covariates: pd.DataFrame) -> pd.DataFrame:
        """The used covariate columns, checked, with categorical levels frozen."""
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
                vals = s.astype(float) if numeric_levels else s.astype(str)
                unseen = ~vals.isin(lev).to_numpy()
                if unseen.any():
                    new = sorted(pd.unique(vals[unseen]).tolist(), key=str)
                    raise UnseenLevelError(
                        f"covariate {v!r} has level(s) {new} that were not seen at fit time "
                        f"(known levels: {lev}), at rows {_first_ids(covariates.index, unseen)}. "
                        "Recode them to a known level or refit the model with them."
                    )
                out[v] = pd.Categorical(vals.to_numpy(), categories=lev)
            else:
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
        frame = self._prepare(covariates)
        X = self._additive_matrix(frame)
        if X is None:
            X = self._formulaic_matrix(frame, covariates)
        if not np.isfinite(X).all():
            bad = ~np.isfinite(X).all(axis=1)
            raise MissingValueError(
                f"formula {self.formula!r} gives non-finite values (e.g. log or sqrt of a non-positive number) "
                f"at rows {_first_ids(covariates.index, bad)}."
            )
        return X

    def _additive_matrix(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The design of a plain additive formula (``"age + sex + site_field"``) built directly.

        Exactly what formulaic builds for such a formula (continuous columns as they are, categorical ones
        as treatment dummies of the frozen levels, in the order of the terms), without its parsing
        overhead, which dominates small fits. Returns ``None`` (use formulaic) for anything else, or if the
        columns would not be the frozen ones.
        """
        terms = self._additive_terms()
        if terms is None:
            return None
        names, cols = [], []
        for t in terms:
            if t in self.levels:
                codes = np.asarray(frame[t].cat.codes)
                for k, lv in enumerate(self.levels[t][1:], start=1):
                    names.append(f"{t}[T.{lv}]")
                    cols.append((codes == k).astype(np.float64))
            else:
                names.append(t)
                cols.append(np.asarray(frame[t], dtype=np.float64))
        if names != self.columns:
            return None
        return np.column_stack(cols) if cols else np.zeros((len(frame), 0))

    def _additive_terms(self) -> list[str] | None:
        """The terms of a plain additive formula of distinct columns (categorical ones with 2+ levels)."""
        terms = [t.strip() for t in self.formula.split("+")]
        if (len(set(terms)) != len(terms) or set(terms) != set(self.variables)
                or not all(_PLAIN_NAME.fullmatch(t) for t in terms)
                or any(len(self.levels[t]) < 2 for t in terms if t in self.levels)):
            return None
        return terms

    def _additive_columns(self) -> list[str] | None:
        """Design column names of a plain additive formula, as formulaic names them (else ``None``)."""
        terms = self._additive_terms()
        if terms is None:
            return None
        return [name for t in terms
                for name in ([f"{t}[T.{lv}]" for lv in self.levels[t][1:]] if t in self.levels else [t])]

    def _formulaic_matrix(self, frame: pd.DataFrame, covariates: pd.DataFrame) -> np.ndarray:
        from formulaic import ModelSpec

        spec = ModelSpec(formula=self.formula, ensure_full_rank=True, na_action="ignore",
                         transform_state=_from_json(self.transform_state))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mm = spec.get_model_matrix(frame)
        except Exception as exc:
            raise _formula_error(self.formula, exc, covariates.columns) from None
        cols = [c for c in mm.columns if c != "Intercept"]
        if cols != self.columns:
            raise FormulaError(
                f"the formula {self.formula!r} produced columns {cols} on these covariates but "
                f"{self.columns} at fit time."
            )
        return np.asarray(mm[cols].to_numpy(dtype=np.float64))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "formula": self.formula,
            "variables": self.variables,
            "levels": self.levels,
            "columns": self.columns,
            "transform_state": self.transform_state,
            "ranges": self.ranges,
            "float32": self.float32,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CovariateDesign":
        return cls(**d)

    def __repr__(self) -> str:
        return f"CovariateDesign(formula={self.formula!r}, columns={self.columns})"


def _check_no_missing(s: pd.Series, name: str) -> None:
    na = s.isna().to_numpy()
    if na.any():
        raise MissingValueError(
            f"covariate column {name!r} has missing values at rows {_first_ids(s.index, na)}; "
            "fill them or drop those rows before harmonizing."
        )


# A text column whose values are mostly numbers, with more distinct values than this, is refused as a
# categorical covariate (one column per value): it is a numeric column spoiled by a typo or read as text.
NUMERIC_TEXT_LEVELS = 10


def _check_numeric_text(s: pd.Series, name: str) -> None:
    """Refuse numbers stored as text (``"35.8"``, or ``"n/a"`` / ``"35,8"`` among numbers) as a factor."""
    if isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_numeric_dtype(s) \
            or pd.api.types.is_bool_dtype(s):
        return
    txt = s.astype(str).str.strip()
    num = pd.to_numeric(txt, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    ok = np.isfinite(num)
    if ok.mean() < 0.8 or txt.nunique() <= NUMERIC_TEXT_LEVELS:
        return
    if not ok.all():
        bad = sorted(pd.unique(txt[~ok]).tolist(), key=str)[:5]
        raise FormulaError(
            f"covariate {name!r} looks numeric but holds text: {bad} at rows {_first_ids(s.index, ~ok)}, "
            f"so it would become a categorical covariate with {txt.nunique()} levels. Fix or drop those rows "
            f"(pd.to_numeric(..., errors='coerce') makes them missing), or write C({name}) if it is categorical."
        )
    raise FormulaError(
        f"covariate {name!r} holds numbers stored as text ({txt.nunique()} distinct values), so it would "
        f"become a categorical covariate with one column per value. Convert it with pd.to_numeric, or write "
        f"C({name}) if it is categorical."
    )


def _finite_values(s: pd.Series, name: str) -> np.ndarray:
    vals = s.to_numpy(dtype=float)
    if not np.isfinite(vals).all():
        raise MissingValueError(
            f"covariate column {name!r} has infinite values at rows "
            f"{_first_ids(s.index, ~np.isfinite(vals))}; fix or drop those rows."
        )
    return vals


def _formula_error(formula, exc: Exception, columns) -> Exception:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    m = re.search(r"`([^`]+)` is not present", str(exc)) or re.search(r"name '([^']+)' is not defined", str(exc))
    if m:
        return ColumnNotFoundError(
            f"formula {formula!r} names {m.group(1)!r}, which is not a covariate column; "
            f"columns present: {show_columns(columns)}."
        )
    hint = ""
    if re.search(r"\bQ\(", str(formula)) or "Missing operator between" in msg:
        hint = " Column names with spaces or symbols go in backticks: `Age (years)` + sex (not Q())."
    return FormulaError(f"cannot evaluate formula {formula!r}: {msg}{hint}")


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
            if spread == 0 or np.linalg.norm(rb) / spread <= rank_rtol:
                raise ConfoundingError(
                    f"covariate column {name!r} is confounded with {batch_name!r}: it is constant within "
                    f"each {batch_name} (or a combination of {batch_name} indicators), so its effect cannot "
                    f"be told apart from the {batch_name} effect. Drop it from the formula, or merge the "
                    f"{batch_name}s it separates."
                )
            raise ConfoundingError(
                f"covariate column {name!r} is a linear combination of {batch_name!r} and the covariate "
                f"columns before it ({show_columns(columns[:j])}); the design is rank deficient. Remove it or "
                "the redundant term from the formula."
            )
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
