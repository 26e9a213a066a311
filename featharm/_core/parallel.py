"""Threads for featharm's own passes over the data (see :mod:`featharm._threads` for the BLAS's).

The element-wise steps of the fit and of the adjustment run in NumPy on one core; on a large table their
blocks are dealt between as many threads as the BLAS may use (:func:`block_workers`), with the BLAS on one
thread meanwhile (:func:`run_parallel`). NumPy releases the GIL inside those steps, so the threads run at
once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

__all__ = ["SMALL_PROBLEM", "block_workers", "one_blas_thread", "run_parallel"]

SMALL_PROBLEM = 4_000_000  # rows × features (32 MB of float64): below it, one thread (and one BLAS thread)

_controller = None
_modules_seen = -1  # len(sys.modules) when the controller was made


def _get_controller():
    """threadpoolctl's controller of the loaded thread pools, made again when modules were imported since (a
    BLAS loaded later, e.g. SciPy's own OpenBLAS, would otherwise escape the limits)."""
    global _controller, _modules_seen
    if _controller is None or len(sys.modules) != _modules_seen:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        _modules_seen = len(sys.modules)
    return _controller


def _blas_thread_count() -> int:
    try:
        ctl = _get_controller()
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return 1
    counts = [lib.num_threads for lib in ctl.select(user_api="blas").lib_controllers]
    return min(counts) if counts else 1


def block_workers(n_elements: int) -> int:
    """Threads for featharm's own block loops over a table of ``n_elements`` values.

    One below :data:`SMALL_PROBLEM` (a thread costs more than it saves there); above, the number of threads
    the BLAS may use now, at most the number of cores. ``FEATHARM_THREADS=N`` overrides both.
    """
    env = os.environ.get("FEATHARM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    if n_elements < SMALL_PROBLEM:
        return 1
    return max(1, min(os.cpu_count() or 1, _blas_thread_count()))


def one_blas_thread():
    """A context in which the BLAS runs on one thread: for a computation whose last bits would otherwise depend
    on how many threads the BLAS splits it over (a QR, an SVD, a product with a long inner dimension)."""
    try:
        return _get_controller().limit(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()


def run_parallel(fn, parts: list) -> list:
    """``[fn(part) for part in parts]``, each part in a thread of its own (one part: in this thread).

    Meanwhile the BLAS runs on one thread, so that the workers' small matrix products do not each wake the
    BLAS's threads (and give the same result, to the bit, whatever the number of workers). ``fn`` must release the GIL for its heavy work (NumPy's element-wise operations,
    ``take`` and ``matmul`` do).
    """
    with one_blas_thread():
        if len(parts) <= 1:
            return [fn(part) for part in parts]
        with ThreadPoolExecutor(len(parts)) as pool:
            return list(pool.map(fn, parts))
