"""Feature values by site: distributions and age trajectories, before and after harmonization."""

from __future__ import annotations

import numpy as np

from ..exceptions import InputError
from ._common import (
    LEGEND_SITES,
    SITE_FONT,
    check_features_arg,
    covariate_column,
    feature_index,
    get_ax,
    legend_outside,
    many_sites,
    new_figure,
    prepare,
    rows_height,
    safe_label,
    site_colors,
    thin_tick_labels,
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

    With more than :data:`~featharm.plots._common.SIDE_BY_SIDE_SITES` sites the boxes are horizontal, one
    row per site (the first site on top), so every site name is readable.

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
    rows = many_sites(len(groups))
    orientation = "horizontal" if rows else "vertical"
    pos = np.arange(len(groups), 0, -1) if rows else np.arange(1, len(groups) + 1)
    if kind == "box":
        parts = ax.boxplot(groups, positions=pos, patch_artist=True, widths=0.6, orientation=orientation,
                           medianprops={"color": "black", "gid": "median"}, flierprops={"markersize": 2})
        for patch, lv in zip(parts["boxes"], inp.levels):
            patch.set_facecolor(colors[lv])
            patch.set_alpha(0.8)
    else:
        parts = ax.violinplot(groups, positions=pos, showmedians=True, widths=0.8, orientation=orientation)
        for body, lv in zip(parts["bodies"], inp.levels):
            body.set_facecolor(colors[lv])
            body.set_alpha(0.7)
    names = [safe_label(lv) for lv in inp.levels]
    if rows:
        ax.set_yticks(pos, names, fontsize=SITE_FONT)
        ax.set_ylim(0.4, len(groups) + 0.6)
        ax.set_ylabel(safe_label(inp.batch))
        ax.set_xlabel(safe_label(inp.features[j]))
    else:
        ax.set_xticks(pos, names)
        ax.set_xlabel(safe_label(inp.batch))
        ax.set_ylabel(safe_label(inp.features[j]))
    ax.set_title(safe_label(feature if title is None else title), fontsize=9)
    return ax


def distributions_before_after(before, after, covariates, *, features, batch="site", kind="box"):
    """Figure: each feature's distribution by site, before (left) and after (right) harmonization.

    ``after=None`` draws only the ``before`` column. Rows share their value axis (y with sites side by side,
    x with one row per site); the figure grows with the number of sites. Returns the Figure.
    """
    feats = check_features_arg(features, "distributions_before_after")
    cols = [("before", before)] + ([("after", after)] if after is not None else [])
    n_sites = len(prepare(before, covariates, batch, "distributions_before_after").levels)
    rows = many_sites(n_sites)
    width = (4.6 if rows else max(3.6, 1.2 + 0.45 * n_sites)) * len(cols)
    fig = new_figure(width, (rows_height(n_sites, 2.4) if rows else 2.4) * len(feats))
    axes = fig.subplots(len(feats), len(cols), squeeze=False, sharex="row" if rows else "none",
                        sharey="none" if rows else "row")
    for r, f in enumerate(feats):
        for c, (label, data) in enumerate(cols):
            ax = axes[r, c]
            site_distribution(data, covariates, feature=f, batch=batch, kind=kind, ax=ax, title=f"{f} ({label})")
            if c:
                ax.set_ylabel("")  # shared with (or named by) the left panel
                if rows:
                    ax.tick_params(labelleft=False)
    return thin_tick_labels(fig)


#: Sites with fewer observed rows than this get a straight line, not a curve (a quadratic through a handful of
#: points swings wildly and says nothing about the site).
CURVE_MIN_ROWS = 10


def trajectory(X, covariates, *, feature, x="age", batch="site", degree=2, ax=None, title=None, legend=True,
               pooled=False):
    """One feature against a continuous covariate (age), points and a fitted curve per site.

    The curve of each site is the least-squares polynomial of ``degree`` in ``x`` fitted to that site's
    subjects, drawn over the site's own range of ``x`` (lower degree for sites with few distinct values; a
    straight line for sites with fewer than :data:`CURVE_MIN_ROWS` rows). With ``pooled=True`` the same fit
    over all sites is drawn too (black, dashed: the common trend, e.g. a lifespan curve). Rows where the
    feature is missing (NaN) are left out. The legend (``legend=True``) sits to the right of
    the axes; with more than :data:`~featharm.plots._common.LEGEND_SITES` sites there is none (the colours
    then only tell the sites apart).

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
        ax.scatter(xi, yi, s=6, alpha=0.35, color=colors[lv], linewidths=0, label="_nolegend_",
                   rasterized=True)  # points as one embedded bitmap in SVG: thousands of points stay small
        deg = min(int(degree), len(np.unique(xi)) - 1, int(degree) if xi.size >= CURVE_MIN_ROWS else 1)
        if deg >= 1:
            coef = np.polynomial.polynomial.polyfit(xi, yi, deg)
            grid = np.linspace(xi.min(), xi.max(), 30)  # smooth enough for a quadratic, half the SVG
            ax.plot(grid, np.polynomial.polynomial.polyval(grid, coef), color=colors[lv], lw=2,
                    label=safe_label(lv))
    obs = ~np.isnan(y)
    deg = min(int(degree), len(np.unique(xv[obs])) - 1)
    if pooled and deg >= 1:
        coef = np.polynomial.polynomial.polyfit(xv[obs], y[obs], deg)
        grid = np.linspace(xv[obs].min(), xv[obs].max(), 30)
        ax.plot(grid, np.polynomial.polynomial.polyval(grid, coef), color="black", lw=1.5, ls="--",
                label="all sites", gid="pooled")
    ax.set_xlabel(safe_label(x))
    ax.set_ylabel(safe_label(inp.features[j]))
    ax.set_title(safe_label(feature if title is None else title), fontsize=9)
    if legend and ax.get_legend_handles_labels()[1]:  # no curve when the feature has no observed value
        legend_outside(ax, len(inp.levels), title=safe_label(inp.batch), title_fontsize=7)
    return ax


def trajectories_before_after(before, after, covariates, *, features, x="age", batch="site", degree=2,
                              pooled=True):
    """Figure: :func:`trajectory` of each feature before (left) and after (right) harmonization, with the
    pooled trend over all sites (``pooled``)."""
    feats = check_features_arg(features, "trajectories_before_after")
    cols = [("before", before)] + ([("after", after)] if after is not None else [])
    n_sites = len(prepare(before, covariates, batch, "trajectories_before_after").levels)
    legend = n_sites <= LEGEND_SITES
    fig = new_figure(4.2 * len(cols) + (1.4 if legend else 0.0), 2.8 * len(feats))
    axes = fig.subplots(len(feats), len(cols), squeeze=False, sharey="row")
    for r, f in enumerate(feats):
        for c, (label, data) in enumerate(cols):
            # one legend per row, right of the last panel
            trajectory(data, covariates, feature=f, x=x, batch=batch, degree=degree, ax=axes[r, c],
                       title=f"{f} ({label})", legend=legend and c == len(cols) - 1, pooled=pooled)
            if c:
                axes[r, c].set_ylabel("")
    if not legend:
        fig.suptitle(f"{n_sites} sites, one colour each (no legend beyond {LEGEND_SITES} sites); "
                     "black dashed: all sites", fontsize=8)
    return thin_tick_labels(fig)
