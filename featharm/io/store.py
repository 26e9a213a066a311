"""Feature stores: subjects × features tables too large for memory, as Zarr stores (``docs/methods.md`` §1.9).

A store is a Zarr group (format 3 with zarr 3.x, else 2) holding

* the array ``data`` (subjects × features, float32 or float64, NaN = missing), chunked by rows **and**
  columns (by default chunks of about 32 MB: up to 32,768 features × as many rows as fit);
* the attribute ``featharm`` (in the group's metadata): ``{"format": "featharm-feature-store", "version": 1,
  "ids": [...], "features": [...]}``: the subject ids (strings or integers, one per row) and the feature
  names (one per column), and optionally ``"meta"``: what made the store (e.g. the surfaces' hemispheres).

:func:`read_store` opens one lazily (a :class:`FeatureStore` over a Dask array: nothing is read);
:func:`write_store` writes one from a FeatureStore, a Dask or NumPy array (with ``ids`` and ``features``) or
a DataFrame, chunk by chunk, into a temporary folder renamed over ``path`` at the end (a failed or
interrupted write leaves no half store). ``ComBat.fit``/``transform`` take a FeatureStore (ids matched to
the covariates); ``transform`` returns one, lazily, for :func:`write_store`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._dask import INSTALL, compute, require
from ..exceptions import InputError

__all__ = ["FeatureStore", "read_store", "write_store", "is_store", "STORE_FORMAT", "default_chunks"]

STORE_FORMAT = "featharm-feature-store"
STORE_VERSION = 1
CHUNK_BYTES = 32 * 2**20
MAX_CHUNK_COLUMNS = 32768


@dataclass
class FeatureStore:
    """A subjects × features table held lazily: ``data`` (a Dask array), ``ids`` (one per row) and
    ``features`` (one per column); ``path`` where it was read from; ``meta`` what made it."""

    data: Any
    ids: pd.Index
    features: pd.Index
    path: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ids = pd.Index(self.ids)
        self.features = pd.Index([str(f) for f in self.features])
        n, p = self.data.shape
        if len(self.ids) != n or len(self.features) != p:
            raise InputError(f"a feature store of {n} rows × {p} features needs {n} ids and {p} feature names; got "
                             f"{len(self.ids)} and {len(self.features)}.")

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def with_data(self, data, features=None) -> "FeatureStore":
        """The same rows with other values (e.g. harmonized, lazily)."""
        return FeatureStore(data, self.ids, self.features if features is None else features, None, dict(self.meta))

    def to_frame(self) -> pd.DataFrame:
        """The whole table in memory (computes it)."""
        values = compute(self.data, desc="reading")[0]
        return pd.DataFrame(values, index=self.ids, columns=self.features)

    def __repr__(self) -> str:
        n, p = self.shape
        where = f" at {self.path}" if self.path else ""
        return f"FeatureStore({n:,} rows × {p:,} features, {self.dtype}, chunks {self.data.chunksize}{where})"


def is_store(path) -> bool:
    """Whether ``path`` is a folder holding a Zarr store (``zarr.json``, ``.zgroup`` or ``.zarray``)."""
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in ("zarr.json", ".zgroup", ".zarray"))


def _zarr():
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is in the test extra
        raise ImportError(f"Zarr stores need zarr: {INSTALL}.") from None
    return zarr


def _ids_from_json(values) -> pd.Index:
    return pd.Index(values)


def read_store(path) -> FeatureStore:
    """Open a feature store lazily (see the module docstring); errors name the store and the fix."""
    da = require("a Zarr store")
    zarr = _zarr()
    p = Path(os.path.abspath(path))  # read later (lazily), maybe from another working directory
    if not p.exists():
        raise InputError(f"{path}: no such store.")
    if not is_store(p):
        raise InputError(f"{path} is not a Zarr store (no zarr.json, .zgroup or .zarray in it).")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # zarr raises several kinds for damaged metadata
        raise InputError(f"{path}: cannot open the Zarr store ({type(exc).__name__}: {exc}).") from None
    if not isinstance(node, zarr.Group) or "data" not in node:
        raise InputError(f"{path} holds no array 'data' (subjects × features) in a group; write feature stores with "
                         "featharm.io.write_store (or put the table in an array named 'data' and its ids and "
                         "feature names in the group's 'featharm' attribute).")
    info = node.attrs.get("featharm")
    arr = node["data"]
    if not isinstance(info, dict) or "ids" not in info or "features" not in info:
        raise InputError(f"{path} has no subject ids (and feature names): its group attribute 'featharm' must hold "
                         "'ids' (one per row) and 'features' (one per column). Write the store with "
                         "featharm.io.write_store(path, X, ids=..., features=...).")
    if info.get("format", STORE_FORMAT) != STORE_FORMAT or int(info.get("version", 1)) > STORE_VERSION:
        raise InputError(f"{path}: feature store format {info.get('format')!r} version {info.get('version')} is not "
                         f"known to this featharm (it reads {STORE_FORMAT!r} up to version {STORE_VERSION}); update "
                         "featharm.")
    if len(arr.shape) != 2:
        raise InputError(f"{path}: the array 'data' must be subjects × features (2-D); it has shape {arr.shape}.")
    n, p = arr.shape
    ids, features = _ids_from_json(info["ids"]), info["features"]
    if len(ids) != n or len(features) != p:
        raise InputError(f"{path}: the array 'data' is {n} × {p} but the store lists {len(ids)} ids and "
                         f"{len(features)} feature names; rewrite it with featharm.io.write_store.")
    if ids.has_duplicates:
        raise InputError(f"{path}: repeated subject ids {list(ids[ids.duplicated()].unique()[:5])}; ids must be "
                         "unique.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{path}: the array 'data' holds {arr.dtype}, not numbers.")
    return FeatureStore(da.from_zarr(arr), ids, features, str(path), dict(info.get("meta", {})))


def default_chunks(shape, itemsize: int) -> tuple[int, int]:
    """Chunks of about :data:`CHUNK_BYTES`: up to :data:`MAX_CHUNK_COLUMNS` features × as many rows as fit."""
    n, p = shape
    cols = max(1, min(p, MAX_CHUNK_COLUMNS))
    rows = max(1, min(n, CHUNK_BYTES // (cols * itemsize)))
    return int(rows), int(cols)


def _json_ids(ids: pd.Index) -> list:
    out = []
    for v in ids:
        v = v.item() if hasattr(v, "item") else v
        out.append(v if isinstance(v, (str, int)) and not isinstance(v, bool) else str(v))
    return out


def _as_store(X, ids, features) -> FeatureStore:
    da = require("writing a Zarr store")
    if isinstance(X, FeatureStore):
        if ids is not None or features is not None:
            raise InputError("write_store: a FeatureStore carries its own ids and feature names; pass none.")
        return X
    if isinstance(X, pd.DataFrame):
        ids = X.index if ids is None else ids
        features = X.columns if features is None else features
        X = X.to_numpy()
    if ids is None or features is None:
        raise InputError("write_store needs the subject ids and feature names of an array: write_store(path, X, "
                         "ids=[...], features=[...]) (a DataFrame or FeatureStore carries its own).")
    data = X if isinstance(X, da.Array) else da.from_array(np.asarray(X), chunks=default_chunks(
        np.shape(X), np.asarray(X).dtype.itemsize))
    return FeatureStore(data, pd.Index(ids), pd.Index(features))


def write_store(path, X, *, ids=None, features=None, chunks=None, dtype=None, overwrite: bool = False,
                meta: dict | None = None, _staged_path=None) -> str:
    """Write a feature store at ``path`` (see the module docstring) and return its path.

    ``X``: a :class:`FeatureStore` (e.g. ``ComBat.transform`` of one, computed chunk by chunk as it is
    written), a DataFrame, or a NumPy/Dask array with ``ids`` and ``features``. ``chunks`` (rows, features):
    default the input's chunks when they are regular, else :func:`default_chunks`. ``dtype``: default the
    input's (float32 stays float32). An existing store is replaced only with ``overwrite=True``.
    """
    st = _as_store(X, ids, features)
    data = st.data
    if data.ndim != 2:
        raise InputError(f"write_store: the table must be subjects × features (2-D); got {data.ndim} dimension(s).")
    dt = np.dtype(dtype) if dtype is not None else (data.dtype if np.issubdtype(data.dtype, np.floating)
                                                    else np.dtype(np.float64))
    if chunks is None:
        rc, cc = data.chunks
        regular = all(len(set(c[:-1])) <= 1 and (len(c) == 1 or c[-1] <= c[0]) for c in (rc, cc))
        chunks = (rc[0], cc[0]) if regular and rc and cc else default_chunks(data.shape, dt.itemsize)
    chunks = tuple(int(max(1, c)) for c in chunks)
    data = data.astype(dt).rechunk(chunks)
    info = {"format": STORE_FORMAT, "version": STORE_VERSION, "ids": _json_ids(st.ids),
            "features": [str(f) for f in st.features]}
    if meta or st.meta:
        info["meta"] = {**st.meta, **(meta or {})}

    def write(target: str) -> None:
        zarr = _zarr()
        fmt = 3 if int(zarr.__version__.split(".")[0]) >= 3 else 2
        g = zarr.open_group(target, mode="w", **({"zarr_format": 3} if fmt == 3 else {}))
        arr = g.create_array("data", shape=data.shape, chunks=chunks, dtype=dt, fill_value=np.nan) if fmt == 3 \
            else g.create_dataset("data", shape=data.shape, chunks=chunks, dtype=dt, fill_value=np.nan)
        g.attrs["featharm"] = info
        compute(require().store(data, arr, lock=False, compute=False), desc=f"writing {Path(path).name}")

    if _staged_path is not None:  # the command line's staging (featharm._staging) renames it at the end
        write(_staged_path)
        return str(path)
    from .._staging import Output, staged_outputs

    p = Path(path)
    if p.exists() and not overwrite:
        raise InputError(f"{path} exists; pass overwrite=True to replace it.")
    with staged_outputs([Output("store", "store", os.fspath(path), directory=True)]) as staged:
        staged.write_directory("store", write)
    return str(path)
