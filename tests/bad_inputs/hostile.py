"""Building damaged and hostile model files from real ones (used by the battery and the unit tests).

* :func:`rewrite` copies a model file member by member, with the manifest edited, members replaced,
  dropped or added (the zip itself stays well formed);
* :func:`raw_zip` writes a zip by hand, so that a member can declare sizes, flags or a compression method
  that :mod:`zipfile` would not write (zip bombs, lying sizes, encryption flags);
* :func:`npy` / :func:`npy_header` build ``.npy`` members, including headers that promise more data than
  they hold.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np


def members(path) -> dict[str, bytes]:
    """Every member of a zip, in order."""
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def manifest(path) -> dict:
    return json.loads(members(path)["manifest.json"])


def rewrite(src, dst, edit=None, *, replace=None, drop=(), add=None) -> Path:
    """Copy the model ``src`` to ``dst``: ``edit(manifest) -> manifest`` (or raw bytes), members in
    ``replace`` swapped, those in ``drop`` left out, those in ``add`` appended."""
    out = {}
    for name, data in members(src).items():
        if name in drop:
            continue
        if name == "manifest.json" and edit is not None:
            new = edit(json.loads(data))
            data = new if isinstance(new, bytes) else json.dumps(new, indent=1).encode()
        out[name] = (replace or {}).get(name, data)
    out.update(add or {})
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zo:
        for name, data in out.items():
            zo.writestr(name, data)
    return Path(dst)


def edit_state(**changes):
    """A manifest edit setting state entries (``None`` values delete the entry)."""

    def edit(m):
        for k, v in changes.items():
            if v is None:
                m["state"].pop(k, None)
            else:
                m["state"][k] = v
        return m

    return edit


def npy(a, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, **kwargs)
    return buf.getvalue()


def npy_header(shape, descr="<f8", fortran=False, version=(1, 0)) -> bytes:
    """A ``.npy`` header alone (append any data)."""
    buf = io.BytesIO()
    d = {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, d)
    else:
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def deflated(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def deflate_bomb(n_bytes: int, piece_size: int = 2**20) -> bytes:
    """A raw deflate stream that inflates to ``n_bytes`` zeros (a multiple of ``piece_size``): one
    compressed piece, fully flushed (byte aligned, no reference to earlier data), repeated, then an empty
    final block. 1 MiB of zeros compresses to about 1 kB, so 3 GB take about 3 MB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(piece_size)) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * (n_bytes // piece_size) + b"\x03\x00"


def inflated_size(stream: bytes, limit: int) -> int:
    """How many bytes the first part of a raw deflate stream inflates to, up to ``limit`` (streamed)."""
    d = zlib.decompressobj(-15)
    total, data = 0, stream
    while total < limit and data:
        out = d.decompress(data, 2**20)
        total += len(out)
        data = d.unconsumed_tail
    return total


def raw_zip(dst, entries) -> Path:
    """Write a zip by hand. ``entries``: ``(name, payload)`` pairs, ``payload`` either plain bytes (deflated
    here, true sizes and CRC) or a dict ``{"data": raw member bytes, "method": 8, "crc": ..., "size": declared
    uncompressed size, "flags": 0}`` written as given, whatever the data really inflate to."""
    out = io.BytesIO()
    central = []
    for name, payload in entries:
        if isinstance(payload, bytes):
            payload = {"data": deflated(payload), "method": 8, "crc": zlib.crc32(payload), "size": len(payload)}
        data, method = payload["data"], payload.get("method", 8)
        crc, size, flags = payload.get("crc", 0), payload["size"], payload.get("flags", 0)
        fname = name.encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 33, crc, len(data), size,
                              len(fname), 0))
        out.write(fname)
        out.write(data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0, 33, crc,
                                   len(data), size, len(fname), 0, 0, 0, 0, 0, offset) + fname)
    start = out.tell()
    for c in central:
        out.write(c)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), out.tell() - start,
                          start, 0))
    Path(dst).write_bytes(out.getvalue())
    return Path(dst)
