"""Covariate distributions by site (is biology balanced across sites?)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._validation import batch_levels, get_batch
from ..exceptions import InputError
from ._common import covariate_column, get_ax, new_figure, safe_label, site_colors


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) and s.nunique() > 5


def covariate_by_site(covariates, *, covariate, batch="site", bins=20, ax=None, title=None):
    """One covariate by site: overlaid density histograms (numeric) or stacked proportions (categorical).

    Numeric columns with more than 5 distinct values are continuous (e.g. age); others (sex, diagnosis)
    are drawn as the proportion of each level within each site.

    Returns
    -------
    matplotlib Axes
    """
    if not isinstance(covariates, pd.DataFrame):
        raise InputError(f"covariate_by_site needs the covariates as a DataFrame; got {type(covariates).__name__}.")
    s = covariate_column(covariates, covariate, "covariate_by_site")
    site = get_batch(covariates, batch)
    levels = batch_levels(site)
    site_str = site.astype(str).to_numpy()
    colors = site_colors(levels)
    ax = get_ax(ax)
    if _is_numeric(s):
        v = s.to_numpy(dtype=float)
        ok = np.isfinite(v)
        edges = np.histogram_bin_edges(v[ok], bins=bins)
        for lv in levels:
            rows = ok & (site_str == str(lv))
            ax.hist(v[rows], bins=edges, density=True, histtype="step", lw=1.8, color=colors[lv],
                    label=f"{safe_label(lv)} (n={int(rows.sum())})")
        ax.set_xlabel(safe_label(covariate))
        ax.set_ylabel("density")
    else:
        vals = s.astype(str).where(s.notna(), "missing").to_numpy()
        cats = sorted(pd.unique(vals).tolist())
        props = pd.crosstab(site_str, vals, normalize="index").reindex(index=[str(lv) for lv in levels],
                                                                       columns=cats, fill_value=0.0)
        bottom = np.zeros(len(levels))
        from matplotlib import colormaps

        cmap = colormaps["Set2"]
        for k, c in enumerate(cats):
            ax.bar(np.arange(len(levels)), props[c].to_numpy(), bottom=bottom, color=cmap(k % cmap.N),
                   label=safe_label(c), width=0.7)
            bottom += props[c].to_numpy()
        ax.set_xticks(np.arange(len(levels)), [safe_label(lv) for lv in levels])
        ax.set_xlabel(safe_label(batch))
        ax.set_ylabel(f"proportion of {safe_label(covariate)}")
        ax.set_ylim(0, 1)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(safe_label(covariate if title is None else title), fontsize=9)
    return ax


def covariate_distributions(covariates, *, columns, batch="site", bins=20):
    """Figure: :func:`covariate_by_site` for each of ``columns`` (side by side, wrapping after 3)."""
    cols = [columns] if isinstance(columns, str) else list(columns)
    if not cols:
        raise InputError("covariate_distributions needs at least one covariate column in `columns`.")
    ncol = min(3, len(cols))
    nrow = -(-len(cols) // ncol)
    fig = new_figure(3.8 * ncol, 3.0 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, c in zip(axes, cols):
        covariate_by_site(covariates, covariate=c, batch=batch, bins=bins, ax=ax)
    for ax in axes[len(cols):]:
        ax.set_visible(False)
    return fig
