"""Saving and loading fitted models: one zip file with a JSON manifest and ``.npy`` arrays, never pickle.

Layout of a model file (``.fhm``, any name works)::

    manifest.json        {"format": "featharm-model", "schema_version": 1, "featharm_version": ...,
                          "model": "ComBat", "params": {...}, "state": {...}, "arrays": {...}}
    arrays/<name>.npy    numeric arrays (batch × feature estimates, coefficients ...)

The file holds O(batches × features + coefficients), never the data. Files are written atomically (a
temporary file in the same folder, then renamed). A file written with a newer schema is refused.

Reproducible bytes
------------------
The same fitted model always gives the same file, byte for byte: the manifest is JSON with sorted keys,
the members are written in a fixed order (``manifest.json``, then the arrays by name, C order), with
fixed zip metadata and member times of 1980-01-01 00:00. No wall-clock time is recorded unless
``SOURCE_DATE_EPOCH`` is set (https://reproducible-builds.org/specs/source-date-epoch/): then the
manifest's ``created`` is that time (UTC, ISO 8601) and the member times are that time too (clamped to
the zip range 1980–2107). Identical bytes assume the same featharm, numpy and zlib versions.

Loading a file from someone else
--------------------------------
A model file is input from a stranger. :func:`load_model` reads it with bounded cost and checks all of it
against what the model family stores before anything is built, so a damaged or hostile file is a
:class:`~featharm.exceptions.ModelFileError` naming the file, the member, what was found and what was
expected, never an exception from numpy or pandas later in ``transform``:

* the path must be a regular file; the zip may hold at most ``MAX_MEMBERS`` members, each stored or
  deflated (no other compression, no encryption, no repeated names), and their declared uncompressed
  sizes may add up to at most ``MAX_EXPANSION`` times the file's size (or ``EXPANSION_ALLOWANCE`` for small
  files): model estimates barely compress, a zip bomb does;
* ``manifest.json`` is read only up to ``MAX_MANIFEST_BYTES`` (64 MiB: room for 327,684 vertex names of
  150 characters and more), and its nesting depth is counted before it is parsed (at most
  ``MAX_JSON_DEPTH``);
* the manifest's format, schema version (an integer), model type, parameters (each family's parameter
  checks) and state entries (batches, feature names, design, reference batch, fit warnings and each
  family's own entries, e.g. spline knots, at most 1000 basis columns per smooth term) are checked; the
  state gives the size of every named axis (batch, feature, design column, spline column, subject ...);
* the zip must hold exactly ``manifest.json`` and one ``arrays/<name>.npy`` per array the family stores
  (an unexpected member is refused without being read);
* for every array, the member's declared size is compared with the size its axes allow, then its
  ``.npy`` header (at most ``MAX_NPY_HEADER`` bytes) is parsed and its dtype (float64 or bool; never
  object, so never pickle) and shape checked against the family's declaration, and the byte count
  against the shape, all before the data are read; the data are then read into the array, never more
  than the expected bytes;
* the values are checked: finite estimates, positive variances and scales, whole-number counts, 0/1
  flags (each family's :class:`~featharm._schema.Stored` declarations), then the checks relating
  several arrays.

The memory used is the arrays' own size (bounded as above) plus the manifest.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ._version import __version__
from .exceptions import FeatharmError, InputError, ModelFileError

__all__ = ["save_model", "load_model", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

# A file's featharm_version and its optional created time (model files and federated summaries): short text
# of these forms only, so that what `featharm info` or `featharm federated show` prints cannot be spoofed.
VERSION_TEXT = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,39}")
CREATED_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)?", re.ASCII)


def printable(text) -> str:
    """``text`` from a file, for a terminal: every control character (new line, escape code) written as its
    Python escape, the rest as it is."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


# The model families a file may name: class name -> class. Each family registers itself when its class is
# created (BaseHarmonizer.__init_subclass__ calls register), so this module imports no model.
FAMILIES: dict[str, type] = {}


def register(cls: type) -> type:
    """Make ``cls`` loadable: a file naming ``cls.__name__`` is read into a ``cls`` (see :func:`load_model`)."""
    FAMILIES[cls.__name__] = cls
    return cls


def _family(name: str):
    """The registered family ``name`` (``None`` if none). featharm's own families register when
    ``featharm.models`` is imported; :func:`featharm.load_model` (``featharm.models.load_model``) does that
    first, so this module depends on no model."""
    return FAMILIES.get(name)
