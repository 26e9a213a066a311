"""Federated ComBat (and ComBat-GAM) in one round: sites that cannot share their rows send one summary each
(``docs/methods.md`` §5.2).

The protocol::

    coordinator   p = plan(batch="site", batches=[...], formula="age + sex", levels={"sex": ["F", "M"]},
                           features=[...])                         save_plan(p, "plan.json")   -> every site
    each site     s = summarize(data, covariates, p)             s.save("site.fhs")          -> coordinator
    coordinator   model = combine([s1, s2, ...], p)               model.save("model.fhm")     -> every site
    each site     model.transform(data, covariates)              (``featharm apply``)
    late site     model2 = extend(model, summarize(new_data, new_cov, p))

**The plan** fixes everything the sites must code identically: the batch column and its levels, the covariate
formula (text, read by featharm's own grammar: never ``eval``) and the levels of its categorical covariates,
the feature names and order, the ComBat options and ``min_count``. The covariate encoding
(:class:`~featharm.design.CovariateDesign`) is rebuilt from the plan alone, the same at every site. Transforms
whose state would be computed from the rows (``center``, ``scale``/``standardize``, ``bs`` without every knot
and bound given) are refused: each site would compute a different state. Write them with fixed numbers
(``I(age - 50)``, ``I((age - 50) / 10)``). A categorical covariate is one listed in ``levels``; every other
covariate is continuous.

**ComBat-GAM** (``method="gam"``): quantile knots would be computed from each site's own rows, so the plan fixes
each smooth term's basis from a range instead (``smooth_range={"age": (5, 90)}``, ``--smooth-range age=5,90``):
cubic B-splines with ``df - 4`` interior knots evenly spaced over the range (``df`` as ComBatGAM's, default 10),
boundary knots at its ends, penalty the integrated squared second derivative. The plan file (schema 2) holds the
knots as plain numbers, checked on read against that rule. A smooth term is a continuous covariate given in
``smooth`` (a plain term of it in the formula is replaced by its spline) or as ``s(VAR)`` in the formula. Each
site evaluates the basis on its rows (a value outside the range is an :class:`OutOfRangeError` naming the
covariate, value, batch and row) and summarizes with the spline columns among the covariate columns; combine
fits :meth:`ComBatGAM.from_statistics <featharm.ComBatGAM.from_statistics>` with the plan's bases (smoothing by
REML or GCV from the cross-products). ``ComBatGAM(**plan.model_params()).fit`` on the pooled rows
(``knots="uniform"``, ``smooth_bounds`` at the plan's ranges) is the centralized equivalent.

**The summary** of a site holds, for each of its batches ``i`` (:class:`featharm._core.suffstats.SuffStats`,
sums taken around a shift, §1.9): ``n_i``; the covariate sums ``Σx``, ``Σxxᵀ``; per feature the observed count,
``Σy``, ``Σxy`` and ``Σy²``; the shift (the batch's mean covariates and features and a pilot slope, themselves
functions of those sums); with missing values, per (batch, feature) cell with missing rows, ``Σx`` and ``Σxxᵀ``
over those rows. No array has a subject axis. :func:`summarize` refuses (:class:`DisclosureError`, nothing
written) a batch with fewer than ``min_count`` subjects, a categorical level held by 1..min_count-1 subjects of
a batch (a column of ``Σxyᵀ`` would be the sum of those few subjects' features), a cell of the categorical
covariates of an interaction held by 1..min_count-1 subjects of a batch, any covariate column that is not zero for
only 1..min_count-1 subjects of a batch (a fixed-knot ``bs()`` column, a mostly-zero covariate) or takes two
values one of which so few subjects have (a 0/1 covariate), a feature observed in 1..min_count-1 subjects of a
batch and (ComBat-GAM) a spline column that is not zero for 1..min_count-1 subjects of a batch (a B-spline is
zero outside its knot interval). Known residual disclosure: where a feature is missing
for a few subjects of a batch, the covariate sums over those rows describe those few subjects' covariates (not
their features); :func:`describe_summary` (``featharm federated show``) lists these cells. With ComBat-GAM, a
batch's spline column sums are a smoothed histogram of its smooth covariate over the plan's knots (``show``
prints them).

**Combine** checks every summary against the plan (same plan digest; else which of batches, levels, features,
options differ), refuses a batch in two summaries (naming both), a batch the plan does not list, a planned
batch without a summary, and a planned level no site holds; then merges the statistics
(:meth:`SuffStats.combine`: canonical order, so any order of the summaries gives the same model, bit for bit)
and fits :meth:`ComBat.from_statistics <featharm.ComBat.from_statistics>` (ComBat-GAM:
``ComBatGAM.from_statistics``): the centralized fit to rounding.

Files: the plan is a small JSON file (:func:`save_plan` / :func:`load_plan`); a summary (``.fhs``) is the model
file's container (:mod:`featharm.persistence`: JSON manifest + ``.npy`` arrays, no pickle, schema-versioned),
read with the same bounded, validating reader (:func:`load_summary`). A plan holds at most :data:`MAX_LEVELS`
levels per covariate and :data:`MAX_DESIGN_COLUMNS` covariate columns (bounded from the parsed formula before
the design is built; the formula itself at most :data:`featharm.formula.MAX_TERMS` terms).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import stat
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import formula as _fm
from ._core.splines import SplineBasis
from ._core.suffstats import ARRAYS, SuffStats
from ._version import __version__
from .design import CovariateDesign
from .exceptions import (
    ColumnNotFoundError,
    DisclosureError,
    FederatedError,
    FederatedFileError,
    FormulaError,
    InputError,
    MissingValueError,
    NonNumericFeatureError,
    OutOfRangeError,
)

__all__ = [
    "DEFAULT_MIN_COUNT",
    "Plan",
    "Summary",
    "combine",
    "describe_summary",
    "extend",
    "load_plan",
    "load_summary",
    "plan",
    "plan_bytes",
    "save_plan",
    "summarize",
]

DEFAULT_MIN_COUNT = 10
PLAN_FORMAT = "featharm-federated-plan"
SUMMARY_FORMAT = "featharm-federated-summary"
PLAN_SCHEMA = 2  # the newest schema read; a ComBat plan is written as schema 1, a ComBat-GAM plan as 2
SUMMARY_SCHEMA = 2  # likewise for summaries (a ComBat-GAM summary has the spline columns among its covariates)
MAX_PLAN_BYTES = 64 * 2**20   # room for 327,684 vertex names
MAX_BATCHES = 100_000
MAX_LEVELS = 1_000  # levels of one categorical covariate
MAX_DESIGN_COLUMNS = 1_000  # covariate columns of the plan's design (checked from the formula before it is built)
_OPTIONS = ("ref_batch", "parametric", "mean_only", "eb")
# ComBat-GAM: the plan's frozen spline basis (cubic B-splines, knots evenly spaced over --smooth-range)
SPLINE_DEGREE = 3
KNOT_RULE = "uniform"
PENALTY = "integrated squared second derivative"
MAX_SMOOTH_DF = 100
MAX_SMOOTH_TERMS = 20
MAX_RANGE = 1e12  # a smooth range's bounds are at most this in magnitude
_GAM_KEYS = ("criterion", "shared_smoothing", "df", "degree", "knot_rule", "penalty", "smooth")


def _show(values, k: int = 5) -> str:
    values = list(values)
    return ", ".join(map(repr, values[:k])) + (f" and {len(values) - k} more" if len(values) > k else "")


# ============================================================================================== the plan
@dataclass(frozen=True, eq=False)
class Plan:
    """What every site codes identically (see the module docstring). Build it with :func:`plan`."""

    batch: str
    batches: tuple  # sorted batch levels (strings)
    formula: str  # "" for no covariates
    levels: dict  # categorical covariate -> tuple of its levels (sorted, the first the baseline)
    features: tuple
    ref_batch: str | None = None
    parametric: bool = True
    mean_only: bool = False
    eb: bool = True
    min_count: int = DEFAULT_MIN_COUNT
    method: str = "combat"
    design: CovariateDesign = field(default=None, repr=False)
    # empirical-Bayes priors per measure group of the features' names ("group") or one pool ("pool")
    priors: str = "group"
    # ComBat-GAM only (method "gam"): smooth terms, their bases (fixed by the ranges), criterion
    smooth_range: dict = field(default_factory=dict)  # smooth term -> (lower, upper), in the terms' order
    df: int = 10
    smooth_method: str = "REML"
    shared_smoothing: bool = False
    bases: tuple = field(default=(), repr=False)  # SplineBasis of each smooth term

    @property
    def smooth(self) -> tuple:
        """The smooth terms (method "gam"), in model order; ``()`` for ComBat."""
        return tuple(b.name for b in self.bases)

    @property
    def n_columns(self) -> int:
        """Covariate columns of a summary: the linear design's, then (ComBat-GAM) every smooth term's basis."""
        return len(self.design.columns) + sum(b.n_columns for b in self.bases)

    @property
    def schema_version(self) -> int:
        """Schema of the plan and summary files: 1 for ComBat (as before ComBat-GAM), 2 for ComBat-GAM."""
        return 2 if self.method == "gam" else 1

    def to_dict(self) -> dict:
        """The plan as JSON data (what :func:`save_plan` writes, less the format and schema entries)."""
        d = {"batch": self.batch, "batches": list(self.batches), "formula": self.formula,
             "levels": {k: list(v) for k, v in sorted(self.levels.items())}, "features": list(self.features),
             "options": {"ref_batch": self.ref_batch, "parametric": self.parametric, "mean_only": self.mean_only,
                         "eb": self.eb},
             "min_count": self.min_count, "method": self.method}
        if self.priors == "group":  # absent: one pool (as every plan written before priors per measure group)
            d["priors"] = "group"
        if self.method == "gam":
            d["gam"] = {"criterion": self.smooth_method, "shared_smoothing": self.shared_smoothing, "df": self.df,
                        "degree": SPLINE_DEGREE, "knot_rule": KNOT_RULE, "penalty": PENALTY,
                        "smooth": [{"name": b.name, "range": [float(v) for v in self.smooth_range[b.name]],
                                    "knots": b.knots.tolist()} for b in self.bases]}
        return d

    @property
    def digest(self) -> str:
        """SHA-256 of the plan's canonical JSON: summaries made with this plan carry it."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def model_params(self) -> dict:
        """The :class:`~featharm.ComBat` parameters of the plan (:class:`~featharm.ComBatGAM`'s for method "gam":
        ``ComBatGAM(**plan.model_params()).fit`` on the pooled rows is the centralized equivalent)."""
        d = {"batch": self.batch, "formula": self.formula or None, "eb": self.eb, "parametric": self.parametric,
             "mean_only": self.mean_only, "ref_batch": self.ref_batch, "priors": self.priors}
        if self.method == "gam":
            d.update(smooth=list(self.smooth), df=self.df, method=self.smooth_method,
                     shared_smoothing=self.shared_smoothing, knots=KNOT_RULE,
                     smooth_bounds={t: tuple(float(v) for v in r) for t, r in self.smooth_range.items()})
        return d

    def model_class(self):
        """:class:`~featharm.ComBat`, or :class:`~featharm.ComBatGAM` for method "gam"."""
        from .models import ComBat, ComBatGAM

        return ComBatGAM if self.method == "gam" else ComBat

    def __eq__(self, other) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.digest)


