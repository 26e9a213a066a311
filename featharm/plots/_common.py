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


# ------------------------------------------------------------------------------------------ many sites
#: Up to this many sites, per-site panels put the sites side by side on the x axis; beyond, one row per site
#: (horizontal boxes and bars, the site names on the y axis, where long names read without rotation).
SIDE_BY_SIDE_SITES = 8
#: Up to this many sites a per-site legend is drawn (outside the axes); beyond, the colours are not listed
#: (the tables name the sites) and the figure says so.
LEGEND_SITES = 12
#: Height of one site row (inches) in horizontal per-site panels: the 7-point site names fit without thinning.
SITE_ROW = 0.15
#: Font size (points) of site names on an axis.
SITE_FONT = 7


def many_sites(n: int) -> bool:
    """Whether ``n`` sites are drawn one row per site (horizontal panels)."""
    return n > SIDE_BY_SIDE_SITES


def rows_height(n_sites: int, minimum: float = 2.2) -> float:
    """Height (inches) of a horizontal per-site panel: one :data:`SITE_ROW` per site plus room for the axis."""
    return max(minimum, 0.9 + SITE_ROW * n_sites)


def legend_outside(ax, n_entries: int, **kw):
    """A legend to the right of the axes (never over the data), or none beyond :data:`LEGEND_SITES` entries;
    returns the Legend or None."""
    if n_entries > LEGEND_SITES or not ax.get_legend_handles_labels()[1]:
        return None
    kw.setdefault("fontsize", 7)
    kw.setdefault("frameon", False)
    ncol = 1 if n_entries <= 12 else 2
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=ncol, **kw)


def _renderer(fig):
    """A renderer for text extents (an Agg canvas is attached to a figure made outside pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # runs the (constrained) layout
    return fig.canvas.get_renderer()


def _visible_labels(axis) -> list:
    return [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]


def _overlapping(boxes) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of boxes (matplotlib Bbox) whose interiors intersect (touching edges do not count)."""
    out = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5:
                out.append((i, j))
    return out


def tick_label_overlaps(fig) -> list[dict]:
    """Overlapping tick labels of a figure, measured with the renderer's text extents after the layout: one
    dict (``axes`` title, ``axis`` x/y, the two ``labels``) per overlapping pair on the same axis."""
    r = _renderer(fig)
    found = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            labels = _visible_labels(axis)
            boxes = [t.get_window_extent(r) for t in labels]
            found += [{"axes": ax.get_title(), "axis": name, "labels": (labels[i].get_text(), labels[j].get_text())}
                      for i, j in _overlapping(boxes)]
    return found


def thin_tick_labels(fig):
    """Hide tick labels that would overlap: on each axis whose labels collide, keep every k-th label (the
    smallest k without collision; the ticks stay). The last resort after sizing the figure to its sites and
    features; returns ``fig``."""
    r = _renderer(fig)
    changed = False
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = _visible_labels(axis)
            if len(labels) < 2:
                continue
            boxes = [t.get_window_extent(r) for t in labels]
            if not _overlapping(boxes):
                continue
            for k in range(2, len(labels) + 1):
                if not _overlapping(boxes[::k]):
                    break
            for i, t in enumerate(labels):
                if i % k:
                    t.set_visible(False)
            changed = True
    if changed:
        fig.draw_without_rendering()
    fig._featharm_ticks_thinned = True  # the report does not measure a finished figure twice
    return fig
