"""Saving and loading fitted models: one zip file with a JSON manifest and ``.npy`` arrays, never pickle.

Layout of a model file (``.fhm``, any name works)::

    manifest.json        {"format": "featharm-model", "schema_version": 1, "featharm_version": ...,
                          "model": "ComBat", "params": {...}, "state": {...}, "arrays": {...}}
    arrays/<name>.npy    numeric arrays (batch × feature estimates, coefficients ...), read with
                         allow_pickle=False

The file holds O(batches × features + coefficients), never the data. Files are written atomically (a
temporary file in the same folder, then renamed). A file written with a newer schema is refused.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ._version import __version__
from .exceptions import ModelFileError

__all__ = ["save_model", "load_model", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
FORMAT = "featharm-model"


def _encode_params(value):
    """Parameters as JSON: tuples tagged so that they load as tuples (``smooth_bounds={"age": (0, 100)}``)."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_params(v) for v in value]}
    if isinstance(value, list):
        return [_encode_params(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode_params(v) for k, v in value.items()}
    return value


def _decode_params(value):
    if isinstance(value, dict):
        if list(value) == ["__tuple__"] and isinstance(value["__tuple__"], list):
            return tuple(_decode_params(v) for v in value["__tuple__"])
        return {k: _decode_params(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_params(v) for v in value]
    return value


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot store {type(o).__name__} in a model file")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a directory; give a file name.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the user asked for, not the temporary one
        raise type(exc)(exc.errno, f"cannot write {str(path)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:  # disk full, read-only ...: name the target
            raise type(exc)(exc.errno, f"cannot write {str(path)!r}: {exc.strerror}") from None
        raise


def save_model(model, path) -> None:
    """Save a fitted featharm model to ``path`` (see the module docstring for the format)."""
    atomic_write_bytes(path, model_bytes(model))


def model_bytes(model) -> bytes:
    """The content of the model file of a fitted featharm model (what :func:`save_model` writes)."""
    state, arrays = model._get_state()
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "featharm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": type(model).__name__,
        "params": _encode_params(model.get_params(deep=False)),
        "state": state,
        "arrays": {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)} for k, v in arrays.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, default=_json_default, allow_nan=True))
        for name, arr in arrays.items():
            a = np.asarray(arr)
            if a.dtype == object:
                raise ModelFileError(f"array {name!r} has object dtype and cannot be stored without pickle")
            b = io.BytesIO()
            np.lib.format.write_array(b, a, allow_pickle=False)
            zf.writestr(f"arrays/{name}.npy", b.getvalue())
    return buf.getvalue()


def read_manifest(path) -> dict:
    """The JSON manifest of a model file (no arrays loaded)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("manifest.json"))
    except FileNotFoundError:
        raise ModelFileError(f"model file {str(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise ModelFileError(f"{str(path)!r} is a directory, not a model file; give the .fhm file.") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{str(path)!r} is not a featharm model file (expected a zip with manifest.json): {exc}."
        ) from None


def load_model(path):
    """Load a model saved with ``model.save(path)``; returns a fitted estimator ready to ``transform``.

    Raises :class:`~featharm.exceptions.ModelFileError` for a file that is not a featharm model, is
    damaged, or was written by a newer featharm with a newer schema.
    """
    from .models._base import BaseHarmonizer

    manifest = read_manifest(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelFileError(f"{str(path)!r} is not a featharm model file (format {fmt!r}).")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ModelFileError(
            f"{str(path)!r} uses model schema {version!r}, newer than this featharm ({__version__}) reads "
            f"(schema {SCHEMA_VERSION}); it was written by featharm {manifest.get('featharm_version')}. "
            "Upgrade featharm to load it."
        )
    lacking = [k for k in ("model", "params", "state", "arrays") if not isinstance(manifest.get(k), dict)
               and not (k == "model" and isinstance(manifest.get(k), str))]
    if lacking:
        raise ModelFileError(f"{str(path)!r} is damaged: its manifest lacks {lacking} (or they are not objects).")
    name = manifest.get("model")
    cls = BaseHarmonizer._registry.get(name)
    if cls is None:
        raise ModelFileError(
            f"{str(path)!r} holds a model of unknown type {name!r}; known: {sorted(BaseHarmonizer._registry)}."
        )
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for key, meta in manifest.get("arrays", {}).items():
                with zf.open(f"arrays/{key}.npy") as fh:
                    arr = np.lib.format.read_array(io.BytesIO(fh.read()), allow_pickle=False)
                if list(arr.shape) != list(meta["shape"]):
                    raise ModelFileError(f"array {key!r} in {str(path)!r} has shape {arr.shape}, "
                                         f"manifest says {meta['shape']}: the file is damaged.")
                arrays[key] = arr
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{str(path)!r} is damaged: {exc}.") from None
    try:
        model = cls(**_decode_params(manifest["params"]))
    except TypeError as exc:
        raise ModelFileError(f"{str(path)!r} has parameters {name} does not take: {exc}.") from None
    try:
        model._set_state(manifest["state"], arrays)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, ModelFileError):  # say which file
            raise ModelFileError(f"{str(path)!r} is damaged: {exc}") from None
        raise ModelFileError(
            f"{str(path)!r} is damaged: the stored {name} state is incomplete or malformed "
            f"({type(exc).__name__}: {exc}).") from None
    return model
