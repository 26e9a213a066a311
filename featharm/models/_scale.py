"""ComBat out of core: ``fit`` and ``transform`` on a Dask array (or a Zarr array, an h5py dataset, a
:class:`featharm.io.store.FeatureStore`), on the statistics core of ``docs/methods.md`` §1.9.

* **fit** reads the rows once. Every block of the array (a chunk of rows × a chunk of features) is summarized
  by :meth:`~featharm._core.suffstats.SuffStats.update` into statistics that share one shift (that of the
  first chunk of rows, per chunk of features: :func:`_template`), so merging them is addition; the pieces of
  each chunk of features are merged in a fixed tree of :meth:`~featharm._core.suffstats.SuffStats.combine`
  (canonical order), the chunks of features are put side by side (:func:`concat_features`) and the model is
  fitted from the statistics (:func:`~featharm.models._from_stats.fit_from_statistics`). The graph is run by
  :func:`featharm._dask.compute` (threads, or a cluster): the same model, bit for bit, wherever it runs.
* **transform** returns a lazy Dask array with the input's chunks: S8 (:func:`featharm._core.eb.adjust`)
  on each block, with the block's rows of the design and batch codes and its features' parameters.

The covariates (subjects × a few columns) are in memory: the design is frozen from them before the
features are read (:func:`~featharm.models._from_stats.freeze_design`). What is supported is what
``ComBat.from_statistics`` supports (every EB option, a reference batch, NaN cells, ``compat``), plus
``missing_covariates="exclude"`` (such rows are not summarized and come back NaN) and
``new_sites="estimate"`` (a second pass over the new sites' rows). Not out of core: the warning ``transform``
gives in memory about observed values of a (site, feature) that had none at fit (it would need a pass of its
own), and features beyond 2^±64 in magnitude (an error). :class:`~featharm.ComBatGAM` runs the same way: its
spline bases are frozen from the covariates with the design
(:func:`~featharm.models._gam_from_stats.freeze_gam_design`), the spline columns are summarized with the
covariates, and the fit is
:func:`~featharm.models._gam_from_stats.fit_gam_from_statistics` (not with ``compat="neuroHarmonize"``). Other
families refuse such input with the size the table would take in memory.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .. import _dask
from .._core import eb
from .._core.suffstats import SuffStats
from .._validation import align_covariates, encode_batches, get_batch, show_rows
from ..exceptions import AlignmentError, InputError, MissingValueError, MissingValueWarning, warn
from ._from_stats import extend_with_statistics, fit_from_statistics, freeze_design
from ._gam_from_stats import fit_gam_from_statistics, freeze_gam_design

__all__ = ["fit", "transform", "statistics", "concat_features", "check_family"]

FAN_IN = 8  # pieces merged by one task of the tree


# --------------------------------------------------------------------------------------------- inputs
class _Input:
    __slots__ = ("Y", "ids", "names", "cov", "store")

    def __init__(self, Y, ids, names, cov, store):
        self.Y, self.ids, self.names, self.cov, self.store = Y, ids, names, cov, store


def _gib(nbytes: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


def check_family(model, X) -> None:
    """Only families whose fit is a function of the per-batch statistics run out of core."""
    if getattr(type(model), "_out_of_core", False):
        return
    shape = getattr(getattr(X, "data", X), "shape", None)
    size = ""
    if shape is not None and len(shape) == 2:
        need = 8.0 * shape[0] * shape[1]
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover
            mem = None
        size = (f" This table ({shape[0]:,} rows × {shape[1]:,} features) is {_gib(need)} in float64; the in-memory "
                "fit needs about 3 times that" + (f" (this machine has {_gib(mem)})" if mem else "") +
                ": if it fits, pass it in memory (np.asarray(X) or X.compute(); on the command line, as a CSV or Parquet "
                "table).")
    why = {
        "CovBat": "CovBat's covariance step is a PCA of the residual rows, which is not a function of "
                  "per-site sums",
        "LongComBat": "LongComBat's mixed model needs each subject's block of rows together",
        "ComBatLS": "ComBatLS reweights the rows iteratively (each iteration is another pass over them)",
    }.get(type(model).__name__, f"{type(model).__name__} is not fitted from per-site statistics")
    raise InputError(f"{type(model).__name__} cannot take an out-of-core (Dask/Zarr/HDF5) input: {why}. Only "
                     f"ComBat and ComBatGAM run out of core.{size}")


def covariates_of(model, X, positional, params: dict, method: str):
    """The covariates of a call on an out-of-core ``X``: as ``BaseHarmonizer._fit_covariates`` (by keyword, by
    position, or the constructor's table), except that a FeatureStore's rows are looked up in the
    constructor's table by the store's ids (an array has none: that is an error there)."""
    if (type(X).__name__ == "FeatureStore" and params.get("covariates") is None
            and not isinstance(positional, pd.DataFrame) and model._param("covariates") is not None
            and not sorted(k for k in params if k != "covariates")):
        return model._param("covariates")
    return model._fit_covariates(X, positional, params, method)


def _inputs(model, X, covariates, fitting: bool) -> _Input:
    owner = model._owner()
    store = None
    if type(X).__name__ == "FeatureStore":
        store = X
        Y = _dask.as_dask(X.data)
        ids, names = pd.Index(X.ids), [str(f) for f in X.features]
    else:
        Y = _dask.as_dask(X)
        ids = names = None
    if Y.ndim != 2:
        raise InputError(f"{owner} needs a 2-D array of rows (subjects) × features; got {Y.ndim} dimension(s).")
    if not (np.issubdtype(Y.dtype, np.floating) or np.issubdtype(Y.dtype, np.integer)):
        raise InputError(f"{owner} needs numeric features; the array holds {Y.dtype}.")
    if not isinstance(covariates, pd.DataFrame):
        raise InputError(f"{owner} needs `covariates` as a pandas DataFrame (the batch column {model.batch!r} and "
                         f"the formula's columns) with an out-of-core input; got {type(covariates).__name__}.")
    n, p = Y.shape
    if store is None:
        if len(covariates) != n:
            raise AlignmentError(
                f"the array has {n:,} rows but the covariates have {len(covariates):,}; with an array (no ids) "
                "the covariate rows are matched by position, one per row. Pass the covariates of exactly those "
                "rows, in order (or a FeatureStore, whose ids are matched).")
        ids = covariates.index
        cov = covariates
        if not fitting and hasattr(model, "feature_names_in_"):
            names = list(model.feature_names_in_)
            if len(names) != p:
                raise AlignmentError(f"the array has {p} features but {owner} was fitted with {len(names)}.")
        else:
            names = [f"x{j}" for j in range(p)]
    else:
        if len(ids) != n or len(names) != p:
            raise InputError(f"the store's ids ({len(ids)}) and feature names ({len(names)}) do not match its "
                             f"array of {n} × {p}; rewrite it with featharm.io.write_store.")
        if covariates.index.isin(ids).sum() == len(ids) and len(covariates) > len(ids):
            covariates = covariates.loc[covariates.index.isin(ids)]  # a bigger table: the store's rows
        cov = align_covariates(ids, covariates, owner)
    return _Input(Y, ids, names, cov, store)


def _rows_kept(model, cov: pd.DataFrame):
    """With ``missing_covariates="exclude"``: the rows whose batch and formula covariates are present (a
    warning names the others); otherwise None."""
    if model._param("missing_covariates") != "exclude":
        return None
    from ..formula import formula_columns

    cols = formula_columns(model._param("formula"), cov.columns)
    cols = [c for c in dict.fromkeys([model.batch, *cols]) if c in cov.columns]
    na = cov[cols].isna().to_numpy().any(axis=1)
    if not na.any():
        return None
    what = [c for c in cols if cov[c].isna().any()]
    warn(f"{int(na.sum())} row(s) have a missing {' / '.join(map(repr, what))}: {show_rows(cov.index, na, 10)}. "
         "They are left out (missing_covariates='exclude') and come back with NaN features; nothing is imputed.",
         MissingValueWarning)
    return ~na


def _full(values: np.ndarray, keep, n: int, fill) -> np.ndarray:
    if keep is None:
        return values
    out = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
    out[keep] = values
    return out


# --------------------------------------------------------------------------------------------- statistics
def _template(block, X, codes, m: int) -> SuffStats:
    """Statistics of the first chunk of rows for one chunk of features: their shifts (the means of each
    batch there, per feature where observed, and the pilot slopes) are those of every piece."""
    keep = codes >= 0
    t = SuffStats(m, X.shape[1], block.shape[1])
    t.update(X[keep], np.asarray(block, dtype=np.float64)[keep], codes[keep])
    return t


def _blank(template: SuffStats, xmeans: np.ndarray) -> SuffStats:
    """Empty statistics with the template's shifts; a batch absent from the template's rows gets the mean of
    all its covariate rows as ``x`` shift and the pilot slopes, so that every piece of every chunk of features
    holds a batch's sums around one shift (merging is addition, and the chunks of features agree)."""
    s = SuffStats.empty_like(template)
    absent = ~s._x_set & np.isfinite(xmeans).all(axis=1)
    if s.center and absent.any():
        s.x_shift[absent] = xmeans[absent]
        if s._pilot is not None:
            s.y_slope[absent] = s._pilot
        s._x_set[absent] = True
    return s


def _piece(block, X, codes, template: SuffStats, xmeans, row0: int, col0: int) -> SuffStats:
    keep = codes >= 0
    Y = np.asarray(block, dtype=np.float64)  # update works on copies of each batch's rows: no copy here
    if not keep.all():
        Y = Y[keep]
    if np.isinf(Y).any():
        r, c = (int(v[0]) for v in np.nonzero(np.isinf(Y)))
        raise MissingValueError(f"feature {col0 + c} has an infinite value in row {row0 + int(np.flatnonzero(keep)[r])} "
                                "(0-based); only NaN marks a missing value. Fix or blank that cell.")
    s = _blank(template, xmeans)
    s.update(X[keep], Y, codes[keep])
    return s


def _combine(pieces) -> SuffStats:
    return SuffStats.combine(pieces)


def concat_features(parts) -> SuffStats:
    """Statistics of the same rows for consecutive chunks of features, side by side (the covariate sums are
    the first chunk's: every chunk holds them around the same shifts)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    m, q = first.m, first.q
    p = sum(s.p for s in parts)
    out = SuffStats(m, q, p, center=first.center)
    out.counts[:] = first.counts
    out.x_shift[:] = first.x_shift
    out.sx[:] = first.sx
    out.sxx[:] = first.sxx
    keys, msx, msxx = [], [], []
    start = 0
    for s in parts:
        if not np.array_equal(s.counts, first.counts) or not np.array_equal(s.x_shift, first.x_shift):
            raise AssertionError("chunks of features summarized with different covariate shifts")  # pragma: no cover
        sl = slice(start, start + s.p)
        for name in ("y_shift", "n_obs", "sy", "syy"):
            getattr(out, name)[:, sl] = getattr(s, name)
        out.y_slope[:, :, sl] = s.y_slope
        out.sxy[:, :, sl] = s.sxy
        if s.miss_key.size:
            i, v = np.divmod(s.miss_key, s.p)
            keys.append(i * p + start + v)
            msx.append(s.miss_sx)
            msxx.append(s.miss_sxx)
        start += s.p
    if keys:
        k = np.concatenate(keys)
        order = np.argsort(k, kind="stable")
        out.miss_key = k[order]
        out.miss_sx = np.concatenate(msx)[order]
        out.miss_sxx = np.concatenate(msxx)[order]
    out._mark_set()
    return out


def statistics(Y, X: np.ndarray, codes: np.ndarray, m: int, *, desc: str = "summarizing") -> SuffStats:
    """The per-batch statistics of the rows of the Dask array ``Y`` (n × p) with covariate block ``X`` (n × q)
    and batch codes (``-1``: a row left out), in one pass: a piece per block, a fixed merge tree per chunk of
    features (see the module docstring)."""
    import dask

    n = Y.shape[0]
    if X.shape[0] != n or codes.shape != (n,):
        raise InputError(f"covariate block {X.shape} and codes {codes.shape} do not match the {n} rows.")
    q = X.shape[1]
    xmeans = np.full((m, q), np.nan)
    for i in range(m):
        rows = codes == i
        if rows.any():
            xmeans[i] = X[rows].mean(axis=0)
    blocks = Y.to_delayed()
    rstart = np.concatenate([[0], np.cumsum(Y.chunks[0])])
    cstart = np.concatenate([[0], np.cumsum(Y.chunks[1])])
    first = next((r for r in range(len(Y.chunks[0])) if (codes[rstart[r]:rstart[r + 1]] >= 0).any()), None)
    if first is None:
        raise InputError("no row has a batch and covariates: nothing to fit.")
    piece = dask.delayed(_piece, pure=True)
    combine = dask.delayed(_combine, pure=True)
    results = []
    for c in range(len(Y.chunks[1])):
        rs = slice(rstart[first], rstart[first + 1])
        template = dask.delayed(_template, pure=True)(blocks[first, c], X[rs], codes[rs], m)
        parts = []
        for r in range(len(Y.chunks[0])):
            rows = slice(rstart[r], rstart[r + 1])
            if not (codes[rows] >= 0).any():
                continue
            parts.append(piece(blocks[r, c], X[rows], codes[rows], template, xmeans, int(rstart[r]), int(cstart[c])))
        while len(parts) > 1:
            parts = [combine(parts[k:k + FAN_IN]) for k in range(0, len(parts), FAN_IN)]
        results.append(parts[0])
    parts = _dask.compute(*results, desc=desc)
    return concat_features(list(parts))


# --------------------------------------------------------------------------------------------- fit
def _is_gam(model) -> bool:
    return getattr(type(model), "_schema_name", None) == "combat_gam"  # ComBatGAM (not imported: no circle)


def fit(model, X, covariates):
    """``model.fit(X, covariates)`` for an out-of-core ``X`` (see the module docstring). Returns ``model``."""
    check_family(model, X)
    model._check_params()
    inp = _inputs(model, X, covariates, fitting=True)
    n = inp.Y.shape[0]
    from ..exceptions import record_warnings

    with record_warnings() as log:
        try:
            keep = _rows_kept(model, inp.cov)
            cov = inp.cov if keep is None else inp.cov.loc[keep]
            gam = _is_gam(model)
            frozen = freeze_gam_design(model, cov) if gam else freeze_design(model, cov)
            codes = _full(frozen.codes.astype(np.intp), keep, n, -1)
            Xc = _full(np.asarray(frozen.X, dtype=np.float64), keep, n, 0.0)
            stats = statistics(inp.Y, Xc, codes, len(frozen.batches), desc="fitting (one pass over the rows)")
            if gam:  # the spline columns are among the summarized covariates
                fit_gam_from_statistics(model, stats, batches=frozen.batches, design=frozen.design,
                                        bases=frozen.bases, feature_names=inp.names)
            else:
                fit_from_statistics(model, stats, batches=frozen.batches, design=frozen.design,
                                    feature_names=inp.names)
        except BaseException:
            model._forget_fit()
            raise
    model.fit_warnings_ = list(log) + list(getattr(model, "fit_warnings_", []))
    if keep is not None:
        model.excluded_rows_ = [r.item() if hasattr(r, "item") else r if isinstance(r, (str, int, float)) else str(r)
                                for r in inp.cov.index[~keep]]
    return model


# --------------------------------------------------------------------------------------------- transform
def _adjust_block(Y, D, codes, coef, sigma, gamma, delta, constant, ref, out_dtype):
    """S8 on one block (rows × features), as ``BaseHarmonizer._harmonize`` on a whole table."""
    Y = np.asarray(Y)
    if not (Y.dtype == np.float32 or Y.dtype == np.float64):
        Y = Y.astype(np.float64)
    out = np.empty(Y.shape, dtype=out_dtype)
    keep = codes >= 0
    c = np.where(keep, codes, 0)
    eb.adjust(Y, D, coef, c, sigma, gamma, delta, out=out)
    if constant.any():
        out[:, constant] = Y[:, constant]
    if ref is not None:
        rows = codes == ref
        out[rows] = Y[rows]
    if not keep.all():
        out[~keep] = np.nan
    return out


def transform(model, X, covariates, *, new_sites="error", min_new_site_size=5):
    """``model.transform(X, covariates)`` for an out-of-core ``X``: a lazy Dask array with ``X``'s chunks
    (a :class:`~featharm.io.store.FeatureStore` over it when ``X`` is one). Nothing is read until it is
    computed or written, except for ``new_sites="estimate"`` with sites not seen at fit (one pass over their
    rows, for their statistics)."""
    da = _dask.require("an out-of-core input")
    check_family(model, X)
    model._check_fitted()
    inp = _inputs(model, X, covariates, fitting=False)
    Y = inp.Y
    fitted = list(model.feature_names_in_)
    if inp.store is not None and inp.names != [str(f) for f in fitted]:
        pos = {c: i for i, c in enumerate(inp.names)}
        missing = [c for c in fitted if c not in pos]
        extra = [c for c in inp.names if c not in set(fitted)]
        if missing or extra:
            raise AlignmentError(f"the store's features differ from those the model was fitted on: missing "
                                 f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                                 f"{' ...' if len(extra) > 5 else ''}. Pass the same features.")
        Y = Y[:, np.array([pos[c] for c in fitted])]
    if "feature_scale" in model._arr:
        raise InputError("this model rescaled features beyond 2^64 in magnitude at fit; it applies to in-memory "
                         "tables only.")
    n = Y.shape[0]
    keep = _rows_kept(model, inp.cov)
    cov = inp.cov if keep is None else inp.cov.loc[keep]
    known = list(model.batches_)
    bser = get_batch(cov, model.batch)
    new = []
    if new_sites == "estimate":
        from .._validation import batch_levels

        vals = batch_levels(bser.astype(str) if known and isinstance(known[0], str) else bser)
        seen = set(known) | {str(k) for k in known}
        new = [v for v in vals if v not in seen and str(v) not in seen]
    codes = _full(encode_batches(bser, known + new, model.batch).astype(np.intp), keep, n, -1)
    Xd = np.asarray(model.design_.transform(cov), dtype=np.float64)
    if _is_gam(model):  # the spline columns of the frozen bases (range checks and extrapolation as in memory)
        Xd = np.hstack([Xd, model._smooth_design(cov)])
    Xd = _full(Xd, keep, n, 0.0)
    use = model
    if new:
        m = len(known)
        new_codes = np.where(codes >= m, codes - m, -1)
        stats = statistics(Y, Xd, new_codes, len(new), desc="summarizing the new sites")
        use = extend_with_statistics(model, stats, new, min_new_site_size=min_new_site_size)
    a = use._arr
    D = np.hstack([np.ones((n, 1)), Xd])
    coef = np.vstack([a["alpha"][None, :], a["beta"]] + ([a["spline_coef"]] if "spline_coef" in a else []))
    out_dtype = np.float32 if Y.dtype == np.float32 else np.float64
    rc, cc = Y.chunks
    D_d = da.from_array(D, chunks=(rc, D.shape[1]))
    codes_d = da.from_array(codes, chunks=(rc,))
    coef_d = da.from_array(coef, chunks=(coef.shape[0], cc))
    sigma_d = da.from_array(a["sigma"], chunks=(cc,))
    g_d = da.from_array(a["gamma_star"], chunks=(a["gamma_star"].shape[0], cc))
    d_d = da.from_array(a["delta_star"], chunks=(a["delta_star"].shape[0], cc))
    const_d = da.from_array(a["constant"], chunks=(cc,))
    out = da.blockwise(_adjust_block, "ij", Y, "ij", D_d, "ik", codes_d, "i", coef_d, "kj", sigma_d, "j", g_d, "mj",
                       d_d, "mj", const_d, "j", ref=use.ref_index_, out_dtype=out_dtype, dtype=out_dtype,
                       concatenate=True, meta=np.empty((0, 0), dtype=out_dtype))
    if inp.store is not None:
        return inp.store.with_data(out, features=fitted)
    return out
