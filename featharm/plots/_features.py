"""Feature values by site: distributions and age trajectories, before and after harmonization."""

from __future__ import annotations

import numpy as np

from ..exceptions import InputError
from ._common import (
    check_features_arg,
    covariate_column,
    feature_index,
    get_ax,
    new_figure,
    prepare,
    safe_label,
    site_colors,
)

_KINDS = ("box", "violin")


def site_distribution(X, covariates, *, feature, batch="site", kind="box", ax=None, title=None):
    """Distribution of one feature in each site (box or violin plot); missing values (NaN) are left out.

    Parameters
    ----------
    X : DataFrame
        Subjects × features.
    covariates : DataFrame
        Holds the ``batch`` column, matched to ``X`` by index.
    feature : str
        Column of ``X`` to draw.
    batch : str, default "site"
        Batch (site) column of ``covariates``; sites are drawn in sorted order.
    kind : {"box", "violin"}, default "box"
    ax : matplotlib Axes, optional
        Axes to draw on (default: the current pyplot axes).
    title : str, optional
        Axes title (default: the feature name).

    Returns
    -------
    matplotlib Axes
    """
    if kind not in _KINDS:
        raise InputError(f"The 'kind' parameter of site_distribution must be one of {list(_KINDS)}. Got {kind!r} instead.")
    inp = prepare(X, covariates, batch, "site_distribution")
    j = feature_index(inp, feature, "site_distribution")
    ax = get_ax(ax)
    colors = site_colors(inp.levels)
    y = inp.Y[:, j]
    groups = [y[(inp.codes == i) & ~np.isnan(y)] for i in range(len(inp.levels))]  # observed values only
    pos = np.arange(1, len(groups) + 1)
    if kind == "box":
        parts = ax.boxplot(groups, positions=pos, patch_artist=True, widths=0.6,
                           medianprops={"color": "black", "gid": "median"}, flierprops={"markersize": 2})
        for patch, lv in zip(parts["boxes"], inp.levels):
            patch.set_facecolor(colors[lv])
            patch.set_alpha(0.8)
    else:
        parts = ax.violinplot(groups, positions=pos, showmedians=True, widths=0.8)
        for body, lv in zip(parts["bodies"], inp.levels):
            body.set_facecolor(colors[lv])
            body.set_alpha(0.7)
    ax.set_xticks(pos, [safe_label(lv) for lv in inp.levels])
    ax.set_xlabel(safe_label(inp.batch))
    ax.set_ylabel(safe_label(inp.features[j]))
    ax.set_title(safe_label(feature if title is None else title), fontsize=9)
    return ax


def distributions_before_after(before, after, covariates, *, features, batch="site", kind="box"):
    """Figure: each feature's distribution by site, before (left) and after (right) harmonization.

    ``after=None`` draws only the ``before`` column. Rows share their y axis. Returns the Figure.
    """
    feats = check_features_arg(features, "distributions_before_after")
    cols = [("before", before)] + ([("after", after)] if after is not None else [])
    fig = new_figure(3.6 * len(cols), 2.4 * len(feats))
    axes = fig.subplots(len(feats), len(cols), squeeze=False, sharey="row")
    for r, f in enumerate(feats):
        for c, (label, data) in enumerate(cols):
            site_distribution(data, covariates, feature=f, batch=batch, kind=kind, ax=axes[r, c],
                              title=f"{f} ({label})")
            if c:
                axes[r, c].set_ylabel("")  # shared with the left panel
    return fig


def trajectory(X, covariates, *, feature, x="age", batch="site", degree=2, ax=None, title=None):
    """One feature against a continuous covariate (age), points and a fitted curve per site.

    The curve of each site is the least-squares polynomial of ``degree`` in ``x`` fitted to that site's
    subjects, drawn over the site's own range of ``x`` (lower degree for sites with few distinct values).
    Rows where the feature is missing (NaN) are left out.

    Returns
    -------
    matplotlib Axes
    """
    inp = prepare(X, covariates, batch, "trajectory")
    j = feature_index(inp, feature, "trajectory")
    xs = covariate_column(inp.covariates, x, "trajectory")
    if not np.issubdtype(np.asarray(xs).dtype, np.number):
        raise InputError(f"trajectory: covariate {x!r} must be numeric (e.g. age); got dtype {xs.dtype}.")
    xv = np.asarray(xs, dtype=float)
    if not np.isfinite(xv).all():
        raise InputError(f"trajectory: covariate {x!r} has missing or infinite values; drop those rows first.")
    ax = get_ax(ax)
    colors = site_colors(inp.levels)
    y = inp.Y[:, j]
    for i, lv in enumerate(inp.levels):
        rows = (inp.codes == i) & ~np.isnan(y)
        xi, yi = xv[rows], y[rows]
        if xi.size == 0:
            continue
        ax.scatter(xi, yi, s=6, alpha=0.35, color=colors[lv], linewidths=0, label="_nolegend_")
        deg = min(int(degree), len(np.unique(xi)) - 1)
        if deg >= 1:
            coef = np.polynomial.polynomial.polyfit(xi, yi, deg)
            grid = np.linspace(xi.min(), xi.max(), 60)
            ax.plot(grid, np.polynomial.polynomial.polyval(grid, coef), color=colors[lv], lw=2,
                    label=safe_label(lv))
    ax.set_xlabel(safe_label(x))
    ax.set_ylabel(safe_label(inp.features[j]))
    ax.set_title(safe_label(feature if title is None else title), fontsize=9)
    if ax.get_legend_handles_labels()[1]:  # no curve when the feature has no observed value
        ax.legend(title=safe_label(inp.batch), fontsize=7, title_fontsize=7, frameon=False)
    return ax


def trajectories_before_after(before, after, covariates, *, features, x="age", batch="site", degree=2):
    """Figure: :func:`trajectory` of each feature before (left) and after (right) harmonization."""
    feats = check_features_arg(features, "trajectories_before_after")
    cols = [("before", before)] + ([("after", after)] if after is not None else [])
    fig = new_figure(4.2 * len(cols), 2.8 * len(feats))
    axes = fig.subplots(len(feats), len(cols), squeeze=False, sharey="row")
    for r, f in enumerate(feats):
        for c, (label, data) in enumerate(cols):
            trajectory(data, covariates, feature=f, x=x, batch=batch, degree=degree, ax=axes[r, c],
                       title=f"{f} ({label})")
            if c:
                axes[r, c].set_ylabel("")
    return fig