FORMAT = "featharm-model"
MANIFEST = "manifest.json"

# Bounds of load_model (see the module docstring).
MAX_MEMBERS = 1024                    # a model has at most ~25 arrays; a NestedComBat ~17 per step (<= 40 steps)
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64                   # saved manifests nest about 8 levels deep
MAX_NPY_HEADER = 4096                 # numpy writes 128-byte headers for these arrays
MAX_EXPANSION = 100                   # declared uncompressed size / file size
EXPANSION_ALLOWANCE = 256 * 2**20     # ... or up to this much, whatever the file size
_CHUNK = 16 * 2**20

_SCHEMAS = "schema 1" if SCHEMA_VERSION == 1 else f"schemas 1 to {SCHEMA_VERSION}"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ZIP_MIN, _ZIP_MAX = 315532800, 4354819198  # 1980-01-01 and 2107-12-31 23:59:58 UTC, the zip time range


def _encode_params(value):
    """Parameters as JSON: tuples tagged so that they load as tuples (``smooth_bounds={"age": (0, 100)}``)."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_params(v) for v in value]}
    if isinstance(value, list):
        return [_encode_params(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode_params(v) for k, v in value.items()}
    if type(value).__name__ == "Series" and hasattr(value, "to_dict"):  # a pandas Series (priors=): as a dict
        return {str(k): _encode_params(v) for k, v in value.to_dict().items()}
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


# ============================================================================================== saving
def _source_date_epoch() -> int | None:
    """``SOURCE_DATE_EPOCH`` (seconds since 1970, UTC) when set, else None."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", raw):
        raise InputError(f"SOURCE_DATE_EPOCH must be a whole number of seconds since 1970-01-01 UTC (as in "
                         f"reproducible builds); got {raw[:40]!r}. Unset it or fix it.")
    return int(raw)


def _member(name: str, date_time) -> zipfile.ZipInfo:
    """A zip member with fixed metadata (time, permissions, system), whatever the platform."""
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix
    info.external_attr = 0o644 << 16
    return info


def save_model(model, path) -> None:
    """Save a fitted featharm model to ``path`` (see the module docstring for the format).

    The bytes depend only on the model (and ``SOURCE_DATE_EPOCH`` when set), so saving the same fit twice
    gives identical files.
    """
    atomic_write_bytes(path, model_bytes(model))


def model_bytes(model) -> bytes:
    """The content of the model file of a fitted featharm model (what :func:`save_model` writes)."""
    state, arrays = model._get_state()
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "featharm_version": __version__,
        "model": type(model).__name__,
        # not the covariate table given to the constructor, nor n_jobs (``_unsaved_params``): data and a
        # setting of the machine, not the model; a loaded model has their defaults
        "params": _encode_params({k: v for k, v in model.get_params(deep=False).items()
                                  if k not in getattr(model, "_unsaved_params", ())}),
        "state": state,
    }
    return container_bytes(manifest, arrays, allow_nan=True)


def container_bytes(manifest: dict, arrays: dict, *, allow_nan: bool = False) -> bytes:
    """The zip of a featharm file (``manifest.json`` then ``arrays/<name>.npy`` by name, fixed metadata,
    reproducible bytes): model files (:func:`model_bytes`) and other kinds (a federated summary). The
    ``manifest`` is JSON-able (its ``arrays`` entry is filled here; NaN only with ``allow_nan``, as a model's
    state may hold), ``arrays`` numeric (never object)."""
    epoch = _source_date_epoch()
    manifest = dict(manifest)
    date_time = _ZIP_EPOCH
    if epoch is not None:
        manifest["created"] = datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")
        date_time = datetime.fromtimestamp(min(max(epoch, _ZIP_MIN), _ZIP_MAX), timezone.utc).timetuple()[:6]
    blobs, meta = {}, {}
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        if a.dtype == object:
            raise ModelFileError(f"array {name!r} has object dtype and cannot be stored without pickle")
        b = io.BytesIO()
        np.lib.format.write_array(b, a, allow_pickle=False)
        blobs[name] = b.getvalue()
        meta[name] = {"shape": list(a.shape), "dtype": str(a.dtype)}
    manifest["arrays"] = meta
    text = json.dumps(manifest, indent=1, sort_keys=True, default=_json_default, allow_nan=allow_nan)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(_member(MANIFEST, date_time), text.encode("utf-8"), compresslevel=6)
        for name, blob in blobs.items():
            zf.writestr(_member(f"arrays/{name}.npy", date_time), blob, compresslevel=6)
    return buf.getvalue()


