"""Nested and OPNested ComBat (Horng et al. 2022): several batch variables, one ComBat step per variable.

Scanner manufacturer, field strength, software version and site are crossed or nested; one combined
label leaves tiny batches, and harmonizing one variable leaves the others. :class:`NestedComBat` applies
ComBat once per batch variable, each step on the output of the previous one, in an order given or chosen
by the OPNested search (every order tried, the one leaving the fewest features × variables with an
Anderson–Darling difference kept). Optionally a latent batch found by a two-component Gaussian mixture
(GMM ComBat) is added as one more batch variable or protected as a covariate. ``docs/methods.md`` §5.3–5.4.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from .._core.ad import ad_ksamp
from .._core.gmm import gmm_fit, gmm_predict
from .._dask import is_lazy
from .._schema import DamagedState, check_int, check_keys, check_names, describe
from .._threads import check_n_jobs
from .._validation import (
    align_covariates,
    batch_levels,
    check_integer,
    check_option,
    check_positive_number,
    encode_batches,
    get_batch,
    model_features,
    show_rows,
)
from ..exceptions import (
    ColumnNotFoundError,
    FormulaError,
    InputError,
    MissingValueError,
    MissingValueWarning,
    NotFittedError,
    record_warnings,
    warn,
)
from ..persistence import _encode_params, register
from ._base import MIN_NEW_SITE_SIZE, model_facts
from .combat import ComBat

__all__ = ["NestedComBat"]

#: Name of the latent batch found by the Gaussian mixture (``gmm="batch"`` / ``"covariate"``) among the
#: covariates the ComBat steps see. A covariate table may not have a column of that name.
LATENT = "gmm_latent"

#: Most batch variables (latent batch included); ``order="search"`` tries every order of at most
#: MAX_SEARCH of them (720 orders, 1956 ComBat fits).
MAX_VARIABLES = 8
MAX_SEARCH = 6
#: Most passes through the order (``sweeps``), and most steps in all.
MAX_SWEEPS = 10
MAX_STEPS = 40

#: Significance level of the Anderson–Darling count (§5.3).
ALPHA = 0.05

# ComBat parameters every step shares (NestedComBat's parameters of the same name), and those a step may
# override through ``step_params``.
_SHARED = ("eb", "parametric", "mean_only", "mean_only_form", "tol", "max_iter", "compat", "priors")
_PER_STEP = (*_SHARED, "ref_batch")

NESTED_SCHEMA = 1  # layout of NestedComBat's state in a model file (within the file's schema)


class NestedComBat(OneToOneFeatureMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """ComBat over several batch variables, one step per variable, in a searched or given order.

    Each step is a :class:`~featharm.ComBat` with ``batch`` = that variable and the same ``formula``, fitted
    on the output of the previous step (Nested ComBat, Horng et al. 2022). With ``order="search"`` every
    order of the variables is fitted and the one leaving the fewest (feature, batch variable) pairs whose
    Anderson–Darling k-sample test across the variable's levels has p < 0.05 is kept (OPNested ComBat; ties
    go to the first order in the order the variables are listed, as ``itertools.permutations`` yields them).
    ``docs/methods.md`` §5.3–5.4.

    Parameters
    ----------
    batches : list of str, default ("site",)
        The batch columns of the covariates (e.g. ``["manufacturer", "field", "site"]``), at most 8. Each
        becomes one ComBat step. Levels of each are sorted as in ComBat.
    formula : str or None, default None
        Covariates whose effects every step preserves (as :class:`~featharm.ComBat`'s ``formula``). Never
        put the target of a later prediction among them.
    order : "search" or list of str, default "search"
        ``"search"``: try every order of the batch variables (at most 6: 720 orders) and keep the one with
        the smallest Anderson–Darling count (see Notes). A list: apply the steps in that order (a
        permutation of ``batches``, with ``"gmm_latent"`` placed where wanted when ``gmm="batch"``; without
        it the latent batch comes last).
    criterion : {"ad_residuals", "ad"}, default "ad_residuals"
        What the order search counts (see Notes): ``"ad"`` is OPNested's count, the Anderson–Darling tests of
        the harmonized features; ``"ad_residuals"`` tests them once the covariate effects the last step
        estimated (its ``beta_``) are taken out, so a site that scanned older subjects is not counted as a
        batch difference. The same without a formula.
    sweeps : int, default 1
        Passes through the order. 1 is Nested/OPNested ComBat. When batch variables are crossed unevenly
        (field strength shares differing between sites), a later step re-introduces part of an earlier
        variable's effect; each further pass fits the steps again on the output (backfitting) and removes
        what is left (``docs/methods.md`` §5.3). The search compares orders after the first pass.
    gmm : {False, "batch", "covariate"}, default False
        GMM ComBat (Horng et al. 2022a): a two-component Gaussian mixture is fitted to every feature
        (standardized) and the labels of the feature with the lowest AIC whose smaller cluster holds more
        than 25 % of the rows define a latent batch ``gmm_latent`` (0 = the lower mode). ``"batch"`` adds it
        as one more batch variable (OPNested+GMM); ``"covariate"`` protects it as a covariate of every step
        (OPNested−GMM). ``transform`` assigns new rows to the latent batch with the stored mixture.
    random_state : int, numpy Generator or None, default 0
        Seeds the starting points of the mixture fit (``gmm``), so a fit is reproducible by default; the order
        search itself is deterministic.
    eb, parametric, mean_only, mean_only_form, tol, max_iter, compat, priors
        ComBat's options, the same for every step (see :class:`~featharm.ComBat`; defaults True, True,
        False, "sva", 1e-4, 1000, None, "auto": empirical-Bayes priors per measure group).
    ref_batch : dict or None, default None
        Reference batch of some steps: ``{variable: level}`` (e.g. ``{"site": "S01"}``); that step maps
        the data onto the level and leaves its rows unchanged.
    step_params : dict or None, default None
        ComBat options of single steps, overriding the shared ones: ``{variable: {option: value}}`` with
        options among eb, parametric, mean_only, mean_only_form, tol, max_iter, compat, priors, ref_batch.
    missing_covariates : {"error", "exclude"}, default "error"
        Rows with a missing label of a batch variable or a missing formula covariate: ``"error"`` names
        them; ``"exclude"`` leaves them out of every step and returns their features as NaN.
    covariates : DataFrame or None, default None
        A covariate table looked up by the index of ``X`` (as :class:`~featharm.ComBat`'s); not saved.
    n_jobs : int or None, default None
        BLAS threads of each step (as :class:`~featharm.ComBat`'s); not saved.

    Attributes
    ----------
    order_ : list of str
        The batch variables in the order the steps apply (``gmm_latent`` included with ``gmm="batch"``).
    steps_ : list of ComBat
        The fitted steps, in ``order_`` (repeated ``sweeps`` times); each has ComBat's learned attributes
        (``gamma_star_`` ...).
    order_counts_ : DataFrame
        The Anderson–Darling count of every order tried (one row per order, labelled ``"a > b"``;
        columns: one per batch variable, and ``total``), in the order tried; with a given order, that order's
        row only. ``order_`` is the first row with the smallest ``total``.
    batch : str
        The first batch variable of ``batches`` (read-only; what the report and ``featharm info`` compare).
    batches_ : ndarray
        Levels of ``batch`` seen at fit (its step's ``batches_``); ``batch_sizes_`` their sizes.
    levels_ : dict
        Levels of every batch variable seen at fit.
    feature_names_in_ : ndarray
        Feature names seen at fit; ``n_features_in_`` their number.
    design_ : CovariateDesign
        The covariate encoding every step shares (with ``gmm_latent`` when ``gmm="covariate"``).
    gmm_ : dict or None
        With ``gmm``: the feature whose mixture defines the latent batch, its standardization (``center``,
        ``scale``), the mixture (``weights``, ``means``, ``sds`` of the standardized feature), ``aic`` and
        the share of the smaller cluster at fit.
    fit_warnings_ : list of dict
        The warnings of the fit (``{"category", "message"}``), those of each chosen step prefixed by its
        variable.
    excluded_rows_ : list
        Only when ``missing_covariates="exclude"`` left rows out: their ids.

    Notes
    -----
    *The order search* (OPNested, §5.3). For every order, the steps are fitted in turn and, on the final
    output (``criterion="ad"``) or on it less the covariate effects of the last step (``"ad_residuals"``),
    each feature is tested across the levels of each batch variable with the Anderson–Darling k-sample test
    (midrank version, Scholz & Stephens 1987; all features at once, :mod:`featharm._core.ad`); the count of
    p < 0.05 is summed over variables. The p-value is scipy's ``anderson_ksamp``
    interpolation, floored at 0.001 and capped at 0.25; since 0.001 < 0.05 < 0.25, the floor and cap never
    change whether a test counts, so no permutation p-value is needed for the count. Orders sharing their
    first steps share those fits.

    *Missing values* are allowed (each step is a ComBat with NaN cells, §1.8); the Anderson–Darling test of
    a feature uses its observed values.

    *New subjects*: ``transform`` applies the steps in order, each with its own frozen model; with
    ``new_sites="estimate"``, each step estimates the levels of its variable it did not see (§5.7).

    Examples
    --------
    >>> import featharm as fh
    >>> data = fh.datasets.load_ixi()
    >>> X = data.filter(like="_thickness").drop(columns=["lh_MeanThickness_thickness",
    ...                                                 "rh_MeanThickness_thickness"])
    >>> cov = data.assign(vendor=data["site"].map({"Guys": "Philips", "HH": "Philips", "IOP": "GE"}),
    ...                   field=data["site"].map({"Guys": 1.5, "HH": 3.0, "IOP": 1.5}))
    >>> hm = fh.NestedComBat(batches=["vendor", "field"], formula="age + sex")
    >>> Xh = hm.fit_transform(X, cov)
    >>> Xh.shape == X.shape, len(hm.order_counts_)
    (True, 2)
    >>> sorted(hm.order_)
    ['field', 'vendor']
    """

    _schema_name = "nested"
    _unsaved_params: ClassVar[tuple[str, ...]] = ("covariates", "n_jobs")
    _compat_options: ClassVar[tuple] = ComBat._compat_options
    _supports_missing = True

    def __init__(self, *, batches=("site",), formula=None, order="search", criterion="ad_residuals", sweeps=1,
                 gmm=False, random_state=0,
                 eb=True, parametric=True, mean_only=False, mean_only_form="sva", ref_batch=None,
                 step_params=None, tol=1e-4, max_iter=1000, compat=None, priors="auto",
                 missing_covariates="error", covariates=None, n_jobs=None):
        self.batches = batches
        self.formula = formula
        self.order = order
        self.criterion = criterion
        self.sweeps = sweeps
        self.gmm = gmm
        self.random_state = random_state
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.mean_only_form = mean_only_form
        self.ref_batch = ref_batch
        self.step_params = step_params
        self.tol = tol
        self.max_iter = max_iter
        self.compat = compat
        self.priors = priors
        self.missing_covariates = missing_covariates
        self.covariates = covariates
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------------------ parameters
    @property
    def batch(self):
        """The first batch variable (read-only): the one the report and ``featharm info`` compare."""
        b = self.batches
        if isinstance(b, (list, tuple)) and b:
            return b[0]
        return b

    def _owner(self) -> str:
        return type(self).__name__

    def _variables(self) -> list:
        return [*self.batches, *([LATENT] if self.gmm == "batch" else [])]

    def _check_params(self) -> None:
        owner = self._owner()

        def bad(name, what, value):
            return InputError(f"The {name!r} parameter of {owner} must be {what}. Got {value!r} instead.")

        b = self.batches
        if not isinstance(b, (list, tuple)) or not b or not all(isinstance(v, str) and v for v in b):
            raise bad("batches", "a non-empty list of batch column names (strings), e.g. ['manufacturer', "
                      "'field']", b)
        if len(set(b)) != len(b):
            raise bad("batches", "a list of distinct column names", b)
        if LATENT in b:
            raise bad("batches", f"a list of batch columns without {LATENT!r} (the name of the latent batch "
                      "of gmm; rename that column)", b)
        check_option("gmm", self.gmm, (False, "batch", "covariate"), owner)
        check_option("criterion", self.criterion, ("ad_residuals", "ad"), owner)
        check_integer("sweeps", self.sweeps, owner)
        if self.sweeps > MAX_SWEEPS or self.sweeps * len(self._variables()) > MAX_STEPS:
            raise bad("sweeps", f"at most {MAX_SWEEPS}, with at most {MAX_STEPS} steps in all (sweeps × batch "
                      "variables)", self.sweeps)
        variables = self._variables()
        if len(variables) > MAX_VARIABLES:
            raise bad("batches", f"at most {MAX_VARIABLES} batch variables (latent batch included)", b)
        f = self.formula
        if f is not None and not isinstance(f, str):
            raise FormulaError(f"The 'formula' parameter of {owner} must be a string such as 'age + sex' or "
                               f"None. Got {f!r} instead.")
        o = self.order
        if isinstance(o, str):
            if o != "search":
                raise bad("order", "'search' or a list of the batch variables", o)
            if len(variables) > MAX_SEARCH:
                raise bad("order", f"a list of the batch variables: order='search' tries every order of at most "
                          f"{MAX_SEARCH} variables ({len(variables)} given)", o)
        elif not isinstance(o, (list, tuple)) or sorted(map(str, o)) != sorted(
                variables if LATENT in o else self.batches) or len(o) != len(set(o)):
            raise bad("order", f"'search' or a list holding each batch variable once ({list(variables)}; "
                      f"{LATENT!r} may be left out, it then comes last)", o)
        rs = self.random_state
        if not (rs is None or isinstance(rs, np.random.Generator)
                or (isinstance(rs, (int, np.integer)) and not isinstance(rs, bool) and rs >= 0)):
            raise bad("random_state", "None, a non-negative integer or a numpy Generator", rs)
        for name in ("eb", "parametric", "mean_only"):
            check_option(name, getattr(self, name), (True, False), owner)
        check_option("mean_only_form", self.mean_only_form, ("sva", "n"), owner)
        check_option("compat", self.compat, self._compat_options, owner)
        check_option("missing_covariates", self.missing_covariates, ("error", "exclude"), owner)
        check_integer("max_iter", self.max_iter, owner)
        check_positive_number("tol", self.tol, owner)
        ref = self.ref_batch
        if ref is not None and (not isinstance(ref, dict) or not set(ref) <= set(variables) or not all(
                isinstance(v, (str, int, float, np.integer, np.floating)) and not isinstance(v, bool)
                for v in ref.values())):
            raise bad("ref_batch", f"None or a dict {{variable: level}} over the batch variables {variables}", ref)
        sp = self.step_params
        if sp is not None and (not isinstance(sp, dict) or not set(sp) <= set(variables) or not all(
                isinstance(v, dict) and set(v) <= set(_PER_STEP) for v in sp.values())):
            raise bad("step_params", f"None or a dict {{variable: {{option: value}}}} over the batch "
                      f"variables {variables} with options among {list(_PER_STEP)}", sp)
        table = self.covariates
        if table is not None and not isinstance(table, pd.DataFrame):
            shown = repr(table) if isinstance(table, (str, int, float)) else f"a {type(table).__name__}"
            raise InputError(f"The 'covariates' parameter of {owner} must be None or a pandas DataFrame of "
                             "covariates indexed by row id (looked up by the index of X at fit and transform). "
                             f"Got {shown} instead; read a file with featharm.io.read_table first.")
        check_n_jobs(self.n_jobs, owner)
        for v in variables:  # each step's options, checked as ComBat checks them (named with the step)
            try:
                self._step(v)._check_params()
            except InputError as exc:
                raise InputError(f"{owner}: the options of the step of {v!r} (step_params / ref_batch) are "
                                 f"invalid: {exc}") from None

    def _step_formula(self) -> str | None:
        if self.gmm != "covariate":
            return self.formula
        return LATENT if not self.formula or not self.formula.strip() else f"{self.formula} + {LATENT}"

    def _step(self, variable) -> ComBat:
        """The unfitted ComBat of the step of ``variable``."""
        params = {k: getattr(self, k) for k in _SHARED}
        if self.ref_batch and variable in self.ref_batch:
            params["ref_batch"] = self.ref_batch[variable]
        params.update((self.step_params or {}).get(variable, {}))
        step = ComBat(batch=variable, formula=self._step_formula(), n_jobs=self.n_jobs, **params)
        return step.set_output(transform="pandas")  # steps hand DataFrames to each other

    # ------------------------------------------------------------------------------ inputs
    def _probe(self) -> ComBat:
        """A ComBat with this model's covariate table: its rules for where covariates come from."""
        return ComBat(batch=self.batch, formula=self.formula, covariates=self.covariates)

    def _covariates(self, X, positional, params: dict, method: str):
        if is_lazy(X):
            raise InputError(f"{self._owner()} works on in-memory tables (a DataFrame or NumPy array); got "
                             f"{type(X).__name__}. Compute it first (e.g. X.compute()).")
        try:
            cov = self._probe()._fit_covariates(X, positional, params, method)
        except InputError as exc:
            raise type(exc)(str(exc).replace("ComBat", self._owner())) from None
        if cov is None:
            raise InputError(
                f"{self._owner()} needs `covariates`: a DataFrame with the batch columns {list(self.batches)} (and "
                "the formula's columns), aligned with the features by index. Pass it to fit/transform, or give "
                "the model the whole table (covariates=table)."
            )
        if not isinstance(cov, pd.DataFrame):
            raise InputError(f"{self._owner()} needs the covariates as a pandas DataFrame; got "
                             f"{type(cov).__name__}.")
        return cov

    def _frame(self, X, cov: pd.DataFrame) -> pd.DataFrame:
        """``X`` as a DataFrame (a NumPy array: the rows of ``cov`` in order, columns x0, x1 ...) for the mixture."""
        if isinstance(X, pd.DataFrame):
            return X
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] == len(cov):
            cols = list(self.feature_names_in_) if hasattr(self, "feature_names_in_") else \
                [f"x{j}" for j in range(X.shape[1])]
            return pd.DataFrame(X, index=cov.index, columns=cols[:X.shape[1]] if len(cols) >= X.shape[1]
                                else [f"x{j}" for j in range(X.shape[1])])
        raise InputError(f"{self._owner()} needs the features as a pandas DataFrame (or a 2-D NumPy array with "
                         f"the rows of the covariates); got {type(X).__name__}.")

    def _exclude(self, X, cov: pd.DataFrame):
        """``missing_covariates="exclude"``: ``X`` and ``cov`` without rows missing a batch label or a formula
        covariate, (rows kept, index of all rows) for the output, and the ids left out."""
        if self.missing_covariates != "exclude":
            return X, cov, None, []
        from ..formula import formula_columns

        cols = [c for c in dict.fromkeys([*self.batches, *formula_columns(self.formula, cov.columns)])
                if c in cov.columns]
        if isinstance(X, pd.DataFrame):
            index = X.index
            sub = cov.reindex(index)[cols] if index.isin(cov.index).all() else None
        elif isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] == len(cov):
            index, sub = cov.index, cov[cols]
        else:
            return X, cov, None, []
        if sub is None:
            return X, cov, None, []
        na = sub.isna().to_numpy().any(axis=1)
        if not na.any():
            return X, cov, None, []
        keep = ~na
        what = [c for c in cols if sub[c].isna().any()]
        warn(f"{int(na.sum())} row(s) have a missing {' / '.join(map(repr, what))}: {show_rows(index, na, 10)}. "
             "They are left out (missing_covariates='exclude') and come back with NaN features; nothing is imputed.",
             MissingValueWarning)
        X = X.loc[keep] if isinstance(X, pd.DataFrame) else X[keep]
        cov = cov.loc[~cov.index.isin(index[na])] if isinstance(X, pd.DataFrame) else cov.loc[keep]
        return X, cov, (keep, index), list(index[na])

    def _with_latent(self, X, cov: pd.DataFrame, *, fitting: bool) -> pd.DataFrame:
        """The covariates the steps see: ``cov`` (a copy) with the latent batch of ``gmm``."""
        if not self.gmm:
            return cov
        if LATENT in cov.columns:
            raise InputError(f"the covariates have a column {LATENT!r}, the name {self._owner()} gives the latent "
                             f"batch of gmm={self.gmm!r}; rename that column.")
        frame = self._frame(X, cov)
        if fitting:
            self.gmm_ = self._fit_gmm(frame)
        g = self.gmm_
        name = g["feature"]
        cols = [str(c) for c in frame.columns]
        if name not in cols:
            raise ColumnNotFoundError(f"the latent batch of gmm is predicted from feature {name!r}, which X lacks; "
                                      "pass the features the model was fitted on.")
        y = frame.iloc[:, cols.index(name)].to_numpy(dtype=np.float64)
        if np.isnan(y).any():
            raise MissingValueError(
                f"the latent batch of gmm is predicted from feature {name!r}, which is missing at "
                f"{show_rows(frame.index, np.isnan(y))}; those rows cannot be assigned. Fill or drop them."
            )
        labels = gmm_predict((y - g["center"]) / g["scale"], np.array(g["weights"]), np.array(g["means"]),
                             np.array(g["sds"]))
        out = cov.copy()
        if isinstance(X, pd.DataFrame):  # matched by row id (ids not in X: no label, never used)
            out[LATENT] = pd.Series(labels.astype(np.float64), index=frame.index).reindex(cov.index).to_numpy()
        else:  # a NumPy X holds the rows of the covariates, in order
            out[LATENT] = labels.astype(np.float64)
        return out

    def _fit_gmm(self, frame: pd.DataFrame) -> dict:
        Y = np.asarray(model_features(frame, self._owner(), allow_nan=True).Y, dtype=np.float64)  # named errors
        res = gmm_fit(Y, random_state=self.random_state)
        if res is None:
            raise InputError(
                f"{self._owner()}(gmm={self.gmm!r}) found no feature whose two-component Gaussian mixture splits "
                "the rows into clusters of more than 25 % each (features with missing values or no variance are "
                "not used), so there is no latent batch. Use gmm=False."
            )
        j = res["feature"]
        return {"feature": str(frame.columns[j]), "center": res["center"], "scale": res["scale"],
                "weights": list(res["weights"]), "means": list(res["means"]), "sds": list(res["sds"]),
                "aic": res["aic"], "minor_share": res["minor_share"]}

    # ------------------------------------------------------------------------------ fitting
    def fit(self, X, covariates=None, /, **params):
        """Fit every step (searching the order when ``order="search"``).

        Parameters
        ----------
        X : DataFrame
            Features (rows = subjects).
        covariates : DataFrame, optional
            The batch columns and the formula's columns, aligned with ``X`` by index (or from the
            constructor's table).

        Returns
        -------
        self
        """
        self._check_params()
        self._fit(X, self._covariates(X, covariates, params, "fit"))
        return self

    def fit_transform(self, X, covariates=None, /, **params):
        """Fit, then harmonize the same rows (identical to ``fit(X, cov).transform(X, cov)``).

        Returns
        -------
        DataFrame
            Harmonized features, same index and columns as ``X``.
        """
        self._check_params()
        out, rows_out = self._fit(X, self._covariates(X, covariates, params, "fit_transform"))
        return self._output(out, rows_out)

    def _forget_fit(self) -> None:
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)
        self.__dict__.pop("_step_messages", None)

    def _fit(self, X, cov):
        self._check_params()
        with record_warnings() as log:
            try:
                self._forget_fit()
                X, cov, rows_out, excluded = self._exclude(X, cov)
                out = self._fit_steps(X, cov)
            except BaseException:
                self._forget_fit()
                raise
        # the model's own warnings (the mixture, rows left out), then those of the chosen steps, each named by its
        # variable; the warnings of steps of orders not chosen were shown during the fit but are not kept
        of_steps = self.__dict__.pop("_step_messages")
        own = {(w["category"], w["message"]): w for w in log if w["message"] not in of_steps}
        self.fit_warnings_ = [*own.values(), *({"category": w["category"], "message": f"[{s.batch}] {w['message']}"}
                                               for s in self.steps_ for w in s.fit_warnings_)]
        if excluded:
            self.excluded_rows_ = [r.item() if hasattr(r, "item") else r if isinstance(r, (str, int, float))
                                   else str(r) for r in excluded]
        return out, rows_out

    def _codes(self, index, cov: pd.DataFrame, variables) -> list[tuple[np.ndarray, int]]:
        """Batch codes of the rows ``index`` for each variable (for the Anderson–Darling count)."""
        aligned = align_covariates(index, cov, self._owner())
        out = []
        for v in variables:
            s = get_batch(aligned, v)
            levels = batch_levels(s)
            out.append((encode_batches(s, levels, v), len(levels)))
        return out

    def _count(self, out: pd.DataFrame, codes, cov: pd.DataFrame, last: ComBat) -> list[int]:
        """Features with an Anderson–Darling p < ALPHA across the levels of each variable: of the harmonized
        features (``criterion="ad"``), or of what is left once the covariate effects of the last step's fit
        are taken out (``"ad_residuals"``)."""
        Y = out.to_numpy(dtype=np.float64)
        if self.criterion == "ad_residuals" and last.design_.columns:
            Xd = last.design_.transform(align_covariates(out.index, cov, self._owner()))
            Y = Y - Xd @ last.beta_.to_numpy()
        return [int((ad_ksamp(Y, c, k)[1] < ALPHA).sum()) for c, k in codes]

    def _fit_steps(self, X, cov) -> pd.DataFrame:
        self._step_messages: set[str] = set()  # what the steps warned, to tell the model's own warnings apart
        cov_steps = self._with_latent(X, cov, fitting=True)
        variables = self._variables()
        for v in variables:
            if v not in cov_steps.columns:
                from .._validation import show_columns

                raise ColumnNotFoundError(f"the covariates have no batch column {v!r} (batches={list(self.batches)}); "
                                          f"columns present: {show_columns(cov_steps.columns)}.")
        if self.order == "search":
            orders = list(itertools.permutations(variables))
        else:
            given = [str(v) for v in self.order]
            orders = [tuple(given + ([LATENT] if self.gmm == "batch" and LATENT not in given else []))]
        codes = None
        counts: dict[tuple, list[int]] = {}
        best: dict[str, Any] = {}

        # depth-first over the orders: orders sharing their first steps share those fits; leaves are reached
        # in the order of ``orders`` (itertools.permutations order), so ties go to the first
        def visit(path: tuple, current, fitted: list):
            nonlocal codes
            if len(path) == len(variables):
                if path not in orders:
                    return
                if codes is None:
                    codes = self._codes(current.index, cov_steps, variables)
                c = self._count(current, codes, cov_steps, fitted[-1])
                counts[path] = c
                if not best or sum(c) < best["total"]:
                    best.update(total=sum(c), path=path, steps=fitted, out=current)
                return
            for v in variables:
                if v in path or not any(o[:len(path) + 1] == (*path, v) for o in orders):
                    continue
                step = self._step(v)
                out = step.fit_transform(current, cov_steps)
                self._step_messages.update(w["message"] for w in step.fit_warnings_)
                visit((*path, v), out, [*fitted, step])

        visit((), X, [])
        self.order_ = list(best["path"])
        self.steps_ = list(best["steps"])
        out = best["out"]
        for _ in range(self.sweeps - 1):  # further passes through the chosen order (backfitting)
            for v in self.order_:
                step = self._step(v)
                out = step.fit_transform(out, cov_steps)
                self._step_messages.update(w["message"] for w in step.fit_warnings_)
                self.steps_.append(step)
        first = self.steps_[self.order_.index(self.batch)] if self.batch in self.order_ else self.steps_[0]
        self.batches_ = first.batches_
        self.batch_sizes_ = first.batch_sizes_
        self.levels_ = {s.batch: list(s.batches_) for s in self.steps_}
        self.feature_names_in_ = self.steps_[0].feature_names_in_
        self.n_features_in_ = self.steps_[0].n_features_in_
        self.design_ = self.steps_[0].design_
        self.order_counts_ = _counts_frame([o for o in orders if o in counts], [counts[o] for o in orders
                                                                               if o in counts], variables)
        if self.gmm is False:
            self.gmm_ = None
        return out

    # ------------------------------------------------------------------------------ applying
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "steps_") and hasattr(self, "order_")

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"This {self._owner()} instance is not fitted yet. Call 'fit' with the training "
                                 "features and covariates first (or load a saved model with featharm.load_model).")

    def transform(self, X, covariates=None, *, new_sites="error", min_new_site_size=MIN_NEW_SITE_SIZE):
        """Harmonize ``X`` with the frozen steps, applied in ``order_``.

        Parameters
        ----------
        X : DataFrame
            Features, the columns seen at fit.
        covariates : DataFrame, optional
            The batch columns and the formula's columns, aligned with ``X`` by index (or from the
            constructor's table).
        new_sites : {"error", "estimate"}, default "error"
            Levels of a batch variable not seen at fit: ``"error"`` raises
            :class:`~featharm.exceptions.UnseenBatchError`; ``"estimate"`` lets that variable's step
            estimate them against its frozen model (``docs/methods.md`` §5.7).
        min_new_site_size : int, default 5
            Fewest rows of a new level for ``"estimate"``.

        Returns
        -------
        DataFrame
            Harmonized features, same index and columns as ``X``.
        """
        self._check_fitted()
        check_option("new_sites", new_sites, ("error", "estimate"), self._owner())
        if covariates is None:
            covariates = self._covariates(X, None, {}, "transform")
        elif is_lazy(X):
            self._covariates(X, covariates, {}, "transform")
        X, cov, rows_out, _ = self._exclude(X, covariates)
        cov = self._with_latent(X, cov, fitting=False)
        out = X
        for step in self.steps_:
            out = step.transform(out, cov, new_sites=new_sites, min_new_site_size=min_new_site_size)
        return self._output(out, rows_out)

    def _output(self, out: pd.DataFrame, rows_out):
        if rows_out is not None:
            keep, index = rows_out
            values = np.full((len(index), out.shape[1]), np.nan, dtype=out.to_numpy().dtype)
            values[keep] = out.to_numpy()
            out = pd.DataFrame(values, index=index, columns=out.columns)
        container = getattr(self, "_sklearn_output_config", {}).get("transform")
        if container is None:
            from sklearn import get_config

            container = get_config()["transform_output"]
        if container == "polars":
            try:
                import polars
            except ImportError:
                raise ImportError(f"set_output(transform='polars') on {self._owner()} needs polars: "
                                  "pip install polars (or use transform='pandas').") from None
            return polars.from_pandas(out)
        return out

    def set_output(self, *, transform=None):
        """Choose the container ``transform`` and ``fit_transform`` return (``"default"``/``"pandas"``: a
        pandas DataFrame; ``"polars"``; ``None`` keeps the current choice), as for :class:`~featharm.ComBat`.

        Returns
        -------
        self
        """
        check_option("transform", transform, (None, "default", "pandas", "polars"), f"{self._owner()}.set_output")
        if transform is not None:
            self._sklearn_output_config = {"transform": transform}
        return self

    def save(self, path) -> None:
        """Write the fitted model (every step) to one file; see :func:`featharm.load_model`."""
        from ..persistence import save_model

        save_model(self, path)

    def report(self, X, covariates, *, X_harmonized=None, **kwargs):
        """One-file HTML report (:func:`featharm.report.make_report`); its site comparisons use the first
        batch variable (``batch``) unless ``batch=`` names another."""
        from ..report import make_report

        return make_report(X, covariates, model=self, X_harmonized=X_harmonized, **kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.requires_fit = True
        return tags

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f'<tr><th style="text-align:left;vertical-align:top">{html.escape(k)}</th>'
                       f'<td style="text-align:left">{html.escape(v)}</td></tr>' for k, v in model_facts(self))
        return f'<table class="featharm-model">{rows}</table>'

    _html_repr = _repr_html_

    # ------------------------------------------------------------------------------ persistence
    def _get_state(self) -> tuple[dict, dict]:
        """The JSON state (each step's manifest nested under ``steps``) and the arrays, each step's under
        ``step<i>/``."""
        self._check_fitted()
        steps, arrays = [], {}
        for i, s in enumerate(self.steps_):
            st, arr = s._get_state()
            params = {k: v for k, v in s.get_params(deep=False).items() if k not in s._unsaved_params}
            steps.append({"model": type(s).__name__, "params": _encode_params(params), "state": st})
            arrays.update({f"step{i}/{k}": v for k, v in arr.items()})
        oc = self.order_counts_
        state = {
            "nested_schema": NESTED_SCHEMA,
            "variables": self._variables(),
            "order": list(self.order_),
            "feature_names": [str(f) for f in self.feature_names_in_],
            "steps": steps,
            "gmm": self.gmm_,
            "order_counts": {"orders": [str(i) for i in oc.index],
                             "counts": oc.drop(columns="total").to_numpy().astype(int).tolist()},
            "fit_warnings": list(self.fit_warnings_),
        }
        if hasattr(self, "excluded_rows_"):
            state["excluded_rows"] = list(self.excluded_rows_)
        return state, arrays

    def _check_parts(self, state: Any) -> list[tuple[str, dict]]:
        """Check the JSON state of a model file; return its parts, ``(array prefix, step manifest)``, which the
        loader checks and builds as models of their own (:func:`featharm.persistence.load_model`)."""
        check_keys(state, "state", ("nested_schema", "variables", "order", "feature_names", "steps", "gmm",
                                    "order_counts"), ("fit_warnings", "excluded_rows"))
        version = check_int(state["nested_schema"], "state.nested_schema", 1)
        if version > NESTED_SCHEMA:
            raise DamagedState("state.nested_schema", f"is {version}, written by a newer featharm",
                               f"{NESTED_SCHEMA} (upgrade featharm to load it)")
        variables = check_names(state["variables"], "state.variables", "batch variables")
        if variables != self._variables():
            raise DamagedState("state.variables", f"is {variables}",
                               f"the batch variables of the parameters, {self._variables()}")
        order = check_names(state["order"], "state.order", "batch variables")
        if sorted(order) != sorted(variables):
            raise DamagedState("state.order", f"is {order}", f"an order of {variables}")
        if self.order != "search" and order[:len(self.order)] != [str(v) for v in self.order]:
            raise DamagedState("state.order", f"is {order}", f"the order parameter {list(self.order)}")
        features = check_names(state["feature_names"], "state.feature_names", "feature names")
        steps = state["steps"]
        n_steps = len(order) * self.sweeps
        if not isinstance(steps, list) or len(steps) != n_steps:
            raise DamagedState("state.steps", f"is {describe(steps)}",
                               f"a list of {n_steps} step manifests ({self.sweeps} sweep(s) of {len(order)})")
        formula = self._step_formula()
        parts = []
        for i, (sub, v) in enumerate(zip(steps, order * self.sweeps)):
            entry = f"state.steps[{i}]"
            check_keys(sub, entry, ("model", "params", "state"))
            if sub["model"] != "ComBat":
                raise DamagedState(f"{entry}.model", f"is {describe(sub['model'])}", "'ComBat'")
            p = sub["params"]
            if not isinstance(p, dict) or p.get("batch") != v or p.get("formula") != formula:
                raise DamagedState(f"{entry}.params", f"is {describe(p)} (batch {p.get('batch') if isinstance(p, dict) else None!r})",
                                   f"ComBat parameters with batch {v!r} and formula {formula!r}")
            st = sub["state"]
            if not isinstance(st, dict) or st.get("feature_names") != features:
                raise DamagedState(f"{entry}.state.feature_names", "differ from state.feature_names",
                                   "the same features in every step")
            parts.append((f"step{i}/", sub))
        g = state["gmm"]
        if (g is None) != (self.gmm is False):
            raise DamagedState("state.gmm", f"is {describe(g)}", "null without gmm, the mixture with it")
        if g is not None:
            _check_gmm(g, features)
        oc = state["order_counts"]
        check_keys(oc, "state.order_counts", ("orders", "counts"))
        if not isinstance(oc["orders"], list) or not all(isinstance(o, str) for o in oc["orders"]) or not \
                isinstance(oc["counts"], list) or len(oc["counts"]) != len(oc["orders"]) or not all(
                isinstance(r, list) and len(r) == len(variables) and all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= len(features) for c in r)
                for r in oc["counts"]):
            raise DamagedState("state.order_counts", "is malformed",
                               f"orders (strings) and counts (one list of {len(variables)} counts per order)")
        log = state.get("fit_warnings", [])
        if not isinstance(log, list) or not all(isinstance(w, dict) and set(w) == {"category", "message"} and all(
                isinstance(x, str) for x in w.values()) for w in log):
            raise DamagedState("state.fit_warnings", f"is {describe(log)}", "a list of warnings")
        rows = state.get("excluded_rows", [])
        if not isinstance(rows, list):
            raise DamagedState("state.excluded_rows", f"is {describe(rows)}", "a list of row ids")
        return parts

    def _set_parts(self, state: dict, parts: list) -> None:
        """Build the fitted model from its checked state and its loaded steps."""
        self.steps_ = [s.set_output(transform="pandas") for s in parts]
        self.order_ = list(state["order"])
        first = self.steps_[self.order_.index(self.batch)] if self.batch in self.order_ else self.steps_[0]
        self.batches_ = first.batches_
        self.batch_sizes_ = first.batch_sizes_
        self.levels_ = {s.batch: list(s.batches_) for s in self.steps_}
        self.feature_names_in_ = np.asarray(state["feature_names"], dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.design_ = self.steps_[0].design_
        self.gmm_ = state["gmm"]
        oc = state["order_counts"]
        self.order_counts_ = _counts_frame([tuple(o.split(" > ")) for o in oc["orders"]], oc["counts"],
                                           state["variables"])
        self.fit_warnings_ = list(state.get("fit_warnings", []))
        if "excluded_rows" in state:
            self.excluded_rows_ = list(state["excluded_rows"])


def _counts_frame(orders, counts, variables) -> pd.DataFrame:
    df = pd.DataFrame(np.asarray(counts, dtype=np.int64).reshape(len(orders), len(variables)),
                      index=pd.Index([" > ".join(o) for o in orders], name="order"), columns=list(variables))
    df["total"] = df.sum(axis=1)
    return df


def _check_gmm(g: Any, features: list) -> None:
    check_keys(g, "state.gmm", ("feature", "center", "scale", "weights", "means", "sds", "aic", "minor_share"))
    if g["feature"] not in features:
        raise DamagedState("state.gmm.feature", f"is {describe(g['feature'])}", "one of state.feature_names")

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)

    for k in ("center", "aic", "minor_share"):
        if not number(g[k]):
            raise DamagedState(f"state.gmm.{k}", f"is {describe(g[k])}", "a finite number")
    if not (number(g["scale"]) and g["scale"] > 0):
        raise DamagedState("state.gmm.scale", f"is {describe(g['scale'])}", "a finite number > 0")
    for k, lo in (("weights", 0.0), ("means", None), ("sds", 0.0)):
        v = g[k]
        if not (isinstance(v, list) and len(v) == 2 and all(number(x) and (lo is None or x > lo) for x in v)):
            raise DamagedState(f"state.gmm.{k}", f"is {describe(v)}",
                               "2 finite numbers" + (" > 0" if lo is not None else ""))
    if abs(sum(g["weights"]) - 1.0) > 1e-9:
        raise DamagedState("state.gmm.weights", f"sum to {sum(g['weights'])!r}", "weights summing to 1")


register(NestedComBat)
