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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SMALL_PROBLEM = 4_000_000  # rows × features (32 MB of float64)

_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


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


def run_parallel(fn, parts: list) -> list:
    """``[fn(part) for part in parts]``, each part in a thread of its own (one part: in this thread).

    Meanwhile the BLAS runs on one thread, so that the workers' small matrix products do not each wake the
    BLAS's threads (and give the same result, to the bit, whatever the number of workers). ``fn`` must release the GIL for its heavy work (NumPy's element-wise operations,
    ``take`` and ``matmul`` do).
    """
    try:
        limit = _get_controller().limit(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover
        limit = contextlib.nullcontext()
    with limit:
        if len(parts) <= 1:
            return [fn(part) for part in parts]
        with ThreadPoolExecutor(len(parts)) as pool:
            return list(pool.map(fn, parts))