def _names(value, what: str, *, minimum: int = 1) -> list[str]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise FederatedError(f"{what} must be a list of names; got {type(value).__name__} {str(value)[:60]!r}.")
    out = list(value)
    bad = [v for v in out if not isinstance(v, str) or not v.strip() or v != v.strip()]
    if bad:
        raise FederatedError(f"{what} must be non-empty names without surrounding spaces; got {bad[0]!r}.")
    seen, dup = set(), None
    for v in out:
        if v in seen:
            dup = v
            break
        seen.add(v)
    if dup is not None:
        raise FederatedError(f"{what} repeat {dup!r}; list each once.")
    if len(out) < minimum:
        raise FederatedError(f"{what} must list at least {minimum}; got {len(out)}.")
    return out


def plan(*, batch: str, batches, features, formula: str | None = None, levels: dict | None = None,
         ref_batch: str | None = None, parametric: bool = True, mean_only: bool = False, eb: bool = True,
         min_count: int = DEFAULT_MIN_COUNT, method: str = "combat", smooth=None, smooth_range=None,
         df: int = 10, smooth_method: str = "REML", shared_smoothing: bool = False, priors: str = "group") -> Plan:
    """The coordinator's plan (see the module docstring): validated, with the covariate design built from it.

    ``batches``: every batch level that will take part (the levels of ``batch`` at the sites, as text);
    ``levels``: ``{covariate: [levels]}`` for each categorical covariate of ``formula`` (order does not matter:
    they are coded as featharm codes them, sorted, the first the baseline unless ``C(x, Treatment("L"))``);
    ``features``: the feature columns, in order; the options are ComBat's; ``min_count``: the fewest subjects a
    summary may hold sums over (batch, categorical level within a batch, observed values of a feature, and for
    ComBat-GAM the subjects where a spline column is not zero).

    ``method="gam"`` plans ComBat-GAM: ``smooth`` lists the covariates with smooth effects (a continuous
    covariate of the formula, whose linear term the spline replaces, or one the formula lacks; ``s(age)`` in the
    formula counts too), and ``smooth_range={"age": (lo, hi)}`` gives each one's range, which fixes its basis:
    cubic B-splines with ``df - 4`` interior knots evenly spaced over ``[lo, hi]`` (``df`` as
    :class:`~featharm.ComBatGAM`'s, default 10), boundary knots at ``lo`` and ``hi``. Every site's values must lie
    in the range. ``smooth_method`` (``"REML"`` or ``"GCV"``) and ``shared_smoothing`` are ComBatGAM's ``method``
    and ``shared_smoothing``.

    ``priors``: the empirical-Bayes priors, per measure group of the feature names (``"group"``, thickness,
    area, volume ..., as :func:`featharm.io.feature_groups` reads them; the default, as the centralized
    default of :class:`~featharm.ComBat`) or one pool across all features (``"pool"``: sva, neuroCombat and
    R Distributed-ComBat).
    """
    if priors not in ("group", "pool"):
        raise FederatedError(f"priors must be 'group' (one prior per measure group of the feature names) or 'pool' "
                             f"(one across all features); got {priors!r}.")
    if method not in ("combat", "gam"):
        raise FederatedError(f"method must be 'combat' (linear covariates) or 'gam' (ComBat-GAM); got {method!r}.")
    if method == "combat" and (smooth or smooth_range):
        raise FederatedError(f"smooth terms {list(smooth or smooth_range)[:3]} need method 'gam' "
                             "(--method gam --smooth VAR --smooth-range VAR=LO,HI).")
    if not isinstance(batch, str) or not batch.strip():
        raise FederatedError(f"the batch column must be a column name; got {batch!r}.")
    batch_levels = sorted(_names(batches, "the batch levels (--batches)", minimum=2))
    if len(batch_levels) > MAX_BATCHES:
        raise FederatedError(f"at most {MAX_BATCHES} batches; got {len(batch_levels)}.")
    feats = _names(features, "the features (--features)")
    if ref_batch is not None and ref_batch not in batch_levels:
        raise FederatedError(f"the reference batch {ref_batch!r} is not among the batches {_show(batch_levels)}; "
                             "pick one of them.")
    for name, v in (("parametric", parametric), ("mean_only", mean_only), ("eb", eb)):
        if not isinstance(v, (bool, np.bool_)):
            raise FederatedError(f"{name} must be true or false; got {v!r}.")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 2:
        raise FederatedError(f"min_count must be a whole number of at least 2 (a summary's sums must cover "
                             f"several subjects; default {DEFAULT_MIN_COUNT}); got {min_count!r}.")
    if eb and len(feats) < 2:
        raise FederatedError("empirical Bayes pools the batch effects across features, so it needs at least 2 "
                             "features; list more, or plan with eb=False (--no-eb).")
    levels = dict(levels or {})
    clean_levels = {}
    for var, lev in levels.items():
        if not isinstance(var, str):
            raise FederatedError(f"covariate names must be text; got {var!r}.")
        if hasattr(lev, "__len__") and len(lev) > MAX_LEVELS:
            raise FederatedError(f"covariate {var!r} has {len(lev):,} levels; a plan takes at most {MAX_LEVELS:,} per "
                                 "covariate (each level is a column of every summary). Merge rare levels, or model it "
                                 "as continuous.")
        lv = _names(lev, f"the levels of covariate {var!r} (--levels {var}=...)", minimum=2)
        clean_levels[var] = tuple(sorted(lv))
    text = _fm.clean_formula(formula) if formula is not None else ""
    gam = {}
    if method == "gam":
        text, terms = _gam_terms(text, smooth, clean_levels, batch)
        gam = _gam_plan(terms, smooth_range, df, smooth_method, shared_smoothing)
    design = _plan_design(text, clean_levels, batch)
    overlap = sorted(set(feats) & ({batch} | set(design.variables) | set(gam.get("smooth_range", {}))))
    if overlap:
        raise FederatedError(f"{overlap[0]!r} is both a feature and the batch column or a covariate of the "
                             "formula; a column is one or the other.")
    return Plan(batch=batch, batches=tuple(batch_levels), formula=design.formula, levels=clean_levels,
                features=tuple(feats), ref_batch=ref_batch, parametric=bool(parametric),
                mean_only=bool(mean_only), eb=bool(eb), min_count=int(min_count), method=method, design=design,
                priors=priors, **gam)


