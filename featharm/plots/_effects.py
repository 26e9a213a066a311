"""Site effects across all features: residual PCA, standardized-effect and p-value heatmaps, preservation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..diagnostics.preservation import lin_ccc as lins_ccc
from ..exceptions import ColumnNotFoundError, InputError
from ._common import (
    LEGEND_SITES,
    SITE_FONT,
    SITE_ROW,
    Inputs,
    covariate_column,
    get_ax,
    legend_outside,
    new_figure,
    prepare,
    safe_label,
    site_colors,
    site_effect_matrix,
    thin_tick_labels,
)

#: How panels name the ``data`` labels of featharm.diagnostics.diagnose (other labels are shown as they are).
_PANEL = {"raw": "before", "harmonized": "after"}
_VALUE_LABEL = {"shift": "standardized site effect", "log_var_ratio": "log variance ratio"}


# ------------------------------------------------------------------------------------------ PCA
def _pca_scores(R: np.ndarray, k: int = 2):
    """Scores and explained-variance ratios of the column-standardized residuals (sign fixed)."""
    Z = R - R.mean(axis=0)
    sd = Z.std(axis=0, ddof=1)
    Z = Z[:, sd > 0] / sd[sd > 0]
    U, S, Vt = np.linalg.svd(Z, full_matrices=False)
    k = min(k, S.size)
    signs = np.sign(Vt[np.arange(k), np.abs(Vt[:k]).argmax(axis=1)])  # largest loading positive
    signs[signs == 0] = 1.0
    scores = U[:, :k] * S[:k] * signs
    ratio = S[:k] ** 2 / np.sum(S**2)
    return scores, ratio


def residual_pca(X, covariates, *, batch="site", formula=None, hue=None, ax=None, title=None, legend=True):
    """First two principal components of the additive residuals, coloured by site or by a covariate.

    The residuals are the additive residuals of :func:`featharm.diagnostics.site_residuals` (``y ~ formula +
    site``, ``docs/methods.md`` §6.1): covariate effects removed, site effects kept; each feature is
    standardized before the PCA.

    Parameters
    ----------
    X, covariates : DataFrame
        Subjects × features, and the covariates (with the ``batch`` column) matched by index.
    batch : str, default "site"
    formula : str, optional
        Covariates whose effects are removed first (``"age + sex"``).
    hue : str, optional
        Colour by this covariate instead of the site (numeric: colour scale; otherwise categories).
    ax : matplotlib Axes, optional
    title : str, optional
    legend : bool, default True
        A legend right of the axes (categories; up to :data:`~featharm.plots._common.LEGEND_SITES` of them).

    Returns
    -------
    matplotlib Axes
    """
    from ..diagnostics.residuals import site_residuals

    inp = prepare(X, covariates, batch, "residual_pca")
    missing = bool(np.isnan(inp.Y).any())
    if missing:  # the rows without a missing feature (docs/methods.md §1.8): fitted and drawn
        from ..diagnostics._common import complete_rows, prepare as prepare_diagnostics

        c = complete_rows(prepare_diagnostics(X, covariates, batch, formula, "residual_pca"), "residual_pca")
        if c.sub is None:
            raise InputError(f"residual_pca: no principal components without complete rows ({c.reason}).")
        keep, cols = c.rows, [inp.features.index(f) for f in c.sub.features]  # features never observed: out
        inp = Inputs(inp.Y[np.ix_(keep, cols)], inp.index[keep], list(c.sub.features), inp.covariates.iloc[keep],
                     inp.levels, inp.codes[keep], inp.batch)
    r_add = site_residuals(pd.DataFrame(inp.Y, index=inp.index, columns=inp.features), inp.covariates,
                           batch=inp.batch, formula=formula).additive.to_numpy()
    scores, ratio = _pca_scores(r_add)
    if scores.shape[1] < 2:
        raise InputError("residual_pca needs at least 2 features with variance.")
    ax = get_ax(ax)
    if hue is None or str(hue) == inp.batch:
        colors = site_colors(inp.levels)
        for i, lv in enumerate(inp.levels):
            rows = inp.codes == i
            ax.scatter(scores[rows, 0], scores[rows, 1], s=8, alpha=0.6, color=colors[lv], linewidths=0,
                       label=safe_label(lv), rasterized=True)  # one bitmap in SVG however many points
        if legend:  # right of the axes; none beyond LEGEND_SITES sites
            legend_outside(ax, len(inp.levels), title=safe_label(inp.batch), title_fontsize=7, markerscale=2)
    else:
        s = covariate_column(inp.covariates, hue, "residual_pca")
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            pc = ax.scatter(scores[:, 0], scores[:, 1], s=8, alpha=0.7, c=s.to_numpy(dtype=float),
                            cmap="viridis", linewidths=0, rasterized=True)
            ax.figure.colorbar(pc, ax=ax, label=safe_label(hue))
        else:
            lv = sorted(pd.unique(s.astype(str)).tolist())
            colors = site_colors(lv)
            vals = s.astype(str).to_numpy()
            for level in lv:
                rows = vals == level
                ax.scatter(scores[rows, 0], scores[rows, 1], s=8, alpha=0.6, color=colors[level],
                           linewidths=0, label=safe_label(level), rasterized=True)
            if legend:
                legend_outside(ax, len(lv), title=safe_label(hue), title_fontsize=7, markerscale=2)
    ax.set_xlabel(f"PC1 ({ratio[0]:.1%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.1%})")
    if missing:
        title = f"{title or ''}{chr(10) if title else ''}{len(inp.index)} rows without a missing feature"
    if title is not None:
        ax.set_title(safe_label(title), fontsize=9)
    return ax


def pca_before_after(before, after, covariates, *, batch="site", formula=None, hue=None):
    """Figure: :func:`residual_pca` before and after, coloured by site (top) and by ``hue`` (bottom row)."""
    cols = [("before", before)] + ([("after", after)] if after is not None else [])
    hues = [None] + ([hue] if hue is not None and str(hue) != str(batch) else [])
    n_sites = len(prepare(before, covariates, batch, "pca_before_after").levels)
    legend = n_sites <= LEGEND_SITES
    fig = new_figure(4.2 * len(cols) + (1.2 if legend else 0.6), 3.6 * len(hues))
    axes = fig.subplots(len(hues), len(cols), squeeze=False)
    for r, h in enumerate(hues):
        for c, (label, data) in enumerate(cols):
            what = batch if h is None else h
            if h is None and not legend:
                what = f"{batch} ({n_sites}, no legend)"
            residual_pca(data, covariates, batch=batch, formula=formula, hue=h, ax=axes[r, c],
                         title=f"{label} harmonization, colour: {what}", legend=c == len(cols) - 1)
    return thin_tick_labels(fig)


# ------------------------------------------------------------------------------------------ heatmaps
def _feature_ticks(ax, names, axis="x"):
    """Every feature name as a tick label (7 points up to 40 features, else 5); names that would still
    collide are thinned when the figure is finished (:func:`~featharm.plots._common.thin_tick_labels`)."""
    fs = 7 if len(names) <= 40 else 5
    pos = np.arange(len(names))
    labels = [safe_label(n) for n in names]
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=90, fontsize=fs)
    else:
        ax.set_yticks(pos, labels, fontsize=fs)


def _rows_height(n_rows: int) -> float:
    """Height (inches) of a heat map's rows (sites): 0.35 inch each up to 10 rows, then one :data:`SITE_ROW`
    each, at most 9 inches (beyond about 60 sites every other name is shown)."""
    return min(max(0.35 * min(n_rows, 10), SITE_ROW * n_rows), 9.0)


def _heatmap(ax, values: pd.DataFrame, *, cmap, vmin, vmax, label):
    im = ax.imshow(values.to_numpy(dtype=float), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    _feature_ticks(ax, list(values.columns), "x")
    ax.set_yticks(np.arange(values.shape[0]), [safe_label(r) for r in values.index], fontsize=SITE_FONT)
    ax.figure.colorbar(im, ax=ax, label=label, shrink=0.9, pad=0.01)
    return im


def _one_data(table: pd.DataFrame, data, owner: str) -> pd.DataFrame:
    """The rows of one data set of a table with a ``data`` column (all rows without one)."""
    if "data" not in table.columns:
        return table
    labels = list(dict.fromkeys(table["data"].astype(str)))
    if data is None:
        if len(labels) > 1:
            raise InputError(f"{owner}: the table holds several data sets ({labels}); choose one with data=..., "
                             "or draw them side by side with effect_sizes_before_after.")
        return table
    if str(data) not in labels:
        raise InputError(f"{owner}: no data set {data!r} in the table; data sets: {labels}.")
    return table[table["data"].astype(str) == str(data)]


def _symmetric_vmax(zs) -> float:
    vals = [np.abs(z.to_numpy(dtype=float)) for z in zs]
    vmax = max((float(np.nanmax(v)) for v in vals if np.isfinite(v).any()), default=0.0)
    return vmax if vmax > 0 else 1.0


def effect_size_heatmap(table, *, value="shift", data=None, vmax=None, ax=None, title=None):
    """Heatmap (sites × features) of a per-site effect size from a :func:`featharm.diagnostics.site_effect_sizes`
    table: ``value="shift"`` (the standardized site effect) or ``"log_var_ratio"``.

    ``table`` is tidy (``feature``, ``site`` and ``value`` columns); a table of
    :func:`featharm.diagnostics.diagnose` holds two data sets (``data`` = raw / harmonized): pick one with
    ``data``. The colour scale is symmetric around 0 (``vmax`` defaults to the largest absolute value).

    Returns
    -------
    matplotlib Axes
    """
    z = site_effect_matrix(_one_data(table, data, "effect_size_heatmap"), value)
    ax = get_ax(ax)
    vmax = _symmetric_vmax([z]) if vmax is None else float(vmax)
    _heatmap(ax, z, cmap="RdBu_r", vmin=-vmax, vmax=vmax, label=_VALUE_LABEL.get(value, value))
    if title is not None:
        ax.set_title(safe_label(title), fontsize=9)
    return ax


def effect_sizes_before_after(table, *, value="shift"):
    """Figure: :func:`effect_size_heatmap` of every data set of the table (``data`` column: raw above
    harmonized, or before above after), on one colour scale. What
    :meth:`featharm.diagnostics.DiagnosticsResult.plot_site_effects` draws."""
    labels = list(dict.fromkeys(table["data"].astype(str))) if "data" in table.columns else [None]
    zs = [site_effect_matrix(_one_data(table, d, "effect_sizes_before_after"), value) for d in labels]
    vmax = _symmetric_vmax(zs)
    p = zs[0].shape[1]
    fig = new_figure(min(4 + 0.16 * p, 24), 1.4 + (_rows_height(zs[0].shape[0]) + 1.0) * len(zs))
    axes = fig.subplots(len(zs), 1, squeeze=False)[:, 0]
    label = _VALUE_LABEL.get(value, value).replace(" ", "\n", 1)
    for ax, d, z in zip(axes, labels, zs):
        _heatmap(ax, z, cmap="RdBu_r", vmin=-vmax, vmax=vmax, label=label)
        if d is not None:
            ax.set_title(safe_label(f"{_PANEL.get(d, d)} harmonization"), fontsize=9)
    return thin_tick_labels(fig)


def _site_effect_sizes(X, covariates, batch, formula) -> pd.DataFrame:
    from ..diagnostics.univariate import site_effect_sizes

    return site_effect_sizes(X, covariates, batch=batch, formula=formula)


def site_effect_heatmap(X, covariates, *, batch="site", formula=None, vmax=None, ax=None, title=None):
    """Heatmap of standardized site effects (sites × features).

    Each cell is the ``shift`` of :func:`featharm.diagnostics.site_effect_sizes`,
    ``(mean_site r_add - mean r_add) / sd(r_full)`` (``docs/methods.md`` §6.2; SD with n - 1): the site's
    shift in units of the residual SD after removing the ``formula`` covariates. The colour scale is
    symmetric around 0 (``vmax`` defaults to the largest absolute value).

    Returns
    -------
    matplotlib Axes
    """
    return effect_size_heatmap(_site_effect_sizes(X, covariates, batch, formula), vmax=vmax, ax=ax, title=title)


def site_effects_before_after(before, after, covariates, *, batch="site", formula=None):
    """Figure: :func:`site_effect_heatmap` before (top) and after (bottom) on one colour scale."""
    cols = [("before", before)] + ([("after", after)] if after is not None else [])
    table = pd.concat([_site_effect_sizes(d, covariates, batch, formula).assign(data=label) for label, d in cols],
                      ignore_index=True)
    return effect_sizes_before_after(table)


def _neglog10(results: pd.DataFrame, p: str, features=None) -> pd.DataFrame:
    for col in ("feature", "test", p):
        if col not in results.columns:
            raise ColumnNotFoundError(
                f"the diagnostics table has no column {col!r}; expected a tidy table with 'feature', 'test' "
                f"and {p!r} (e.g. from featharm.diagnostics.test_site_effects)."
            )
    tab = results.pivot_table(index="test", columns="feature", values=p, aggfunc="first", sort=False)
    order = features if features is not None else list(dict.fromkeys(results["feature"]))
    tab = tab.reindex(columns=[f for f in order if f in tab.columns])
    return -np.log10(tab.clip(lower=1e-300))


def pvalue_heatmap(results, *, p="p_unc", vmax=None, features=None, ax=None, title=None):
    """Heatmap of ``-log10 p`` per feature (columns) for each test family (rows) of a tidy table.

    ``results`` has one row per feature × test with columns ``feature``, ``test`` and ``p`` (the tidy
    output of :func:`featharm.diagnostics.test_site_effects`). Larger is a stronger site effect.

    Returns
    -------
    matplotlib Axes
    """
    val = _neglog10(results, p, features)
    ax = get_ax(ax)
    vmax = float(np.nanmax(val.to_numpy())) if vmax is None else float(vmax)
    _heatmap(ax, val, cmap="magma_r", vmin=0.0, vmax=max(vmax, 1.0), label=f"-log10 {p}")
    if title is not None:
        ax.set_title(safe_label(title), fontsize=9)
    return ax


def pvalues_before_after(before, after, *, p="p_unc"):
    """Figure: :func:`pvalue_heatmap` of two diagnostics tables (before/after) on one colour scale."""
    cols = [("before", before)] + ([("after", after)] if after is not None else [])
    vals = [_neglog10(t, p, None) for _, t in cols]
    vmax = max(float(np.nanmax(v.to_numpy())) for v in vals)
    feats = list(vals[0].columns)
    fig = new_figure(min(4 + 0.16 * len(feats), 24), 1.6 + (0.3 * vals[0].shape[0] + 1.0) * len(cols))
    axes = fig.subplots(len(cols), 1, squeeze=False)[:, 0]
    for ax, (label, t) in zip(axes, cols):
        pvalue_heatmap(t, p=p, vmax=vmax, features=feats, ax=ax, title=f"{label} harmonization")
    return thin_tick_labels(fig)


# ------------------------------------------------------------------------------------------ preservation
def preservation_scatters(table, *, terms=None, before="effect_before", after="effect_after"):
    """Figure: :func:`preservation_scatter` of every covariate term (side by side, wrapping after 3).

    ``terms`` defaults to every term of the table in order. What
    :meth:`featharm.diagnostics.DiagnosticsResult.plot_preservation` draws.
    """
    term_col = "term" if "term" in table.columns or "covariate" not in table.columns else "covariate"
    if terms is None:
        if term_col not in table.columns:
            raise ColumnNotFoundError(f"preservation_scatters: the table has no column 'term' or 'covariate'; "
                                      f"columns: {list(table.columns)}.")
        terms = list(dict.fromkeys(table[term_col].astype(str)))
    terms = [terms] if isinstance(terms, str) else list(terms)
    if not terms:
        raise InputError("preservation_scatters needs at least one term.")
    ncol = min(3, len(terms))
    nrow = -(-len(terms) // ncol)
    fig = new_figure(3.8 * ncol, 3.4 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False).ravel())
    for ax, term in zip(axes, terms):
        preservation_scatter(table, term=term, before=before, after=after, ax=ax)
    for ax in axes[len(terms):]:
        ax.set_visible(False)
    return thin_tick_labels(fig)


def preservation_scatter(table, *, term=None, before="effect_before", after="effect_after", ax=None,
                         title=None):
    """Effect size of a covariate before against after harmonization, one point per feature.

    ``table`` is tidy: columns ``feature``, ``term`` (the covariate term; or ``covariate``), ``before``
    and ``after`` (by default ``effect_before``/``effect_after``, or ``partial_r2_before``/``_after`` as
    in the table of :func:`featharm.diagnostics.biology_preservation`). Points on the identity line mean
    the biological effect is preserved; the title gives Lin's concordance correlation.

    Returns
    -------
    matplotlib Axes
    """
    cols = set(table.columns)
    term_col = "term" if "term" in cols or "covariate" not in cols else "covariate"
    if before == "effect_before" and after == "effect_after" and not {before, after} <= cols \
            and {"partial_r2_before", "partial_r2_after"} <= cols:  # featharm.diagnostics.biology_preservation
        before, after = "partial_r2_before", "partial_r2_after"
    for col in ("feature", before, after) + ((term_col,) if term is not None else ()):
        if col not in cols:
            raise ColumnNotFoundError(f"preservation_scatter: the table has no column {col!r}; columns: "
                                      f"{list(table.columns)}.")
    t = table if term is None else table[table[term_col].astype(str) == str(term)]
    if t.empty:
        raise InputError(f"preservation_scatter: no rows for term {term!r}; terms: "
                         f"{sorted(table[term_col].astype(str).unique())}.")
    a, b = t[before].to_numpy(dtype=float), t[after].to_numpy(dtype=float)
    ax = get_ax(ax)
    ax.scatter(a, b, s=14, alpha=0.8, color="#1f77b4", linewidths=0)
    finite = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="identity")
    ax.set_xlabel(f"{safe_label(before)} (raw, site as covariate)")
    ax.set_ylabel(f"{safe_label(after)} (harmonized)")
    head = safe_label(term if title is None and term is not None else (title or "effect sizes"))
    ax.set_title(f"{head}: Lin's CCC = {lins_ccc(a, b):.3f}", fontsize=9)
    return ax


# ------------------------------------------------------------------------------------------ missing values
def missing_heatmap(values: pd.DataFrame, *, ax=None, title=None):
    """Heat map of the share of missing (NaN) cells per site (rows) and feature (columns).

    ``values`` is a site × feature DataFrame of fractions in [0, 1], as
    :meth:`featharm.diagnostics.DiagnosticsResult.missing_matrix` returns (or ``X.isna().groupby(site).mean()``).
    With ``ax`` it draws there and returns the Axes; without, it returns a new Figure.
    """
    if not isinstance(values, pd.DataFrame):
        raise InputError(f"missing_heatmap needs a site × feature DataFrame of fractions; got {type(values).__name__}.")
    fig = None
    if ax is None:
        p = values.shape[1]
        fig = new_figure(min(4 + 0.16 * p, 24), 1.6 + _rows_height(values.shape[0]))
        ax = fig.subplots()
    _heatmap(ax, values.astype(float), cmap="Greys", vmin=0.0, vmax=max(float(np.nanmax(values.to_numpy(dtype=float),
                                                                                          initial=0.0)), 1e-12),
             label="fraction missing")
    ax.set_title(safe_label(title if title is not None else "missing cells per site and feature"), fontsize=9)
    return thin_tick_labels(fig) if fig is not None else ax
