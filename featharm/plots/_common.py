"""Shared helpers of :mod:`featharm.plots`: inputs, residuals, colours, safe labels, figure creation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._validation import align_covariates, batch_levels, check_features, encode_batches, get_batch, rows_of
from ..design import CovariateDesign, batch_indicators
from ..exceptions import ColumnNotFoundError, InputError


def safe_label(text) -> str:
    """A user string (feature, site, covariate name) drawn literally: ``$`` does not start mathtext."""
    return str(text).replace("$", r"\$")


def get_ax(ax):
    """``ax`` or, when None, the current pyplot axes (the seaborn convention for axes-level functions)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.gca()


def new_figure(width: float, height: float):
    """A figure that is not registered with pyplot (nothing to close, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def site_colors(levels) -> dict:
    """One fixed colour per site (tab10, then tab20), in sorted-level order."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if len(levels) <= 10 else colormaps["tab20"]
    return {lv: cmap(i % cmap.N) for i, lv in enumerate(levels)}


@dataclass
class Inputs:
    """Validated plotting inputs: ``Y`` (n × p), names, the aligned covariates and the batch encoding."""

    Y: np.ndarray
    index: pd.Index
    features: list
    covariates: pd.DataFrame
    levels: list
    codes: np.ndarray
    batch: str


def prepare(X, covariates, batch: str, owner: str, levels=None) -> Inputs:
    Y, index, columns = check_features(X, owner, index=rows_of(covariates))
    cov = align_covariates(index, covariates, owner)
    s = get_batch(cov, batch)
    lv = batch_levels(s) if levels is None else list(levels)
    codes = encode_batches(s, lv, batch)
    return Inputs(Y, index, [str(c) for c in columns], cov, lv, codes, str(batch))


def feature_index(inp: Inputs, feature, owner: str) -> int:
    name = str(feature)
    if name not in inp.features:
        from .._validation import show_columns

        raise ColumnNotFoundError(f"{owner}: no feature {name!r}; features: {show_columns(inp.features)}.")
    return inp.features.index(name)


def covariate_column(cov: pd.DataFrame, name, owner: str) -> pd.Series:
    if name not in cov.columns:
        from .._validation import show_columns

        raise ColumnNotFoundError(f"{owner}: covariates have no column {name!r}; columns present: "
                                  f"{show_columns(cov.columns)}.")
    return cov[name]


def residuals(inp: Inputs, formula: str | None):
    """Additive and full residuals of ``y ~ site + covariates`` (``docs/methods.md`` §6.1), all features at once.

    ``r_add = y - X beta`` keeps the site effect (centred on the grand mean of the site intercepts,
    weighted by site size, so ``r_add`` has mean 0); ``r_full = y - fitted`` removes it.
    """
    _, Xc = CovariateDesign.fit(formula, inp.covariates, exclude=(inp.batch,))
    m = len(inp.levels)
    B = batch_indicators(inp.codes, m)
    W = np.hstack([B, Xc])
    coef, *_ = np.linalg.lstsq(W, inp.Y, rcond=None)
    fitted = W @ coef
    r_full = inp.Y - fitted
    r_add = inp.Y - Xc @ coef[m:]
    r_add -= r_add.mean(axis=0)
    return r_add, r_full


def standardized_site_effects(inp: Inputs, formula: str | None) -> pd.DataFrame:
    """Per-site standardized shift ``(mean_i r_add - mean r_add) / sd(r_full)`` (site × feature)."""
    r_add, r_full = residuals(inp, formula)
    m = len(inp.levels)
    counts = np.bincount(inp.codes, minlength=m).astype(float)
    means = (batch_indicators(inp.codes, m).T @ r_add) / counts[:, None]
    sd = r_full.std(axis=0, ddof=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, means / np.where(sd > 0, sd, 1.0), 0.0)
    return pd.DataFrame(z, index=pd.Index(inp.levels, name=inp.batch), columns=pd.Index(inp.features, name="feature"))


def check_features_arg(features, owner: str) -> list:
    if features is None:
        raise InputError(f"{owner} needs `features`: a list of feature (ROI) names to draw.")
    if isinstance(features, str):
        return [features]
    feats = list(features)
    if not feats:
        raise InputError(f"{owner} needs at least one feature in `features`.")
    return feats
