"""The estimator life cycle shared by every harmonizer: validate, fit, transform, save.

A model family subclasses :class:`BaseHarmonizer` and overrides the few hooks that differ (how the
location and scale of each feature are modelled); the input checks, the batch encoding, the design, the
empirical-Bayes step, the adjustment and persistence are written here once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from .._core import eb, missing
from .._core.blocks import column_variance, row_major, take_columns
from .._dask import is_lazy
from .._progress import Progress
from .._threads import check_n_jobs, sized_by_first_argument
from .._validation import (
    align_covariates,
    batch_levels,
    check_batch_labels,
    check_batch_sizes,
    model_features,
    check_integer,
    check_option,
    check_positive_number,
    encode_batches,
    get_batch,
    show_rows,
)
from ..design import CovariateDesign, batch_indicators, check_full_rank
from ..exceptions import (
    AlignmentError,
    FeatureGroupError,
    FeatureGroupWarning,
    CovariateLookupError,
    BatchError,
    ConstantFeatureWarning,
    ConvergenceWarning,
    FormulaError,
    InputError,
    MissingValueError,
    MissingValueWarning,
    NotFittedError,
    warn,
)
from ..persistence import FAMILIES, register
from ._new_sites import new_site_posterior, new_site_posterior_missing
from .._schema import DamagedState, Stored, check_design, check_int, check_keys, check_levels, check_names, describe

# Fewest rows of a batch unseen at fit that ``transform(..., new_sites="estimate")`` accepts by default.
MIN_NEW_SITE_SIZE = 5

# A feature whose variance left after the location fit (batch and covariates: the SD ``sigma`` that
# standardizes it) is below this fraction of its own variance is a linear function of the covariates (ICV
# passed both as a covariate and as a feature; a covariate copied with fewer digits). Its residual is
# rounding, so it is passed through unchanged like a constant feature and kept out of the empirical-Bayes
# priors, which it would otherwise distort. Float64 rounding leaves a fraction of about 1e-30 (1e-20 for
# values far from 0 relative to their spread); a copy stored with 6-7 significant digits (float32, CSV
# '%g') about 1e-12; a real feature explained with R^2 = 0.999 leaves 1e-3, and even R^2 = 0.9999999 leaves
# 1e-7, three orders above this threshold, so it is harmonized as before.
LINEAR_FEATURE_RTOL = 1e-10

# Features whose largest |value| is outside [2^-64, 2^64] (about 5e-20 to 1.8e19) are computed on a copy
# multiplied by a power of two bringing it into [0.5, 1): exact in binary floating point, and undone exactly
# on the output. Squares, sums of squares and exponentials of such features would otherwise over- or
# underflow (1e300 or 1e-300). MRI features are far inside the range, so their computation is unchanged,
# bit for bit.
SCALE_EXPONENT = 64


def _feature_scale(lo: np.ndarray, hi: np.ndarray, common: bool = False) -> np.ndarray | None:
    """Per-feature powers of two for features outside ``2^±SCALE_EXPONENT`` (1 elsewhere); ``None`` if none.

    ``lo``/``hi`` are every feature's smallest and largest value. ``common``: one power of two for every
    feature (for computations that mix features, such as an unstandardized PCA, where only a common factor
    is exact).
    """
    big = np.maximum(hi, -lo)  # (over the observed cells of a feature with missing values)
    big[np.isnan(big)] = 0.0  # a feature without observed values: nothing to scale
    e = np.frexp(big)[1]  # big = f 2^e with f in [0.5, 1)
    outside = (big > 0) & ((e > SCALE_EXPONENT) | (e < -SCALE_EXPONENT))
    if not outside.any():
        return None
    if common:
        e = np.full(big.size, np.frexp(big.max())[1])
        outside = np.ones(big.size, dtype=bool)
    return np.where(outside, np.ldexp(1.0, np.clip(-e, -1022, 1023)), 1.0)  # normal powers of two: exact


# Learned arrays every harmonizer has and how they are stored: name -> axes ("batch" / "feature" /
# "column" = design column), dtype and value rule (see ``_schema``; checked when a model file is loaded).
_STORED = {
    "alpha": Stored(("feature",), values="finite"),
    "sigma": Stored(("feature",), values="sd"),
    "beta": Stored(("column", "feature"), values="finite"),
    "batch_coef": Stored(("batch", "feature"), values="observed"),
    "gamma_hat": Stored(("batch", "feature"), values="observed"),
    "delta_hat": Stored(("batch", "feature"), values="not_negative"),
    "gamma_star": Stored(("batch", "feature"), values="finite"),
    "delta_star": Stored(("batch", "feature"), values="positive"),
    "gamma_bar": Stored(("batch",)),
    "tau2": Stored(("batch",)),
    "a_prior": Stored(("batch",)),
    "b_prior": Stored(("batch",)),
    "n_iter": Stored(("batch",), values="count"),
    "batch_sizes": Stored(("batch",), values="count"),
    "constant": Stored(("feature",), dtype="bool"),
    # powers of two the features were multiplied by, when some lay outside 2^±64 (see _feature_scale)
    "feature_scale": Stored(("feature",), values="positive", optional=True),
    # observed values of each feature at each batch, when fitted with missing values (§1.8)
    "n_obs": Stored(("batch", "feature"), values="count", optional=True),
}
_ARRAY_AXES = {name: spec.axes for name, spec in _STORED.items()}

# The empirical-Bayes hyperparameters: batch arrays, or batch × group arrays with several measure groups.
PRIOR_ARRAYS = ("gamma_bar", "tau2", "a_prior", "b_prior")
_GROUP_STORED = {name: Stored(("batch", "group")) for name in PRIOR_ARRAYS}

# Fewest features (with variance) a measure group needs for empirical-Bayes priors of its own
# (``priors="group"``, docs/methods.md §1.10). The prior variances (tau2 and the
# variance of delta^2, S6) are sample variances across the group's features: with 2 features they have one
# degree of freedom. A smaller group takes the prior pooled across all features (the ``priors="pool"``
# posterior for its features), with a FeatureGroupWarning.
MIN_GROUP_FEATURES = 3


def _new_output(Y: np.ndarray) -> np.ndarray:
    """An empty output like ``Y``: the same layout (row- or column-major), float32 for float32 features."""
    return np.empty(Y.shape, dtype=np.float32 if Y.dtype == np.float32 else np.float64,
                    order="C" if row_major(Y) else "F")


class _Prepared:
    """Validated arrays for one call: features (n × p, fit-time column order) and encodings.

    ``Y`` is float64, or float32 for a family computing in float64 blocks (``_float32_blocks``), in the
    layout the caller gave (row- or column-major, never copied to the other); ``dtype`` is the dtype of the
    output (float32 for float32 input). ``lo``/``hi`` are the features' smallest and largest values (at fit).
    """

    __slots__ = ("Y", "index", "columns", "order", "covariates", "codes", "X", "levels", "new_levels", "effects",
                 "new_random", "scale", "dtype", "lo", "hi", "mask", "rows_out")

    def __init__(self, Y, index, columns, order, covariates, codes, X, levels=(), new_levels=(), scale=None,
                 dtype=np.float64, lo=None, hi=None):
        self.Y, self.index, self.columns, self.order = Y, index, columns, order
        self.dtype, self.lo, self.hi = np.dtype(dtype), lo, hi
        self.scale = scale  # powers of two Y was multiplied by (None: not rescaled; see _feature_scale)
        self.covariates, self.codes, self.X = covariates, codes, X
        self.levels = list(levels)  # the batch levels (codes 0..m-1): at fit, the sorted levels seen
        # batches unseen at fit (codes m, m+1, ...) and, once estimated (_estimate_new_sites), (gamma*, delta*)
        # of all batches and, for a family with random effects, those predicted for their rows (rows, values)
        self.new_levels, self.effects, self.new_random = list(new_levels), None, None
        self.mask = None  # missing cells (n × p bool, True = NaN) when Y has any; None otherwise (§1.8)
        self.rows_out = None  # (rows kept, index of all rows) when rows were left out (missing_covariates)


class BaseHarmonizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Common machinery of featharm's harmonizers (not used directly).

    A family is a small subclass: a keyword-only ``__init__`` that only stores its parameters (shared ones
    keep the names and defaults of :class:`~featharm.ComBat`), a numpydoc docstring, ``_schema_name``, and
    overrides of the hooks that differ:

    * ``_check_params`` (call ``super()`` first: it checks the shared parameters; ``_compat_options`` lists
      the accepted ``compat`` values);
    * ``_eb_options`` (how the site effects are estimated: every option stated, see
      :class:`featharm._core.eb.EBOptions`), ``_design_formula`` (the linear covariate block),
      ``_fit_location`` (the family's location/scale model: fills ``self._arr``);
    * ``_preserved_design`` / ``_preserved_coef`` (the part harmonization keeps), ``_standardized``,
      ``_harmonize`` (end with ``_keep_unadjusted``);
    * ``_extra_axes`` / ``_publish`` (learned attributes), ``_get_state`` / ``_set_state`` (persistence);
      ``_stored`` (every saved array: axes, dtype, values), ``_state_extra`` (its own state entries),
      ``_check_state`` / ``_check_arrays`` (what a loaded model file must satisfy; see ``_schema``).

    ``tests/models/test_estimator_contract.py`` runs the shared contract over every family.
    """

    _schema_name: ClassVar[str] = "base"
    _registry: ClassVar[dict[str, type]] = FAMILIES  # the families a model file may name (persistence's)

    # Learned arrays in the units of the features (power 1) or their square (2): published in the input's
    # units when features were rescaled (see ``_feature_scale``); a family adds its own.
    _feature_units: ClassVar[dict[str, int]] = {"alpha": 1, "sigma": 1, "beta": 1, "batch_coef": 1}
    # Every array a fitted model saves (a family adds its own: ``{**Parent._stored, ...}``), and the state
    # entries it adds to the shared ones of ``_get_state``.
    _stored: ClassVar[dict[str, Stored]] = _STORED
    _state_extra: ClassVar[tuple[str, ...]] = ()

    # Whether the family computes float32 features in float64 blocks (the output stays float32 and no float64
    # copy of the input is made); otherwise float32 features are converted to float64 once, and the output
    # cast back to float32.
    _float32_blocks: ClassVar[bool] = False
    # Whether the family computes a row-major (C-ordered) table in its own layout; otherwise it is copied to
    # column-major order once (a family whose fit is dominated by per-feature work on small tables).
    _row_major_blocks: ClassVar[bool] = True

    # Whether ``fit``/``transform`` take an out-of-core input (Dask, Zarr, HDF5: ``featharm.models._scale``):
    # only a family fitted from per-batch statistics (docs/methods.md §1.9).
    _out_of_core: ClassVar[bool] = False

    # Values a family's ``compat`` parameter accepts (families without the parameter ignore it).
    _compat_options: ClassVar[tuple] = (None,)

    # Parameters a model file does not store: the covariate table given to the constructor (data, not the
    # model) and ``n_jobs`` (a setting of the machine); a loaded model has their defaults (None).
    _unsaved_params: ClassVar[tuple[str, ...]] = ("covariates", "n_jobs")

    def __init_subclass__(cls, **kwargs):
        # featharm builds its own output (see ``set_output``): scikit-learn's wrapper would relabel the
        # columns in fit-time order even when ``X`` came with its columns in another order.
        kwargs.setdefault("auto_wrap_output_keys", None)
        super().__init_subclass__(**kwargs)
        if cls.__name__ and not cls.__name__.startswith("_"):
            register(cls)

    # ------------------------------------------------------------------------------ input handling
    def _owner(self) -> str:
        return type(self).__name__

    def _check_params(self) -> None:
        """Validate the parameters the families share (each one only where the family has it).

        A family validates its own parameters in an override that calls this first.
        """
        owner = self._owner()
        params = self.get_params(deep=False)

        def bad(name, what):
            return InputError(f"The {name!r} parameter of {owner} must be {what}. Got {params[name]!r} instead.")

        b = params.get("batch", "site")
        if isinstance(b, bool) or not isinstance(b, (str, int, np.integer)):
            raise bad("batch", "the name of the batch (site/scanner) column of the covariates")
        f = params.get("formula")
        if f is not None and not isinstance(f, str):
            raise FormulaError(f"The 'formula' parameter of {owner} must be a string such as 'age + sex' or "
                               f"None. Got {f!r} instead.")
        for name in ("eb", "parametric", "mean_only"):
            if name in params:
                check_option(name, params[name], (True, False), owner)
        if "mean_only_form" in params:
            check_option("mean_only_form", params["mean_only_form"], ("sva", "n"), owner)
        if "compat" in params:
            check_option("compat", params["compat"], self._compat_options, owner)
        if "missing_covariates" in params:
            check_option("missing_covariates", params["missing_covariates"], ("error", "exclude"), owner)
        if "priors" in params:
            self._check_priors_param(params["priors"], owner)
        ref = params.get("ref_batch")
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (str, int, np.integer))):
            raise bad("ref_batch", "None or a level of the batch column")
        if "max_iter" in params:
            check_integer("max_iter", params["max_iter"], owner)
        if "tol" in params:
            check_positive_number("tol", params["tol"], owner)
        table = params.get("covariates")
        if table is not None and not isinstance(table, pd.DataFrame):
            shown = repr(table) if isinstance(table, (str, int, float)) else f"a {type(table).__name__}"
            raise InputError(f"The 'covariates' parameter of {owner} must be None or a pandas DataFrame of "
                             "covariates indexed by row id (looked up by the index of X at fit and transform). "
                             f"Got {shown} instead; read a file with featharm.io.read_table first.")
        check_n_jobs(params.get("n_jobs"), owner)

    @staticmethod
    def _check_priors_param(value, owner: str) -> None:
        """``priors``: "auto", "group", "pool", or a mapping feature -> group name (dict or Series)."""
        if isinstance(value, str):
            check_option("priors", value, ("auto", "group", "pool"), owner)
            return
        if isinstance(value, (dict, pd.Series)):
            items = value.items()
            if all(isinstance(v, str) and v.strip() for _, v in items):
                return
            raise FeatureGroupError(f"The 'priors' mapping of {owner} must give every feature a group name (a "
                                    "non-empty string such as 'thickness').")
        raise InputError(f"The 'priors' parameter of {owner} must be 'auto', 'group', 'pool' or a mapping "
                         f"feature -> group name (dict or pandas Series). Got {value!r} instead.")

    def _prior_groups(self, names) -> tuple[list[str], np.ndarray] | None:
        """The measure groups of the features ``names`` (group names in order of first appearance, the group
        code of every feature), or None for one prior across all features (``priors="pool"``, or ``"auto"``
        under ``compat``)."""
        value = self._param("priors")
        if value is None or (isinstance(value, str) and (value == "pool" or (value == "auto" and
                                                                             self._param("compat") is not None))):
            return None
        from ..io.groups import check_feature_groups, feature_groups

        if isinstance(value, str):
            mapping = feature_groups(names)
        else:
            mapping = check_feature_groups(value, names, source=f"the 'priors' mapping of {self._owner()}")
        order: dict[str, int] = {}
        codes = np.array([order.setdefault(mapping[str(f)], len(order)) for f in names], dtype=np.intp)
        return list(order), codes

    def _prepare(self, X, covariates, *, fitting: bool, new_sites: str = "error") -> _Prepared:
        owner = self._owner()
        if covariates is None:
            raise InputError(
                f"{owner} needs `covariates`: a DataFrame with the batch column {self.batch!r} (and the "
                "formula's columns), aligned with the features by index. Pass it to fit/transform, or give the "
                "model the whole table (covariates=table) to look rows up by index, e.g. in a scikit-learn Pipeline."
            )
        index = cols = None
        is_array = isinstance(X, np.ndarray)
        if is_array and isinstance(covariates, pd.DataFrame) and X.ndim == 2 and X.shape[0] == len(covariates):
            cols = list(self.feature_names_in_) if (not fitting and hasattr(self, "feature_names_in_")) \
                else [f"x{j}" for j in range(X.shape[1])]
            if len(cols) != X.shape[1]:
                raise AlignmentError(f"X has {X.shape[1]} features but {owner} was fitted with {len(cols)}.")
            index = covariates.index
        # an array (or a DataFrame over one) is used in place, in its own layout: no copy of the data
        table = model_features(X, owner, index=index, columns=cols, ranges=fitting, allow_nan=True)
        Y, index, columns, lo, hi = table.Y, table.index, table.columns, table.lo, table.hi
        nan_cols = table.nan_cols
        dtype = Y.dtype
        if nan_cols.any() and self._supports_missing and (Y.dtype != np.float64 or row_major(Y)):
            Y = np.asfortranarray(Y, dtype=np.float64)  # the missing-value path computes on whole columns
        if Y.dtype != np.float64 and not self._float32_blocks:
            Y = Y.astype(np.float64)  # the family computes on whole float64 arrays; the output is cast back
        if not self._row_major_blocks and row_major(Y):
            Y = np.asfortranarray(Y)
        cov = align_covariates(index, covariates, owner)
        order = None
        if not fitting:
            fitted = list(self.feature_names_in_)
            if list(columns) != fitted:
                cols = [str(c) for c in columns]
                have, want = set(cols), set(fitted)
                missing = [c for c in fitted if c not in have]
                extra = [c for c in cols if c not in want]
                if missing or extra:
                    raise AlignmentError(
                        f"the features differ from those {owner} was fitted on: missing {missing[:5]}"
                        f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                        f"{' ...' if len(extra) > 5 else ''}. Pass the same feature columns."
                    )
                pos = {c: i for i, c in enumerate(cols)}
                order = np.array([pos[c] for c in fitted])
                if np.array_equal(order, np.arange(order.size)):
                    order = None  # the same columns in the same order (named differently, e.g. 0 and "0")
                else:
                    Y = take_columns(Y, order)
                    nan_cols = nan_cols[order]
        common = self._common_feature_scale()
        scale = _feature_scale(lo, hi, bool(common)) if fitting else self._arr.get("feature_scale")
        if scale is not None:
            if fitting and common:
                self._check_common_scale(lo, hi, scale, columns, common)
            Y = Y * scale  # a new float64 array: the caller's data are never modified
            if fitting:
                lo, hi = lo * scale, hi * scale
        bser = get_batch(cov, self.batch)
        if fitting:
            levels = batch_levels(bser)
            check_batch_labels(bser, levels, self.batch)
            codes = encode_batches(bser, levels, self.batch)
        else:
            known = list(self.batches_)
            new = []
            if new_sites == "estimate":  # §5.7: unseen batches get codes m, m+1, ... in sorted order
                vals = batch_levels(bser.astype(str) if known and isinstance(known[0], str) else bser)
                seen = set(known) | {str(k) for k in known}  # 3 and "3" are the same site
                new = [v for v in vals if v not in seen and str(v) not in seen]
            codes = encode_batches(bser, known + new, self.batch)
            return self._with_missing(_Prepared(Y, index, columns, order, cov, codes, None, known, new, scale=scale,
                                                dtype=dtype), nan_cols)
        return self._with_missing(_Prepared(Y, index, columns, order, cov, codes, None, levels, scale=scale,
                                            dtype=dtype, lo=lo, hi=hi), nan_cols)

    # Whether the family estimates with missing feature values (NaN cells, docs/methods.md §1.8).
    _supports_missing: ClassVar[bool] = False

    def _with_missing(self, prep: _Prepared, nan_cols: np.ndarray) -> _Prepared:
        """``prep`` with the n × p mask of its NaN cells (if any); a family that does not handle them refuses
        them, naming cells."""
        if not nan_cols.any():
            return prep
        Y, index, columns = prep.Y, prep.index, prep.columns
        if not self._supports_missing:
            j = int(np.flatnonzero(nan_cols)[0])
            raise MissingValueError(
                f"{self._owner()} does not handle missing feature values yet: {int(nan_cols.sum())} feature(s) "
                f"have NaN cells, e.g. {columns[j]!r} at {show_rows(index, np.isnan(Y[:, j]))}. ComBat "
                "harmonizes tables with NaN cells (each feature on its observed rows); or drop or fill them first."
            )
        prep.mask = np.zeros(Y.shape, dtype=bool, order="F")
        for j in np.flatnonzero(nan_cols):
            prep.mask[:, j] = np.isnan(Y[:, j])
        return prep

    def _common_feature_scale(self) -> str | None:
        """Why features must be rescaled by one common factor (a family mixing them in their own units), or None."""
        return None

    def _check_common_scale(self, lo: np.ndarray, hi: np.ndarray, scale: np.ndarray, columns, why: str) -> None:
        """With one common factor, features far smaller than the largest would underflow: refuse them."""
        big = np.maximum(hi, -lo) * scale
        small = (big > 0) & (big < np.ldexp(1.0, -SCALE_EXPONENT))
        if small.any():
            raise InputError(
                f"{self._owner()} {why}, but their magnitudes differ by more than 2^{SCALE_EXPONENT}: e.g. "
                f"{list(columns[small][:3])} are that much smaller than the largest feature, so their squares "
                "would underflow. Harmonize such features separately, or express them in comparable units."
            )

    # ------------------------------------------------------------------------------ public API
    @sized_by_first_argument
    def fit(self, X, covariates=None, /, **params):
        """Estimate the site effects of ``X`` given ``covariates``.

        Parameters
        ----------
        X : DataFrame
            Features (rows = subjects, numeric columns = features).
        covariates : DataFrame, optional
            The batch column and the formula's columns, aligned with ``X`` by index; by position or as
            ``covariates=`` (what scikit-learn's metadata routing passes: ``set_fit_request(covariates=True)``).
            Without it, the rows of ``X`` are looked up in the table given to the constructor (``covariates=``).
            A scikit-learn ``Pipeline`` passes its target ``y`` by position: a second argument that is not a
            DataFrame is ignored when the covariates come by keyword or from the constructor.

        Returns
        -------
        self
            The fitted model (a refit discards the previous fit).
        """
        if is_lazy(X):  # a Dask/Zarr/HDF5 array or a FeatureStore: out of core (featharm.models._scale)
            from . import _scale

            return _scale.fit(self, X, _scale.covariates_of(self, X, covariates, params, "fit"))
        self._fit(X, self._fit_covariates(X, covariates, params, "fit"))
        return self

    @sized_by_first_argument
    def fit_transform(self, X, covariates=None, /, **params):
        """Fit, then harmonize the same rows (identical to ``fit(X, cov).transform(X, cov)``).

        Parameters
        ----------
        X, covariates : DataFrame
            As for :meth:`fit` (``covariates`` by position, by keyword, or from the constructor; a
            ``Pipeline``'s positional ``y`` is ignored as there).

        Returns
        -------
        DataFrame
            Harmonized features, same index and columns as ``X``.
        """
        if is_lazy(X):  # out of core: a lazy result
            from . import _scale

            cov = _scale.covariates_of(self, X, covariates, params, "fit_transform")
            return _scale.transform(_scale.fit(self, X, cov), X, cov)
        prep = self._fit(X, self._fit_covariates(X, covariates, params, "fit_transform"))
        return self._output(self._harmonize(prep), prep)

    @sized_by_first_argument
    def transform(self, X, covariates=None, *, new_sites="error", min_new_site_size=MIN_NEW_SITE_SIZE):
        """Harmonize ``X`` with the frozen model, using each row's own covariates.

        Parameters
        ----------
        X : DataFrame
            Features (rows = subjects), the columns seen at fit.
        covariates : DataFrame, optional
            The batch column and the formula's columns, aligned with ``X`` by index. Without it, the rows of
            ``X`` are looked up in the table given to the constructor (``covariates=``); given, it is used
            instead of that table.
        new_sites : {"error", "estimate"}, default "error"
            What to do with batches not seen at fit. ``"error"`` raises
            :class:`~featharm.exceptions.UnseenBatchError`. ``"estimate"`` (``docs/methods.md`` §5.7) estimates
            each new batch's location, scale and empirical-Bayes posterior from its own rows against the
            frozen model (standardization, covariate effects and seen batches unchanged), then adjusts it;
            rows of seen batches come out exactly as with ``"error"``.
        min_new_site_size : int, default 5
            Fewest rows a new batch needs for ``"estimate"`` (at least 2: its variance is estimated).

        Returns
        -------
        DataFrame
            Harmonized features, same index and columns as ``X``.
        """
        self._check_fitted()
        check_option("new_sites", new_sites, ("error", "estimate"), self._owner())
        if is_lazy(X):  # a lazy Dask array (a FeatureStore over one) with X's chunks
            from . import _scale

            return _scale.transform(self, X, _scale.covariates_of(self, X, covariates, {}, "transform"),
                                    new_sites=new_sites, min_new_site_size=min_new_site_size)
        if covariates is None:
            covariates = self._covariates_from_table(X)
        X, covariates, rows_out, _ = self._exclude_missing_covariates(X, covariates)
        prep = self._prepare(X, covariates, fitting=False, new_sites=new_sites)
        prep.rows_out = rows_out
        prep.X = self.design_.transform(prep.covariates)
        if "n_obs" in self._arr:  # fitted with missing values: sites without data for a feature (§1.8)
            self._warn_cells_without_data(prep)
        if prep.new_levels:
            self._estimate_new_sites(prep, min_new_site_size)
        return self._output(self._harmonize(prep), prep)

    def save(self, path) -> None:
        """Write the fitted model to one file (JSON manifest + arrays, no pickle); see :func:`featharm.load_model`."""
        from ..persistence import save_model

        save_model(self, path)

    def report(self, X, covariates, *, X_harmonized=None, **kwargs):
        """One-file HTML report of this fitted model on ``X`` (see :func:`featharm.report.make_report`).

        ``X`` are the raw features and ``covariates`` the covariates the model was fitted with;
        ``X_harmonized`` defaults to ``self.transform(X, covariates)``. Other keyword arguments go to
        ``make_report`` (``features``, ``inputs``, ``title``, ``figure_format`` ...). Returns an
        :class:`~featharm.report.HTMLReport`; write it with ``.save_as_html(path)``.
        """
        from ..report import make_report

        return make_report(X, covariates, model=self, X_harmonized=X_harmonized, **kwargs)

    # ------------------------------------------------------------------------------ where covariates come from
    def _fit_covariates(self, X, positional, params: dict, method: str):
        """The covariates of a ``fit``/``fit_transform`` call.

        By keyword (a user, or scikit-learn's metadata routing): that table, and ``positional`` is a
        ``Pipeline``'s ``y`` (ignored). Otherwise a positional DataFrame; otherwise (nothing, or a ``y`` that
        is not a DataFrame) the rows of ``X`` looked up in the constructor's table, when there is one.
        """
        unknown = sorted(k for k in params if k != "covariates")
        if unknown:  # never ignored silently
            raise InputError(f"{self._owner()}.{method} takes X and covariates only; got {unknown}. Options of "
                             "transform (new_sites ...) do not apply to the training rows.")
        if params.get("covariates") is not None:
            return params["covariates"]
        if isinstance(positional, pd.DataFrame):
            return positional
        if positional is not None and self._param("covariates") is None:
            raise InputError(
                f"{self._owner()}.{method} got a {type(positional).__name__} where the covariates go (a DataFrame "
                f"with the batch column {self.batch!r} and the formula's columns). In a scikit-learn Pipeline or "
                "cross-validation, that argument is the target y: give the model the whole covariate table "
                "(covariates=table, rows looked up by the index of X), or route it (sklearn.set_config("
                "enable_metadata_routing=True); model.set_fit_request(covariates=True).set_transform_request("
                "covariates=True); pass covariates=table to the Pipeline or params={'covariates': table} to the "
                "cross-validation)."
            )
        return self._covariates_from_table(X)

    def _covariates_from_table(self, X):
        """The rows of the constructor's covariate table for ``X``, matched by index (None without a table)."""
        table = self._param("covariates")
        if table is None:
            return None
        owner = self._owner()
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"The 'covariates' parameter of {owner} must be None or a pandas DataFrame of "
                             f"covariates indexed by row id. Got {type(table).__name__} instead.")
        if not isinstance(X, pd.DataFrame):
            raise CovariateLookupError(
                f"{owner} was given a covariate table (covariates=...) and looks the rows of X up in it by "
                f"index, but X is a {type(X).__name__}, which has no row ids. Pass X as a pandas DataFrame "
                "indexed by the ids of the covariate table (e.g. pd.DataFrame(X, index=ids)), or pass these "
                "rows' covariates to fit/transform yourself."
            )
        if table.index.has_duplicates:
            dup = table.index[table.index.duplicated()].unique()
            raise CovariateLookupError(
                f"the covariate table given to {owner}(covariates=...) has repeated row ids: "
                f"{show_rows(dup, np.ones(len(dup), dtype=bool), 5)}; rows are looked up by id, so ids must be unique."
            )
        absent = ~X.index.isin(table.index)
        if absent.any():
            raise CovariateLookupError(
                f"{int(absent.sum())} row(s) of X are not in the covariate table given to {owner}(covariates=...): "
                f"{show_rows(X.index, absent, 5)}. Rows are looked up by the index of X: add them to the table, "
                "or pass these rows' covariates to fit/transform yourself."
            )
        return table.loc[X.index]

    # ------------------------------------------------------------------------------ fitting
    def _fit(self, X, covariates) -> _Prepared:
        from ..exceptions import record_warnings

        with record_warnings() as log:  # kept as fit_warnings_ (listed by the report)
            try:
                X, covariates, rows_out, excluded = self._exclude_missing_covariates(X, covariates)
                prep = self._fit_model(X, covariates)
            except BaseException:
                self._forget_fit()  # a failed fit leaves the model unfitted, never half-fitted
                raise
        self.fit_warnings_ = list(log)
        if excluded:  # missing_covariates="exclude" left rows out: their ids (saved with the model)
            self.excluded_rows_ = [r.item() if hasattr(r, "item") else r if isinstance(r, (str, int, float))
                                   else str(r) for r in excluded]
        prep.rows_out = rows_out
        return prep

    def _exclude_missing_covariates(self, X, covariates):
        """With ``missing_covariates="exclude"``: ``X`` and ``covariates`` without the rows whose batch label or
        a covariate the formula uses is missing, warning with their ids. Returns ``X, covariates, rows_out,
        excluded``: ``rows_out`` = (rows kept, index of all rows) for the output (``None`` when no row is left
        out) and the ids left out. Any other setting, or input that is not a DataFrame of covariates: unchanged
        (the checks downstream name the rows)."""
        if self._param("missing_covariates") != "exclude" or not isinstance(covariates, pd.DataFrame):
            return X, covariates, None, []
        from ..formula import formula_columns

        try:
            cols = formula_columns(self._param("formula"), covariates.columns)
        except FormulaError:
            return X, covariates, None, []  # the formula's own error comes from the fit
        cols = [c for c in dict.fromkeys([self.batch, *cols]) if c in covariates.columns]
        na = covariates[cols].isna().to_numpy().any(axis=1)
        if not na.any():
            return X, covariates, None, []
        excluded = covariates.index[na]
        if isinstance(X, pd.DataFrame):
            keep = ~X.index.isin(excluded)
            index = X.index
            X = X.loc[keep]
        elif isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] == len(covariates):
            keep, index = ~na, covariates.index
            X = X[keep]
        else:
            return X, covariates, None, []
        what = [c for c in cols if covariates[c].isna().any()]
        warn(
            f"{int(na.sum())} row(s) have a missing {' / '.join(map(repr, what))}: {show_rows(covariates.index, na, 10)}. "
            "They are left out (missing_covariates='exclude') and come back with NaN features; nothing is imputed.",
            MissingValueWarning,
        )
        return X, covariates.loc[~na], (keep, index), list(excluded)

    def _forget_fit(self) -> None:
        """Drop every learned attribute (``*_``) and the arrays behind them."""
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)
        for name in ("_arr", "_delta_raw", "_groups"):
            self.__dict__.pop(name, None)

    def _checked_ref_index(self, levels, counts: np.ndarray):
        """The reference batch's code (None without one); it needs 2 rows, its variance being its own."""
        ref = self._ref_index(levels)
        if ref is not None and counts[ref] < 2:
            raise BatchError(
                f"the reference batch {levels[ref]!r} of {self.batch!r} has {int(counts[ref])} subject: the "
                "pooled variance is estimated in the reference batch alone, so it needs at least 2 (in "
                "practice many more). Choose a larger reference batch."
            )
        return ref

    def _fit_model(self, X, covariates) -> _Prepared:
        self._check_params()
        prep = self._prepare(X, covariates, fitting=True)
        levels = prep.levels
        m = len(levels)
        counts = np.bincount(prep.codes, minlength=m).astype(np.float64)
        check_batch_sizes(levels, counts.astype(int), self.batch, allow_single=self._allow_single_subject())
        ref = self._checked_ref_index(levels, counts)
        design, Xc = CovariateDesign.fit(self._design_formula(), prep.covariates,
                                         float32=self._param("compat") == "neuroCombat",
                                         exclude=(self.batch,))
        prep.X = Xc
        B = batch_indicators(prep.codes, m, ref)
        check_full_rank(B, Xc, design.columns, batch_name=str(self.batch))
        p = prep.Y.shape[1]
        if self._eb_options().eb and p < 2:
            raise InputError(
                f"empirical Bayes pools the site effects across features, so it needs at least 2 features; "
                f"got {p}. Pass eb=False to adjust a single feature."
            )
        self._forget_fit()  # forget any previous fit before storing the new one
        self.batches_ = np.asarray(levels, dtype=object)
        self.n_features_in_ = p
        self.feature_names_in_ = np.asarray([str(c) for c in prep.columns], dtype=object)
        self.design_ = design
        self.ref_index_ = ref
        self._arr: dict[str, np.ndarray] = {"batch_sizes": counts}
        if prep.scale is not None:
            self._arr["feature_scale"] = prep.scale
        self._fit_location(prep, B, counts, ref)
        self._fit_eb(counts, ref)
        self._publish()
        return prep

    def _param(self, name: str):
        """The value of a shared parameter, or ``None`` when this family does not have it (``ref_batch``,
        ``compat``: ``None`` is their meaning of "not used")."""
        return self.get_params(deep=False).get(name)

    def _eb_options(self) -> eb.EBOptions:
        """How this family estimates the site effects (S6–S7): every family states all the options."""
        raise NotImplementedError(f"{type(self).__name__} must define _eb_options")

    def _combat_eb_options(self) -> eb.EBOptions:
        """:meth:`_eb_options` of a family with ComBat's EB parameters (``eb``, ``parametric``,
        ``mean_only``, ``mean_only_form``, ``tol``, ``max_iter``), read from its own attributes."""
        return eb.EBOptions(eb=bool(self.eb), parametric=bool(self.parametric), mean_only=bool(self.mean_only),
                            mean_only_form=self.mean_only_form, tol=float(self.tol), max_iter=int(self.max_iter))

    def _design_formula(self):
        """The formula of the linear covariate block (a subclass may strip terms it models itself)."""
        return self.formula

    def _allow_single_subject(self) -> bool:
        return self._eb_options().mean_only

    def _ref_index(self, levels) -> int | None:
        ref = self._param("ref_batch")
        if ref is None:
            return None
        for i, lv in enumerate(levels):
            if lv == ref or str(lv) == str(ref):
                return i
        raise BatchError(
            f"ref_batch={ref!r} is not a level of {self.batch!r}; levels: {levels}. Pass one of them."
        )

    def _fit_location(self, prep: _Prepared, B: np.ndarray, counts: np.ndarray, ref) -> None:
        """The family's location/scale model (S1–S5 for ComBat): fills ``self._arr`` with ``alpha``,
        ``sigma``, ``beta``, ``batch_coef``, ``gamma_hat``, ``delta_hat`` (and its own arrays), sets
        ``self._delta_raw`` and flags constant features (:meth:`_mark_constant`)."""
        raise NotImplementedError(f"{type(self).__name__} must define _fit_location")

    def _mark_constant(self, scale: np.ndarray, variance: np.ndarray | None = None, *,
                       prep: _Prepared | None = None) -> None:
        """Flag the features with no variance left after the location fit; warn naming them.

        Flagged: ``sigma`` is 0, not finite, or below ``1e-11`` of the feature's magnitude ``scale``
        (``|alpha|``), or ``sigma^2`` is below :data:`LINEAR_FEATURE_RTOL` of the feature's own ``variance``
        (a linear function of the batch and covariates). Both tests are relative, so they do not depend on
        the units. The warning calls a feature constant when its own variance is negligible too.

        With ``prep`` instead of ``variance``, the variance is computed only where the test could flag a
        feature (see :meth:`_feature_variance`), not in a pass over all the data.
        """
        sigma = self._arr["sigma"]
        const = (sigma == 0) | (sigma <= 1e-11 * scale) | ~np.isfinite(sigma)
        explained = np.zeros_like(const)
        if variance is None and prep is not None:
            variance = self._feature_variance(prep, const)
        if variance is not None:
            const |= sigma * sigma <= LINEAR_FEATURE_RTOL * variance
            # named by what they are: constant columns, or columns that vary but are explained by the design
            explained = const & ~(variance <= (1e-11 * scale) ** 2)
        self._arr["constant"] = const
        if const.any():
            names = self.feature_names_in_[const & ~explained]
            lin = self.feature_names_in_[explained]
            parts = []
            if len(names):
                parts.append(f"{list(names[:5])}{' ...' if len(names) > 5 else ''} (constant)")
            if len(lin):
                parts.append(f"{list(lin[:5])}{' ...' if len(lin) > 5 else ''} (explained by the batch and "
                             f"covariates: less than {LINEAR_FEATURE_RTOL:.0e} of the variance is left, e.g. a "
                             "covariate also passed as a feature)")
            warn(
                f"{int(const.sum())} feature(s) have no variance left after the batch and covariate "
                f"effects: {' and '.join(parts)}. They are passed through unchanged and left out of the "
                "empirical-Bayes priors.",
                ConstantFeatureWarning,
            )
            a = self._arr
            a["gamma_hat"][:, const] = 0.0
            a["delta_hat"][:, const] = 1.0
            self._delta_raw[:, const] = 1.0

    def _feature_variance(self, prep: _Prepared, const: np.ndarray) -> np.ndarray:
        """Each feature's variance (ddof 0) where :meth:`_mark_constant` needs it, an upper bound elsewhere.

        A feature's variance is at most a quarter of its squared range (Popoviciu's inequality), and
        ``sigma`` is at most its SD. So a feature with ``sigma^2 > LINEAR_FEATURE_RTOL (max - min)^2`` cannot
        be flagged, and its variance is not needed: it gets the bound ``(max - min)^2 / 4``. The others
        (in practice the constant and the design-explained features, if any) get their exact variance,
        computed on those columns only; the result of the test is the same as with every exact variance.
        """
        Y = prep.Y
        if prep.lo is None:
            return column_variance(Y)
        sigma = self._arr["sigma"]
        bound = (prep.hi - prep.lo) ** 2
        with np.errstate(invalid="ignore", over="ignore"):
            need = const | ~(sigma * sigma > LINEAR_FEATURE_RTOL * bound)
        variance = bound / 4.0
        if need.any():
            cols = np.flatnonzero(need)
            variance[cols] = column_variance(take_columns(Y, cols))
        return variance

    def _fit_eb(self, counts: np.ndarray, ref) -> None:
        """S6–S7: priors and the EB posterior of every batch (or the raw estimates when eb=False)."""
        a = self._arr
        keep = ~a["constant"]
        opts = self._eb_options()
        if opts.eb and keep.sum() < 2:
            raise InputError(
                f"empirical Bayes pools the site effects across features, so it needs at least 2 features "
                f"with variance; {int(keep.sum())} of {keep.size} have any. Pass eb=False."
            )
        m = a["gamma_hat"].shape[0]
        grouping = self._fit_groups(keep)
        groups = pooled = None
        if grouping is not None and len(grouping["names"]) > 1:
            groups, pooled = grouping["codes"], grouping["pooled"]
        with Progress(m - (ref is not None) if opts.eb else 0, "empirical Bayes") as bar:
            if "n_obs" in a:  # fitted with missing values: each feature's observed counts (§1.8)
                post = missing.posterior(a["gamma_hat"], a["delta_hat"], self._delta_raw, a["n_obs"], opts,
                                         keep=keep, ref=ref, progress=bar.update, groups=groups, pooled=pooled)
                self._check_missing_priors(post.priors, opts, ref)
            else:
                post = eb.posterior(a["gamma_hat"], a["delta_hat"], self._delta_raw, counts, opts, keep=keep,
                                    ref=ref, progress=bar.update, groups=groups, pooled=pooled)
        if post.not_converged:
            warn(
                f"parametric EB did not converge within max_iter={opts.max_iter} iterations for "
                f"batch(es) {[self.batches_[i] for i in post.not_converged]}; the last iterate is used. Raise "
                "max_iter or check those sites.",
                ConvergenceWarning,
            )
        pri = post.priors
        a.update(gamma_star=post.gamma_star, delta_star=post.delta_star, gamma_bar=pri.gamma_bar, tau2=pri.tau2,
                 a_prior=pri.a_prior, b_prior=pri.b_prior, n_iter=post.n_iter)
        del self._delta_raw

    def _fit_groups(self, keep: np.ndarray) -> dict | None:
        """The measure groups of this fit (``priors``), stored as ``self._groups``: ``names``, ``codes`` (the
        group of every feature) and ``pooled`` (groups with fewer than :data:`MIN_GROUP_FEATURES` features with
        variance, which take the prior pooled across all features; warned when there are other groups).
        None with one pooled prior."""
        found = self._prior_groups(list(self.feature_names_in_))
        if found is None:
            self._groups = None
            return None
        names, codes = found
        sizes = np.bincount(codes[keep], minlength=len(names))
        pooled = sizes < MIN_GROUP_FEATURES
        if len(names) > 1 and pooled.any() and self._eb_options().eb:
            small = [f"{names[g]!r} ({int(sizes[g])})" for g in np.flatnonzero(pooled)]
            warn(
                f"measure group(s) {', '.join(small)} have fewer than {MIN_GROUP_FEATURES} features with variance, "
                "too few for empirical-Bayes priors of their own: their features take the prior pooled across all "
                f"{int(keep.sum())} features (as priors='pool'). Harmonize such measures with more of their kind, "
                "give them another group (priors= a mapping, or --feature-groups FILE), or pass priors='pool'.",
                FeatureGroupWarning,
            )
        self._groups = {"names": names, "codes": codes, "pooled": pooled}
        return self._groups

    def _group_names(self) -> list[str] | None:
        """The measure groups of the fitted model's priors (None: one pooled prior)."""
        g = getattr(self, "_groups", None)
        return None if g is None else list(g["names"])

    def _grouping(self, keep: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``groups``, ``pooled`` for :func:`featharm._core.eb.posterior` over the features ``keep`` (None, None:
        one prior across them)."""
        g = getattr(self, "_groups", None)
        if g is None or len(g["names"]) < 2:
            return None, None
        return g["codes"][keep], g["pooled"]

    def _check_missing_priors(self, pri: eb.Priors, opts: eb.EBOptions, ref) -> None:
        """With missing values, a site's priors need 2 features with estimates: name the sites without."""
        if not opts.eb:
            return
        need = [pri.gamma_bar, pri.tau2] + ([] if opts.mean_only or not opts.parametric else [pri.a_prior,
                                                                                             pri.b_prior])
        groups = self._group_names() if np.ndim(pri.gamma_bar) == 2 else None
        bad = []
        for i in range(len(self.batches_)):
            if i == ref:
                continue
            ok = np.logical_and.reduce([np.isfinite(x[i]) for x in need])
            if not np.all(ok):
                bad.append(repr(self.batches_[i]) if groups is None else
                           f"{self.batches_[i]!r} (group(s) {[groups[g] for g in np.flatnonzero(~ok)]})")
        if bad:
            raise MissingValueError(
                f"the empirical-Bayes priors of batch(es) {', '.join(bad)} of {self.batch!r} cannot be estimated: "
                "they need the site effects of at least 2 features (and their spread) in each measure group, and "
                "too few features are observed enough there. Pass eb=False, priors='pool', or drop those sites."
            )

    # ------------------------------------------------------------------------------ applying
    def _preserved_design(self, prep: _Prepared) -> np.ndarray:
        """Design ``D`` of the part harmonization keeps (``[1 | X]`` for ComBat): ``M = D @ coef``."""
        return np.asfortranarray(np.hstack([np.ones((prep.Y.shape[0], 1)), prep.X]))

    def _preserved_coef(self, blk: slice) -> np.ndarray:
        """Coefficients matching :meth:`_preserved_design` for a block of features."""
        a = self._arr
        return np.vstack([a["alpha"][None, blk], a["beta"][:, blk]])

    def _site_effects(self, prep: _Prepared) -> tuple[np.ndarray, np.ndarray]:
        """``gamma*``, ``delta*`` (batch × feature) for the batches of ``prep``: fitted ones, plus new ones."""
        if prep.effects is not None:
            return prep.effects
        return self._arr["gamma_star"], self._arr["delta_star"]

    def _standardized(self, prep: _Prepared, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``z`` of the given rows against the frozen model (features with variance only), and the random
        effects a family with them predicted for those rows (``None`` otherwise)."""
        keep = ~self._arr["constant"]
        D = self._preserved_design(prep)[rows]
        z = (prep.Y[rows][:, keep] - D @ self._preserved_coef(slice(None))[:, keep]) / self._arr["sigma"][keep]
        return z, None

    def _estimate_new_sites(self, prep: _Prepared, min_size) -> None:
        """§5.7: location, scale and EB posterior of each unseen batch against the frozen model."""
        check_integer("min_new_site_size", min_size, self._owner(), minimum=2)  # a new site's variance is estimated
        a = self._arr
        m = len(self.batches_)
        k = len(prep.new_levels)
        sizes = np.bincount(prep.codes, minlength=m + k)[m:]
        small = [f"{lv!r} ({c} row{'s' if c != 1 else ''})" for lv, c in zip(prep.new_levels, sizes) if c < min_size]
        if small:
            raise BatchError(
                f"new site(s) of {self.batch!r} not seen at fit have too few subjects to estimate their site "
                f"effects: {', '.join(small)}; at least min_new_site_size={min_size} are needed. Add subjects "
                "of that site, or refit the model with the site included."
            )
        keep = ~a["constant"]
        opts = self._eb_options()
        p = keep.size
        g_new, d_new = np.zeros((k, p)), np.ones((k, p))
        new_rows = prep.codes >= m
        Z, random = self._standardized(prep, new_rows)
        if random is not None:
            prep.new_random = (new_rows, random)
        codes = prep.codes[new_rows] - m
        not_converged = []
        for j in range(k):
            if prep.mask is not None and np.isnan(Z[codes == j]).any():  # missing values (§1.8)
                gs, ds, ok = self._new_site_missing(Z[codes == j], opts, prep.new_levels[j], keep)
                if not ok:
                    not_converged.append(prep.new_levels[j])
                g_new[j, keep], d_new[j, keep] = gs, ds
                continue
            gh, dh, d_raw = eb.batch_moments(Z[codes == j], mean_only=opts.mean_only)
            if opts.eb:  # the priors of one batch: across its own features (of each measure group)
                gs, ds, _, ok, _ = new_site_posterior(gh, dh, d_raw, float(sizes[j]), opts, *self._grouping(keep))
                if not ok:
                    not_converged.append(prep.new_levels[j])
            else:
                gs, ds = gh, dh
            g_new[j, keep], d_new[j, keep] = gs, ds
        if not_converged:
            warn(f"parametric EB did not converge within max_iter={opts.max_iter} iterations for new "
                 f"batch(es) {not_converged}; the last iterate is used.", ConvergenceWarning)
        prep.effects = (np.vstack([a["gamma_star"], g_new]), np.vstack([a["delta_star"], d_new]))

    def _new_site_missing(self, Z: np.ndarray, opts: eb.EBOptions, level, keep: np.ndarray):
        """§5.7 with NaN cells: a new batch's location, scale and posterior from each feature's observed rows
        (``featharm._core.missing``). Returns ``gamma*, delta*, ok``."""
        gh, dh, d_raw, n = missing.batch_moments(Z, mean_only=opts.mean_only)
        gs, ds, _, ok, _ = new_site_posterior_missing(gh, dh, d_raw, n, opts, level, self.feature_names_in_[keep],
                                                      *self._grouping(keep), self._group_names())
        return gs, ds, ok

    def _warn_cells_without_data(self, prep: _Prepared) -> None:
        """Warn about observed values of a (seen) site × feature that had no observed value at fit: they are
        adjusted with the site's prior (the posterior under no data, §1.8)."""
        n_obs = self._arr["n_obs"]
        empty = np.argwhere(n_obs == 0)
        found = []
        for i, v in empty:
            rows = prep.codes == i
            if not rows.any():
                continue
            k = int(rows.sum() if prep.mask is None else (~prep.mask[rows, v]).sum())
            if k:
                found.append(f"{k} value(s) of {self.feature_names_in_[v]!r} from {self.batches_[i]!r}")
        if found:
            warn(
                f"{'; '.join(found[:5])}{' ...' if len(found) > 5 else ''}: that site had no observed value of that "
                "feature at fit, so these are adjusted with the site's prior (the empirical-Bayes posterior under "
                "no data: gamma* = the prior mean gamma_bar, delta*^2 = the prior mean of delta^2), not with an "
                "estimate of their own.",
                MissingValueWarning,
            )

    def _harmonize(self, prep: _Prepared) -> np.ndarray:
        a = self._arr
        Y = prep.Y
        n, p = Y.shape
        g_all, d_all = self._site_effects(prep)
        out = _new_output(Y)
        D = self._preserved_design(prep)
        with Progress(eb.adjust_blocks(Y), "harmonizing") as bar:
            eb.adjust(Y, D, self._preserved_coef(slice(None)), prep.codes, a["sigma"], g_all, d_all, out=out,
                      progress=bar.update)
        return self._keep_unadjusted(out, prep)

    def _keep_unadjusted(self, out: np.ndarray, prep: _Prepared) -> np.ndarray:
        """Copy the input into ``out`` where nothing is adjusted: constant features and reference rows."""
        const = self._arr["constant"]
        if const.any():
            out[:, const] = prep.Y[:, const]
        if self.ref_index_ is not None:
            rows = prep.codes == self.ref_index_
            out[rows] = prep.Y[rows]  # §1.5(g): reference rows unchanged, bit for bit
        return out

    def _output(self, out: np.ndarray, prep: _Prepared):
        if prep.scale is not None:  # back to the input's units (exact: powers of two)
            out /= prep.scale
            bad = ~np.isfinite(out).all(axis=0) if prep.mask is None else np.isinf(out).any(axis=0)
            if bad.any():
                raise InputError(
                    f"the harmonized values of {list(self.feature_names_in_[bad][:5])} exceed the range of "
                    "float64 numbers (about 1.8e308); express those features in other units first."
                )
        if out.dtype != prep.dtype:  # float32 features computed on whole float64 arrays
            out = out.astype(prep.dtype)
        if prep.order is not None:
            inv = np.empty_like(prep.order)
            inv[prep.order] = np.arange(prep.order.size)
            out = take_columns(out, inv)
        if prep.rows_out is not None:  # missing_covariates="exclude": the left-out rows come back NaN
            keep, index = prep.rows_out
            full = np.full((keep.size, out.shape[1]), np.nan, dtype=out.dtype, order="C" if row_major(out) else "F")
            full[keep] = out
            out, prep.index = full, index
        df = pd.DataFrame(out, index=prep.index, columns=prep.columns, copy=False)
        if self._output_container() == "polars":
            try:
                import polars
            except ImportError:
                raise ImportError(f"set_output(transform='polars') on {self._owner()} needs polars: "
                                  "pip install polars (or use transform='pandas').") from None
            return polars.from_pandas(df)
        return df

    def _output_container(self) -> str:
        from sklearn import get_config

        return getattr(self, "_sklearn_output_config", {}).get("transform") or get_config()["transform_output"]

    def set_output(self, *, transform=None):
        """Choose the container ``transform`` and ``fit_transform`` return.

        Parameters
        ----------
        transform : {"default", "pandas", "polars"} or None, default None
            ``"default"`` and ``"pandas"`` both give a pandas DataFrame with the input's index and
            columns (featharm always returns one); ``"polars"`` a polars DataFrame (row ids are dropped;
            needs polars). ``None`` keeps the current choice. Without a call, scikit-learn's global
            ``set_config(transform_output=...)`` applies.

        Returns
        -------
        self
        """
        check_option("transform", transform, (None, "default", "pandas", "polars"), f"{self._owner()}.set_output")
        if transform is not None:
            self._sklearn_output_config = {"transform": transform}  # the attribute sklearn's clone copies
        return self

    # ------------------------------------------------------------------------------ learned attributes
    def __sklearn_is_fitted__(self) -> bool:
        """What ``sklearn.utils.validation.check_is_fitted`` asks (fitted or loaded, not a half-done fit)."""
        return hasattr(self, "_arr") and hasattr(self, "batches_")

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {self._owner()} instance is not fitted yet. Call 'fit' with the training features "
                "and covariates first (or load a saved model with featharm.load_model)."
            )

    def _axis(self, name: str):
        if name == "batch":
            return pd.Index(self.batches_, name=str(self.batch))
        if name == "feature":
            return pd.Index(self.feature_names_in_, name="feature")
        return pd.Index(self.design_.columns, name="covariate")

    def _publish(self) -> None:
        """Expose the learned arrays as labelled pandas objects (attributes ending in ``_``)."""
        a = self._arr
        built: dict[str, pd.Index] = {}

        def axis(name: str) -> pd.Index:  # each axis is built once, then shallow-copied (cheap)
            if name not in built:
                built[name] = self._axis(name)
            return built[name].copy()

        extra = self._extra_axes()
        groups = self._group_names()
        if groups is not None and a["gamma_bar"].ndim == 2:  # priors per batch and measure group
            built["group"] = pd.Index(groups, name="group")
        for name, arr in a.items():
            axes = _ARRAY_AXES.get(name) or extra.get(name)
            if axes is None:
                continue
            if name in PRIOR_ARRAYS and arr.ndim == 2:
                axes = ("batch", "group")
            arr = self._in_input_units(arr, self._feature_units.get(name, 0))
            if len(axes) == 1:
                obj = pd.Series(arr, index=axis(axes[0]), name=name)
            else:
                obj = pd.DataFrame(arr, index=axis(axes[0]), columns=axis(axes[1]))
            setattr(self, name + "_", obj)
        if a["gamma_bar"].ndim == 2:  # one row per batch and measure group
            rows = pd.MultiIndex.from_product([axis("batch"), axis("group")])
            self.priors_ = pd.DataFrame({k: a[k].reshape(-1) for k in PRIOR_ARRAYS}, index=rows)
        else:
            self.priors_ = pd.DataFrame({k: a[k] for k in PRIOR_ARRAYS}, index=axis("batch"))
        g = getattr(self, "_groups", None)
        self.feature_groups_ = None if g is None else pd.Series(
            np.asarray(g["names"], dtype=object)[g["codes"]], index=axis("feature"), name="group")
        self.constant_features_ = list(self.feature_names_in_[a["constant"]])
        self.n_iter_ = pd.Series(a["n_iter"].astype(int), index=axis("batch"), name="n_iter")

    def _extra_axes(self) -> dict[str, tuple[str, ...]]:
        """Axes of learned arrays a subclass adds."""
        return {}

    def _in_input_units(self, arr: np.ndarray, power: int) -> np.ndarray:
        """A learned array (features on its last axis) in the units of the input features.

        The arrays are kept in the units the model computed in, where features far outside 2^±64 were
        rescaled by a power of two (``_arr["feature_scale"]``); ``power`` is 1 for arrays in the features'
        units, 2 for variances, 0 for unitless ones. Without rescaled features this is ``arr`` itself.
        A value beyond the float range in the input's units (the variance of features near 1e300) is
        ``inf`` (or 0 near 1e-300); the model itself keeps and uses the rescaled value.
        """
        s = self._arr.get("feature_scale")
        if s is None or not power:
            return arr
        with np.errstate(over="ignore", under="ignore"):
            for _ in range(power):  # not s ** power: it may leave the float range where arr / s / s does not
                arr = arr / s
        return arr

    # ------------------------------------------------------------------------------ persistence hooks
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()
        state = {
            "batches": [b.item() if hasattr(b, "item") else b for b in self.batches_],
            "feature_names": [str(f) for f in self.feature_names_in_],
            "design": self.design_.to_dict(),
            "ref_index": self.ref_index_,
            "fit_warnings": list(getattr(self, "fit_warnings_", [])),
        }
        if hasattr(self, "excluded_rows_"):  # rows left out by missing_covariates="exclude"
            state["excluded_rows"] = list(self.excluded_rows_)
        g = getattr(self, "_groups", None)
        if g is not None:  # priors per measure group (a file without this entry has one pooled prior)
            state["feature_groups"] = {"names": list(g["names"]), "codes": [int(c) for c in g["codes"]],
                                       "pooled": [g["names"][i] for i in np.flatnonzero(g["pooled"])]}
        return state, dict(self._arr)

    def _check_state(self, state: Any) -> dict[str, int | tuple[int, int]]:
        """Check the JSON state of a model file (before ``_set_state``); return the size of every axis.

        Called on an estimator built from the file's parameters. Raises :class:`DamagedState`. A size is an
        int, or ``(lo, hi)`` for an axis the arrays themselves fix (the first array using it), within bounds.
        A family checks its own entries in an override that calls this first.
        """
        shared = ("batches", "feature_names", "design", "ref_index")
        check_keys(state, "state", (*shared, *self._state_extra), ("fit_warnings", "excluded_rows", "feature_groups"))
        batches = check_levels(state["batches"], "state.batches", "batch names")
        features = check_names(state["feature_names"], "state.feature_names", "feature names")
        n_columns = check_design(state["design"], "state.design")
        ref, ref_batch = state["ref_index"], self._param("ref_batch")
        if ref_batch is None:
            if ref is not None:
                raise DamagedState("state.ref_index", f"is {describe(ref)} but the ref_batch parameter is null",
                                   "null")
        else:
            check_int(ref, "state.ref_index", 0, len(batches) - 1)
            level = batches[ref]
            if not (level == ref_batch or str(level) == str(ref_batch)):
                raise DamagedState("state.ref_index", f"points at batch {level!r}",
                                   f"the position of ref_batch {ref_batch!r} in state.batches")
        rows = state.get("excluded_rows", [])
        if not isinstance(rows, list) or not all(isinstance(r, str) or (isinstance(r, (int, float)) and not
                                                                          isinstance(r, bool)) for r in rows):
            raise DamagedState("state.excluded_rows", f"is {describe(rows)}", "a list of row ids (strings or numbers)")
        log = state.get("fit_warnings", [])
        if not isinstance(log, list):
            raise DamagedState("state.fit_warnings", f"is {describe(log)}", "a list of warnings")
        for i, w in enumerate(log):
            check_keys(w, f"state.fit_warnings[{i}]", ("category", "message"))
            for k in ("category", "message"):
                if not isinstance(w[k], str):
                    raise DamagedState(f"state.fit_warnings[{i}].{k}", f"is {describe(w[k])}", "a string")
        dims = {"batch": len(batches), "feature": len(features), "column": n_columns, "one": 1}
        if "feature_groups" in state:
            G = self._check_groups_state(state["feature_groups"], len(features))
            if G > 1:  # the priors are batch × group arrays
                self._stored = {**type(self)._stored, **_GROUP_STORED}
                dims["group"] = G
        return dims

    @staticmethod
    def _check_groups_state(g: Any, p: int) -> int:
        """``state.feature_groups``: group names, the group code of each of the ``p`` features, the groups on
        the pooled prior. Returns the number of groups."""
        check_keys(g, "state.feature_groups", ("names", "codes", "pooled"))
        names = check_names(g["names"], "state.feature_groups.names", "group names")
        codes = g["codes"]
        if not isinstance(codes, list) or len(codes) != p:
            raise DamagedState("state.feature_groups.codes", f"is {describe(codes)}",
                               f"a list of {p} group codes (one per feature)")
        bad = next((i for i, c in enumerate(codes) if isinstance(c, bool) or not isinstance(c, int)
                    or not 0 <= c < len(names)), None)
        if bad is not None:
            raise DamagedState(f"state.feature_groups.codes[{bad}]", f"is {describe(codes[bad])}",
                               f"an integer from 0 to {len(names) - 1}")
        if set(codes) != set(range(len(names))):
            raise DamagedState("state.feature_groups.codes", "leaves a group without features",
                               "every group named in state.feature_groups.names used")
        pooled = check_names(g["pooled"], "state.feature_groups.pooled", "group names", allow_empty=True)
        unknown = [x for x in pooled if x not in names]
        if unknown:
            raise DamagedState("state.feature_groups.pooled", f"names {unknown[:3]}", "groups of state.feature_groups.names")
        return len(names)

    def _check_arrays(self, state: dict[str, Any], arrays: dict[str, np.ndarray], dims: dict[str, int]) -> None:
        """Checks relating several loaded arrays (after each passed its own ``_stored`` rule); raises
        :class:`DamagedState`."""

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.batches_ = np.asarray(state["batches"], dtype=object)
        self.feature_names_in_ = np.asarray(state["feature_names"], dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.design_ = CovariateDesign.from_dict(state["design"])
        self.ref_index_ = state["ref_index"]
        self.fit_warnings_ = list(state.get("fit_warnings", []))
        if "excluded_rows" in state:
            self.excluded_rows_ = list(state["excluded_rows"])
        g = state.get("feature_groups")
        self._groups = None if g is None else {
            "names": list(g["names"]), "codes": np.asarray(g["codes"], dtype=np.intp),
            "pooled": np.isin(np.asarray(g["names"], dtype=object), list(g["pooled"]))}
        self._arr = {k: np.asarray(v) for k, v in arrays.items()}
        self._arr["constant"] = self._arr["constant"].astype(bool)
        self._publish()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self._supports_missing  # NaN feature cells (§1.8)
        tags.requires_fit = True
        return tags

    def _repr_html_(self) -> str:
        """A small HTML table for notebooks: family, options, formula, sites and their sizes, features,
        missing values and the warnings of the fit (unfitted: the parameters); see :func:`model_facts`."""
        import html

        rows = "".join(f'<tr><th style="text-align:left;vertical-align:top">{html.escape(k)}</th>'
                       f'<td style="text-align:left">{html.escape(v)}</td></tr>' for k, v in model_facts(self))
        return f'<table class="featharm-model">{rows}</table>'

    _html_repr = _repr_html_  # what scikit-learn's _repr_mimebundle_ (Jupyter's first choice) shows


def model_facts(model, n_names: int = 5) -> list[tuple[str, str]]:
    """What a model holds, as (label, text) rows: those of ``model._repr_html_()`` and ``featharm info``."""
    params = model.get_params(deep=False)
    facts = [("family", type(model).__name__),
             ("options", ", ".join(f"{k}=<{len(v)} feature groups>" if isinstance(v, (dict, pd.Series)) else f"{k}={v!r}"
                                   for k, v in params.items() if k != "formula") or "none"),
             ("formula", str(params.get("formula")) if params.get("formula") else "none (intercept only)")]
    if not model.__sklearn_is_fitted__():
        return [*facts, ("fitted", "no")]
    sizes = getattr(model, "batch_sizes_", None)
    shown = ", ".join(f"{b} ({int(n)})" for b, n in list(sizes.items())[:40]) if sizes is not None else \
        ", ".join(map(str, model.batches_[:40]))
    more = f" ... (+{len(model.batches_) - 40} more)" if len(model.batches_) > 40 else ""
    total = f"; {int(sizes.sum())} rows" if sizes is not None else ""
    facts.append(("sites", f"{len(model.batches_)} in column {model.batch!r}{total}: {shown}{more}"))
    if getattr(model, "order_", None):  # NestedComBat: one ComBat step per batch variable
        levels = getattr(model, "levels_", {})
        facts.append(("steps", " > ".join(f"{v} ({len(levels.get(v, []))} levels)" for v in model.order_)
                      + f"; {len(model.steps_)} ComBat steps"))
    names = [str(f) for f in model.feature_names_in_]
    facts.append(("features", f"{len(names)}: {', '.join(names[:n_names])}"
                              + (f" ... (+{len(names) - n_names} more)" if len(names) > n_names else "")))
    if hasattr(model, "priors_"):
        groups = getattr(model, "feature_groups_", None)
        if groups is None:
            facts.append(("priors", "one empirical-Bayes prior per site across all features"))
        else:
            pooled = [g for g, flag in zip(model._groups["names"], model._groups["pooled"]) if flag]
            counts = ", ".join(f"{g} ({int(n)})" for g, n in groups.value_counts(sort=False).items())
            facts.append(("priors", f"per site and measure group: {counts}"
                          + (f"; on the prior pooled across all features (too few features): {', '.join(pooled)}"
                             if pooled and groups.nunique() > 1 else "")))
    n_obs = getattr(model, "n_obs_", None)
    if n_obs is not None and sizes is not None:
        lacking = sizes.to_numpy()[:, None] - n_obs.to_numpy()
        facts.append(("missing values", f"{int(lacking.sum())} feature cells empty at fit, in "
                                        f"{int((lacking.sum(axis=0) > 0).sum())} feature(s)"))
    if getattr(model, "excluded_rows_", None):
        facts.append(("rows left out", f"{len(model.excluded_rows_)} (a missing batch or covariate)"))
    log = getattr(model, "fit_warnings_", [])
    facts.append(("warnings at fit", "; ".join(f"{w['category']}: {w['message']}" for w in log) if log else "none"))
    return facts
