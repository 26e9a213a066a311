"""ComBat's empirical-Bayes core, written once (``docs/methods.md`` §1.2, S2–S8).

Every function works on plain float64 arrays laid out samples × features. The data-touching step
(:func:`adjust`) takes a *block* of features, so a caller can stream a wide table block by block (and an
out-of-core engine can reuse it unchanged); everything else works on the small batch × feature
summaries (S1, the least squares, is :mod:`featharm._core.ols`). Model families (ComBat, ComBat-GAM, ComBatLS, CovBat ...)
differ only in how they get the location/scale of each feature and reuse these functions for the rest.

Notation: ``n`` rows, ``p`` features, ``m`` batches, ``codes`` the batch index (0..m-1) of every row,
``W = [B | X]`` the design with the batch indicators ``B`` first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blocks import block_size, layout_slices, row_major, run_blocks

__all__ = [
    "Priors",
    "Standardization",
    "EBOptions",
    "posterior",
    "site_posterior",
    "delta_from_raw",
    "standardized_moments",
    "eb_priors",
    "eb_parametric",
    "eb_jacobi",
    "eb_mean_only",
    "eb_nonparametric",
    "adjust",
    "adjust_blocks",
]


@dataclass
class Standardization:
    """S2–S5 for a block of features: everything ComBat needs to standardize and to estimate L/S."""

    alpha: np.ndarray  # (b,) grand mean
    sigma: np.ndarray  # (b,) pooled SD
    gamma_hat: np.ndarray  # (m, b) batch means of z
    delta_hat: np.ndarray  # (m, b) batch variances of z (ddof=1), zeros replaced by 1
    delta_raw: np.ndarray  # (m, b) batch variances of z before that replacement (NaN when n_i = 1)


def standardized_moments(coef: np.ndarray, ss: np.ndarray, counts: np.ndarray, batch_rows: np.ndarray,
                         ref: int | None = None, mean_only: bool = False) -> Standardization:
    """S2–S5 from the OLS coefficients and within-batch residual sums of squares.

    ``batch_rows`` (m × m) holds the batch-indicator row of each batch in the design (the identity, or
    with a reference batch the identity plus a column of ones). Because the batch indicators are in the
    design, residuals have mean zero in every batch; hence the batch mean of ``z`` is
    ``(batch_rows @ coef[:m] - alpha) / sigma`` and its variance ``ss_i / ((n_i - 1) sigma^2)``.
    """
    m = counts.shape[0]
    n = counts.sum()
    beta_b = coef[:m]
    if ref is None:
        alpha = (counts / n) @ beta_b  # S2
        var = ss.sum(axis=0) / n  # S3: divide by n
    else:
        alpha = beta_b[ref].copy()
        var = ss[ref] / counts[ref]
    sigma = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma_hat = (batch_rows @ beta_b - alpha) / sigma  # S5
        denom = (counts - 1.0)[:, None] * var[None, :]
        delta_raw = np.where(counts[:, None] > 1, ss / denom, np.nan)
    return Standardization(alpha, sigma, gamma_hat, delta_from_raw(delta_raw, mean_only), delta_raw)


def delta_from_raw(delta_raw: np.ndarray, mean_only: bool = False) -> np.ndarray:
    """S5's ``delta_hat`` from the batch variances of ``z``: zeros become 1 (sva/neuroCombat's
    ``convert_zeroes``), and all ones in mean-only mode."""
    if mean_only:
        return np.ones_like(delta_raw)
    return np.where(delta_raw == 0, 1.0, delta_raw)


def batch_moments(Z: np.ndarray, mean_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S5 for the rows ``Z`` (n × b) of one batch: ``gamma_hat``, ``delta_hat``, ``delta_raw`` (ddof 1)."""
    gamma_hat = Z.mean(axis=0)
    delta_raw = Z.var(axis=0, ddof=1)
    return gamma_hat, delta_from_raw(delta_raw, mean_only), delta_raw


@dataclass
class Priors:
    """Method-of-moments hyperparameters per batch, taken across features (S6)."""

    gamma_bar: np.ndarray
    tau2: np.ndarray
    a_prior: np.ndarray  # lambda-bar; NaN in mean-only mode
    b_prior: np.ndarray  # theta-bar; NaN in mean-only mode


