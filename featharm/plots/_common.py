"""Shared helpers of :mod:`featharm.plots`: inputs, site-effect tables, colours, safe labels, figure creation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._validation import align_covariates, batch_levels, check_features, encode_batches, get_batch, rows_of
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
    """Validated inputs; missing feature cells (NaN) are accepted (each plot says what it does with them)."""
    Y, index, columns, _ = check_features(X, owner, index=rows_of(covariates), allow_nan=True)
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


def standardized_site_effects(inp: Inputs, formula: str | None) -> pd.DataFrame:
    """Per-site standardized site effect (site × feature): the ``shift`` of
    :func:`featharm.diagnostics.site_effect_sizes`, ``(mean_i r_add - mean r_add) / sd(r_full)`` (SD with
    n - 1; NaN for a constant feature)."""
    from ..diagnostics.univariate import site_effect_sizes

    X = pd.DataFrame(inp.Y, index=inp.index, columns=inp.features)
    t = site_effect_sizes(X, inp.covariates, batch=inp.batch, formula=formula)
    return site_effect_matrix(t, "shift", index_name=inp.batch)


def site_effect_matrix(table: pd.DataFrame, value: str = "shift", index_name=None) -> pd.DataFrame:
    """A tidy per-site table (``site``, ``feature``, ``value``) as a site × feature DataFrame, in table order."""
    from ..diagnostics.univariate import effect_matrix

    return effect_matrix(table, value, index_name)


def check_features_arg(features, owner: str) -> list:
    if features is None:
        raise InputError(f"{owner} needs `features`: a list of feature (ROI) names to draw.")
    if isinstance(features, str):
        return [features]
    feats = list(features)
    if not feats:
        raise InputError(f"{owner} needs at least one feature in `features`.")
    return feats