# ============================================================================================== loading
def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class _Reader:
    """One model file being read: the path as the user gave it, and the error wording."""

    def __init__(self, path):
        self.path = path
        self.shown = repr(str(path))

    def damaged(self, found: str, expected: str) -> ModelFileError:
        return ModelFileError(f"{self.shown} is damaged: {found}; expected {expected}.")

    def not_a_model(self, why: str) -> ModelFileError:
        return ModelFileError(f"{self.shown} is not a featharm model file (expected a zip with {MANIFEST}): "
                              f"{why}.")

    # ---------------------------------------------------------------------------------- the container
    def open(self) -> zipfile.ZipFile:
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            raise ModelFileError(f"model file {self.shown} does not exist.") from None
        if stat.S_ISDIR(st.st_mode):
            raise ModelFileError(f"{self.shown} is a directory, not a model file; give the .fhm file.")
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{self.shown} is not a regular file (a pipe, device or socket); give the "
                                 ".fhm file.")
        if st.st_size == 0:
            raise self.not_a_model("it is empty")
        try:
            zf = zipfile.ZipFile(self.path)
        except IsADirectoryError:
            raise ModelFileError(f"{self.shown} is a directory, not a model file; give the .fhm file.") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OverflowError, struct.error,
                NotImplementedError) as exc:
            raise self.not_a_model(str(exc) or type(exc).__name__) from None
        try:
            self._check_members(zf, st.st_size)
        except BaseException:
            zf.close()
            raise
        return zf

    def _check_members(self, zf: zipfile.ZipFile, file_size: int) -> None:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise self.damaged(f"the zip holds {len(infos)} members",
                               f"at most {MAX_MEMBERS} ({MANIFEST} and one .npy file per array)")
        seen = set()
        for info in infos:
            if info.filename in seen:
                raise self.damaged(f"the zip holds the member {info.filename!r} twice", "each member once")
            seen.add(info.filename)
            if info.flag_bits & 0x1:
                raise self.damaged(f"member {info.filename!r} is encrypted", "unencrypted members")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise self.damaged(f"member {info.filename!r} uses zip compression method {info.compress_type}",
                                   "stored or deflated members, as featharm writes them")
        total = sum(i.file_size for i in infos)
        limit = max(EXPANSION_ALLOWANCE, MAX_EXPANSION * file_size)
        if total > limit:
            big = max(infos, key=lambda i: i.file_size)
            raise self.damaged(
                f"its members declare {_size(total)} uncompressed ({big.filename!r} alone {_size(big.file_size)}) "
                f"in a file of {_size(file_size)}",
                f"at most {MAX_EXPANSION} times the file size: model estimates barely compress (a zip bomb?)")
        if MANIFEST not in seen:
            raise self.not_a_model(f"there is no {MANIFEST} among its members")

    def read_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
        """The bytes of a member whose declared size was checked: never more than ``limit`` + 1 read."""
        try:
            with zf.open(info) as fh:
                data = fh.read(limit + 1)
                rest = fh.read(1)  # reaching the end checks the CRC
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
            raise self.damaged(f"member {info.filename!r} cannot be decompressed ({exc})", "an intact zip member") \
                from None
        if len(data) != info.file_size or rest:
            raise self.damaged(f"member {info.filename!r} holds more or less data than its declared "
                               f"{info.file_size} bytes", "the declared size")
        return data

    # ---------------------------------------------------------------------------------- the manifest
    def manifest(self, zf: zipfile.ZipFile) -> dict:
        info = zf.getinfo(MANIFEST)
        if info.file_size > MAX_MANIFEST_BYTES:
            raise self.damaged(f"{MANIFEST} declares {_size(info.file_size)}",
                               f"at most {_size(MAX_MANIFEST_BYTES)}")
        raw = self.read_member(zf, info, MAX_MANIFEST_BYTES)
        depth = _json_depth(raw)
        if depth > MAX_JSON_DEPTH:
            raise self.damaged(f"{MANIFEST} nests {depth} levels deep", f"at most {MAX_JSON_DEPTH} levels")
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self.not_a_model(f"its {MANIFEST} is not JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            fmt = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ModelFileError(f"{self.shown} is not a featharm model file (format {fmt!r}).")
        version = manifest.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise self.damaged(f"schema_version is {_describe(version)}",
                               f"an integer model schema (this featharm reads {_SCHEMAS})")
        if version > SCHEMA_VERSION:
            raise ModelFileError(
                f"{self.shown} uses model schema {version!r}, newer than this featharm ({__version__}) reads "
                f"(schema {SCHEMA_VERSION}); it was written by featharm {manifest.get('featharm_version')}. "
                "Upgrade featharm to load it."
            )
        if version < 1:
            raise self.damaged(f"schema_version is {version}", f"a model schema this featharm reads ({_SCHEMAS})")
        required = ("format", "schema_version", "model", "params", "state", "arrays")
        missing = [k for k in required if k not in manifest]
        if missing:
            raise self.damaged(f"its manifest lacks {missing}", f"the entries {list(required)}")
        extra = sorted(set(manifest) - {*required, "featharm_version", "created"})
        if extra:
            raise self.damaged(f"its manifest has unexpected entries {extra[:5]}",
                               f"only {[*required, 'featharm_version', 'created']}")
        for key, form, expected in (("featharm_version", VERSION_TEXT, "a version such as '0.2.0'"),
                                    ("created", CREATED_TEXT, "a UTC time such as '2026-12-06T08:00:00+00:00'")):
            if key in manifest and not (isinstance(manifest[key], str) and form.fullmatch(manifest[key])):
                raise self.damaged(f"{key} is {_describe(manifest[key])}", expected)
        for key in ("params", "state", "arrays"):
            if not isinstance(manifest[key], dict):
                raise self.damaged(f"{key} is {_describe(manifest[key])}", "a JSON object")
        if not isinstance(manifest["model"], str):
            raise self.damaged(f"model is {_describe(manifest['model'])}", "the name of a featharm model class")
        return manifest

    def estimator(self, manifest: dict):
        """An estimator of the file's class with the file's (checked) parameters."""
        name = manifest["model"]
        cls = _family(name)
        if cls is None:
            raise ModelFileError(
                f"{self.shown} holds a model of unknown type {name!r}; known: {sorted(FAMILIES)}."
            )
        params = _decode_params(manifest["params"])
        known = cls._get_param_names()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise self.damaged(f"params has parameter(s) {unknown} that {name} does not take",
                               f"parameters of {name}: {known}")
        model = cls(**params)
        try:
            model._check_params()
        except (FeatharmError, TypeError, ValueError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.damaged(f"its stored parameters are invalid ({text.rstrip('.')})",
                               f"parameters a {name} accepts") from None
        return model

    # ---------------------------------------------------------------------------------- the arrays
    def arrays(self, zf: zipfile.ZipFile, model, manifest: dict, dims: dict, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays of ``model`` (a part of a composite model: those listed as ``prefix<name>``), checked."""
        stored, kind = model._stored, type(model).__name__
        meta = {k[len(prefix):]: v for k, v in manifest["arrays"].items() if k.startswith(prefix)}
        missing = [k for k in stored if k not in meta and not stored[k].optional]
        if missing:
            raise self.damaged(f"the manifest does not list the array {missing[0]!r}",
                               f"the {len(stored)} arrays of a {kind}: {sorted(stored)}")
        extra = sorted(k for k in meta if k not in stored)
        if extra:
            raise self.damaged(f"the manifest lists an unexpected array {extra[0]!r}",
                               f"only the arrays of a {kind}: {sorted(stored)}")
        members = {f"arrays/{prefix}{k}.npy": k for k in stored if k in meta}
        for name in zf.namelist():
            if name != MANIFEST and (not prefix or name.startswith(f"arrays/{prefix}")) and name not in members:
                raise self.damaged(f"the zip holds an unexpected member {name!r} (not read)",
                                   f"only {MANIFEST} and arrays/<name>.npy for the arrays of a {kind}")
        present = set(zf.namelist())
        for member, key in members.items():
            if member not in present:
                raise self.damaged(f"array {key!r} is missing (no member {member!r})",
                                   f"the {len(stored)} arrays of a {kind}")
            m = meta[key]
            if not (isinstance(m, dict) and set(m) == {"shape", "dtype"} and isinstance(m["dtype"], str)
                    and isinstance(m["shape"], list)
                    and all(isinstance(n, int) and not isinstance(n, bool) for n in m["shape"])):
                raise self.damaged(f"the manifest entry of array {key!r} is {_describe(m)}",
                                   '{"shape": [integers], "dtype": "..."}')
        # every member's declared size against what its axes allow, before any array is read
        for member, key in sorted(members.items()):
            spec = stored[key]
            most = MAX_NPY_HEADER + np.dtype(spec.dtype).itemsize * math.prod(
                d if isinstance(d, int) else d[1] for d in (dims[a] for a in spec.axes))
            size = zf.getinfo(member).file_size
            if size > most:
                raise self.damaged(f"array {key!r} ({member}) declares {size:,} bytes uncompressed",
                                   f"at most {most:,} for {_expected(spec, dims)}")
        arrays = {}
        for member, key in sorted(members.items(), key=lambda kv: kv[1]):
            arrays[key] = self.array(zf, zf.getinfo(member), key, stored[key], dims, meta[key])
        return arrays

    def array(self, zf, info, key, spec, dims, meta) -> np.ndarray:
        want = np.dtype(spec.dtype)
        try:
            with zf.open(info) as fh:
                head = fh.read(min(info.file_size, MAX_NPY_HEADER))
                shape, fortran, dtype, start = self._header(head, key, spec, dims)
                if not (dtype.names is None and dtype.subdtype is None and dtype.kind == want.kind
                        and dtype.itemsize == want.itemsize):
                    what = " (Python objects, which only pickle could read; never loaded)" if dtype.hasobject else ""
                    raise self.damaged(f"array {key!r} has dtype {dtype}{what}", _expected(spec, dims))
                self._bind(shape, key, spec, dims)
                if meta["shape"] != list(shape) or meta["dtype"] != str(dtype):
                    raise self.damaged(f"the manifest says array {key!r} is {meta['dtype']} of shape "
                                       f"{tuple(meta['shape'])}, its .npy header {dtype} of shape {shape}",
                                       "the two to agree")
                nbytes = math.prod(shape) * dtype.itemsize
                if info.file_size != start + nbytes:
                    raise self.damaged(f"array {key!r} holds {info.file_size - start:,} bytes of data",
                                       f"{nbytes:,} for {dtype} of shape {shape}")
                out = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
                flat = out.reshape(-1).view(np.uint8)
                pos = len(head) - start
                flat[:pos] = np.frombuffer(head, np.uint8, offset=start)
                while pos < nbytes:
                    chunk = fh.read(min(_CHUNK, nbytes - pos))
                    if not chunk:
                        raise self.damaged(f"array {key!r} ends after {pos:,} of its {nbytes:,} bytes",
                                           "the whole array")
                    flat[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
                    pos += len(chunk)
                if fh.read(1):  # also checks the CRC at the end of the member
                    raise self.damaged(f"array {key!r} has data after its {nbytes:,} bytes", "nothing more")
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise self.damaged(f"member {info.filename!r} cannot be decompressed ({exc})", "an intact zip member") \
                from None
        if fortran:
            out = out.T
        if want.kind == "b" and flat.size and flat.max() > 1:
            raise self.damaged(f"array {key!r} holds bytes other than 0 and 1", "booleans")
        if not dtype.isnative:
            out = out.astype(want)
        return out

    def _header(self, head: bytes, key, spec, dims):
        """Shape, Fortran order, dtype and data offset from the ``.npy`` header at the start of ``head``."""
        bio = io.BytesIO(head)
        fmt = np.lib.format
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                version = fmt.read_magic(bio)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(bio)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(bio)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, SyntaxError, TypeError, KeyError, RecursionError, MemoryError, OverflowError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise self.damaged(f"array {key!r} has no valid .npy header ({why})",
                               f"a .npy file of {_expected(spec, dims)}") from None
        return tuple(shape), bool(fortran), dtype, bio.tell()

    def _bind(self, shape, key, spec, dims) -> None:
        """Check ``shape`` against the axes; the first array using a free axis (``(lo, hi)``) fixes it."""
        ok = len(shape) == len(spec.axes)
        fixed = {}
        for n, axis in zip(shape, spec.axes):
            d = fixed.get(axis, dims[axis])
            if isinstance(d, int):
                ok = ok and n == d
            elif d[0] <= n <= d[1]:
                fixed[axis] = n
            else:
                ok = False
        if not ok:
            raise self.damaged(f"array {key!r} has shape {shape}", _expected(spec, dims))
        dims.update(fixed)

    def check_values(self, arrays: dict, stored: dict, state: dict) -> None:
        constant = arrays["constant"]
        n_obs = arrays.get("n_obs")  # models fitted with missing values (optional)
        labels = {"batch": state["batches"], "feature": state["feature_names"], "subject": state.get("subjects")}
        for key in sorted(arrays):
            spec, a = stored[key], arrays[key]
            if spec.values == "any" or spec.dtype == "bool":
                continue
            ok = _value_ok(a, spec, constant)
            if spec.values == "observed" and n_obs is not None and n_obs.shape == a.shape:
                ok |= np.isnan(a) & (n_obs == 0)
            if not ok.all():
                where = np.unravel_index(int(np.flatnonzero(~ok.reshape(-1))[0]), ok.shape)
                at = ", ".join(_label(axis, i, labels) for axis, i in zip(spec.axes, where))
                n_bad = int(ok.size - np.count_nonzero(ok))
                raise self.damaged(
                    f"array {key!r} holds {float(a[where])!r} at ({at})"
                    + (f" and {n_bad - 1:,} more such value(s)" if n_bad > 1 else ""),
                    f"{_rules()[spec.values]}")


def _rules() -> dict:
    from ._schema import VALUE_RULES

    return VALUE_RULES


def _value_ok(a: np.ndarray, spec, constant: np.ndarray) -> np.ndarray:
    rule = spec.values
    with np.errstate(invalid="ignore"):
        if rule in ("finite", "observed"):  # "observed": NaN also where n_obs is 0 (see check_values)
            return np.isfinite(a)
        if rule == "positive":
            return np.isfinite(a) & (a > 0)
        if rule == "nonnegative":
            return np.isfinite(a) & (a >= 0)
        if rule == "not_negative":
            return ~(a < 0)
        if rule == "count":
            return np.isfinite(a) & (a >= 0) & (a < 2**31) & (a == np.floor(a))
        if rule == "flag":
            return (a == 0) | (a == 1)
        if rule == "sd":  # constant features: passed through, any scale >= 0
            shape = [1] * a.ndim
            shape[spec.axes.index("feature")] = -1
            c = constant.reshape(shape)
            return np.where(c, a >= 0, np.isfinite(a) & (a > 0))
    raise AssertionError(rule)


def _label(axis: str, i: int, labels: dict) -> str:
    from ._schema import AXIS_NAMES

    names = labels.get(axis)
    if names is not None and i < len(names):
        return f"{axis} {names[i]!r}"
    return f"{AXIS_NAMES[axis]} {i}"


def _expected(spec, dims) -> str:
    """``float64 (batch x feature, 3 x 6)``: the dtype and the named axes with their sizes."""
    from ._schema import AXIS_NAMES

    names = " x ".join(AXIS_NAMES[a] for a in spec.axes)
    sizes = " x ".join(str(d) if isinstance(d, int) else f"{d[0]}..{d[1]}" for d in (dims[a] for a in spec.axes))
    return f"{spec.dtype} ({names}, {sizes})"


def _describe(value) -> str:
    from ._schema import describe

    return describe(value)


def _json_depth(raw: bytes, chunk: int = 4 * 2**20) -> int:
    """Deepest nesting of arrays and objects in a JSON text, counted without parsing (no recursion).

    Brackets count outside strings only; a quote ends a string unless an odd number of backslashes
    precede it. Vectorized over chunks, carrying the run of trailing backslashes, whether a string is
    open and the depth, so the cost is linear whatever the text holds. (For a text that is not JSON the
    count is only what ``json.loads`` would reach before failing, or less.)
    """
    data = np.frombuffer(raw, np.uint8)
    deepest = level = 0
    run_before, in_string = 0, 0  # backslashes ending the previous chunk; a string open at its end
    for start in range(0, data.size, chunk):
        c = data[start:start + chunk]
        quote = c == ord('"')
        backslash = c == ord("\\")
        if backslash.any() or run_before:
            idx = np.arange(c.size, dtype=np.int64)
            run = idx - np.maximum.accumulate(np.where(backslash, -1 - run_before, idx))  # backslashes ending here
            quote[0] &= run_before % 2 == 0
            quote[1:] &= run[:-1] % 2 == 0  # an escaped quote does not end a string
            run_before = int(run[-1])
        inside = (np.cumsum(quote, dtype=np.int32) + in_string) & 1
        step = ((c == ord("[")) | (c == ord("{"))).astype(np.int32)
        step -= (c == ord("]")) | (c == ord("}"))
        step[inside == 1] = 0
        depth = np.cumsum(step, dtype=np.int32) + level
        deepest, level = max(deepest, int(depth.max())), int(depth[-1])
        in_string = int(inside[-1])
    return deepest


def read_manifest(path) -> dict:
    """The JSON manifest of a model file (no arrays read; the container and its size are checked)."""
    reader = _Reader(path)
    with reader.open() as zf:
        return reader.manifest(zf)


def load_model(path):
    """Load a model saved with ``model.save(path)``; returns a fitted estimator ready to ``transform``.

    The file is checked completely, with bounded cost, before the model is built (see the module
    docstring). Raises :class:`~featharm.exceptions.ModelFileError` for a file that is not a featharm
    model, is damaged or malformed, or was written by a newer featharm with a newer schema.
    """
    from ._schema import DamagedState

    reader = _Reader(path)
    with reader.open() as zf:
        manifest = reader.manifest(zf)
        model = reader.estimator(manifest)
        state = manifest["state"]
        if hasattr(model, "_check_parts"):  # a model made of fitted models (NestedComBat's steps)
            return _load_parts(reader, zf, model, manifest)
        try:
            dims = model._check_state(state)
        except DamagedState as exc:
            raise reader.damaged(f"{exc.entry} {exc.found}", exc.expected) from None
        arrays = reader.arrays(zf, model, manifest, dims)
    reader.check_values(arrays, model._stored, state)
    try:
        model._check_arrays(state, arrays, dims)
    except DamagedState as exc:
        raise reader.damaged(f"{exc.entry} {exc.found}", exc.expected) from None
    name = type(model).__name__
    try:
        model._set_state(state, arrays)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, ModelFileError):  # say which file
            raise ModelFileError(f"{str(path)!r} is damaged: {exc}") from None
        raise ModelFileError(
            f"{reader.shown} is damaged: the stored {name} state is incomplete or malformed "
            f"({type(exc).__name__}: {exc}).") from None
    return model


def _load_parts(reader: _Reader, zf: zipfile.ZipFile, model, manifest: dict):
    """A composite model: its state names its parts, each a (array prefix, manifest of a model) checked and
    built exactly as a model file of its own (parameters, state, arrays under ``arrays/<prefix><name>.npy``,
    values); then the composite is built from them (``model._set_parts``). A part may not be composite."""
    from ._schema import DamagedState

    state = manifest["state"]
    try:
        parts = model._check_parts(state)
    except DamagedState as exc:
        raise reader.damaged(f"{exc.entry} {exc.found}", exc.expected) from None
    prefixes = [prefix for prefix, _ in parts]
    stray = sorted(k for k in manifest["arrays"] if not any(k.startswith(p) for p in prefixes))
    if stray:
        raise reader.damaged(f"the manifest lists an array {stray[0]!r} of no part",
                             f"arrays named <part>/<name> for the parts {prefixes}")
    for name in zf.namelist():
        if name != MANIFEST and not any(name.startswith(f"arrays/{p}") for p in prefixes):
            raise reader.damaged(f"the zip holds an unexpected member {name!r} (not read)",
                                 f"only {MANIFEST} and arrays/<part>/<name>.npy")
    built = []
    for i, (prefix, sub) in enumerate(parts):
        part = reader.estimator(sub)
        if hasattr(part, "_check_parts"):
            raise reader.damaged(f"part {i} is a {sub['model']}", "parts that are not composite models")
        try:
            dims = part._check_state(sub["state"])
        except DamagedState as exc:
            raise reader.damaged(f"part {prefix!r}: {exc.entry} {exc.found}", exc.expected) from None
        arrays = reader.arrays(zf, part, manifest, dims, prefix=prefix)
        reader.check_values(arrays, part._stored, sub["state"])
        try:
            part._check_arrays(sub["state"], arrays, dims)
        except DamagedState as exc:
            raise reader.damaged(f"part {prefix!r}: {exc.entry} {exc.found}", exc.expected) from None
        try:
            part._set_state(sub["state"], arrays)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise reader.damaged(f"part {prefix!r} is incomplete or malformed ({type(exc).__name__}: {exc})",
                                 "a complete model state") from None
        built.append(part)
    try:
        model._set_parts(state, built)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise reader.damaged(f"the stored {type(model).__name__} state is incomplete or malformed "
                             f"({type(exc).__name__}: {exc})", "a complete model state") from None
    return model