def eb_priors(gamma_hat: np.ndarray, delta_hat: np.ndarray, mean_only: bool = False) -> Priors:
    """S6: ``gamma_bar``, ``tau2`` and the inverse-gamma ``a``/``b`` of each batch (rows)."""
    gamma_bar = gamma_hat.mean(axis=1)
    tau2 = gamma_hat.var(axis=1, ddof=1)
    m = gamma_hat.shape[0]
    if mean_only:
        nan = np.full(m, np.nan)
        return Priors(gamma_bar, tau2, nan, nan.copy())
    D = delta_hat.mean(axis=1)
    S2 = delta_hat.var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (D**2 + 2.0 * S2) / S2
        b = (D**3 + D * S2) / S2
    return Priors(gamma_bar, tau2, a, b)


def _postmean(g_hat, g_bar, n, d_star, t2):
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def eb_parametric(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: float,
                  gamma_bar: float, tau2: float, a: float, b: float, tol: float = 1e-4,
                  max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """S7: parametric EB for one batch, vectorized over features.

    Iterates the conditional posterior mean of gamma and mean of delta^2 (Gauss–Seidel: the new delta
    uses the new gamma) until the largest *signed* relative change (sva's criterion) is at most ``tol``.
    ``sum_j (z_j - g)^2`` is computed from the sufficient statistics ``(n - 1) delta_raw + n (gamma_hat - g)^2``.
    A relative change of 0/0 (a feature whose estimate is exactly 0 and does not move) counts as 0.
    Returns ``gamma_star, delta_star (variances), n_iter, converged``.
    """
    ss_within = (n - 1.0) * np.nan_to_num(delta_raw, nan=0.0)
    g_old = gamma_hat.copy()
    d_old = delta_hat.copy()
    it = 0
    converged = False
    while it < max_iter:
        g_new = _postmean(gamma_hat, gamma_bar, n, d_old, tau2)
        sum2 = ss_within + n * (gamma_hat - g_new) ** 2
        d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rg = np.abs(g_new - g_old) / g_old
            rd = np.abs(d_new - d_old) / d_old
        # fmax skips NaN (0/0 counts as no change); inf (a move away from exactly 0) is a change
        change = max(np.fmax.reduce(rg, initial=0.0), np.fmax.reduce(rd, initial=0.0))
        g_old, d_old = g_new, d_new
        it += 1
        if not change > tol:
            converged = True
            break
    return g_old, d_old, it, converged


def eb_jacobi(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: float,
              gamma_bar: float, tau2: float, a: float, b: float,
              n_iter: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Parametric EB with a fixed number of Jacobi updates (longCombat; ``docs/methods.md`` §3 step 6).

    Starts from ``g0 = postmean(gamma_hat, delta_hat)`` and ``d0`` = the posterior scale at ``g0``; then
    each of the ``n_iter`` iterations updates ``g_k`` from ``d_{k-1}`` and ``d_k`` from ``g_{k-1}`` (both
    from the previous iterate, unlike :func:`eb_parametric`). There is no convergence test.
    ``sum_j (z_j - g)^2`` comes from ``(n - 1) delta_raw + n (gamma_hat - g)^2``.
    Returns ``gamma_star, delta_star`` (variances), vectorized over features.
    """
    ss_within = (n - 1.0) * np.nan_to_num(delta_raw, nan=0.0)
    denom = n / 2.0 + a - 1.0

    def postvar(g):
        return (b + 0.5 * (ss_within + n * (gamma_hat - g) ** 2)) / denom

    g = _postmean(gamma_hat, gamma_bar, n, delta_hat, tau2)
    d = postvar(g)
    for _ in range(int(n_iter)):
        g, d = _postmean(gamma_hat, gamma_bar, n, d, tau2), postvar(g)
    return g, d


def eb_mean_only(gamma_hat: np.ndarray, n: float, gamma_bar: float, tau2: float,
                 form: str = "sva") -> tuple[np.ndarray, np.ndarray]:
    """S7′: mean-only EB. ``form="sva"`` uses n = 1 (sva/neuroCombat); ``"n"`` the batch size."""
    n_eff = 1.0 if form == "sva" else float(n)
    return _postmean(gamma_hat, gamma_bar, n_eff, 1.0, tau2), np.ones_like(gamma_hat)


def eb_nonparametric(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: float,
                     block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """S7″: non-parametric EB for one batch, in log space (finite for any batch size).

    The prior of feature v is the empirical distribution of the other features' ``(gamma_hat, delta_hat)``;
    each is weighted by the Gaussian likelihood of feature v's standardized data under it. Log-weights are
    shifted by their maximum before exponentiating (neuroCombat multiplies raw densities and gets NaN for
    large batches). Cost O(p² ) per batch, in blocks of ``block`` features.
    """
    p = gamma_hat.shape[0]
    ss_within = (n - 1.0) * np.nan_to_num(delta_raw, nan=0.0)
    log_norm = -0.5 * n * np.log(2.0 * np.pi * delta_hat)  # (p,) over prior features v'
    inv2d = 0.5 / delta_hat
    g_star = np.empty(p)
    d_star = np.empty(p)
    for start in range(0, p, block):
        stop = min(p, start + block)
        rows = np.arange(start, stop)
        diff = gamma_hat[rows, None] - gamma_hat[None, :]
        L = log_norm[None, :] - (ss_within[rows, None] + n * diff * diff) * inv2d[None, :]
        L[np.arange(stop - start), rows] = -np.inf  # leave feature v out of its own prior
        L -= L.max(axis=1, keepdims=True)
        np.exp(L, out=L)
        wsum = L.sum(axis=1)
        g_star[rows] = (L @ gamma_hat) / wsum
        d_star[rows] = (L @ delta_hat) / wsum
    return g_star, d_star


def adjust(Y: np.ndarray, D: np.ndarray, coef: np.ndarray, codes: np.ndarray, sigma: np.ndarray,
           gamma_star: np.ndarray, delta_star: np.ndarray, out: np.ndarray | None = None,
           progress=None) -> np.ndarray:
    """S8: ``y* = sigma (z - gamma*_b) / sqrt(delta*_b) + M`` with ``z = (y - M) / sigma``, into ``out``.

    ``Y`` (n × b: a whole table or a block of features) is float64 or float32, row- or column-major; it is
    read once, in cache-sized blocks that follow its layout (:mod:`featharm._core.blocks`), and never
    copied. The preserved part ``M = D @ coef`` (``alpha + X beta`` for ComBat; spline terms for ComBat-GAM)
    is given as a design ``D`` (n × k) and coefficients (k × b); ``gamma_star``/``delta_star`` are m × b and
    ``codes`` the batch of every row (the per-batch terms are gathered by ``codes``, not multiplied).
    Computed as ``(y - M - sigma gamma*_b) / sqrt(delta*_b) + M`` (equal up to rounding) in float64, written
    into ``out`` (n × b, float64 or float32; by default float64 in the layout of ``Y``): one small GEMM for
    ``M`` and a few element-wise passes per block, all on block-sized buffers allocated once. ``progress``
    (optional) is called once per block.
    """
    if out is None:
        out = np.empty(Y.shape, dtype=np.float64, order="C" if row_major(Y) else "F")
    shift = sigma[None, :] * gamma_star  # m × b
    inv_sd = 1.0 / np.sqrt(delta_star)
    coef = np.asarray(coef, dtype=np.float64)
    if row_major(Y):
        _adjust_rows(Y, D, coef, codes, shift, inv_sd, out, progress)
    else:
        _adjust_columns(Y, D, coef, codes, shift, inv_sd, out, progress)
    return out


def adjust_blocks(Y: np.ndarray) -> int:
    """How many blocks :func:`adjust` processes ``Y`` in (for a progress bar)."""
    return len(layout_slices(Y))


def _adjust_columns(Y, D, coef, codes, shift, inv_sd, out, progress):
    """:func:`adjust` on blocks of features (column-major ``Y``): the per-batch terms are gathered along the
    rows of each block, into a buffer whose transpose has the block's layout."""
    n, p = Y.shape
    k = D.shape[1]
    size = block_size(Y)
    Dt = np.ascontiguousarray(D.T, dtype=np.float64)  # k × n: M.T = coef.T @ D.T, written in C order
    shift_t = np.ascontiguousarray(shift.T)  # b × m: one batch table row per feature
    inv_t = np.ascontiguousarray(inv_sd.T)
    direct = out.dtype == np.float64 and not row_major(out)

    def part(blocks):
        work = None if direct else np.empty((n, size), order="F")
        Mt = np.empty((size, n)) if k else None  # M of a block, transposed (C order)
        T = np.empty((size, n))  # gathered terms, feature × row (C order): T.T is n × b in Fortran order
        for cols in blocks:
            w = cols.stop - cols.start
            o = out[:, cols] if direct else work[:, :w]
            if k:
                Mb = np.matmul(coef[:, cols].T, Dt, out=Mt[:w]).T
                np.subtract(Y[:, cols], Mb, out=o)  # float32 is promoted exactly
            else:
                np.copyto(o, Y[:, cols], casting="unsafe")
            t = T[:w]
            np.take(shift_t[cols], codes, axis=1, out=t, mode="wrap")
            o -= t.T
            np.take(inv_t[cols], codes, axis=1, out=t, mode="wrap")
            o *= t.T
            if k:
                o += Mb
            if not direct:
                np.copyto(out[:, cols], o, casting="same_kind")
            if progress is not None:
                progress()

    run_blocks(part, layout_slices(Y), Y.size)


def _adjust_rows(Y, D, coef, codes, shift, inv_sd, out, progress):
    """:func:`adjust` on blocks of rows (row-major ``Y``): each row of a block takes its batch's row of the
    per-batch tables (a gather of whole rows)."""
    n, p = Y.shape
    k = D.shape[1]
    size = block_size(Y)
    Dc = np.ascontiguousarray(D, dtype=np.float64)
    coef = np.ascontiguousarray(coef)
    direct = out.dtype == np.float64 and out.flags.c_contiguous

    def part(blocks):
        work = None if direct else np.empty((size, p))
        M = np.empty((size, p)) if k else None
        T = np.empty((size, p))
        for rows in blocks:
            h = rows.stop - rows.start
            o = out[rows] if direct else work[:h]
            if k:
                Mb = np.matmul(Dc[rows], coef, out=M[:h])
                np.subtract(Y[rows], Mb, out=o)
            else:
                np.copyto(o, Y[rows], casting="unsafe")
            t = T[:h]
            b = codes[rows]
            np.take(shift, b, axis=0, out=t, mode="wrap")
            o -= t
            np.take(inv_sd, b, axis=0, out=t, mode="wrap")
            o *= t
            if k:
                o += Mb
            if not direct:
                np.copyto(out[rows], o, casting="same_kind")
            if progress is not None:
                progress()

    run_blocks(part, layout_slices(Y), Y.size)


# ---------------------------------------------------------------------------------------- the EB driver
@dataclass(frozen=True)
class EBOptions:
    """How a family estimates the site effects from ``gamma_hat``/``delta_hat`` (S6–S7).

    Every family states all of them (``BaseHarmonizer._eb_options``); nothing is read from an estimator
    with a default here.
    """

    eb: bool = True  # False: gamma* = gamma_hat, delta* = delta_hat (priors still reported)
    parametric: bool = True  # False: non-parametric EB (S7″)
    mean_only: bool = False  # location only: delta* = 1 (S7′)
    mean_only_form: str = "sva"  # "sva" (n = 1, as sva/neuroCombat) or "n" (the batch size)
    tol: float = 1e-4  # parametric: largest relative change at convergence
    max_iter: int = 1000
    jacobi_iter: int | None = None  # longCombat: this many Jacobi updates, no convergence test (§3 step 6)


def site_posterior(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: float,
                   priors: Priors, i: int, opts: EBOptions) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """S7 for batch ``i`` (its row of ``priors``): ``gamma*``, ``delta*``, iterations, converged."""
    if opts.jacobi_iter is not None:
        gs, ds = eb_jacobi(gamma_hat, delta_hat, delta_raw, n, priors.gamma_bar[i], priors.tau2[i],
                           priors.a_prior[i], priors.b_prior[i], n_iter=opts.jacobi_iter)
        return gs, ds, int(opts.jacobi_iter), True
    if not opts.parametric:
        gs, ds = eb_nonparametric(gamma_hat, delta_hat, delta_raw, n)
        if opts.mean_only:
            ds = np.ones_like(ds)  # a weighted mean of ones, exactly
        return gs, ds, 0, True
    if opts.mean_only:
        gs, ds = eb_mean_only(gamma_hat, n, priors.gamma_bar[i], priors.tau2[i], form=opts.mean_only_form)
        return gs, ds, 0, True
    return eb_parametric(gamma_hat, delta_hat, delta_raw, n, priors.gamma_bar[i], priors.tau2[i],
                         priors.a_prior[i], priors.b_prior[i], tol=opts.tol, max_iter=opts.max_iter)


@dataclass
class Posterior:
    """S6–S7 for every batch: the site effects, the priors, and how the iterations went."""

    gamma_star: np.ndarray  # (m, p)
    delta_star: np.ndarray  # (m, p)
    priors: Priors
    n_iter: np.ndarray  # (m,)
    not_converged: list  # batch indices whose parametric iterations hit max_iter


def posterior(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, counts: np.ndarray,
              opts: EBOptions, *, keep: np.ndarray | None = None, ref: int | None = None,
              progress=None, estimators=None, groups: np.ndarray | None = None,
              pooled: np.ndarray | None = None) -> Posterior:
    """S6–S7 over all batches: priors from the features in ``keep`` (default all; at least 2 needed for
    priors, else they are NaN), then each batch's posterior (or the raw estimates with ``opts.eb`` off).

    Features outside ``keep`` keep ``gamma_hat``/``delta_hat``; the reference batch ``ref`` gets
    ``gamma* = 0``, ``delta* = 1`` and NaN priors (it is not adjusted). ``progress`` (optional) is called
    once per batch. ``counts`` are the batch sizes (m,), or with missing values the observed values of each
    feature in each batch (m × p, ``docs/methods.md`` §1.8), given with ``estimators``: the ``(priors,
    site_posterior)`` functions that take them (:func:`featharm._core.missing.posterior` passes its own,
    which skip undefined estimates and give each feature its own count).

    ``groups`` (p,) — the measure group (0..G-1) of every feature: S6 is taken per batch *and group*, over
    the features of the group in ``keep``, and each group's features get the posterior under their group's
    priors (the non-parametric prior sample is the group's other features). ``pooled`` (G,) marks groups
    whose features instead get the posterior under one prior across all the features in ``keep`` (a group
    too small for priors of its own). The priors are then m × G. With one group (not pooled) every result
    is that of ``groups=None``, bit for bit.
    """
    if groups is None:
        return _posterior_pool(gamma_hat, delta_hat, delta_raw, counts, opts, keep=keep, ref=ref,
                               progress=progress, estimators=estimators)
    m, p = gamma_hat.shape
    keep = np.ones(p, dtype=bool) if keep is None else keep
    G = int(pooled.size) if pooled is not None else int(groups.max(initial=-1)) + 1
    pooled = np.zeros(G, dtype=bool) if pooled is None else np.asarray(pooled, dtype=bool)
    g_star, d_star = gamma_hat.copy(), delta_hat.copy()
    pri = Priors(*(np.full((m, G), np.nan) for _ in range(4)))
    n_iter = np.zeros(m)
    not_converged: set = set()

    def take(post: Posterior, cols: np.ndarray, g: int) -> None:
        g_star[:, cols], d_star[:, cols] = post.gamma_star[:, cols], post.delta_star[:, cols]
        for name in ("gamma_bar", "tau2", "a_prior", "b_prior"):
            getattr(pri, name)[:, g] = getattr(post.priors, name)
        np.maximum(n_iter, post.n_iter, out=n_iter)
        not_converged.update(post.not_converged)

    whole = None
    for g in range(G):
        cols = keep & (groups == g)
        if pooled[g]:
            if whole is None:
                whole = _posterior_pool(gamma_hat, delta_hat, delta_raw, counts, opts, keep=keep, ref=ref,
                                        estimators=estimators)
            take(whole, cols, g)
        elif cols.any():
            take(_posterior_pool(gamma_hat, delta_hat, delta_raw, counts, opts, keep=cols, ref=ref,
                                 estimators=estimators), cols, g)
    if progress is not None and opts.eb:
        for _ in range(m - (ref is not None)):
            progress()
    return Posterior(g_star, d_star, pri, n_iter, sorted(not_converged))


def _posterior_pool(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, counts: np.ndarray,
                    opts: EBOptions, *, keep: np.ndarray | None = None, ref: int | None = None,
                    progress=None, estimators=None) -> Posterior:
    """:func:`posterior` with one prior per batch across the features in ``keep``."""
    m, p = gamma_hat.shape
    keep = np.ones(p, dtype=bool) if keep is None else keep
    g_star, d_star = gamma_hat.copy(), delta_hat.copy()
    n_iter = np.zeros(m)
    not_converged = []
    site = site_posterior
    per_feature = np.ndim(counts) == 2
    if estimators is not None:  # missing values (§1.8): m × p counts
        priors_fn, site = estimators
        pri = priors_fn(gamma_hat[:, keep], delta_hat[:, keep], mean_only=opts.mean_only)
    elif keep.sum() >= 2:
        pri = eb_priors(gamma_hat[:, keep], delta_hat[:, keep], mean_only=opts.mean_only)
    else:  # priors need a spread across features; with eb off they are only reported
        nan = np.full(m, np.nan)
        pri = Priors(nan, nan.copy(), nan.copy(), nan.copy())
    if opts.eb:
        for i in range(m):
            if i == ref:
                continue
            n = counts[i, keep].astype(np.float64) if per_feature else float(counts[i])
            gs, ds, n_iter[i], ok = site(gamma_hat[i, keep], delta_hat[i, keep], delta_raw[i, keep], n, pri, i,
                                         opts)
            if not ok:
                not_converged.append(i)
            g_star[i, keep], d_star[i, keep] = gs, ds
            if progress is not None:
                progress()
    if ref is not None:
        g_star[ref], d_star[ref] = 0.0, 1.0
        for arr in (pri.gamma_bar, pri.tau2, pri.a_prior, pri.b_prior):
            arr[ref] = np.nan  # the reference batch is not adjusted; its priors are meaningless
    return Posterior(g_star, d_star, pri, n_iter, not_converged)
