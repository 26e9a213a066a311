"""Covariate distributions by site (is biology balanced across sites?)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._validation import batch_levels, get_batch
from ..exceptions import InputError
from ._common import (
    LEGEND_SITES,
    SITE_FONT,
    covariate_column,
    get_ax,
    legend_outside,
    many_sites,
    new_figure,
    rows_height,
    safe_label,
    site_colors,
    thin_tick_labels,
)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) and s.nunique() > 5


def covariate_by_site(covariates, *, covariate, batch="site", bins=20, ax=None, title=None):
    """One covariate by site: overlaid density histograms (numeric) or stacked proportions (categorical).

    Numeric columns with more than 5 distinct values are continuous (e.g. age); others (sex, diagnosis)
    are drawn as the proportion of each level within each site. Up to
    :data:`~featharm.plots._common.SIDE_BY_SIDE_SITES` sites: overlaid step histograms (continuous) and
    one vertical bar per site (categorical); with more sites, one row per site (box plots of a continuous
    covariate, horizontal stacked bars of a categorical one) so that every site name stays readable. The
    legend sits outside the axes, never over the data.

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
    rows = many_sites(len(levels))
    names = [safe_label(lv) for lv in levels]
    ax = get_ax(ax)
    if _is_numeric(s):
        v = s.to_numpy(dtype=float)
        ok = np.isfinite(v)
        if rows:  # one box per site, sites top to bottom
            groups = [v[ok & (site_str == str(lv))] for lv in levels]
            pos = np.arange(len(levels))[::-1]
            parts = ax.boxplot(groups, positions=pos, orientation="horizontal", patch_artist=True, widths=0.7,
                               medianprops={"color": "black"}, flierprops={"markersize": 2})
            for patch, lv in zip(parts["boxes"], levels):
                patch.set_facecolor(colors[lv])
                patch.set_alpha(0.8)
            ax.set_yticks(pos, [f"{n} (n={g.size})" for n, g in zip(names, groups)], fontsize=SITE_FONT)
            ax.set_ylim(-0.6, len(levels) - 0.4)
            ax.set_xlabel(safe_label(covariate))
        else:
            edges = np.histogram_bin_edges(v[ok], bins=bins)
            for lv in levels:
                r = ok & (site_str == str(lv))
                ax.hist(v[r], bins=edges, density=True, histtype="step", lw=1.8, color=colors[lv],
                        label=f"{safe_label(lv)} (n={int(r.sum())})")
            ax.set_xlabel(safe_label(covariate))
            ax.set_ylabel("density")
            legend_outside(ax, len(levels))
    else:
        vals = s.astype(str).where(s.notna(), "missing").to_numpy()
        cats = sorted(pd.unique(vals).tolist())
        props = pd.crosstab(site_str, vals, normalize="index").reindex(index=[str(lv) for lv in levels],
                                                                       columns=cats, fill_value=0.0)
        from matplotlib import colormaps

        cmap = colormaps["Set2"]
        pos = np.arange(len(levels))[::-1] if rows else np.arange(len(levels))
        bottom = np.zeros(len(levels))
        for k, c in enumerate(cats):
            if rows:
                ax.barh(pos, props[c].to_numpy(), left=bottom, color=cmap(k % cmap.N), label=safe_label(c),
                        height=0.75)
            else:
                ax.bar(pos, props[c].to_numpy(), bottom=bottom, color=cmap(k % cmap.N), label=safe_label(c),
                       width=0.7)
            bottom += props[c].to_numpy()
        if rows:
            ax.set_yticks(pos, names, fontsize=SITE_FONT)
            ax.set_ylim(-0.6, len(levels) - 0.4)
            ax.set_xlim(0, 1)
            ax.set_xlabel(f"proportion of {safe_label(covariate)}")
        else:
            ax.set_xticks(pos, names)
            ax.set_xlabel(safe_label(batch))
            ax.set_ylabel(f"proportion of {safe_label(covariate)}")
            ax.set_ylim(0, 1)
        legend_outside(ax, min(len(cats), LEGEND_SITES))
    ax.set_title(safe_label(covariate if title is None else title), fontsize=9)
    return ax


def covariate_distributions(covariates, *, columns, batch="site", bins=20):
    """Figure: :func:`covariate_by_site` for each of ``columns`` (side by side, wrapping after 3)."""
    cols = [columns] if isinstance(columns, str) else list(columns)
    if not cols:
        raise InputError("covariate_distributions needs at least one covariate column in `columns`.")
    n_sites = len(batch_levels(get_batch(covariates, batch))) if isinstance(covariates, pd.DataFrame) else 0
    ncol = min(3, len(cols))
    nrow = -(-len(cols) // ncol)
    height = rows_height(n_sites, 3.0) if many_sites(n_sites) else 3.0
    fig = new_figure(4.6 * ncol, height * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, c in zip(axes, cols):
        covariate_by_site(covariates, covariate=c, batch=batch, bins=bins, ax=ax)
    for ax in axes[len(cols):]:
        ax.set_visible(False)
    return thin_tick_labels(fig)
