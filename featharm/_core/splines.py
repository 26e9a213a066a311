"""Penalized regression splines: a cubic B-spline basis frozen at fit, and its roughness penalty.

:class:`SplineBasis` holds everything needed to evaluate the basis of one smooth covariate on new rows
exactly as at fit time: the full knot vector (boundary knots repeated ``degree + 1`` times, interior knots
at quantiles of the training values), the degree, and the training range. It is plain JSON
(:meth:`SplineBasis.to_dict`), so a saved model never pickles.

Interior knots sit at quantiles of the training values by default; ``knots="uniform"`` spaces them evenly
between the boundary knots (with fixed bounds the basis is then a function of the bounds alone).

The basis drops the first B-spline (the B-splines sum to one, so the constant is spanned by the batch
indicators of the design) and therefore has ``df - 1`` columns, as statsmodels' ``BSplines`` with
``include_intercept=False``. The penalty is the integrated squared second derivative
``S_ij = ∫ B_i''(x) B_j''(x) dx`` over the boundary knots, computed exactly (B-spline second derivatives of a
cubic spline are piecewise linear, so a 3-point Gauss–Legendre rule per knot interval is exact).

Values outside the boundary knots are refused (:class:`~featharm.exceptions.OutOfRangeError`, naming the
variable, the value and the fitted range) unless linear extrapolation is asked for: beyond a boundary the
fitted curve continues along its tangent there, ``f(x) = f(b) + f'(b) (x - b)``.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import BSpline

from ..exceptions import InputError, OutOfRangeError

__all__ = ["SplineBasis", "uniform_knots"]


def _quantile_knots(x: np.ndarray, n_inner: int) -> np.ndarray:
    """Interior knots at the ``j / (n_inner + 1)`` quantiles (linear interpolation, as R type 7)."""
    probs = np.linspace(0.0, 1.0, n_inner + 2)[1:-1]
    # percent form as statsmodels/patsy compute it, so knots agree bit for bit with neuroHarmonize
    return np.asarray([np.percentile(x, 100.0 * p) for p in probs], dtype=np.float64)


def uniform_knots(lo: float, hi: float, n_inner: int) -> np.ndarray:
    """``n_inner`` interior knots evenly spaced over ``[lo, hi]``: ``lo + j (hi - lo) / (n_inner + 1)``,
    ``j = 1..n_inner`` (``numpy.linspace``). They depend on the bounds alone, not on the values."""
    return np.linspace(float(lo), float(hi), int(n_inner) + 2)[1:-1]


class SplineBasis:
    """A B-spline basis for one covariate, frozen at fit time.

    Parameters
    ----------
    name : str
        Covariate column the basis belongs to (used in messages and column names).
    knots : array_like
        Full, sorted knot vector (boundary knots repeated ``degree + 1`` times).
    degree : int
        Spline degree (3 = cubic).
    data_range : (float, float)
        Minimum and maximum of the training values.
    """

    def __init__(self, name: str, knots, degree: int, data_range):
        self.name = str(name)
        self.knots = np.asarray(knots, dtype=np.float64)
        self.degree = int(degree)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        n_all = self.knots.size - self.degree - 1
        self._spline = BSpline(self.knots, np.eye(n_all), self.degree, extrapolate=False)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_data(cls, x, name: str, df: int = 10, degree: int = 3, bounds=None,
                  knots: str = "quantile") -> "SplineBasis":
        """Place ``df - degree - 1`` interior knots at quantiles of ``x``; boundary knots at its range.

        ``bounds=(lo, hi)`` moves the boundary knots (they must contain every value of ``x``), so that
        later values in ``[lo, hi]`` are inside the basis. Tied quantiles (e.g. integer ages) are merged,
        which lowers the number of basis columns. ``knots="uniform"`` spaces the interior knots evenly
        between the boundary knots instead (:func:`uniform_knots`): with both bounds given, the basis does
        not depend on ``x`` at all (what a federated plan fixes before any site has summarized its rows).
        """
        x = np.asarray(x, dtype=np.float64)
        lo, hi = float(x.min()), float(x.max())
        if bounds is not None:
            blo, bhi = (float(b) if b is not None else d for b, d in zip(bounds, (lo, hi)))
            if not (blo <= lo and bhi >= hi and blo < bhi):
                raise InputError(
                    f"the bounds {tuple(bounds)} given for smooth term {name!r} must contain its values "
                    f"(range [{lo:g}, {hi:g}]) and have lower < upper."
                )
            lo, hi = blo, bhi
        if not hi > lo:
            raise InputError(
                f"smooth term {name!r} is constant ({lo:g}); a spline needs at least two distinct values. "
                "Drop it from `smooth`."
            )
        n_inner = int(df) - int(degree) - 1
        if n_inner < 0:
            raise InputError(f"df={df} is too small for a degree-{degree} spline; use df >= {degree + 1}.")
        if knots == "uniform":
            inner = uniform_knots(lo, hi, n_inner)
        elif knots == "quantile":
            inner = _quantile_knots(x, n_inner)
        else:
            raise InputError(f"knots must be 'quantile' or 'uniform'; got {knots!r}.")
        inner = np.unique(inner[(inner > lo) & (inner < hi)])
        knots = np.concatenate([[lo] * (degree + 1), inner, [hi] * (degree + 1)])
        return cls(name, knots, degree, (x.min(), x.max()))

    @classmethod
    def from_range(cls, name: str, lo: float, hi: float, df: int = 10, degree: int = 3) -> "SplineBasis":
        """The basis fixed by a range alone: boundary knots at ``lo`` and ``hi``, ``df - degree - 1`` interior
        knots evenly spaced between them (:func:`uniform_knots`); ``from_data(x, knots="uniform",
        bounds=(lo, hi))`` gives the same knots for any ``x`` inside the range. No training values are
        known, so the range is recorded as the data range."""
        lo, hi = float(lo), float(hi)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise InputError(f"the range of smooth term {name!r} must be finite numbers with lower < upper; got "
                             f"[{lo:g}, {hi:g}].")
        n_inner = int(df) - int(degree) - 1
        if n_inner < 0:
            raise InputError(f"df={df} is too small for a degree-{degree} spline; use df >= {degree + 1}.")
        inner = uniform_knots(lo, hi, n_inner)
        knots = np.concatenate([[lo] * (degree + 1), inner, [hi] * (degree + 1)])
        return cls(name, knots, degree, (lo, hi))

    # ----------------------------------------------------------------------------- properties
    @property
    def bounds(self) -> tuple[float, float]:
        """Boundary knots: the interval where the basis is defined without extrapolation."""
        return float(self.knots[0]), float(self.knots[-1])

    @property
    def n_columns(self) -> int:
        """Number of basis columns (the first B-spline is dropped)."""
        return self.knots.size - self.degree - 2

    def column_names(self) -> list[str]:
        return [f"s({self.name})[{j}]" for j in range(self.n_columns)]

    # ----------------------------------------------------------------------------- evaluation
    def _raw(self, x: np.ndarray, nu: int = 0) -> np.ndarray:
        spl = self._spline if nu == 0 else self._spline.derivative(nu)
        return spl(x)[:, 1:]

    def check_range(self, x: np.ndarray, index=None) -> None:
        """Raise :class:`OutOfRangeError` when a value lies outside the boundary knots."""
        lo, hi = self.bounds
        bad = (x < lo) | (x > hi)
        if bad.any():
            vals = x[bad]
            worst = vals[np.argmax(np.maximum(lo - vals, vals - hi))]
            where = ""
            if index is not None:
                ids = list(np.asarray(index)[bad][:5])
                where = f" at rows {', '.join(map(repr, ids))}{' ...' if bad.sum() > 5 else ''}"
            raise OutOfRangeError(
                f"smooth term {self.name!r} has {int(bad.sum())} value(s) outside the range the spline was "
                f"fitted on, [{lo:g}, {hi:g}] (e.g. {worst:g}{where}). The fitted curve is not defined "
                "there: drop those rows, refit on data covering them (or fit with wider `smooth_bounds`), "
                "or pass extrapolate='linear' to continue the curve along its tangent at the boundary."
            )

    def transform(self, x, *, extrapolate: bool = False, index=None) -> np.ndarray:
        """The basis (n × ``n_columns``) at ``x``; outside the boundary an error or linear extrapolation."""
        x = np.asarray(x, dtype=np.float64).ravel()
        if not extrapolate:
            self.check_range(x, index)
            return np.ascontiguousarray(self._raw(x))
        lo, hi = self.bounds
        xc = np.clip(x, lo, hi)
        out = self._raw(xc)
        for b, mask in ((lo, x < lo), (hi, x > hi)):
            if mask.any():
                d1 = self._raw(np.array([b]), 1)[0]
                out[mask] += (x[mask] - b)[:, None] * d1[None, :]
        return np.ascontiguousarray(out)

    def penalty(self) -> np.ndarray:
        """``∫ B_i'' B_j''`` over the boundary knots (exact), for the kept columns."""
        u = np.unique(self.knots)
        gx, gw = np.polynomial.legendre.leggauss(3)
        a, b = u[:-1, None], u[1:, None]
        pts = ((a + b) / 2 + (b - a) / 2 * gx[None, :]).ravel()
        wts = ((b - a) / 2 * gw[None, :]).ravel()
        d2 = self._raw(pts, 2)
        return (d2 * wts[:, None]).T @ d2

    # ----------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {"name": self.name, "knots": self.knots.tolist(), "degree": self.degree,
                "data_range": list(self.data_range)}

    @classmethod
    def from_dict(cls, d: dict) -> "SplineBasis":
        return cls(d["name"], d["knots"], d["degree"], d["data_range"])

    def __repr__(self) -> str:
        lo, hi = self.bounds
        return f"SplineBasis({self.name!r}, degree={self.degree}, columns={self.n_columns}, bounds=[{lo:g}, {hi:g}])"