def _gam_terms(text: str, smooth, levels: dict, batch: str) -> tuple[str, list]:
    """The linear formula and the smooth terms of a ComBat-GAM plan: ``smooth`` then the formula's ``s()``
    terms; a plain main-effect term of a smooth covariate is replaced by its spline."""
    given = _names(smooth if smooth is not None else [], "the smooth terms (--smooth)", minimum=0)
    parsed = _fm.parse_formula(text)
    for t in parsed.terms:
        if any(node[0] == "smooth" for node in t) and len(t) > 1:
            raise FederatedError(f"term {':'.join(_fm.render(n) for n in t)!r} of formula {text!r}: a smooth term "
                                 "must be a top-level s(VAR) (no interactions); write e.g. 'sex + s(age)'.")
    terms = list(dict.fromkeys(given + parsed.smooth_terms()))
    if not terms:
        raise FederatedError("method 'gam' needs at least one smooth term: --smooth VAR (a continuous covariate) or "
                             "s(VAR) in the formula.")
    if len(terms) > MAX_SMOOTH_TERMS:
        raise FederatedError(f"at most {MAX_SMOOTH_TERMS} smooth terms; got {len(terms)}.")
    for t in terms:
        if t == batch:
            raise FederatedError(f"the batch column {batch!r} cannot be a smooth term.")
        if t in levels:
            raise FederatedError(f"{t!r} is categorical (the plan lists its levels); a smooth term needs a continuous "
                                 f"covariate. Drop --levels {t}=... or the smooth term.")
    keep = [t for t in parsed.terms if not any(n[0] == "smooth" for n in t)
            and not (len(t) == 1 and t[0][0] == "col" and t[0][1] in terms)]
    linear = " + ".join(":".join(_fm.render(n) for n in t) for t in keep)
    for t in keep:
        used = sorted({v for n in t for v in _fm.node_variables(n)} & set(terms))
        if used:
            raise FederatedError(
                f"smooth covariate {used[0]!r} is also in the linear term {':'.join(_fm.render(n) for n in t)!r} of "
                f"formula {text!r}; its effect is its spline alone. Remove it from that term (the spline replaces a "
                f"plain {used[0]!r} term).")
    return linear, terms


def _finite_number(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and bool(np.isfinite(v)) and abs(float(v)) <= MAX_RANGE)


def _gam_plan(terms: list, smooth_range, df, smooth_method, shared_smoothing) -> dict:
    """The ComBat-GAM entries of the :class:`Plan`: ranges, options and the basis fixed by each range."""
    if smooth_range is None:
        smooth_range = {}
    if not isinstance(smooth_range, dict):
        raise FederatedError(f"smooth_range must map each smooth term to (lower, upper); got "
                             f"{type(smooth_range).__name__}.")
    lacking = [t for t in terms if t not in smooth_range]
    if lacking:
        t = lacking[0]
        raise FederatedError(
            f"smooth term {t!r} has no range: the basis cannot come from each site's own rows (quantile knots would "
            f"differ between sites, so the sites would code {t} differently); the plan fixes it from a range "
            f"instead. Give --smooth-range {t}=LO,HI (Python: smooth_range={{{t!r}: (lo, hi)}}) covering every "
            "site's values.")
    extra = sorted(map(str, set(smooth_range) - set(terms)))
    if extra:
        raise FederatedError(f"--smooth-range names {extra[0]!r}, which is not a smooth term of the plan "
                             f"({', '.join(terms)}); add --smooth {extra[0]} or drop its range.")
    ranges = {}
    for t in terms:
        r = smooth_range[t]
        if (isinstance(r, (str, bytes)) or not hasattr(r, "__len__") or len(r) != 2
                or not all(_finite_number(v) for v in r) or not float(r[0]) < float(r[1])):
            raise FederatedError(f"the range of smooth term {t!r} must be two finite numbers LO < HI (at most "
                                 f"{MAX_RANGE:g} in magnitude), e.g. --smooth-range {t}=5,90; got {r!r}.")
        ranges[t] = (float(r[0]), float(r[1]))
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or not 5 <= df <= MAX_SMOOTH_DF:
        raise FederatedError(f"df (the B-spline basis size of each smooth term, as ComBatGAM's) must be a whole "
                             f"number from 5 to {MAX_SMOOTH_DF}; got {df!r}.")
    if smooth_method not in ("REML", "GCV"):
        raise FederatedError(f"the smoothing criterion must be 'REML' or 'GCV'; got {smooth_method!r}.")
    if not isinstance(shared_smoothing, (bool, np.bool_)):
        raise FederatedError(f"shared_smoothing must be true or false; got {shared_smoothing!r}.")
    bases = tuple(SplineBasis.from_range(t, lo, hi, int(df), SPLINE_DEGREE) for t, (lo, hi) in ranges.items())
    for b in bases:  # a range so narrow that the knots merge or the penalty overflows gives no usable basis
        inner = b.knots[SPLINE_DEGREE:-SPLINE_DEGREE]
        usable = bool((np.diff(inner) > 0).all())
        if usable:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                usable = bool(np.isfinite(b.penalty()).all())
        if not usable:
            lo, hi = ranges[b.name]
            raise FederatedError(f"the range [{lo:g}, {hi:g}] of smooth term {b.name!r} is too narrow for {df - 3} "
                                 "distinct knot intervals; give the range of its values in its own units.")
    return {"smooth_range": ranges, "df": int(df), "smooth_method": smooth_method,
            "shared_smoothing": bool(shared_smoothing), "bases": bases}


def _prototype(variables, levels: dict, n: int, lo: float, hi: float) -> pd.DataFrame:
    cols = {}
    for v in variables:
        if v in levels:
            lev = list(levels[v])
            cols[v] = [lev[k % len(lev)] for k in range(n)]
        else:
            cols[v] = np.linspace(lo, hi, n) ** 1.5
    return pd.DataFrame(cols)


def _plan_design(formula: str, levels: dict, batch: str) -> CovariateDesign:
    """The covariate design of the plan, from the plan alone: the same at every site."""
    parsed = _fm.parse_formula(formula)
    if parsed.smooth_terms():
        t = parsed.smooth_terms()[0]
        raise FederatedError(f"formula {formula!r} has the smooth term s({t}): plan ComBat-GAM for it "
                             f"(--method gam --smooth-range {t}=LO,HI; Python: method='gam', "
                             f"smooth_range={{{t!r}: (lo, hi)}}).")
    variables = parsed.variables()
    if batch in variables:
        raise FederatedError(f"formula {formula!r} uses the batch column {batch!r} as a covariate; the batch is "
                             "added by the model itself. Remove it from the formula.")
    unused = sorted(set(levels) - set(variables))
    if unused:
        raise FederatedError(f"levels were given for {unused[0]!r}, which the formula {formula!r} does not use; "
                             "drop them or add the covariate to the formula.")
    undeclared = [v for v in parsed.categorical_variables() if v not in levels]
    if undeclared:
        raise FederatedError(f"formula {formula!r} codes {undeclared[0]!r} as categorical (C()); list its levels "
                             f"in the plan (--levels {undeclared[0]}=A,B,...).")
    most = _most_columns(parsed, levels)
    if most > MAX_DESIGN_COLUMNS:
        raise FederatedError(f"formula {formula[:80]!r}{'...' if len(formula) > 80 else ''} with the plan's levels "
                             f"can give up to {most:,} covariate columns; a plan takes at most {MAX_DESIGN_COLUMNS:,} "
                             "(each is summed per batch and feature). Drop interactions or merge levels.")
    # the trial table holds every level at least twice (a covariate with more levels than half its rows would be
    # taken for an id column): linear in the levels (at most 2 * MAX_LEVELS + 3 rows), its design at most
    # MAX_DESIGN_COLUMNS wide
    n = max([len(v) for v in levels.values()] + [2]) * 2 + 3
    design, _ = CovariateDesign.fit(formula, _prototype(variables, levels, n, 1.0, 3.0), exclude=(batch,))
    if design.spec and design.spec.get("state"):
        other, _ = CovariateDesign.fit(formula, _prototype(variables, levels, n, 7.0, 20.0), exclude=(batch,))
        moved = sorted(k for k in design.spec["state"] if design.spec["state"][k] != other.spec["state"].get(k))
        if moved:
            raise FederatedError(
                f"formula {formula!r} uses {_show(moved)}, whose state (centre, scale or knots) would be computed "
                "from each site's own rows, so the sites would code their covariates differently. Write it with "
                "fixed numbers instead: I(age - 50) for center(age), I((age - 50) / 10) for scale(age), bs(age, "
                "knots=[...], lower_bound=..., upper_bound=...) with every knot and bound given.")
    design.ranges = {}  # ranges of the prototype mean nothing; a federated model records none
    return design


def _most_columns(parsed, levels: dict) -> int:
    """An upper bound of the design's columns, from the parsed formula alone (nothing built): per term, the
    product of its factors' widths (a categorical factor its number of levels, a basis its size), less one for
    a term of categorical factors only (the intercept, in its span, is not a column)."""
    total = 0
    for term in parsed.terms:
        width, categorical = 1, True
        for node in term:
            is_cat = node[0] == "C" or (node[0] == "col" and node[1] in levels)
            categorical = categorical and is_cat
            if is_cat:
                w = len(levels.get(node[1], ())) or 1
            elif node[0] == "call" and node[1] == "bs":
                kw = node[3]

                def whole(v, most):  # a literal of the formula (int or float), within what bs() accepts
                    return int(min(max(float(v), 0.0), most)) if isinstance(v, (int, float)) else most

                degree = whole(kw.get("degree", 3), 10)
                w = whole(kw["df"], MAX_DESIGN_COLUMNS + 1) if "df" in kw else len(kw.get("knots", [])) + degree
            elif node[0] == "call" and node[1] == "poly":
                w = _fm.poly_degree(node)
            else:
                w = 1
            width *= max(int(w), 1)  # at most 10 factors of at most MAX_LEVELS each (the parser's limits)
        total += width - categorical
    return total


