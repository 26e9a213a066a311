"""§5.7 (a batch unseen at fit): the posterior of one new batch from its per-feature moments, with priors
across its own features (of each measure group), shared by ``transform(..., new_sites="estimate")`` and new
batches estimated from sufficient statistics (:mod:`featharm.models._from_stats`); with missing values, from
each feature's observed counts."""

from __future__ import annotations

import numpy as np

from .._core import eb, missing
from ..exceptions import MissingValueError, MissingValueWarning, warn

__all__ = ["new_site_posterior", "new_site_posterior_missing"]


def new_site_posterior(gh, dh, d_raw, n: float, opts: eb.EBOptions, groups=None, pooled=None):
    """§5.7 for one new batch of ``n`` rows without missing values: priors across its features (per measure
    group with ``groups``/``pooled``, as at fit: :func:`featharm._core.eb.posterior`) and its posterior.
    Returns ``gamma*, delta*, iterations, converged, priors`` (priors with one row)."""
    if groups is None:
        pri = eb.eb_priors(gh[None], dh[None], mean_only=opts.mean_only)
        gs, ds, it, ok = eb.site_posterior(gh, dh, d_raw, float(n), pri, 0, opts)
        return gs, ds, it, ok, pri
    post = eb.posterior(gh[None], dh[None], d_raw[None], np.array([float(n)]), opts, groups=groups, pooled=pooled)
    return post.gamma_star[0], post.delta_star[0], int(post.n_iter[0]), not post.not_converged, post.priors


def new_site_posterior_missing(gh, dh, d_raw, n, opts: eb.EBOptions, level, names, groups=None, pooled=None,
                               group_names=None):
    """§5.7 with NaN cells for one new batch, from its per-feature moments and observed counts ``n``: the
    posterior with priors across its features that have estimates (per measure group with ``groups``/
    ``pooled``; none with ``eb=False``, which needs ``n >= 2``, or 1 for mean-only), warning about features
    with a single value. Returns ``gamma*, delta*, iterations, converged, priors`` (``priors`` None without
    empirical Bayes). Used by ``transform(..., new_sites="estimate")`` and by new batches from statistics."""
    need = 1 if opts.mean_only else 2
    if not opts.eb:
        bad = np.flatnonzero(n < need)
        if bad.size:
            raise MissingValueError(
                f"new site {level!r} has fewer than {need} observed value(s) of {len(bad)} feature(s): "
                f"{list(names[bad][:5])}{' ...' if bad.size > 5 else ''}; without empirical Bayes its own "
                "estimates are used, so they are needed. Use an eb=True model, or drop those features."
            )
        return gh, dh, 0, True, None
    if groups is None:
        pri = missing.eb_priors(gh[None], dh[None], mean_only=opts.mean_only)
    else:
        post = missing.posterior(gh[None], dh[None], d_raw[None], n[None], opts, groups=groups, pooled=pooled)
        pri = post.priors
    need_finite = [pri.gamma_bar, pri.tau2] + ([] if opts.mean_only or not opts.parametric
                                              else [pri.a_prior, pri.b_prior])
    ok = np.logical_and.reduce([np.isfinite(x[0]) for x in need_finite])
    if not np.all(ok):
        where = "" if groups is None else f" in measure group(s) {[group_names[g] for g in np.flatnonzero(~np.atleast_1d(ok))]}"
        raise MissingValueError(
            f"the empirical-Bayes priors of new site {level!r} cannot be estimated{where}: fewer than 2 of its "
            "features are observed enough there."
        )
    sparse = np.flatnonzero((n > 0) & (n < need))
    if sparse.size:
        warn(f"new site {level!r} has a single observed value of {list(names[sparse][:5])}"
             f"{' ...' if sparse.size > 5 else ''}: its scale there comes from the site's prior and that value.",
             MissingValueWarning)
    if groups is not None:
        return post.gamma_star[0], post.delta_star[0], int(post.n_iter[0]), not post.not_converged, pri
    gs, ds, it, ok = missing.site_posterior(gh, dh, d_raw, n, pri, 0, opts)
    return gs, ds, it, ok, pri
