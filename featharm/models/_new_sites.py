"""§5.7 (a batch unseen at fit) with missing values: the posterior of one new batch from its per-feature
moments and observed counts, shared by ``transform(..., new_sites="estimate")`` and new batches estimated
from sufficient statistics (:mod:`featharm.models._from_stats`)."""

from __future__ import annotations

import numpy as np

from .._core import eb, missing
from ..exceptions import MissingValueError, MissingValueWarning, warn

__all__ = ["new_site_posterior_missing"]


def new_site_posterior_missing(gh, dh, d_raw, n, opts: eb.EBOptions, level, names):
    """§5.7 with NaN cells for one new batch, from its per-feature moments and observed counts ``n``: the
    posterior with priors across its features that have estimates (none with ``eb=False``, which needs
    ``n >= 2``, or 1 for mean-only), warning about features with a single value. Returns ``gamma*, delta*,
    iterations, converged, priors`` (``priors`` None without empirical Bayes). Used by ``transform(...,
    new_sites="estimate")`` and by new batches from statistics."""
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
    pri = missing.eb_priors(gh[None], dh[None], mean_only=opts.mean_only)
    need_finite = [pri.gamma_bar, pri.tau2] + ([] if opts.mean_only or not opts.parametric
                                              else [pri.a_prior, pri.b_prior])
    if not all(np.isfinite(x[0]) for x in need_finite):
        raise MissingValueError(
            f"the empirical-Bayes priors of new site {level!r} cannot be estimated: fewer than 2 of its "
            "features are observed enough there."
        )
    sparse = np.flatnonzero((n > 0) & (n < need))
    if sparse.size:
        warn(f"new site {level!r} has a single observed value of {list(names[sparse][:5])}"
             f"{' ...' if sparse.size > 5 else ''}: its scale there comes from the site's prior and that value.",
             MissingValueWarning)
    gs, ds, it, ok = missing.site_posterior(gh, dh, d_raw, n, pri, 0, opts)
    return gs, ds, it, ok, pri
