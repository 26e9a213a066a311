"""Where featharm's out-of-core computations run (Dask), and how lazy inputs are recognised.

featharm does not schedule anything itself: a fit or a transform on a :class:`dask.array.Array` builds a Dask
graph and :func:`compute` runs it on

* Dask's threaded scheduler (the default: one process, as many threads as cores; NumPy and the BLAS
  release the GIL in the heavy steps), or
* a ``dask.distributed`` cluster set with :func:`set_scheduler` (a ``distributed.Client``, or the address
  of a running scheduler, ``tcp://host:8786``; the CLI's ``--scheduler ADDRESS``). Its workers need featharm
  installed (the same version) and the data reachable at the same path.

The graphs are built so that the result does not depend on where or in which order the tasks run: the
statistics are merged in a fixed tree in the canonical order of :meth:`featharm._core.suffstats.SuffStats.combine`,
so a cluster and the threaded scheduler give the same model, bit for bit.

Inputs taken lazily (never loaded whole): a ``dask.array.Array``, a Zarr array, an h5py dataset. A
``numpy.memmap`` is a NumPy array and keeps the in-memory path (wrap it with ``dask.array.from_array`` to
stream it). Dask is optional (``pip install 'featharm[scale]'``); without it these inputs are an error
saying so.
"""

from __future__ import annotations

import sys

from ._core.parallel import _get_controller
from ._progress import Progress
from .exceptions import InputError

__all__ = ["set_scheduler", "get_scheduler", "compute", "is_lazy", "as_dask", "require"]

_state: dict = {"scheduler": None, "client": None}

INSTALL = "pip install 'featharm[scale]' (dask[array,distributed], zarr)"


def require(what: str = "this"):
    """``dask.array``, or an :class:`ImportError` saying how to install it."""
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is in the test extra
        raise ImportError(f"{what} needs Dask: {INSTALL}.") from None
    return da


def set_scheduler(client_or_address=None):
    """Run featharm's out-of-core computations on a Dask cluster (``None``: back to the threaded scheduler).

    ``client_or_address``: a ``distributed.Client``, or the address of a running scheduler
    (``"tcp://10.0.0.5:8786"``), to which a client is connected (and kept). Returns the client (or None).
    """
    old = _state.get("own")
    if client_or_address is None:
        _state.update(scheduler=None, client=None, own=None)
        if old is not None:
            old.close()
        return None
    try:
        import distributed
    except ImportError:  # pragma: no cover
        raise ImportError(f"a Dask cluster needs dask.distributed: {INSTALL}.") from None
    if isinstance(client_or_address, distributed.Client):
        client, own = client_or_address, None
    elif isinstance(client_or_address, str):
        try:
            client = distributed.Client(client_or_address, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot connect to the Dask scheduler at {client_or_address!r} ({exc}); start it "
                             "(dask scheduler / dask-jobqueue) and give its address, e.g. tcp://host:8786.") from None
        own = client
    else:
        raise InputError(f"set_scheduler takes a distributed.Client, an address such as 'tcp://host:8786', or "
                         f"None; got {type(client_or_address).__name__}.")
    _state.update(scheduler=client_or_address, client=client, own=own)
    if old is not None and old is not own:
        old.close()
    return client


def get_scheduler():
    """The ``distributed.Client`` set with :func:`set_scheduler`, or None (the threaded scheduler)."""
    return _state["client"]


def compute(*objs, desc: str = "computing"):
    """``dask.compute(*objs)`` on the scheduler set (:func:`set_scheduler`), with featharm's progress bar
    (shown only when enabled: the CLI without ``--quiet``)."""
    import dask

    client = _state["client"]
    if client is not None:
        futures = client.compute(list(objs))
        with Progress(len(futures), f"{desc} (on {client.scheduler.address})") as bar:
            import distributed

            for _ in distributed.as_completed(futures, loop=client.loop):
                bar.update()
            return tuple(client.gather(futures))
    with _TaskProgress(desc), _one_blas_thread():  # Dask's threads are the parallelism (one BLAS thread each)
        return dask.compute(*objs, scheduler="threads")


class _TaskProgress:
    """featharm's :class:`~featharm._progress.Progress` driven by the tasks of a local Dask computation."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def __enter__(self):
        from dask.callbacks import Callback

        outer = self

        class _CB(Callback):
            def _start_state(self, dsk, state):
                total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
                outer.bar = Progress(total, outer.desc)
                outer.bar.update(len(state["finished"]))

            def _posttask(self, key, result, dsk, state, worker_id):
                if outer.bar is not None:
                    outer.bar.update()

        self.cb = _CB()
        self.cb.__enter__()
        return self

    def __exit__(self, *exc):
        self.cb.__exit__(*exc)
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def _one_blas_thread():
    import contextlib

    try:
        return _get_controller().limit(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()


def is_lazy(X) -> bool:
    """Whether ``X`` is taken out of core: a Dask array, a Zarr array, an h5py dataset, or a
    :class:`featharm.io.store.FeatureStore` (checked without importing those libraries)."""
    mods = sys.modules
    if "dask.array" in mods and isinstance(X, mods["dask.array"].Array):
        return True
    if "zarr" in mods and isinstance(X, getattr(mods["zarr"], "Array", ())):
        return True
    if "h5py" in mods and isinstance(X, getattr(mods["h5py"], "Dataset", ())):
        return True
    return type(X).__name__ == "FeatureStore" and hasattr(X, "data") and hasattr(X, "ids")


def as_dask(X):
    """A Dask array over a lazy input (itself if it is one), chunked as stored."""
    da = require("an out-of-core input")
    if isinstance(X, da.Array):
        return X
    chunks = getattr(X, "chunks", None)
    return da.from_array(X, chunks=chunks if chunks else "auto")