# ---------------------------------------------------------------------------------------- plan files
def plan_bytes(p: Plan) -> bytes:
    """The plan file's content: indented JSON with sorted keys (the same plan gives the same bytes)."""
    d = {"format": PLAN_FORMAT, "schema_version": p.schema_version, **p.to_dict()}
    return (json.dumps(d, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def save_plan(p: Plan, path) -> None:
    """Write the plan as JSON (atomically)."""
    from .persistence import atomic_write_bytes

    atomic_write_bytes(path, plan_bytes(p))


def _read_bounded(path, what: str, limit: int) -> bytes:
    shown = repr(str(path))
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FederatedFileError(f"{what} {shown} does not exist.") from None
    if not stat.S_ISREG(st.st_mode):
        raise FederatedFileError(f"{shown} is not a regular file; give the {what} itself.")
    if st.st_size > limit:
        raise FederatedFileError(f"{shown} has {st.st_size:,} bytes; a {what} has at most {limit:,}.")
    with open(path, "rb") as fh:
        raw = fh.read(st.st_size + 1)  # not limit + 1: read() sets aside all it may return
    if len(raw) > st.st_size:
        raise FederatedFileError(f"{shown} grew while being read; give a file that is not being written.")
    return raw


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def plan_from_dict(d, source: str = "the plan") -> Plan:
    """A :class:`Plan` from its JSON data, every entry checked (a file from someone else)."""
    def bad(entry, found, expected):
        return FederatedFileError(f"{source} is not a valid featharm plan: {entry} {found}; expected {expected}.")

    if not isinstance(d, dict):
        raise bad("the content", f"is a {type(d).__name__}", "a JSON object")
    keys = {"batch", "batches", "formula", "levels", "features", "options", "min_count", "method"}
    if d.get("method") == "gam":
        keys.add("gam")
    if "priors" in d:  # absent: one pool (plans written before priors per measure group have none)
        keys.add("priors")
        if d["priors"] != "group":
            raise bad("priors", f"is {d['priors']!r}", "'group' (or no entry: one pool)")
    missing, extra = sorted(keys - set(d)), sorted(set(d) - keys)
    if missing:
        raise bad("the plan", f"lacks {missing}", f"the entries {sorted(keys)}")
    if extra:
        raise bad("the plan", f"has unexpected entries {extra[:5]}", f"only {sorted(keys)}")
    for k, t in (("batch", str), ("formula", str), ("method", str), ("batches", list), ("features", list),
                 ("levels", dict), ("options", dict)):
        if not isinstance(d[k], t):
            raise bad(k, f"is {type(d[k]).__name__}", t.__name__.replace("str", "text").replace("dict", "object"))
    opts = d["options"]
    if set(opts) != set(_OPTIONS):
        raise bad("options", f"has the entries {sorted(opts)[:6]}", f"exactly {list(_OPTIONS)}")
    for k in ("parametric", "mean_only", "eb"):
        if not isinstance(opts[k], bool):
            raise bad(f"options.{k}", f"is {opts[k]!r}", "true or false")
    if opts["ref_batch"] is not None and not isinstance(opts["ref_batch"], str):
        raise bad("options.ref_batch", f"is {opts['ref_batch']!r}", "a batch level or null")
    if isinstance(d["min_count"], bool) or not isinstance(d["min_count"], int):
        raise bad("min_count", f"is {d['min_count']!r}", "a whole number")
    for k, v in d["levels"].items():
        if not isinstance(v, list):
            raise bad(f"levels[{k!r}]", f"is {type(v).__name__}", "a list of levels")
    gam = _gam_from_dict(d["gam"], bad) if "gam" in d else {}
    try:
        p = plan(batch=d["batch"], batches=d["batches"], features=d["features"], formula=d["formula"],
                 levels=d["levels"], ref_batch=opts["ref_batch"], parametric=opts["parametric"],
                 mean_only=opts["mean_only"], eb=opts["eb"], min_count=d["min_count"], method=d["method"],
                 priors=d.get("priors", "pool"), **gam)
    except (FederatedError, FormulaError, InputError) as exc:
        raise FederatedFileError(f"{source} is not a valid featharm plan: {exc}") from None
    if "gam" in d:
        for j, (given, made) in enumerate(zip(d["gam"]["smooth"], p.to_dict()["gam"]["smooth"])):
            if given["knots"] != made["knots"]:
                raise bad(f"gam.smooth[{j}].knots", "are not the knots its range and df give",
                          f"{made['knots'][:6]}... ({len(made['knots'])} knots: the boundary knots repeated "
                          f"{SPLINE_DEGREE + 1} times, the interior ones evenly spaced)")
    if p.to_dict() != d:  # e.g. unsorted levels or batches: a file featharm did not write
        raise FederatedFileError(f"{source} is not in canonical form (batches and levels sorted, formula as "
                                 "featharm writes it); remake it with `featharm federated plan`.")
    return p


def _gam_from_dict(g, bad) -> dict:
    """The ComBat-GAM arguments of :func:`plan` from a plan file's ``gam`` entry, each value checked."""
    if not isinstance(g, dict):
        raise bad("gam", f"is {type(g).__name__}", "an object")
    if set(g) != set(_GAM_KEYS):
        raise bad("gam", f"has the entries {sorted(g)[:8]}", f"exactly {sorted(_GAM_KEYS)}")
    if not isinstance(g["criterion"], str):
        raise bad("gam.criterion", f"is {g['criterion']!r}", "'REML' or 'GCV'")
    if not isinstance(g["shared_smoothing"], bool):
        raise bad("gam.shared_smoothing", f"is {g['shared_smoothing']!r}", "true or false")
    df = g["df"]
    if isinstance(df, bool) or not isinstance(df, int) or not 5 <= df <= MAX_SMOOTH_DF:
        raise bad("gam.df", f"is {df!r}", f"a whole number from 5 to {MAX_SMOOTH_DF}")
    for key, want in (("degree", SPLINE_DEGREE), ("knot_rule", KNOT_RULE), ("penalty", PENALTY)):
        if g[key] != want or type(g[key]) is not type(want):
            raise bad(f"gam.{key}", f"is {g[key]!r}", repr(want))
    terms = g["smooth"]
    if not isinstance(terms, list) or not 1 <= len(terms) <= MAX_SMOOTH_TERMS:
        raise bad("gam.smooth", f"is {type(terms).__name__} of {len(terms) if isinstance(terms, list) else '?'}",
                  f"a list of 1 to {MAX_SMOOTH_TERMS} smooth terms")
    names, ranges = [], {}
    for j, t in enumerate(terms):
        entry = f"gam.smooth[{j}]"
        if not isinstance(t, dict) or set(t) != {"name", "range", "knots"}:
            raise bad(entry, f"is {str(t)[:60]}", '{"name": ..., "range": [LO, HI], "knots": [...]}')
        if not isinstance(t["name"], str) or t["name"] in ranges:
            raise bad(f"{entry}.name", f"is {t['name']!r}", "the name of a covariate, once")
        r, k = t["range"], t["knots"]
        if not (isinstance(r, list) and len(r) == 2 and all(_finite_number(v) for v in r) and r[0] < r[1]):
            raise bad(f"{entry}.range", f"is {str(r)[:60]}", f"[LO, HI], finite numbers (at most {MAX_RANGE:g} in "
                      "magnitude) with LO < HI")
        if (not isinstance(k, list) or len(k) != df + SPLINE_DEGREE + 1
                or not all(_finite_number(v) for v in k) or any(b < a for a, b in zip(k, k[1:]))
                or k[0] != r[0] or k[-1] != r[1]):
            raise bad(f"{entry}.knots", f"are {str(k)[:60]}", f"{df + SPLINE_DEGREE + 1} finite, sorted knots from "
                      "LO to HI (df + 4)")
        names.append(t["name"])
        ranges[t["name"]] = (r[0], r[1])
    return {"smooth": names, "smooth_range": ranges, "df": df, "smooth_method": g["criterion"],
            "shared_smoothing": g["shared_smoothing"]}


def load_plan(path) -> Plan:
    """Read a plan written by :func:`save_plan`, with bounded cost, and check all of it."""
    from .persistence import _json_depth

    shown = repr(str(path))
    raw = _read_bounded(path, "plan file", MAX_PLAN_BYTES)
    if _json_depth(raw) > 8:
        raise FederatedFileError(f"{shown} nests deeper than a plan does (at most 8 levels); not a featharm plan.")
    try:
        d = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FederatedFileError(f"{shown} is not a featharm plan: not JSON ({exc}).") from None
    if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
        fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise FederatedFileError(f"{shown} is not a featharm plan (format {fmt!r}; expected {PLAN_FORMAT!r}).")
    version = d.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FederatedFileError(f"{shown} is damaged: schema_version is {version!r}; expected an integer.")
    if version > PLAN_SCHEMA:
        raise FederatedFileError(f"{shown} uses plan schema {version}, newer than this featharm ({__version__}) "
                                 f"reads ({PLAN_SCHEMA}); upgrade featharm.")
    body = {k: v for k, v in d.items() if k not in ("format", "schema_version")}
    p = plan_from_dict(body, shown)
    if version != p.schema_version:
        raise FederatedFileError(f"{shown} is damaged: schema_version is {version}, but a {p.method!r} plan has "
                                 f"schema {p.schema_version}; remake it with `featharm federated plan`.")
    return p


def _as_plan(p) -> Plan:
    if isinstance(p, Plan):
        return p
    if isinstance(p, (str, os.PathLike)):
        return load_plan(p)
    raise FederatedError(f"expected a featharm.federated.Plan or the path of a plan file; got {type(p).__name__}.")


# ============================================================================================== summaries
@dataclass(eq=False)
class Summary:
    """One site's statistics for its batches (``batches``, sorted; ``stats`` coded 0..k-1 in that order)."""

    plan: Plan
    batches: list
    stats: SuffStats
    source: str | None = None  # the file it was read from (for messages)
    featharm_version: str = __version__

    @property
    def name(self) -> str:
        return repr(self.source) if self.source else f"the summary of batch(es) {_show(self.batches, 3)}"

    def to_bytes(self) -> bytes:
        """The ``.fhs`` file's content (reproducible bytes, as model files)."""
        from .persistence import container_bytes

        manifest = {"format": SUMMARY_FORMAT, "schema_version": self.plan.schema_version,
                    "featharm_version": __version__,
                    "plan": self.plan.to_dict(), "plan_digest": self.plan.digest, "batches": list(self.batches)}
        return container_bytes(manifest, self.stats.to_arrays())

    def save(self, path) -> None:
        """Write the summary file (atomically)."""
        from .persistence import atomic_write_bytes

        atomic_write_bytes(path, self.to_bytes())


def summarize(data: pd.DataFrame, covariates: pd.DataFrame | None, plan) -> Summary:
    """One site's summary: the statistics of each of its batches (see the module docstring).

    ``data``: subjects × columns holding every planned feature (other columns are ignored); ``covariates``:
    the batch column and the formula's covariates, same rows and index as ``data`` (``None``: they are
    columns of ``data``). Refuses (:class:`DisclosureError`, naming the batch and level or column) a batch with
    fewer than ``plan.min_count`` subjects, a categorical level or interaction cell with 1..min_count-1 subjects
    in a batch, a covariate column not zero for (or, two-valued, at one value for) 1..min_count-1 subjects of a
    batch, a feature observed in 1..min_count-1 subjects of a batch. A subject without a covariate value is an
    error (fill it or leave the subject out: the sums cover exactly the rows given)."""
    p = _as_plan(plan)
    if not isinstance(data, pd.DataFrame):
        raise InputError(f"summarize needs the data as a DataFrame; got {type(data).__name__}.")
    cov = data if covariates is None else covariates
    if not isinstance(cov, pd.DataFrame):
        raise InputError(f"summarize needs the covariates as a DataFrame; got {type(cov).__name__}.")
    if len(cov) != len(data) or not cov.index.equals(data.index):
        raise InputError(f"the covariates ({len(cov)} rows) must have the same rows and index as the data "
                         f"({len(data)} rows); align them first (e.g. covariates.loc[data.index]).")
    cols = set(map(str, data.columns))
    lacking = [f for f in p.features if f not in cols]
    if lacking:
        raise ColumnNotFoundError(
            f"the data lack {len(lacking)} feature(s) of the plan: {_show(lacking)}. Every site must provide "
            "every planned feature (in any column order); ask the coordinator for a plan without them if they "
            "cannot be measured here.")
    if p.batch not in cov.columns:
        raise ColumnNotFoundError(f"the covariates lack the batch column {p.batch!r} of the plan.")
    bser = cov[p.batch]
    if bser.isna().any():
        raise MissingValueError(f"batch column {p.batch!r} is empty in {int(bser.isna().sum())} row(s); every "
                                "subject needs its batch.")
    labels = bser.astype(str).to_numpy()
    for v in dict.fromkeys([*p.design.variables, *p.smooth]):
        if v in cov.columns and cov[v].isna().any():
            from ._validation import show_rows

            na = cov[v].isna().to_numpy()
            raise MissingValueError(
                f"covariate {v!r} is empty at {int(na.sum())} row(s) ({show_rows(cov.index, na)}); every subject "
                f"of a summary needs every covariate of the plan. Fill them, or leave those subjects out of the "
                f"data you summarize (summarize has no --missing-covariates option: its sums cover exactly the "
                f"rows it is given). Nothing was written.")
    for v in p.design.variables:
        if v not in cov.columns:
            raise ColumnNotFoundError(f"the covariates lack the column {v!r} that the plan's formula "
                                      f"{p.formula!r} uses.")
        s = cov[v]
        if v in p.levels:
            vals = s.astype(str)
            unplanned = sorted(set(vals[s.notna()]) - set(p.levels[v]))
            if unplanned:
                raise FederatedError(f"covariate {v!r} has level(s) {_show(unplanned)} that the plan does not list "
                                     f"(planned: {list(p.levels[v])}); recode them to a planned level, or ask the "
                                     "coordinator to add them to the plan.")
        elif not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            num = pd.to_numeric(s.astype(object), errors="coerce")
            if (num.isna() & s.notna()).any():
                raise FederatedError(f"covariate {v!r} holds text ({_show(pd.unique(s[num.isna() & s.notna()]), 3)}) "
                                     f"but the plan codes it as continuous; the plan must list its levels "
                                     f"(--levels {v}=...).")
    Y = _feature_block(data, p.features)
    X = p.design.transform(cov)
    site_batches = sorted(set(labels.tolist()))
    codes = np.searchsorted(np.asarray(site_batches, dtype=object), labels.astype(object)).astype(np.int64)
    Z = _spline_block(p, cov, labels) if p.method == "gam" else None
    _check_disclosure(p, site_batches, codes, cov, Y, Z, X)
    if Z is not None:
        X = np.hstack([X, Z])
    stats = SuffStats(len(site_batches), X.shape[1], Y.shape[1]).update(X, Y, codes)
    return Summary(p, site_batches, stats)


def _spline_block(p: Plan, cov: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """The plan's spline basis of every smooth term at this site's rows; a value outside the plan's range is an
    :class:`OutOfRangeError` naming the covariate, the value, its batch and row (nothing is written)."""
    from ._validation import numeric_covariate

    blocks = []
    for b in p.bases:
        x = numeric_covariate(cov, b.name, "smooth covariate", fix="Every site provides the plan's smooth covariates.",
                              dtype_fix="the plan models it by a spline")
        lo, hi = b.bounds
        out = (x < lo) | (x > hi)
        if out.any():
            rows = np.flatnonzero(out)
            worst = rows[np.argmax(np.maximum(lo - x[rows], x[rows] - hi))]
            where = sorted(set(labels[rows].tolist()))
            raise OutOfRangeError(
                f"smooth covariate {b.name!r} has {rows.size} value(s) outside the plan's range [{lo:g}, {hi:g}] in "
                f"batch(es) {_show(where, 3)} of {p.batch!r} (e.g. {x[worst]:g} in batch {labels[worst]!r}, row "
                f"{cov.index[worst]!r}). The plan's spline basis is not defined there. Nothing was written: ask the "
                f"coordinator for a plan whose range covers this site's values (--smooth-range {b.name}=LO,HI), or "
                "leave those subjects out.")
        blocks.append(b.transform(x))
    return np.hstack(blocks)


def _feature_block(data: pd.DataFrame, features) -> np.ndarray:
    sub = data.loc[:, list(features)]
    for c in sub.columns:
        s = sub[c]
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            raise NonNumericFeatureError(f"feature {c!r} is not numeric (dtype {s.dtype}); features are numbers, "
                                         "empty cells for missing values.")
    Y = sub.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(Y).any():
        r, c = (int(v[0]) for v in np.nonzero(np.isinf(Y)))
        raise MissingValueError(f"feature {features[c]!r} is infinite at row {data.index[r]!r}; only empty cells "
                                "mark missing values.")
    return Y


def _numeric_width(node, state: dict) -> int:
    """How many design columns a numerical factor gives (a B-spline or polynomial basis several)."""
    if node[0] == "call" and node[1] == "bs":
        st = state[_fm.render(node)]
        return len(st["knots"]) - int(st["degree"]) - 2
    if node[0] == "call" and node[1] == "poly":
        return _fm.poly_degree(node)
    return 1


def _column_parts(design: CovariateDesign) -> list:
    """For each design column, from the design's spec (not from its name): ``(cell, numeric)`` where ``cell``
    is the tuple of ``(variable, level)`` of its categorical factors (the column is zero outside that cell) and
    ``numeric`` the names of its numerical factors (``()``: the column is the 0/1 indicator of the cell)."""
    spec = design.spec or {}
    factors = {fa["name"]: fa for fa in spec.get("factors", [])}
    out = []
    for block in spec.get("blocks", []):
        parts = []
        for name, reduced in block:
            fa = factors[name]
            if fa["kind"] == "categorical":
                lev = design.levels[fa["variable"]]
                ref = 0 if fa["reference"] is None else lev.index(fa["reference"])
                parts.append([((fa["variable"], lv), None) for k, lv in enumerate(lev) if not (reduced and k == ref)])
            else:
                parts.append([(None, name)] * _numeric_width(fa["node"], spec["state"]))
        for rev in itertools.product(*reversed(parts)):  # the first factor varies fastest, as the design's columns
            combo = rev[::-1]
            out.append((tuple(c[0] for c in combo if c[0] is not None),
                        tuple(c[1] for c in combo if c[1] is not None)))
    if len(out) != len(design.columns):  # cannot happen for a plan's design; never guess
        raise FederatedError(f"the plan's design has {len(design.columns)} columns but its spec describes "
                             f"{len(out)}; remake the plan.")
    return out


def _cell_text(cell) -> str:
    return " and ".join(f"{v} = {lv!r}" for v, lv in cell)


def _check_disclosure(p: Plan, batches, codes, cov, Y, Z=None, X=None) -> None:
    k = p.min_count
    fix = (f"Nothing was written. Merge it with another batch of the same scanner, leave it out of the harmonization, "
           f"or (if your data-sharing agreement allows it) ask the coordinator for a plan with a lower min_count "
           f"(now {k}).")
    counts = np.bincount(codes, minlength=len(batches))
    for i, b in enumerate(batches):
        if counts[i] < k:
            raise DisclosureError(f"batch {b!r} of {p.batch!r} has {counts[i]} subject(s), fewer than the plan's "
                                  f"min_count of {k}: its sums would describe too few people. {fix}")
    for v, lev in sorted(p.levels.items()):
        vals = cov[v].astype(str).to_numpy()
        for i, b in enumerate(batches):
            rows = codes == i
            for level in lev:
                c = int(np.count_nonzero(vals[rows] == level))
                if 0 < c < k:
                    raise DisclosureError(
                        f"batch {b!r} has {c} subject(s) with {v} = {level!r}, fewer than the plan's min_count of "
                        f"{k}: the sums of the {v} = {level!r} column would describe those few people's features. "
                        f"{fix}")
    lower = (f"Nothing was written. Leave those subjects out, or ask the coordinator for a plan that merges levels or "
             f"drops that term, or (only if your data officer agrees) one with a lower min_count (--min-count, now "
             f"{k}).")
    parts = _column_parts(p.design)
    # every cell of categorical covariates that share a term: the sums over a cell follow from the sums of the
    # columns of the term (the baseline cells by difference), so each cell is 0 or at least min_count subjects
    for group in dict.fromkeys(tuple(sorted({v for v, _ in cell})) for cell, _ in parts):
        if len(group) < 2:
            continue  # a single covariate's levels are checked above
        key = pd.DataFrame({"\0batch": codes, **{v: cov[v].astype(str).to_numpy() for v in group}})
        sizes = key.groupby(["\0batch", *group], sort=True).size()
        few = sizes[(sizes > 0) & (sizes < k)]
        if len(few):
            (i, *lv), c = few.index[0], int(few.iloc[0])
            raise DisclosureError(
                f"batch {batches[i]!r} has {c} subject(s) with {_cell_text(zip(group, lv))} (a cell of the "
                f"interaction {':'.join(group)} of formula {p.formula!r}), fewer than the plan's min_count of {k}: "
                f"the sums of the interaction's columns would describe those few people's features. {lower}")
    if X is not None and X.shape[1]:
        # any covariate column: the sums Σxy over the subjects where it is not zero; and a column that takes two
        # values in a batch (a 0/1 covariate, I(...) of one) gives the sums over the subjects at each value
        for i, b in enumerate(batches):
            Xi = X[codes == i]
            nz = np.count_nonzero(Xi, axis=0)
            S = np.sort(Xi, axis=0)
            distinct = 1 + np.count_nonzero(np.diff(S, axis=0), axis=0)
            at_low = np.count_nonzero(S == S[:1], axis=0)
            two = distinct == 2
            small_two = two & (np.minimum(at_low, len(Xi) - at_low) < k)
            bad = ((nz > 0) & (nz < k)) | small_two
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                col = p.design.columns[j]
                if 0 < nz[j] < k:
                    what = f"is not zero for only {nz[j]} subject(s)"
                else:
                    c, val = ((at_low[j], S[0, j]) if at_low[j] < len(Xi) - at_low[j]
                              else (len(Xi) - at_low[j], S[-1, j]))
                    what = (f"takes only two values, and {c} subject(s) have the value {val:g} (from the sums of a "
                            "two-valued column one can work out the sums over the subjects at each value)")
                raise DisclosureError(
                    f"batch {b!r}: covariate column {col!r} of formula {p.formula!r} {what}, fewer than the plan's "
                    f"min_count of {k}: its sums (Σx, Σxy) would describe those few people's features. {lower}")
    if Z is not None:  # a spline column is zero outside its knot interval: its sums are over the subjects inside
        inside = np.zeros((len(batches), Z.shape[1]), dtype=np.int64)
        np.add.at(inside, codes, (Z != 0).astype(np.int64))
        few = (inside > 0) & (inside < k)
        if few.any():
            i, j = (int(x[0]) for x in np.nonzero(few))
            b, c = _basis_of_column(p, j)
            lo, hi = b.knots[c + 1], b.knots[c + SPLINE_DEGREE + 2]  # the support of the kept B-spline c + 1
            raise DisclosureError(
                f"batch {batches[i]!r} has {inside[i, j]} subject(s) with {b.name} in ({lo:g}, {hi:g}), where the "
                f"spline column {b.column_names()[c]} is not zero; fewer than the plan's min_count of {k}: the sums "
                f"of that column would describe those few people's features. Nothing was written. Leave those "
                f"subjects out, or ask the coordinator for a plan with fewer knots (--df, now {p.df}) or a range that "
                f"ends nearer these values (--smooth-range), or (if your data-sharing agreement allows it) a lower "
                f"min_count.")
    if np.isnan(Y).any():
        obs = np.stack([np.count_nonzero(~np.isnan(Y[codes == i]), axis=0) for i in range(len(batches))])
        few = (obs > 0) & (obs < k)
        if few.any():
            i, j = (int(x[0]) for x in np.nonzero(few))
            raise DisclosureError(
                f"feature {p.features[j]!r} has {obs[i, j]} observed value(s) in batch {batches[i]!r}, fewer than "
                f"the plan's min_count of {k}: its sums would describe too few people. Leave those values empty "
                f"too (a batch with no value of a feature discloses nothing about it), or drop the feature from "
                f"the plan. Nothing was written.")


def _basis_of_column(p: Plan, j: int):
    """The basis and its column index of spline column ``j`` (counted over the spline columns)."""
    for b in p.bases:
        if j < b.n_columns:
            return b, j
        j -= b.n_columns
    raise IndexError(j)


# ---------------------------------------------------------------------------------------- summary files
@dataclass(frozen=True)
class _Spec:
    axes: tuple
    dtype: str


_AXES = {"m": "batch", "q": "column", "p": "feature", "k": "cell"}
_SPECS = {name: _Spec(tuple(_AXES[a] for a in axes), "int64" if name in ("miss_batch", "miss_feature") else "float64")
          for name, axes in ARRAYS.items()}


def _summary_reader(path):
    from .persistence import _Reader

    class _SummaryReader(_Reader):
        def damaged(self, found: str, expected: str) -> FederatedFileError:
            return FederatedFileError(f"summary {self.shown} is damaged or was altered: {found}; expected "
                                      f"{expected}. Ask the site to summarize again.")

        def not_a_model(self, why: str) -> FederatedFileError:
            return FederatedFileError(f"{self.shown} is not a featharm summary file (expected a zip with "
                                      f"manifest.json, as `featharm federated summarize` writes): {why}.")

    return _SummaryReader(path)


def load_summary(path, plan=None) -> Summary:
    """Read a site summary (``.fhs``) with bounded cost, checking all of it (container, manifest, each array's
    dtype and shape before it is read, then the values: whole non-negative counts, finite sums); with ``plan``,
    also that it was made with that plan. Raises :class:`FederatedFileError` naming the file."""
    reader = _summary_reader(path)
    shown = reader.shown
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FederatedFileError(f"summary file {shown} does not exist.") from None
    if not stat.S_ISREG(st.st_mode):
        raise FederatedFileError(f"{shown} is not a regular file (a folder, pipe or device); give the .fhs file.")
    with reader.open() as zf:
        raw = reader.read_member(zf, zf.getinfo("manifest.json"), MAX_PLAN_BYTES)
        from .persistence import CREATED_TEXT, VERSION_TEXT, _json_depth

        if _json_depth(raw) > 12:
            raise reader.damaged("manifest.json nests too deep", "the manifest of a summary")
        try:
            man = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise reader.not_a_model(f"its manifest.json is not JSON ({exc})") from None
        if not isinstance(man, dict) or man.get("format") != SUMMARY_FORMAT:
            fmt = man.get("format") if isinstance(man, dict) else type(man).__name__
            hint = " (a model file: give it to `featharm apply` or `featharm federated extend`)" \
                if fmt == "featharm-model" else ""
            raise FederatedFileError(f"{shown} is not a featharm summary file (format {fmt!r}){hint}.")
        version = man.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise reader.damaged(f"schema_version is {version!r}", "an integer")
        if version > SUMMARY_SCHEMA:
            raise FederatedFileError(f"{shown} uses summary schema {version}, newer than this featharm "
                                     f"({__version__}) reads ({SUMMARY_SCHEMA}); upgrade featharm.")
        keys = {"format", "schema_version", "featharm_version", "plan", "plan_digest", "batches", "arrays"}
        if set(man) - keys - {"created"} or keys - set(man):
            raise reader.damaged(f"its manifest has the entries {sorted(man)[:10]}", f"{sorted(keys)}")
        ver = man["featharm_version"]
        if not (isinstance(ver, str) and VERSION_TEXT.fullmatch(ver)):
            raise reader.damaged(f"featharm_version is {str(ver)[:40]!r}",
                                 "a version such as '0.1.0' (at most 40 letters, digits and . + - _ !)")
        if "created" in man and not (isinstance(man["created"], str) and CREATED_TEXT.fullmatch(man["created"])):
            raise reader.damaged(f"created is {str(man['created'])[:40]!r}",
                                 "a UTC time such as '2026-01-31T12:00:00+00:00'")
        p = plan_from_dict(man["plan"], f"the plan inside {shown}")
        if man["plan_digest"] != p.digest:
            raise reader.damaged(f"plan_digest {str(man['plan_digest'])[:16]!r}... does not match its plan",
                                 "the digest of the plan it carries")
        batches = man["batches"]
        if (not isinstance(batches, list) or not batches or len(batches) > MAX_BATCHES
                or not all(isinstance(b, str) and b for b in batches) or batches != sorted(set(batches))):
            raise reader.damaged("its batches are not a sorted list of distinct batch levels", "that")
        if version != p.schema_version:
            raise reader.damaged(f"schema_version is {version} for a {p.method!r} plan",
                                 f"{p.schema_version} (what featharm writes for that plan)")
        m, q, pf = len(batches), p.n_columns, len(p.features)
        dims = {"batch": m, "column": q, "feature": pf, "cell": (0, m * pf)}
        meta = man["arrays"]
        if not isinstance(meta, dict) or set(meta) != set(_SPECS):
            listed = sorted(meta)[:16] if isinstance(meta, dict) else meta
            raise reader.damaged(f"its manifest lists the arrays {listed!r}", f"exactly {sorted(_SPECS)}")
        members = {f"arrays/{k}.npy": k for k in _SPECS}
        for name in zf.namelist():
            if name != "manifest.json" and name not in members:
                raise reader.damaged(f"the zip holds an unexpected member {name!r} (not read)",
                                     "only manifest.json and the arrays of a summary")
        present = set(zf.namelist())
        for member, key in members.items():
            if member not in present:
                raise reader.damaged(f"array {key!r} is missing", f"the {len(_SPECS)} arrays of a summary")
            mk = meta[key]
            if not (isinstance(mk, dict) and set(mk) == {"shape", "dtype"} and isinstance(mk["dtype"], str)
                    and isinstance(mk["shape"], list)
                    and all(isinstance(n, int) and not isinstance(n, bool) for n in mk["shape"])):
                raise reader.damaged(f"the manifest entry of array {key!r} is malformed",
                                     '{"shape": [integers], "dtype": "..."}')
            spec = _SPECS[key]
            most = 4096 + 8 * math.prod(d if isinstance(d, int) else d[1] for d in (dims[a] for a in spec.axes))
            if zf.getinfo(member).file_size > most:
                raise reader.damaged(f"array {key!r} declares {zf.getinfo(member).file_size:,} bytes",
                                     f"at most {most:,}")
        arrays = {}
        for member, key in sorted(members.items(), key=lambda kv: ARRAYS_ORDER.index(kv[1])):
            arrays[key] = reader.array(zf, zf.getinfo(member), key, _SPECS[key], dims, meta[key])
    try:
        stats = SuffStats.from_arrays(arrays)
    except InputError as exc:
        raise FederatedFileError(f"summary {shown} is damaged or was altered: {exc} Ask the site to summarize "
                                 "again.") from None
    for i, b in enumerate(batches):
        if stats.counts[i] < p.min_count:
            raise FederatedFileError(f"summary {shown} holds batch {b!r} with {int(stats.counts[i])} subject(s), "
                                     f"fewer than its plan's min_count of {p.min_count}; featharm never writes such "
                                     "a summary (altered?).")
    s = Summary(p, list(batches), stats, source=str(path), featharm_version=man["featharm_version"])
    if plan is not None:
        _check_follows(s, _as_plan(plan))
    return s


ARRAYS_ORDER = ["counts", "x_shift", "y_shift", "y_slope", "sx", "sxx", "n_obs", "sy", "sxy", "syy", "miss_batch",
                "miss_feature", "miss_sx", "miss_sxx"]  # the cell axis is fixed by miss_batch first


def _as_summary(s, p: Plan | None) -> Summary:
    if isinstance(s, Summary):
        if p is not None:
            _check_follows(s, p)
        return s
    if isinstance(s, (str, os.PathLike)):
        return load_summary(s, p)
    raise FederatedError(f"expected a featharm.federated.Summary or the path of a summary file; got "
                         f"{type(s).__name__}.")


def _check_follows(s: Summary, p: Plan) -> None:
    """``s`` was made with the plan ``p`` (else say what differs)."""
    if s.plan.digest == p.digest:
        return
    a, b = s.plan.to_dict(), p.to_dict()
    diffs = []
    for key in ("batch", "batches", "formula", "levels", "features", "options", "min_count", "method", "gam"):
        if a.get(key) != b.get(key):
            if key == "features":
                extra = [f for f in a[key] if f not in set(b[key])]
                lack = [f for f in b[key] if f not in set(a[key])]
                what = (f"features (it has {_show(extra, 3)} not planned, lacks {_show(lack, 3)})" if extra or lack
                        else "feature order")
            elif key == "gam" and a.get(key) and b.get(key):
                ga, gb = ({**g, "smooth": [(t["name"], t["range"]) for t in g["smooth"]]} for g in (a[key], b[key]))
                pairs = [f"{k}: {ga[k]!r} vs {gb[k]!r}" for k in _GAM_KEYS if ga[k] != gb[k]]
                what = f"smooth terms ({', '.join(pairs)})"
            elif key in ("options", "levels"):
                ks = sorted(set(a[key]) | set(b[key]))
                pairs = [f"{k}: {a[key].get(k)!r} vs {b[key].get(k)!r}" for k in ks if a[key].get(k) != b[key].get(k)]
                what = f"{key} ({', '.join(pairs)})"
            else:
                what = f"{key} ({str(a.get(key))[:60]} vs {str(b.get(key))[:60]})"
            diffs.append(what)
    raise FederatedError(f"{s.name} was made with another plan (digest {s.plan.digest[:12]} vs {p.digest[:12]}): "
                         f"{'; '.join(diffs) or 'the plans differ'}. The site must summarize again with this plan.")


def _q(text) -> str:
    """Text from a file, for printing: quoted, every control character (escape codes, new lines) escaped."""
    return repr(str(text))


def describe_summary(s: Summary) -> list[str]:
    """What a summary discloses, line by line (``featharm federated show``): which sums, over how many subjects.

    Everything printed that comes from the file (names, levels, formula, version) is quoted with its control
    characters escaped, so a tampered file cannot add lines or terminal escape codes to the listing."""
    st = s.stats
    p = s.plan
    cols = p.design.columns
    parts = _column_parts(p.design)
    lines = [f"{_q(s.source) if s.source else 'summary'}: featharm federated summary (schema {p.schema_version}), "
             f"written by featharm {_q(s.featharm_version)}",
             f"  plan digest  {p.digest}",
             f"  batch column {_q(p.batch)}; formula {_q(p.formula) if p.formula else '(none)'}; {len(cols)} "
             f"covariate column(s): {', '.join(map(_q, cols)) or '-'}"]
    if p.method == "gam":
        terms = ", ".join(f"{_q(t)} over [{lo:g}, {hi:g}]" for t, (lo, hi) in p.smooth_range.items())
        lines.append(f"  ComBat-GAM   smooth term(s) {terms}: "
                     f"{p.df - 1} spline column(s) each (cubic B-splines, knots evenly spaced over the range), "
                     f"smoothing by {p.smooth_method}{' shared by all features' if p.shared_smoothing else ''}")
    lines += [f"  {len(p.features)} feature(s): {_show(p.features, 4)}",
              f"  min_count    {p.min_count}",
              "It discloses, for each batch below, only sums over that batch's subjects (no row of any subject):",
              "  n (subjects); Σx (covariate columns) and Σxxᵀ (their cross-products); per feature the number of",
              "  observed values, Σy, Σxy (each covariate column times the feature) and Σy²; all taken around the",
              "  batch's mean covariates and features and a pilot regression slope (stored with them; functions of",
              "  the same sums).",
              "  A column of categorical levels is zero outside its level (or cell of an interaction): its Σxy sums",
              "  over only the subjects listed below. summarize refused any covariate column that is not zero for",
              f"  1 to {p.min_count - 1} subjects of a batch, or takes two values one of which 1 to {p.min_count - 1} "
              "subjects have."]
    if p.method == "gam":
        lines += ["  The covariate columns include each smooth term's spline columns s(VAR)[j] (the B-spline values",
                  "  at the subject's VAR): their sums form a smoothed histogram of VAR over the plan's knots (listed",
                  "  per batch below), and each is zero outside its support (4 knot intervals), so its Σxy sums",
                  f"  over only the subjects inside: summarize refuses a column with 1 to {p.min_count - 1} such "
                  "subjects."]
    lines.append("")
    width = max([24] + [len(_q(c)) for c in cols])
    for i, b in enumerate(s.batches):
        n = int(st.counts[i])
        planned = "" if b in p.batches else "  (not in the plan's batches: for `federated extend` only)"
        lines.append(f"batch {_q(b)}: sums over {n} subjects{planned}")
        sums = (st.x_shift[i] + st.sx[i] / max(n, 1)) * n  # Σx of each column
        known = {}  # cell -> its number of subjects, where a column is the cell's 0/1 indicator
        for j, (cell, numeric) in enumerate(parts):
            if cell and not numeric:
                known[frozenset(cell)] = int(round(sums[j]))
        for v, lev in sorted(p.levels.items()):  # a baseline level: the batch less the other levels
            others = [known.get(frozenset({(v, lv)})) for lv in lev]
            if others.count(None) == 1:
                known.setdefault(frozenset({(v, lev[others.index(None)])}), n - sum(c for c in others if c is not None))
        for j, (cell, numeric) in enumerate(parts):
            if not cell:
                continue
            c = known.get(frozenset(cell))
            if not numeric:
                lines.append(f"  {_q(cols[j]):<{width}} {c} subjects")
            elif c is not None:
                lines.append(f"  {_q(cols[j]):<{width}} sums over the {c} subjects with {_cell_text(cell)}")
            else:
                lines.append(f"  {_q(cols[j]):<{width}} sums over the subjects with {_cell_text(cell)} (0 or at "
                             f"least {p.min_count}; their number is not among the sums)")
        shown_cells = {frozenset(cell) for cell, numeric in parts if cell and not numeric}
        for v, lev in sorted(p.levels.items()):
            for lv in lev:
                cell = frozenset({(v, lv)})
                if cell not in shown_cells and cell in known:
                    label = f"{v} = {lv!r} (baseline)"
                    lines.append(f"  {_q(label)[1:-1]:<{width}} {known[cell]} subjects")
        start = len(cols)
        for basis in p.bases:
            spline = sums[start:start + basis.n_columns]
            start += basis.n_columns
            lines.append(f"  s({_q(basis.name)[1:-1]}) column sums  {', '.join(f'{v:.1f}' for v in spline)}")
        obs = st.n_obs[i]
        inc = np.flatnonzero(obs < n)
        if inc.size:
            lines.append(f"  {inc.size} feature(s) with missing values: feature sums over their observed subjects "
                         f"({int(obs[inc].min())} to {int(obs[inc].max())}); Σx and Σxxᵀ over their subjects "
                         "without a value:")
            for v in inc:
                lines.append(f"    {_q(p.features[v])}: {int(obs[v])} observed, covariate sums over {n - int(obs[v])} "
                             "subject(s) without a value")
        else:
            lines.append(f"  every feature observed in all {n} subjects")
    arrays = st.to_arrays()
    lines.append("")
    lines.append("arrays: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(arrays.items())))
    return lines


# ============================================================================================== combine, extend
def combine(summaries, plan):
    """The fitted :class:`~featharm.ComBat` (:class:`~featharm.ComBatGAM` for a ``"gam"`` plan) from the sites'
    summaries (objects or ``.fhs`` paths) and the plan.

    Checks that each summary follows the plan, that no batch is in two summaries, that every planned batch
    has one and no other batch appears, and that every planned categorical level is held by some batch.
    The result equals ``ComBat(**plan.model_params()).fit`` (``ComBatGAM``, whose parameters then fix the same
    basis: ``knots="uniform"`` and ``smooth_bounds`` at the plan's ranges) on the pooled rows to rounding and
    does not depend on the order of ``summaries`` (bit for bit)."""
    p = _as_plan(plan)
    items = [_as_summary(s, p) for s in summaries]
    if not items:
        raise FederatedError("combine needs at least one summary.")
    owner: dict[str, Summary] = {}
    for s in items:
        for b in s.batches:
            if b in owner:
                raise FederatedError(f"batch {b!r} is in two summaries: {owner[b].name} and {s.name}. A batch must "
                                     "be summarized at exactly one site; drop the duplicate.")
            owner[b] = s
    unplanned = sorted(b for b in owner if b not in set(p.batches))
    if unplanned:
        raise FederatedError(f"batch {unplanned[0]!r} ({owner[unplanned[0]].name}) is not among the plan's batches "
                             f"{_show(p.batches)}; add a late batch to a combined model with `federated extend`, "
                             "or remake the plan with it.")
    absent = [b for b in p.batches if b not in owner]
    if absent:
        raise FederatedError(f"the plan's batch(es) {_show(absent)} have no summary; pass their sites' summaries, or "
                             "remake the plan without them.")
    m = len(p.batches)
    index = {b: i for i, b in enumerate(p.batches)}
    pieces = [_expand(s, [index[b] for b in s.batches], m) for s in items]
    stats = SuffStats.combine(pieces)
    _check_levels_held(p, stats)
    if p.method == "gam":
        return p.model_class().from_statistics(stats, batches=list(p.batches), design=p.design,
                                               bases=list(p.bases), feature_names=list(p.features),
                                               **p.model_params())
    return p.model_class().from_statistics(stats, batches=list(p.batches), design=p.design,
                                           feature_names=list(p.features), **p.model_params())


def _expand(s: Summary, rows: list, m: int) -> SuffStats:
    """The summary's statistics as rows ``rows`` of statistics over ``m`` batches (zeros elsewhere)."""
    a = s.stats.to_arrays()
    out = {}
    for name, axes in ARRAYS.items():
        if axes[0] == "m":
            full = np.zeros((m,) + a[name].shape[1:])
            full[rows] = a[name]
            out[name] = full
    mb = np.asarray(rows, dtype=np.int64)[a["miss_batch"]] if a["miss_batch"].size else a["miss_batch"]
    order = np.lexsort((a["miss_feature"], mb))
    out["miss_batch"], out["miss_feature"] = mb[order], a["miss_feature"][order]
    out["miss_sx"], out["miss_sxx"] = a["miss_sx"][order], a["miss_sxx"][order]
    return SuffStats.from_arrays(out)


def _check_levels_held(p: Plan, stats: SuffStats) -> None:
    cols = p.design.columns
    n = stats.counts
    total = (stats.x_shift * n[:, None] + stats.sx).sum(axis=0)
    for v, lev in sorted(p.levels.items()):
        for level in lev[1:]:
            name = f"{v}[T.{level}]"
            if name in cols and round(float(total[cols.index(name)])) == 0:
                raise FederatedError(f"no batch has a subject with {v} = {level!r}, a level the plan lists; remake "
                                     f"the plan without it (--levels {v}=...).")
        base = lev[0]
        others = [f"{v}[T.{lv}]" for lv in lev[1:]]
        if all(o in cols for o in others) and round(float(n.sum() - sum(total[cols.index(o)] for o in others))) == 0:
            raise FederatedError(f"no batch has a subject with {v} = {base!r}, a level the plan lists; remake the "
                                 f"plan without it (--levels {v}=...).")


def extend(model, summary, plan=None):
    """A copy of the combined ``model`` with the batches of a late site's ``summary`` (object or path) added,
    each estimated against the frozen model (``new_sites="estimate"``); the other batches are unchanged.
    ``model`` is a :class:`~featharm.ComBat`, or a :class:`~featharm.ComBatGAM` for a ``"gam"`` plan."""
    from .models import ComBat, ComBatGAM
    from .models._from_stats import extend_with_statistics

    if type(model) not in (ComBat, ComBatGAM):
        raise FederatedError(f"extend needs a fitted ComBat or ComBatGAM (a combined federated model); got "
                             f"{type(model).__name__}.")
    model._check_fitted()
    s = _as_summary(summary, _as_plan(plan) if plan is not None else None)
    p = s.plan
    if type(model) is not p.model_class():
        raise FederatedError(f"{s.name} was made with a {p.method!r} plan, but the model is a "
                             f"{type(model).__name__}. Summarize with the plan the model was combined from.")
    params = model.get_params()
    want = p.model_params()
    diff = [k for k in want if k != "formula" and params.get(k) != want[k]]
    if p.method == "gam":
        def basis(b):
            return b.name, b.degree, b.knots.tolist()

        if [basis(b) for b in model.smooth_bases_] != [basis(b) for b in p.bases]:
            diff.append("spline bases (knots)")
    if list(map(str, model.feature_names_in_)) != list(p.features):
        diff.append("features")
    mine, theirs = model.design_.to_dict(), p.design.to_dict()
    for k in ("columns", "levels", "spec", "transform_state"):
        if mine.get(k) != theirs.get(k):
            diff.append(f"covariate coding ({k})")
    if diff:
        raise FederatedError(f"{s.name} was made with a plan that does not match the model: {', '.join(diff)} "
                             "differ. Summarize with the plan the model was combined from.")
    known = set(map(str, model.batches_))
    clash = [b for b in s.batches if b in known]
    if clash:
        raise FederatedError(f"batch(es) {_show(clash)} of {s.name} are already in the model; extend adds only new "
                             "batches.")
    return extend_with_statistics(model, s.stats, list(s.batches), min_new_site_size=p.min_count)
