"""Plots of a fitted model: empirical-Bayes priors against the per-site estimates."""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..exceptions import InputError, NotFittedError
from ._common import get_ax, new_figure, safe_label, site_colors, thin_tick_labels

_PARAMS = ("gamma", "delta")


def _check_model(model, owner):
    for name in ("gamma_hat_", "delta_hat_", "priors_", "batches_"):
        if not hasattr(model, name):
            raise NotFittedError(f"{owner} needs a fitted harmonizer (e.g. featharm.ComBat after fit); "
                                 f"{type(model).__name__} has no {name!r}.")


def _groups(model) -> list | None:
    """The measure groups of a model with priors per group (``priors_`` indexed by batch and group), else None."""
    pri = model.priors_
    return list(pri.index.get_level_values(1).unique()) if pri.index.nlevels > 1 else None


def eb_prior(model, *, site, parameter="gamma", group=None, bins=25, ax=None, title=None):
    """Histogram of one site's estimates over features with the fitted prior density.

    ``parameter="gamma"``: ``gamma_hat`` with the normal prior N(``gamma_bar``, ``tau2``);
    ``"delta"``: ``delta_hat`` (the variance ratio δ̂²) with the inverse-gamma prior of shape
    ``a_prior`` and scale ``b_prior``. Features without residual variance are left out, as in the fit, and so
    are undefined estimates (NaN: a site with no observed value of a feature, or one for δ̂²).
    Where the prior does not exist (reference batch; the scale prior with ``mean_only``) only the
    histogram is drawn and the title says why. A model with priors per measure group (``feature_groups_``)
    needs ``group``: the estimates of that group's features and its prior.

    Returns
    -------
    matplotlib Axes
    """
    _check_model(model, "eb_prior")
    if parameter not in _PARAMS:
        raise InputError(f"The 'parameter' parameter of eb_prior must be one of {list(_PARAMS)}. "
                         f"Got {parameter!r} instead.")
    sites = [str(s) for s in model.batches_]
    if str(site) not in sites:
        raise InputError(f"eb_prior: site {site!r} is not a batch of the model; batches: {sites}.")
    i = sites.index(str(site))
    keep = ~np.isin(np.asarray(model.feature_names_in_, dtype=object),
                    list(getattr(model, "constant_features_", [])))
    groups = _groups(model)
    if groups is not None:
        if group not in groups:
            raise InputError(f"eb_prior: this model has priors per measure group; pass group= one of {groups} "
                             f"(got {group!r}).")
        keep &= (model.feature_groups_ == group).to_numpy()
        pri = model.priors_.xs(group, level=1).iloc[i]
    else:
        pri = model.priors_.iloc[i]
    table = model.gamma_hat_ if parameter == "gamma" else model.delta_hat_
    est = table.to_numpy()[i, keep]
    est = est[np.isfinite(est)]  # undefined where the site has no (one) observed value of a feature: not drawn
    ax = get_ax(ax)
    color = site_colors(sites)[sites[i]]
    flat = est.size == 0 or np.ptp(est) <= 1e-9 * max(1.0, float(np.max(np.abs(est))))
    ax.hist(est, bins=1 if flat else bins, density=not flat, color=color, alpha=0.5, label="estimates")
    note = ""
    if parameter == "gamma":
        ok = np.isfinite(pri["gamma_bar"]) and np.isfinite(pri["tau2"]) and pri["tau2"] > 0
        if ok:
            sd = float(np.sqrt(pri["tau2"]))
            lo = min(np.min(est, initial=np.inf), pri["gamma_bar"] - 4 * sd)
            grid = np.linspace(lo, max(np.max(est, initial=-np.inf), pri["gamma_bar"] + 4 * sd), 200)
            ax.plot(grid, stats.norm.pdf(grid, loc=pri["gamma_bar"], scale=sd), color="black", lw=1.5,
                    label="prior")
        xlabel = "gamma_hat (location)"
    else:
        a, b = pri["a_prior"], pri["b_prior"]
        ok = np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0
        if ok:
            hi = max(float(np.max(est, initial=0.0)), float(stats.invgamma.ppf(0.995, a, scale=b)))
            grid = np.linspace(max(1e-6, 0.0), hi, 300)
            ax.plot(grid, stats.invgamma.pdf(grid, a, scale=b), color="black", lw=1.5, label="prior")
        xlabel = "delta_hat² (scale)"
    if not ok:
        ref = getattr(model, "ref_index_", None)
        note = " (reference batch: no prior)" if ref is not None and ref == i else " (no prior)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    label = sites[i] if group is None else f"{sites[i]}, {group}"
    ax.set_title(safe_label(f"{label}{note}" if title is None else title), fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return ax


def eb_diagnostics(model, *, bins=25, sites=None, max_sites=None):
    """Figure: :func:`eb_prior` for every site (with priors per measure group, every site and group), location
    (γ̂ against its normal prior) and scale (δ̂² against its inverse-gamma prior) side by side: one site (and
    group) per row up to 3, two per row beyond.

    ``sites`` picks the sites drawn (default all, in the model's order); ``max_sites`` keeps the first that
    many of them (a report on many sites shows a few and tabulates the rest).
    """
    _check_model(model, "eb_diagnostics")
    all_sites = [str(s) for s in model.batches_]
    chosen = all_sites if sites is None else [str(s) for s in ([sites] if isinstance(sites, str) else sites)]
    absent = [s for s in chosen if s not in all_sites]
    if absent:
        raise InputError(f"eb_diagnostics: sites {absent} are not batches of the model; batches: {all_sites}.")
    if max_sites is not None:
        chosen = chosen[:max(1, int(max_sites))]
    rows = [(s, g) for s in chosen for g in (_groups(model) or [None])]
    per_row = 1 if len(rows) <= 3 else 2
    nrow = -(-len(rows) // per_row)
    fig = new_figure(7.5 * per_row, 2.4 * nrow)
    axes = fig.subplots(nrow, 2 * per_row, squeeze=False).ravel()
    for k, (s, g) in enumerate(rows):
        for c, par in enumerate(_PARAMS):
            eb_prior(model, site=s, parameter=par, group=g, bins=bins, ax=axes[2 * k + c])
    for ax in axes[2 * len(rows):]:
        ax.remove()
    return thin_tick_labels(fig)
