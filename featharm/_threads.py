"""BLAS threading for small problems.

On a small table (say 1,000 subjects × 150 features) every matrix product takes well under a
millisecond, and waking a multi-threaded BLAS for each one costs more than the product itself: on a
2-core machine a ComBat fit runs about 3 times faster with one BLAS thread. featharm therefore runs
problems below :data:`SMALL_PROBLEM` elements (rows × features) with one BLAS thread and leaves larger
ones to the BLAS's own threading. Only the BLAS libraries that are loaded are limited, only for the
duration of the call, and the setting is restored afterwards. Set the environment variable
``FEATHARM_BLAS_THREADS=default`` to never limit.

featharm's own passes over the data (the element-wise steps of the fit and the adjustment, which NumPy
runs on one core) are split into blocks; on a large problem the blocks are shared between as many threads
as the BLAS may use (:func:`block_workers`), so ``OPENBLAS_NUM_THREADS=1`` (or threadpoolctl's limits) keeps
featharm on one core too. ``FEATHARM_THREADS=N`` sets that number of threads directly.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

from ._core.parallel import SMALL_PROBLEM, _get_controller, block_workers, run_parallel

__all__ = ["SMALL_PROBLEM", "blas_threads_for", "sized_by_first_argument", "block_workers", "run_parallel"]


@contextlib.contextmanager
def blas_threads_for(n_elements: int):
    """Run the block with one BLAS thread when the problem is small (see the module docstring)."""
    if n_elements >= SMALL_PROBLEM or os.environ.get("FEATHARM_BLAS_THREADS", "").lower() == "default":
        yield
        return
    try:
        ctl = _get_controller()
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield


def sized_by_first_argument(method):
    """Decorator: run ``method(self, X, ...)`` under :func:`blas_threads_for` sized by ``X``."""

    @functools.wraps(method)
    def wrapper(self, X, *args, **kwargs):
        shape = np.shape(X) if hasattr(X, "shape") else ()
        size = int(np.prod(shape)) if len(shape) == 2 else SMALL_PROBLEM
        with blas_threads_for(size):
            return method(self, X, *args, **kwargs)

    return wrapper

