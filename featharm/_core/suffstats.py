"""ComBat from mergeable per-batch sufficient statistics (``docs/methods.md`` §1.9).

Everything ComBat estimates (S1–S7) is a function of a few sums over the rows of each batch ``i``:
the count ``n_i``, ``Σx``, ``Σxxᵀ`` (``x`` the covariate row, ``q`` values) and, per feature, the observed
count ``n_iv``, ``Σy``, ``Σx y`` and ``Σy²``. :class:`SuffStats` holds them for every batch; it is updated
from row blocks in any order (:meth:`SuffStats.update`), merged by addition (:meth:`SuffStats.combine`),
and written as plain arrays (:meth:`SuffStats.to_arrays` / :meth:`SuffStats.from_arrays`). The fit
(:func:`location_fit`, :func:`frozen_moments`) turns them into the inputs of :mod:`featharm._core.eb`
and :mod:`featharm._core.missing`, which then run S2–S7 unchanged.

**Shift.** Sums of squares of volumes (mean ~1e4, SD ~1e2) lose digits to cancellation when centred
afterwards (``Σy² - (Σy)²/n``), and so do residual sums of squares computed as the total less the part the
covariates explain when they explain most of it. So every batch's sums are taken around an affine shift
stored with them: ``x`` around ``a_i`` and ``y`` around ``c_i + (x - a_i)ᵀB_i``, where ``a_i``, ``c_i`` are the
means of that batch's rows in the first block that had any (per feature, the first block where it is
observed) and ``B_i`` (q × p) a pilot regression slope of the first block (0 for a feature where it does
not lower that block's sum of squares). The sums are then of the size of the residuals, not of the mean
or of the covariate effects. Sums around different shifts are moved to a common one before they are
added (:meth:`SuffStats.combine`; exact in exact arithmetic, with terms of the size of the spread).

**Missing values** (NaN cells, §1.8): the feature sums run over observed cells, with a count ``n_iv``
per batch and feature; ``Σx`` and ``Σxxᵀ`` over a feature's observed rows differ from the batch's by
their sums over its missing rows, which are stored only for the (batch, feature) cells that have a
missing row (``q + q²`` numbers each): no cost for complete features.

**Order.** :meth:`SuffStats.combine` sums the pieces of each batch in a canonical order (by a digest of
their contents), so any order of the same pieces gives the same statistics, bit for bit; pieces of
different batches never mix. Associativity (combining partial combinations) holds to rounding.

Arrays only (numpy); batches are codes ``0..m-1`` chosen by the caller; float64 throughout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import dgemm

from ..exceptions import InputError, MissingValueError
from .parallel import one_blas_thread

__all__ = ["SuffStats", "LocationFit", "location_fit", "frozen_moments", "within_covariates", "total_variance"]

# Names of the arrays of :meth:`SuffStats.to_arrays`, with their axes (m batches, q covariates, p
# features, k (batch, feature) cells with missing rows).
ARRAYS = {
    "counts": ("m",), "x_shift": ("m", "q"), "y_shift": ("m", "p"), "y_slope": ("m", "q", "p"),
    "sx": ("m", "q"), "sxx": ("m", "q", "q"),
    "n_obs": ("m", "p"), "sy": ("m", "p"), "sxy": ("m", "q", "p"), "syy": ("m", "p"),
    "miss_batch": ("k",), "miss_feature": ("k",), "miss_sx": ("k", "q"), "miss_sxx": ("k", "q", "q"),
}


class SuffStats:
    """Per-batch sufficient statistics of ComBat, taken around a per-batch shift.

    Attributes (``m`` batches, ``q`` covariate columns, ``p`` features; sums over the rows of each batch):

    * ``counts`` (m,): rows; ``x_shift`` (m, q), ``y_shift`` (m, p), ``y_slope`` (m, q, p): the shifts
      ``a_i``, ``c_i``, ``B_i``; below ``u = x - a_i`` and ``ŷ = y - c_i - uᵀB_i`` (per feature);
    * ``sx`` (m, q) ``= Σu``, ``sxx`` (m, q, q) ``= Σuuᵀ``;
    * ``n_obs`` (m, p): observed values; over them ``sy = Σŷ``, ``sxy`` (m, q, p) ``= Σuŷᵀ``, ``syy = Σŷ²``;
    * ``miss_key`` (k,) = ``i * p + v`` for each (batch, feature) cell with missing rows (sorted);
      ``miss_sx`` (k, q), ``miss_sxx`` (k, q, q): ``Σu`` and ``Σuuᵀ`` over those rows.

    Memory: ``8 m (1 + 2q + q² + 4p + 2qp)`` bytes, plus ``8 (1 + q + q²)`` per cell with missing rows.
    ``center=False`` keeps every shift at 0 (the naive accumulation; only to show what the shift buys).
    """

    def __init__(self, n_batches: int, n_covariates: int, n_features: int, *, center: bool = True):
        m, q, p = int(n_batches), int(n_covariates), int(n_features)
        if m < 1 or q < 0 or p < 1:
            raise InputError(f"statistics need at least 1 batch and 1 feature; got {m} batch(es), {p} feature(s).")
        self.m, self.q, self.p, self.center = m, q, p, bool(center)
        self.counts = np.zeros(m)
        self.x_shift = np.zeros((m, q))
        self.y_shift = np.zeros((m, p))
        self.y_slope = np.zeros((m, q, p))
        self.sx = np.zeros((m, q))
        self.sxx = np.zeros((m, q, q))
        self.n_obs = np.zeros((m, p))
        self.sy = np.zeros((m, p))
        self.sxy = np.zeros((m, q, p))
        self.syy = np.zeros((m, p))
        self.miss_key = np.zeros(0, dtype=np.int64)
        self.miss_sx = np.zeros((0, q))
        self.miss_sxx = np.zeros((0, q, q))
        self._pilot = None  # slopes (q × p) given to batches first seen by this object (set by update)
        self._x_set = np.zeros(m, dtype=bool)  # batches whose shifts a_i, B_i are set
        self._c_set = np.zeros((m, p), dtype=bool)  # (batch, feature) cells whose shift c_i is set

    @classmethod
    def empty_like(cls, template: "SuffStats") -> "SuffStats":
        """Empty statistics with the shifts of ``template`` (for its batches and features with values; other
        batches get ``template``'s pilot slopes). Pieces made this way share their shifts, so merging them is
        plain addition; with features almost explained by the covariates (1 - R² below ~1e-6) this keeps
        small pieces (fewer rows than batches + covariates + 2, too few for their own pilot) exact."""
        s = cls(template.m, template.q, template.p, center=template.center)
        if not template.center:
            return s
        s._x_set = template.counts > 0
        s._c_set = template.n_obs > 0
        s.x_shift[s._x_set] = template.x_shift[s._x_set]
        s.y_slope[s._x_set] = template.y_slope[s._x_set]
        s.y_shift[s._c_set] = template.y_shift[s._c_set]
        if s._x_set.any() and template.q:
            s._pilot = template.y_slope[int(np.argmax(template.counts))].copy()
        return s

    def _mark_set(self) -> None:
        """Shifts are set where the sums have rows (after combine / from_arrays)."""
        self._x_set = self.counts > 0
        self._c_set = self.n_obs > 0

    def __repr__(self) -> str:
        return (f"SuffStats({self.m} batches, {self.q} covariates, {self.p} features, {int(self.counts.sum())} rows, "
                f"{self.miss_key.size} cells with missing rows)")

    @property
    def has_missing(self) -> bool:
        """Whether any feature has a missing value in any batch."""
        return bool((self.n_obs < self.counts[:, None]).any())

    def nbytes(self) -> int:
        """Memory held by the statistics, in bytes."""
        return sum(getattr(self, a).nbytes for a in ("counts", "x_shift", "y_shift", "y_slope", "sx", "sxx", "n_obs",
                                                    "sy", "sxy", "syy", "miss_key", "miss_sx", "miss_sxx"))

    # ------------------------------------------------------------------------------ accumulate
    def update(self, X: np.ndarray, Y: np.ndarray, codes: np.ndarray) -> "SuffStats":
        """Add a block of rows: covariates ``X`` (r × q), features ``Y`` (r × p, NaN = missing) and the
        batch code of every row (0..m-1). Returns ``self``."""
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        codes = np.asarray(codes)
        r = Y.shape[0] if Y.ndim == 2 else -1
        if Y.ndim != 2 or Y.shape[1] != self.p:
            raise InputError(f"the feature block must be rows × {self.p} features; got shape {Y.shape}.")
        if X.ndim != 2 or X.shape != (r, self.q):
            raise InputError(f"the covariate block must be {r} rows × {self.q} columns (one row per feature "
                             f"row); got shape {X.shape}.")
        if codes.shape != (r,) or not np.issubdtype(codes.dtype, np.integer):
            raise InputError(f"batch codes must be {r} integers (one per row); got {codes.dtype} of shape {codes.shape}.")
        if r and (codes.min() < 0 or codes.max() >= self.m):
            bad = int(codes[(codes < 0) | (codes >= self.m)][0])
            raise InputError(f"batch code {bad} is outside 0..{self.m - 1}; code the batches as the statistics were "
                             "made (one code per batch level).")
        if not np.isfinite(X).all():
            row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise MissingValueError(f"the covariate block has a missing or infinite value in row {row}; covariates "
                                    "must be complete (leave such rows out first).")
        has_nan = not np.isfinite(Y).all()
        if has_nan and np.isinf(Y).any():
            row, col = (int(v[0]) for v in np.nonzero(np.isinf(Y)))
            raise MissingValueError(f"feature {col} has an infinite value in row {row} of the block; only NaN marks "
                                    "a missing value.")
        if self.center and self._pilot is None and self.q and r:
            with one_blas_thread():  # its bits must not depend on the BLAS's threads
                self._pilot = _pilot_slopes(X, Y, codes)
            if self._pilot is not None:  # batches seen before there was a pilot: move them onto it
                for i in np.flatnonzero(self._x_set & ~self.y_slope.any(axis=(1, 2))):
                    _BatchView.of(self, int(i)).shifted(self.x_shift[i], self.y_shift[i], self._pilot).store(self, int(i))
                    self.y_slope[i][:, self.n_obs[i] == 0] = self._pilot[:, self.n_obs[i] == 0]  # no sums yet
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        # The products of a batch's rows are skinny (an inner or outer dimension of q + 1): a multi-threaded
        # BLAS gains nothing on them and, on a busy machine, loses up to 50 times to waking its threads (2,000
        # × 20,000: 6 times slower than the in-memory fit). One BLAS thread; the same numbers.
        with one_blas_thread():
            for rows in np.split(order, bounds):
                if rows.size:
                    self._add_rows(int(codes[rows[0]]), X[rows], Y[rows], has_nan)
        return self

    def _add_rows(self, i: int, x: np.ndarray, y: np.ndarray, has_nan: bool) -> None:
        """Add the rows ``x``, ``y`` (copies: ``y`` is modified) of batch ``i``."""
        r = x.shape[0]
        obs = ~np.isnan(y) if has_nan else None
        complete = not has_nan or bool(obs.all())
        if complete:
            obs = np.ones((1, self.p), dtype=bool)  # broadcasts as "every row observed"
        if self.center:
            if not self._x_set[i]:
                self.x_shift[i] = x.mean(axis=0)
                if self._pilot is not None:
                    self.y_slope[i] = self._pilot
                self._x_set[i] = True
            new = ~self._c_set[i] & obs.any(axis=0)  # features first observed in this block
            if new.any():
                yo = y[:, new] - (x - self.x_shift[i]) @ self.y_slope[i][:, new]
                if complete:
                    self.y_shift[i, new] = yo.mean(axis=0)
                else:
                    yo = np.where(obs[:, new], yo, 0.0)
                    self.y_shift[i, new] = yo.sum(axis=0) / obs[:, new].sum(axis=0)
                self._c_set[i, new] = True
        xc = x - self.x_shift[i]
        yc = np.ascontiguousarray(y)  # a copy made by the caller's row selection: shifted in place
        yc -= self.y_shift[i]
        if self.q and self.y_slope[i].any():  # yc -= xc @ B in place: (ycᵀ -= Bᵀ xcᵀ), ycᵀ is Fortran-ordered
            res = dgemm(-1.0, self.y_slope[i], xc, beta=1.0, c=yc.T, trans_a=True, trans_b=True, overwrite_c=True)
            if not np.shares_memory(res, yc):  # pragma: no cover - BLAS copied
                yc[...] = res.T
        if not complete:
            yc[~obs] = 0.0
        self.counts[i] += r
        self.sx[i] += xc.sum(axis=0)
        self.sxx[i] += xc.T @ xc
        self.n_obs[i] += obs.sum(axis=0) if not complete else r
        u1 = np.empty((r, self.q + 1))  # [1 | u]: Σŷ and Σuŷ in one pass over the block
        u1[:, 0] = 1.0
        u1[:, 1:] = xc
        cross = u1.T @ yc
        self.sy[i] += cross[0]
        self.sxy[i] += cross[1:]
        self.syy[i] += np.einsum("ij,ij->j", yc, yc)
        if not complete:
            cols = np.flatnonzero(~obs.all(axis=0))
            M = (~obs[:, cols]).astype(np.float64)  # r × k: the missing rows of each such feature
            msx = M.T @ xc
            msxx = (M.T @ (xc[:, :, None] * xc[:, None, :]).reshape(r, self.q * self.q)).reshape(-1, self.q, self.q)
            self._add_missing(i * self.p + cols.astype(np.int64), msx, msxx)

    def _add_missing(self, keys: np.ndarray, msx: np.ndarray, msxx: np.ndarray) -> None:
        """Add missing-row sums for the cells ``keys`` (sorted, unique) to the stored ones."""
        union = np.union1d(self.miss_key, keys)
        if union.size != self.miss_key.size:
            sx = np.zeros((union.size, self.q))
            sxx = np.zeros((union.size, self.q, self.q))
            at = np.searchsorted(union, self.miss_key)
            sx[at], sxx[at] = self.miss_sx, self.miss_sxx
            self.miss_key, self.miss_sx, self.miss_sxx = union, sx, sxx
        at = np.searchsorted(self.miss_key, keys)
        self.miss_sx[at] += msx
        self.miss_sxx[at] += msxx

    # ------------------------------------------------------------------------------ merge
    def merge(self, other: "SuffStats") -> "SuffStats":
        """The statistics of the rows of both (a new object): :meth:`combine` of the two."""
        return SuffStats.combine([self, other])

    @classmethod
    def combine(cls, pieces) -> "SuffStats":
        """Sum statistics of disjoint sets of rows (a new object; the pieces are not modified).

        For each batch, the pieces that hold rows of it are put in a canonical order (most rows first, ties
        by a digest of their contents for that batch), moved to the shift of the first and added in that
        order: the result does not depend on the order of ``pieces``, bit for bit.
        """
        pieces = list(pieces)
        if not pieces or not all(isinstance(s, SuffStats) for s in pieces):
            raise InputError("combine needs a non-empty list of SuffStats.")
        m, q, p = pieces[0].m, pieces[0].q, pieces[0].p
        for s in pieces[1:]:
            if (s.m, s.q, s.p) != (m, q, p):
                raise InputError(f"statistics of different shapes cannot be merged: {m} batches × {q} covariates × "
                                 f"{p} features and {s.m} × {s.q} × {s.p}; make them with the same plan.")
        out = cls(m, q, p, center=all(s.center for s in pieces))
        keys, msx, msxx = [], [], []
        for i in range(m):
            views = sorted((_BatchView.of(s, i) for s in pieces if s.counts[i] > 0), key=lambda v: (-v.n, v.digest()))
            if not views:
                continue
            acc = views[0]
            for v in views[1:]:
                acc = acc.plus(v)
            acc.store(out, i)
            keys.append(i * p + acc.miss_v)
            msx.append(acc.miss_sx)
            msxx.append(acc.miss_sxx)
        if keys:
            out.miss_key = np.concatenate(keys).astype(np.int64)
            out.miss_sx = np.concatenate(msx, axis=0)
            out.miss_sxx = np.concatenate(msxx, axis=0)
        out._mark_set()
        return out

    # ------------------------------------------------------------------------------ arrays
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The statistics as named arrays (float64; ``miss_batch``/``miss_feature`` int64): see :data:`ARRAYS`."""
        d = {name: getattr(self, name).copy() for name in ARRAYS if not name.startswith("miss_")}
        d["miss_batch"] = self.miss_key // self.p
        d["miss_feature"] = self.miss_key % self.p
        d["miss_sx"] = self.miss_sx.copy()
        d["miss_sxx"] = self.miss_sxx.copy()
        return d

    @classmethod
    def from_arrays(cls, arrays: dict) -> "SuffStats":
        """Rebuild from :meth:`to_arrays`, checking names, shapes, dtypes and values (:class:`InputError`
        naming the array)."""
        names = set(arrays)
        if names != set(ARRAYS):
            raise InputError(f"statistics arrays must be exactly {sorted(ARRAYS)}; missing "
                             f"{sorted(set(ARRAYS) - names)}, unexpected {sorted(names - set(ARRAYS))}.")
        a = {k: np.asarray(v) for k, v in arrays.items()}
        if a["counts"].ndim != 1 or a["y_shift"].ndim != 2 or a["x_shift"].ndim != 2:
            raise InputError("statistics array 'counts' must be 1-d and 'x_shift'/'y_shift' 2-d.")
        dims = {"m": a["counts"].shape[0], "q": a["x_shift"].shape[1], "p": a["y_shift"].shape[1],
                "k": a["miss_batch"].shape[0] if a["miss_batch"].ndim == 1 else -1}
        for name, axes in ARRAYS.items():
            want = tuple(dims[x] for x in axes)
            if a[name].shape != want:
                raise InputError(f"statistics array {name!r} has shape {a[name].shape}; expected {want} "
                                 f"({' × '.join(axes)}).")
            kind = "iu" if name in ("miss_batch", "miss_feature") else "f"
            if a[name].dtype.kind not in kind:
                raise InputError(f"statistics array {name!r} has dtype {a[name].dtype}; expected "
                                 f"{'integers' if kind == 'iu' else 'floating point'}.")
            if kind == "f" and not np.isfinite(a[name]).all():
                raise InputError(f"statistics array {name!r} has non-finite values.")
        m, q, p = dims["m"], dims["q"], dims["p"]
        counts, n_obs = a["counts"], a["n_obs"]
        for name, c in (("counts", counts), ("n_obs", n_obs)):
            if (c < 0).any() or (c != np.round(c)).any():
                raise InputError(f"statistics array {name!r} must hold non-negative whole numbers.")
        if (n_obs > counts[:, None]).any():
            i, v = (int(x[0]) for x in np.nonzero(n_obs > counts[:, None]))
            raise InputError(f"statistics: feature {v} has more observed values ({int(n_obs[i, v])}) than batch {i} has "
                             f"rows ({int(counts[i])}).")
        mb, mf = a["miss_batch"].astype(np.int64), a["miss_feature"].astype(np.int64)
        if mb.size and (mb.min() < 0 or mb.max() >= m or mf.min() < 0 or mf.max() >= p):
            raise InputError("statistics arrays 'miss_batch'/'miss_feature' point outside the batches or features.")
        key = mb * p + mf
        if key.size and (np.diff(key) <= 0).any():
            raise InputError("statistics cells with missing rows ('miss_batch', 'miss_feature') must be sorted and "
                             "unique.")
        if key.size and not (n_obs[mb, mf] < counts[mb]).all():
            raise InputError("statistics list missing-row sums for a cell without missing rows.")
        if ((n_obs < counts[:, None]) & (counts[:, None] > 0)).sum() != key.size:
            raise InputError("statistics: every (batch, feature) cell with missing rows needs its missing-row sums.")
        s = cls(m, q, p)
        for name in ARRAYS:
            if name in ("miss_batch", "miss_feature"):
                continue
            setattr(s, name, np.array(a[name], dtype=np.float64))
        s.miss_key = key
        s._mark_set()
        return s

    # ------------------------------------------------------------------------------ per-feature covariate sums
    def observed_x(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``Σ(x - a_i)`` (m, b, q) and ``Σ(x - a_i)(x - a_i)ᵀ`` (m, b, q, q) over the observed rows of each of
        the ``features`` in every batch: the batch's sums less those over the feature's missing rows."""
        features = np.asarray(features, dtype=np.int64)
        b = features.size
        sx = np.broadcast_to(self.sx[:, None, :], (self.m, b, self.q)).copy()
        sxx = np.broadcast_to(self.sxx[:, None, :, :], (self.m, b, self.q, self.q)).copy()
        if self.miss_key.size:
            bi, vi = self.miss_key // self.p, self.miss_key % self.p
            pos = np.full(self.p, -1, dtype=np.int64)
            pos[features] = np.arange(b)
            hit = pos[vi] >= 0
            sx[bi[hit], pos[vi[hit]]] -= self.miss_sx[hit]
            sxx[bi[hit], pos[vi[hit]]] -= self.miss_sxx[hit]
        return sx, sxx


def _pilot_slopes(X: np.ndarray, Y: np.ndarray, codes: np.ndarray) -> np.ndarray | None:
    """Slopes (q × p) of a within-batch least-squares fit of the block's features on its covariates, to shift
    ``y`` by (the affine shift of :class:`SuffStats`); 0 for a feature with missing values in the block.
    ``None`` when the block has too few rows: fewer than the batches + 3 q + 2 (slopes fitted on barely
    more rows than coefficients can be far off outside the block, up to 1e3 times the true ones with the
    ~20 spline columns of ComBat-GAM, and shifted sums that large cancel to 1e-8). Any slopes keep the
    statistics exact; good ones keep the shifted sums small. The covariates centred within batch are orthogonal to the batch means of ``y``,
    so ``Xwᵀ Y`` needs no centring of ``Y`` (one GEMM); a covariate constant on the block gets slope 0
    (pseudo-inverse of the small q × q matrix)."""
    r, q = X.shape
    levels, inv = np.unique(codes, return_inverse=True)
    if r < levels.size + 3 * q + 2:
        return None
    cnt = np.bincount(inv).astype(np.float64)
    means = np.stack([np.bincount(inv, weights=X[:, j]) for j in range(q)], axis=1) / cnt[:, None]
    Xw = X - means[inv]
    G = Xw.T @ Xw
    d = np.sqrt(np.diag(G))
    scale = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    Ginv = scale[:, None] * np.linalg.pinv(G * scale[:, None] * scale[None, :], rcond=1e-8, hermitian=True) * scale[None, :]
    with np.errstate(invalid="ignore"):
        B = Ginv @ (Xw.T @ Y)
    B[:, ~np.isfinite(B).all(axis=0)] = 0.0  # features with missing values in the block
    return B


@dataclass
class _BatchView:
    """One batch's statistics (a copy), which can be moved to another shift and added to another."""

    n: float
    a: np.ndarray  # (q,) x shift
    c: np.ndarray  # (p,) y shift
    B: np.ndarray  # (q, p) y slope
    sx: np.ndarray
    sxx: np.ndarray
    n_obs: np.ndarray
    sy: np.ndarray
    sxy: np.ndarray  # (q, p)
    syy: np.ndarray
    miss_v: np.ndarray  # (k,) features with missing rows, sorted
    miss_sx: np.ndarray  # (k, q)
    miss_sxx: np.ndarray  # (k, q, q)

    @classmethod
    def of(cls, s: SuffStats, i: int) -> "_BatchView":
        lo, hi = np.searchsorted(s.miss_key, [i * s.p, (i + 1) * s.p])
        return cls(float(s.counts[i]), s.x_shift[i].copy(), s.y_shift[i].copy(), s.y_slope[i].copy(), s.sx[i].copy(),
                   s.sxx[i].copy(), s.n_obs[i].copy(), s.sy[i].copy(), s.sxy[i].copy(), s.syy[i].copy(),
                   s.miss_key[lo:hi] - i * s.p, s.miss_sx[lo:hi].copy(), s.miss_sxx[lo:hi].copy())

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for arr in (np.array([self.n]), self.a, self.c, self.B, self.sx, self.sxx, self.n_obs, self.sy, self.sxy,
                    self.syy, self.miss_v, self.miss_sx, self.miss_sxx):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.digest()

    def shifted(self, a: np.ndarray, c: np.ndarray, B: np.ndarray) -> "_BatchView":
        """The same sums around the shifts ``a`` (q,), ``c`` (p,), ``B`` (q, p) (those of a feature only matter
        where it has observed values).

        With ``u = x - a_old``, ``d = a_old - a``: ``x - a = u + d`` and ``y - c - (x - a)ᵀB = ŷ + e + uᵀΔ``
        with ``e = c_old - c - dᵀB`` and ``Δ = B_old - B``; the new sums follow from the old ones and
        the covariate sums over each feature's observed rows.
        """
        has = self.n_obs > 0
        d = self.a - a
        delta = np.where(has[None, :], self.B - B, 0.0)
        e = np.where(has, self.c - c - d @ B, 0.0)
        if not d.any() and not e.any() and not delta.any():
            return self
        s_obs = np.broadcast_to(self.sx[:, None], self.sxy.shape).copy()  # (q, p): Σu over observed rows
        S_delta = self.sxx @ delta  # (q, p): (Σuuᵀ over observed rows) Δ
        if self.miss_v.size:
            s_obs[:, self.miss_v] -= self.miss_sx.T
            S_delta[:, self.miss_v] -= np.einsum("kqr,rk->qk", self.miss_sxx, delta[:, self.miss_v])
        s_delta = np.einsum("qp,qp->p", s_obs, delta)
        sy = self.sy + self.n_obs * e + s_delta
        sxy = self.sxy + s_obs * e[None, :] + S_delta + np.outer(d, sy)
        syy = (self.syy + self.n_obs * e * e + np.einsum("qp,qp->p", delta, S_delta) + 2.0 * e * self.sy
               + 2.0 * np.einsum("qp,qp->p", delta, self.sxy) + 2.0 * e * s_delta)
        n_miss = self.n - self.n_obs[self.miss_v]
        dd = np.outer(d, d)
        ms, mss = self.miss_sx, self.miss_sxx
        return _BatchView(
            self.n, a.copy(), np.where(has, c, self.c), np.where(has[None, :], B, self.B),
            self.sx + self.n * d,
            self.sxx + np.outer(self.sx, d) + np.outer(d, self.sx) + self.n * dd,
            self.n_obs, sy, sxy, syy, self.miss_v,
            ms + n_miss[:, None] * d[None, :],
            mss + ms[:, :, None] * d[None, None, :] + d[None, :, None] * ms[:, None, :] + n_miss[:, None, None] * dd,
        )

    def plus(self, other: "_BatchView") -> "_BatchView":
        """The sums of both, around this view's shifts (a feature this view has no value of takes the other's)."""
        has = self.n_obs > 0
        c = np.where(has, self.c, other.c)
        B = np.where(has[None, :], self.B, other.B)
        o = other.shifted(self.a, c, B)
        v = np.union1d(self.miss_v, o.miss_v)
        ms = np.zeros((v.size, self.a.size))
        mss = np.zeros((v.size, self.a.size, self.a.size))
        for part in (self, o):
            at = np.searchsorted(v, part.miss_v)
            ms[at] += part.miss_sx
            mss[at] += part.miss_sxx
        return _BatchView(self.n + o.n, self.a, c, B, self.sx + o.sx, self.sxx + o.sxx, self.n_obs + o.n_obs,
                          self.sy + o.sy, self.sxy + o.sxy, self.syy + o.syy, v, ms, mss)

    def store(self, s: SuffStats, i: int) -> None:
        s.counts[i], s.x_shift[i], s.y_shift[i], s.y_slope[i] = self.n, self.a, self.c, self.B
        s.sx[i], s.sxx[i], s.n_obs[i], s.sy[i], s.sxy[i], s.syy[i] = (self.sx, self.sxx, self.n_obs, self.sy,
                                                                       self.sxy, self.syy)


# ---------------------------------------------------------------------------------------- the fit
@dataclass
class LocationFit:
    """S1 and the within-batch residual sums of squares from the statistics (inputs of
    :func:`featharm._core.eb.standardized_moments` / :func:`featharm._core.missing.standardized_moments`)."""

    coef: np.ndarray  # (m + q, p): batch coefficients in the coding of ``batch_rows``, then the covariates
    ss: np.ndarray  # (m, p) within-batch residual sums of squares over observed cells
    n_obs: np.ndarray  # (m, p)
    deficient: np.ndarray  # features whose design is rank deficient on their observed rows (coef NaN)


def _centred(stats: SuffStats, features: np.ndarray | None, shared: bool):
    """Within-batch centred cross-products over each feature's observed rows, in the shifted variables ``u``,
    ``ŷ`` of :class:`SuffStats`, for the ``features`` (all when None); ``shared``: features without missing
    values, whose covariate sums are the batch's:

    ``Sxx`` (m, q, q) when shared, else (m, b, q, q); ``Sxy`` (m, q, b); ``Syy`` (m, b); the batch means
    of ``u`` (``xbar``: (m, q) or (m, b, q)) and of ``ŷ`` (``ybar``: (m, b)); ``B`` (m, q, b) the slopes.
    A batch without observed values of a feature contributes 0."""
    sl = slice(None) if features is None else features
    n = stats.n_obs[:, sl]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(n > 0, 1.0 / n, 0.0)
    sy, sxy, syy = stats.sy[:, sl], stats.sxy[:, :, sl], stats.syy[:, sl]
    ybar = sy * inv
    if shared:  # complete features: the batch's covariate sums
        cnt = stats.counts
        with np.errstate(divide="ignore", invalid="ignore"):
            icnt = np.where(cnt > 0, 1.0 / cnt, 0.0)
        xbar = stats.sx * icnt[:, None]
        Sxx = stats.sxx - stats.sx[:, :, None] * xbar[:, None, :]
        Sxy = sxy - xbar[:, :, None] * sy[:, None, :]
    else:
        sx, sxx = stats.observed_x(features)  # (m, b, q), (m, b, q, q)
        xbar = sx * inv[:, :, None]
        Sxx = sxx - sx[:, :, :, None] * xbar[:, :, None, :]
        Sxx[n == 0] = 0.0  # all rows missing: the difference of two sums of the same rows is rounding
        Sxy = sxy - np.swapaxes(xbar, 1, 2) * sy[:, None, :]
    Syy = syy - sy * ybar
    return Sxx, Sxy, Syy, xbar, ybar, stats.y_slope[:, :, sl]


def _y_cross(Sxx, Sxy, B, shared: bool) -> np.ndarray:
    """``Σ(x - x̄_i)(y - ȳ_i)ᵀ`` per batch (m, q, b) from the shifted sums: ``Sxy + Sxx B``."""
    return Sxy + (np.einsum("mqr,mrb->mqb", Sxx, B) if shared else np.einsum("mbqr,mrb->mqb", Sxx, B))


def _within_ss(Sxx, Sxy, Syy, delta, shared: bool) -> np.ndarray:
    """``Σ r²`` per batch and feature for the slopes ``beta``, with ``delta = beta - B_i`` (m, q, b):
    ``Syy - 2 Δᵀ Sxy + Δᵀ Sxx Δ`` in the shifted sums (residuals of the size of ``ŷ`` minus a small
    correction, so nothing large cancels when the shift's slopes are near ``beta``)."""
    cross = np.einsum("mqb,mqb->mb", delta, Sxy)
    if shared:
        quad = np.einsum("mqb,mqr,mrb->mb", delta, Sxx, delta)
    else:
        quad = np.einsum("mqb,mbqr,mrb->mb", delta, Sxx, delta)
    return np.maximum(Syy - 2.0 * cross + quad, 0.0)


def _location(stats: SuffStats, f, xbar, ybar, delta, beta, shared: bool) -> np.ndarray:
    """Each batch's mean of ``y - xᵀbeta`` (m, b): ``c_i + ŷ̄_i - ūᵢᵀΔ_i - a_iᵀbeta``."""
    sl = slice(None) if f is None else f
    corr = np.einsum("mq,mqb->mb", xbar, delta) if shared else np.einsum("mbq,mqb->mb", xbar, delta)
    return stats.y_shift[:, sl] + ybar - corr - stats.x_shift @ beta


def within_covariates(stats: SuffStats) -> np.ndarray:
    """``Σ_i Σ_j (x_ij - x̄_i)(x_ij - x̄_i)ᵀ`` (q × q): the covariates' within-batch cross-products over all rows."""
    cnt = stats.counts
    with np.errstate(divide="ignore", invalid="ignore"):
        icnt = np.where(cnt > 0, 1.0 / cnt, 0.0)
    return (stats.sxx - stats.sx[:, :, None] * (stats.sx * icnt[:, None])[:, None, :]).sum(axis=0)


def location_fit(stats: SuffStats, batch_rows: np.ndarray, *, rank_rtol: float = 1e-12,
                 block: int = 2048) -> LocationFit:
    """S1 and the residual sums of squares from the statistics (``docs/methods.md`` §1.9).

    The least squares of ``y`` on ``[B | X]`` are solved in their within-batch form (the batch
    indicators absorb each batch's mean and shift): ``β_X = (Σ_i Sxx_i)⁻¹ Σ_i Sxy_i`` with the
    within-batch centred cross-products, then each batch's intercept ``b_i = ȳ_i - x̄_iᵀβ_X``, expressed in
    the coding ``batch_rows`` (the identity, or with a reference batch ``r`` the identity plus a column of
    ones, so that row ``r`` holds ``b_r`` and the others ``b_i - b_r``). The same coefficients as the
    normal equations of :class:`featharm._core.ols.GramSolver`, better conditioned. A feature with missing
    values uses its own observed rows (a batch without any has NaN coefficients, as
    :func:`featharm._core.missing.observed_coef`); its design is rank deficient when the within-batch
    cross-products, scaled to unit diagonal, have an eigenvalue below ``rank_rtol`` (then ``coef`` is NaN).
    """
    m, q, p = stats.m, stats.q, stats.p
    coef = np.empty((m + q, p))
    ss = np.empty((m, p))
    plain = np.empty((m, p))  # b_i (intercept of each batch's own indicator)
    incomplete = np.flatnonzero((stats.n_obs < stats.counts[:, None]).any(axis=0))
    complete = np.setdiff1d(np.arange(p), incomplete)
    deficient = []
    if complete.size:
        Sxx, Sxy, Syy, xbar, ybar, B = _centred(stats, complete if incomplete.size else None, True)
        if q:
            beta = _solve_spd(Sxx.sum(axis=0), _y_cross(Sxx, Sxy, B, True).sum(axis=0))
        else:
            beta = np.zeros((0, complete.size))
        delta = beta[None] - B
        coef[m:, complete] = beta
        ss[:, complete] = _within_ss(Sxx, Sxy, Syy, delta, True)
        plain[:, complete] = _location(stats, complete, xbar, ybar, delta, beta, True)
    for start in range(0, incomplete.size, block):
        f = incomplete[start:start + block]
        Sxx, Sxy, Syy, xbar, ybar, B = _centred(stats, f, False)
        if q:
            A = Sxx.sum(axis=0)  # (b, q, q)
            bad = _rank_deficient(A, rank_rtol)
            A[bad] = np.eye(q)
            beta = np.linalg.solve(A, _y_cross(Sxx, Sxy, B, False).sum(axis=0).T[:, :, None])[:, :, 0].T
            beta[:, bad] = np.nan
            deficient.extend(f[bad].tolist())
        else:
            beta = np.zeros((0, f.size))
        delta = beta[None] - B
        coef[m:, f] = beta
        ss[:, f] = _within_ss(Sxx, Sxy, Syy, delta, False)
        plain[:, f] = np.where(stats.n_obs[:, f] > 0, _location(stats, f, xbar, ybar, delta, beta, False), np.nan)
    # from each batch's own intercept to the coding of batch_rows (rows_coef = batch_rows⁻¹ b)
    present = stats.n_obs > 0
    ref = _reference_column(batch_rows)
    if ref is None:
        coef[:m] = plain
    else:
        coef[:m] = plain - plain[ref]
        coef[ref] = plain[ref]
    coef[:m][~present] = np.nan
    ss[~present] = 0.0
    return LocationFit(coef, ss, stats.n_obs.copy(), np.asarray(deficient, dtype=np.intp))


def _reference_column(batch_rows: np.ndarray) -> int | None:
    m = batch_rows.shape[0]
    if np.array_equal(batch_rows, np.eye(m)):
        return None
    ones = np.flatnonzero((batch_rows == 1.0).all(axis=0))
    if ones.size != 1:
        raise InputError("batch_rows must be the identity or the identity with one column of ones (reference batch).")
    return int(ones[0])


def _solve_spd(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A⁻¹ B`` for a symmetric positive definite ``A`` (Cholesky; LU should it fail)."""
    import scipy.linalg as sla

    try:
        return sla.cho_solve(sla.cho_factor(A, lower=False, check_finite=False), B, check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.solve(A, B)


def _rank_deficient(A: np.ndarray, rtol: float) -> np.ndarray:
    """Which of the stacked cross-product matrices ``A`` (b, q, q), scaled to unit diagonal, have an
    eigenvalue below ``rtol`` (a column constant within batches on these rows, or a combination of others)."""
    d = np.sqrt(np.einsum("bii->bi", A))
    with np.errstate(divide="ignore", invalid="ignore"):
        C = A / d[:, :, None] / d[:, None, :]
    C[~np.isfinite(C)] = 0.0
    return ~(np.linalg.eigvalsh(C)[:, 0] > rtol)


def total_variance(stats: SuffStats, block: int = 2048) -> np.ndarray:
    """Variance (ddof 0) of every feature over all its observed values (all batches)."""
    p = stats.p
    out = np.empty(p)
    incomplete = (stats.n_obs < stats.counts[:, None]).any(axis=0)
    for start in range(0, p, block):
        f = np.arange(start, min(p, start + block))
        shared = not incomplete[f].any()
        Sxx, Sxy, Syy, xbar, ybar, B = _centred(stats, f, shared)
        n = stats.n_obs[:, f]
        # within-batch sums of squares of y and batch means of y, from the shifted sums
        if shared:
            within = Syy + 2.0 * np.einsum("mqb,mqb->mb", B, Sxy) + np.einsum("mqb,mqr,mrb->mb", B, Sxx, B)
            mean = stats.y_shift[:, f] + ybar + np.einsum("mq,mqb->mb", xbar, B)
        else:
            within = Syy + 2.0 * np.einsum("mqb,mqb->mb", B, Sxy) + np.einsum("mqb,mbqr,mrb->mb", B, Sxx, B)
            mean = stats.y_shift[:, f] + ybar + np.einsum("mbq,mqb->mb", xbar, B)
        with np.errstate(divide="ignore", invalid="ignore"):
            N = n.sum(axis=0)
            grand = np.where(n > 0, n * mean, 0.0).sum(axis=0) / N
            dev = np.where(n > 0, mean - grand, 0.0)
            out[f] = (np.where(n > 0, within, 0.0).sum(axis=0) + (n * dev * dev).sum(axis=0)) / N
    return out


def frozen_moments(stats: SuffStats, alpha: np.ndarray, beta: np.ndarray,
                   sigma: np.ndarray, block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S5 of every batch of ``stats`` against a frozen model (``docs/methods.md`` §5.7): the batch mean of
    ``z = (y - alpha - xᵀbeta) / sigma`` and its variance (ddof 1) over each feature's observed rows.

    Returns ``gamma_hat`` (m, p; NaN without observed values), ``delta_raw`` (m, p; NaN below 2) and
    ``n_obs`` (m, p), as :func:`featharm._core.missing.batch_moments` computes them from ``z``.
    """
    m, q, p = stats.m, stats.q, stats.p
    beta = np.asarray(beta, dtype=np.float64).reshape(q, p)
    incomplete = (stats.n_obs < stats.counts[:, None]).any(axis=0)
    loc = np.empty((m, p))
    ss = np.empty((m, p))
    for start in range(0, p, block):
        f = np.arange(start, min(p, start + block))
        shared = not incomplete[f].any()
        Sxx, Sxy, Syy, xbar, ybar, B = _centred(stats, f, shared)
        delta = beta[None, :, f] - B
        loc[:, f] = _location(stats, f, xbar, ybar, delta, beta[:, f], shared)
        ss[:, f] = _within_ss(Sxx, Sxy, Syy, delta, shared)
    n = stats.n_obs
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma_hat = np.where(n > 0, (loc - alpha) / sigma, np.nan)
        delta_raw = np.where(n > 1, ss / ((n - 1.0) * (sigma * sigma)), np.nan)
    return gamma_hat, delta_raw, n.copy()
