"""pyarrow's CSV reader and writer for big tables (the command line's DATA and OUT).

Reading: the file is cut into chunks of whole rows (:func:`row_chunks`, aware of quoted line breaks) and each
chunk is parsed by ``pyarrow.csv.read_csv`` (multithreaded), the numeric columns copied into one Fortran-ordered
float64 block and the other columns kept as the text they hold (``007`` stays ``007``), so that memory stays at
about the size of the block. Anything the fast reader does not take as it is (a ragged row, a number column
holding text further down, bytes that are not UTF-8 ...) raises :class:`Unreadable`, and the caller reads the
file with pandas instead, whose messages and leniency are the reference.

Writing: pyarrow's CSV writer writes blocks of rows on two threads: doubles as the shortest text that reads
back as the same double (several times faster than Python's ``repr``), ``%.Nf`` as decimal128 columns of
scale N (Python's text to the byte), the other columns as the text they held. Text that needs quotes (the
separator, a quote, a line break) is quoted by Python, as pandas' ``to_csv`` does, and joined to the rest.
"""

from __future__ import annotations

import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK = 32 << 20  # bytes of CSV text parsed at a time
CELLS_PER_BLOCK = 1 << 21  # cells written at a time (~40 MB of text)


_POOL = None


def pool():
    """The pyarrow memory pool of the big reads and writes: jemalloc returning freed memory at once (else
    the system allocator), so that the memory parsing took is the operating system's again for the model."""
    global _POOL
    from .._staging import quiet_pyarrow

    quiet_pyarrow()  # under the command line's signal handlers: a SIGTERM during a read is never lost
    if _POOL is None:
        import pyarrow as pa

        try:
            _POOL = pa.jemalloc_memory_pool()
            pa.jemalloc_set_decay_ms(0)
        except (NotImplementedError, pa.ArrowException):
            _POOL = pa.system_memory_pool()
    return _POOL


def give_back_memory() -> None:
    """Return freed heap memory to the operating system (glibc keeps it otherwise); a no-op elsewhere."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


class Unreadable(Exception):
    """The fast reader cannot take this file as it is: read it with pandas."""


def available() -> bool:
    """Whether pyarrow's CSV module can be imported."""
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def na_values() -> list:
    """The cells pandas reads as missing (so both readers agree on NaN)."""
    try:
        from pandas._libs.parsers import STR_NA_VALUES
        return sorted(STR_NA_VALUES)
    except ImportError:  # pragma: no cover
        return ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


# --------------------------------------------------------------------------------------------- reading
_BOM = b"\xef\xbb\xbf"


def _row_end(data, start: int, end: int, last: bool = True) -> int:
    """The index just after the last (or first) line break of ``data[start:end]`` that is outside quotes
    (-1: none). ``data[start]`` must begin a row."""
    quoted = data.find(b'"', start, end) >= 0
    if last:
        cut = data.rfind(b"\n", start, end)
        while quoted and cut >= start and data.count(b'"', start, cut) % 2:
            cut = data.rfind(b"\n", start, cut)
    else:
        cut = data.find(b"\n", start, end)
        while quoted and cut >= 0 and data.count(b'"', start, cut) % 2:
            cut = data.find(b"\n", cut + 1, end)
    return cut + 1 if cut >= start else -1


def row_chunks(stream, size: int | None = None):
    """The data rows of a CSV stream (its header row skipped), in chunks of about ``size`` bytes that each
    end at the end of a row: (memoryview of one reused buffer, valid until the next chunk is asked for;
    whether it holds a quote)."""
    buf = bytearray(size or CHUNK)
    end, header, eof = 0, True, False
    readinto = getattr(stream, "readinto", None)
    while True:
        if not eof:
            if end == len(buf):  # no whole row in the buffer: a bigger one
                bigger = bytearray(2 * len(buf))
                bigger[:end] = buf[:end]
                buf = bigger
            if readinto is not None:
                k = readinto(memoryview(buf)[end:])
            else:
                data = stream.read(len(buf) - end)
                k = len(data)
                buf[end:end + k] = data
                del data
            end += k
            eof = k == 0
        if header:
            first = 3 if buf.startswith(_BOM) else 0
            cut = _row_end(buf, first, end, last=False)
            if cut < 0:
                if eof:
                    return  # the header alone
                if b"\r" in buf[:end]:
                    raise Unreadable("lines end with a carriage return alone")
                continue
            buf[0:end - cut] = buf[cut:end]
            end -= cut
            header = False
        if eof:
            if end:
                yield memoryview(buf)[:end], buf.find(b'"', 0, end) >= 0
            return
        cut = _row_end(buf, 0, end)
        if cut <= 0:
            continue
        yield memoryview(buf)[:cut], buf.find(b'"', 0, cut) >= 0
        buf[0:end - cut] = buf[cut:end]
        end -= cut


def _open(path, gzipped: bool):
    if gzipped:
        import pyarrow as pa

        return pa.input_stream(str(path), compression="gzip")
    return open(path, "rb")


def count_rows(path) -> int:
    """At least the number of data rows of a plain CSV file: its lines less the header."""
    buf = bytearray(CHUNK)
    lines, last = 0, b"\n"
    with open(path, "rb", buffering=0) as fh:
        while True:
            k = fh.readinto(buf)
            if not k:
                break
            lines += buf.count(b"\n", 0, k)
            last = bytes(buf[k - 1:k])
    return lines + (last != b"\n") - 1


def _copy_batch(out: np.ndarray, row: int, batch) -> None:
    """Copy the float64 columns of ``batch`` into ``out[row:row + len(batch)]`` (nulls as NaN)."""
    try:  # pyarrow >= 16: one column-major copy
        values = np.asarray(batch.to_tensor(null_to_nan=True, row_major=False, memory_pool=pool()))
    except (AttributeError, TypeError):
        for k in range(batch.num_columns):
            out[row:row + batch.num_rows, k] = batch.column(k).to_numpy(zero_copy_only=False)
        return
    out[row:row + batch.num_rows] = values


def _is_numeric(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def read_csv(path, sep: str, n_columns: int, numeric: set, gzipped: bool = False):
    """Read a CSV/TSV file whose header (``n_columns`` cells) is known.

    ``numeric``: positions of the columns to read as numbers when they are numbers (the possible features);
    every other column is read as text, exactly as written. Returns ``(X, positions, text, n)``: the float64
    Fortran-ordered block ``X`` of the columns at ``positions`` (those of ``numeric`` that hold numbers, in
    file order), ``text`` {position: list of str} for every other column, ``n`` the number of rows. Raises
    :class:`Unreadable` when pandas should read the file instead.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names = [f"c{j}" for j in range(n_columns)]
    nulls = na_values()
    types = {names[j]: pa.string() for j in range(n_columns) if j not in numeric}
    threads = pa.cpu_count() > 1
    # a plain file: the rows go straight into X, sized by its line count; a gzipped one: in blocks
    capacity = None if gzipped else count_rows(path)
    positions: list | None = None
    X, blocks, text = None, [], {}
    n = 0

    def parse(chunk, column_types):
        view, quoted = chunk
        return pcsv.read_csv(
            pa.py_buffer(view), memory_pool=pool(),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=threads, block_size=8 << 20),
            parse_options=pcsv.ParseOptions(delimiter=sep, newlines_in_values=quoted),
            convert_options=pcsv.ConvertOptions(
                column_types=column_types, null_values=nulls, true_values=[], false_values=[],
                strings_can_be_null=False, quoted_strings_can_be_null=True),
        )

    try:
        with _open(path, gzipped) as stream:
            for chunk in row_chunks(stream):
                table = parse(chunk, types)
                if positions is None:  # the first chunk decides which of `numeric` hold numbers
                    inferred = {j: table.schema.field(j).type for j in numeric}
                    positions = [j for j in sorted(numeric) if _is_numeric(inferred[j])]
                    kept = set(positions)
                    for j in numeric:
                        types[names[j]] = pa.float64() if j in kept else pa.string()
                    if any(j not in kept and inferred[j] != pa.string() for j in numeric):
                        table = parse(chunk, types)  # a date- or time-like column: read it again as text
                    text = {j: [] for j in range(n_columns) if j not in kept}
                    if capacity is not None:
                        X = np.empty((capacity, len(positions)), order="F")
                del chunk
                m = table.num_rows
                if X is not None:
                    if n + m > capacity:
                        raise Unreadable("more rows than lines")
                    out, row = X, n
                else:
                    out, row = np.empty((m, len(positions)), order="F"), 0
                    blocks.append(out)
                if positions:
                    batch = None
                    numbers = table.select(positions)
                    if any(t != pa.float64() for t in numbers.schema.types):
                        numbers = numbers.cast(pa.schema([(name, pa.float64()) for name in numbers.column_names]))
                    for batch in numbers.to_batches():
                        _copy_batch(out, row, batch)
                        row += batch.num_rows
                    del numbers, batch
                for j, values in text.items():
                    values.extend(table.column(j).to_pylist())
                del table, out
                n += m
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise Unreadable(str(exc)) from None
    if positions is None:  # no data row
        positions = sorted(numeric)
        text = {j: [] for j in range(n_columns) if j not in set(positions)}
    if X is None:  # the blocks, one after the other (each freed once copied)
        X = np.empty((n, len(positions)), order="F")
        row = 0
        while blocks:
            block = blocks.pop(0)
            X[row:row + len(block)] = block
            row += len(block)
            del block
    elif n < len(X):  # blank lines, or line breaks inside quotes
        X = np.asfortranarray(X[:n])
    give_back_memory()
    return X, positions, text, n


# --------------------------------------------------------------------------------------------- writing
def quote(value: str, sep: str) -> str:
    """A CSV cell: quoted (with doubled quotes) when it holds the separator, a quote or a line break."""
    if sep in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def text_rows(columns: list, sep: str) -> list:
    """The cells of the text ``columns`` (lists of str), quoted as needed, joined into one str per row."""
    quoted = [[quote(v, sep) for v in col] for col in columns]
    if len(quoted) == 1:
        return quoted[0]
    return [sep.join(cells) for cells in zip(*quoted)]


_FIXED = re.compile(r"%\.(\d{1,2})f")
_PRINTF = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[eEfFgG]")


def check_float_format(spec: str) -> str:
    """``shortest``, ``input`` or one printf-style conversion (``%.6g``, ``%.4f``, ``%.8e``) -> spec.

    Raises ValueError (with the reason) for anything else."""
    if spec in ("shortest", "input"):
        return spec
    if not _PRINTF.fullmatch(spec):
        raise ValueError("give 'shortest', 'input' or one printf-style conversion such as %.6g, %.4f or %.8e")
    return spec


def fixed_strings(x: np.ndarray, d: int):
    """``'%.{d}f' % v`` for every value of ``x`` as a pyarrow string array (null for NaN), vectorized.

    Values whose scaled magnitude is too large for exact integer arithmetic, values within an ulp of a
    rounding tie, and infinities are formatted by Python itself, so the result is Python's, byte for byte."""
    import pyarrow as pa
    import pyarrow.compute as pc

    x = np.asarray(x, dtype=np.float64)
    k, fast = _scaled(x, d)
    ka = np.abs(np.where(fast, k, 0.0)).astype(np.int64)
    unit = 10 ** d
    whole = pc.cast(pa.array(ka // unit), pa.string())
    if d:
        part = pc.utf8_slice_codeunits(pc.cast(pa.array(ka % unit + unit), pa.string()), 1)
        body = pc.binary_join_element_wise(whole, part, ".")
    else:
        body = whole
    minus = np.signbit(x)
    if minus.any():
        body = pc.if_else(pa.array(minus), pc.binary_join_element_wise(pa.scalar("-"), body, ""), body)
    slow = ~fast & ~np.isnan(x)
    if slow.any():
        fmt = f"%.{d}f"
        body = pc.replace_with_mask(body, pa.array(slow), pa.array([fmt % v for v in x[slow].tolist()], pa.string()))
    nan = np.isnan(x)
    if nan.any():
        body = pc.if_else(pa.array(nan), pa.scalar(None, pa.string()), body)
    return body


def _scaled(x: np.ndarray, d: int):
    """(``rint(x * 10**d)``, whether that is exactly the rounding ``'%.{d}f' % x`` makes): False for NaN,
    infinities, magnitudes beyond exact integers, values within an ulp of a rounding tie."""
    with np.errstate(all="ignore"):
        y = x * (10.0 ** d)
        ay = np.abs(y)
        frac = ay - np.floor(ay)
        exact = np.isfinite(y) & (ay < 2.0 ** 52) & ~(np.abs(frac - 0.5) <= 2 * np.spacing(ay))
        return np.rint(y), exact


def fixed_decimals(x: np.ndarray, d: int):
    """``'%.{d}f' % v`` for the values of ``x`` as a pyarrow array (null for NaN) that pyarrow's CSV writer
    writes as Python would: a decimal128 array of scale ``d`` (``2.3100``, ``-0.0120``), or strings from
    :func:`fixed_strings` when a value needs Python's own formatting (an infinity, a tie, ``-0.0000``)."""
    import pyarrow as pa

    x = np.asarray(x, dtype=np.float64)
    k, exact = _scaled(x, d)
    nan = np.isnan(x)
    if not (exact | nan).all() or (np.signbit(x) & (k == 0) & ~nan).any():
        return fixed_strings(x, d)
    data = np.empty((len(x), 2), dtype=np.int64)  # 128-bit little-endian integers: k, then its sign
    data[:, 0] = np.where(nan, 0.0, k)
    data[:, 1] = data[:, 0] >> 63
    validity = pa.py_buffer(np.packbits(~nan, bitorder="little")) if nan.any() else None
    return pa.Array.from_buffers(pa.decimal128(38, d), len(x), [validity, pa.py_buffer(data)],
                                 null_count=int(nan.sum()))


def decimals(x: np.ndarray, most: int = 15):
    """The number of decimals the values of ``x`` have (as short decimal text: ``2.2573`` has 4), or None
    when they are not short decimals (more than ``most``)."""
    v = x[np.isfinite(x)]
    if not v.size:
        return 0
    d = 0
    with np.errstate(all="ignore"):
        for sample in (v[:256], v):
            while d <= most and not np.array_equal(np.round(sample, d), sample):
                d += 1
    return d if d <= most else None


def python_strings(x: np.ndarray, spec) -> list:
    """Python's formatting of the values of ``x`` ("" for NaN): ``repr`` for ``"shortest"``, else ``spec % v``
    (an int ``d``: ``%.{d}f``)."""
    if isinstance(spec, int):
        spec = f"%.{spec}f"
    fmt = repr if spec == "shortest" else spec.__mod__
    return ["" if v != v else fmt(v) for v in np.asarray(x, dtype=np.float64).tolist()]


class Column:
    """One column of OUT: text (a list of str, as written) or numbers (a float array and how to write them:
    ``"shortest"``, an int number of decimals, or a printf-style spec)."""

    __slots__ = ("text", "values", "spec", "_array")

    def __init__(self, text=None, values=None, spec="shortest"):
        self.text, self.values, self.spec, self._array = text, values, spec, None

    def arrow(self, r0: int, r1: int):
        """Rows r0:r1 as a pyarrow array: text, doubles (NaN as null: written "") or numbers formatted as
        strings."""
        import pyarrow as pa

        if self.text is not None or self.spec == "shortest":
            if self._array is None:
                self._array = (pa.array(self.text, pa.string(), memory_pool=pool()) if self.text is not None else
                               pa.array(np.asarray(self.values, dtype=np.float64), from_pandas=True,
                                        memory_pool=pool()))
            return self._array.slice(r0, r1 - r0)
        x = np.asarray(self.values[r0:r1], dtype=np.float64)
        if isinstance(self.spec, int):
            return fixed_decimals(x, self.spec)
        return pa.array([None if v != v else self.spec % v for v in x.tolist()], pa.string())

    def needs_quotes(self, sep: str) -> bool:
        return self.text is not None and any(sep in v or '"' in v or "\n" in v or "\r" in v for v in self.text)


def _arrow_block(columns: list, r0: int, r1: int, sep: str):
    """The CSV text (one line per row, a pyarrow buffer) of ``columns`` for rows r0:r1, written by pyarrow;
    no cell of them may need quotes (text with the separator, a quote or a line break)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    table = pa.Table.from_arrays([c.arrow(r0, r1) for c in columns], names=[f"c{j}" for j in range(len(columns))])
    sink = pa.BufferOutputStream(memory_pool=pool())
    pcsv.write_csv(table, sink, memory_pool=pool(), write_options=pcsv.WriteOptions(
        include_header=False, delimiter=sep, batch_size=max(r1 - r0, 1), quoting_style="none"))
    return sink.getvalue()


def csv_chunks(header: str, columns: list, n: int, sep: str, fast: bool = True):
    """The bytes of a CSV/TSV table: the ``header`` line, then ``n`` rows of ``columns`` (:class:`Column`),
    yielded in chunks of a few MB. ``fast``: numbers by pyarrow (else by Python)."""
    yield (header + "\n").encode("utf-8")
    if n == 0:
        return
    whole = fast and len(columns) > 1 and not any(c.needs_quotes(sep) for c in columns)
    if whole:  # the common case: pyarrow writes whole rows
        runs = [("numbers", columns)]
    else:  # runs of adjacent columns of one kind: ("text", rows as str) or ("numbers", [Column, ...])
        runs = []
        for c in columns:
            kind = "text" if c.text is not None or not fast else "numbers"
            if runs and runs[-1][0] == kind:
                runs[-1][1].append(c)
            else:
                runs.append((kind, [c]))
        for i, (kind, cols) in enumerate(runs):
            if kind == "text":
                runs[i] = ("text", text_rows([c.text if c.text is not None else python_strings(c.values, c.spec)
                                              for c in cols], sep))
    single = len(columns) == 1  # a lone empty cell is written "" (else the row would be a blank line)
    width = max(len(columns), 1)
    rows = max(1, min(n, CELLS_PER_BLOCK // width))
    sepb = sep.encode()

    def block(r0: int) -> bytes:
        r1 = min(n, r0 + rows)
        if whole:
            return _arrow_block(columns, r0, r1, sep)
        parts = []
        for kind, content in runs:
            if kind == "text":
                parts.append([(v if v or not single else '""').encode("utf-8") for v in content[r0:r1]])
            else:
                lines = _arrow_block(content, r0, r1, sep).to_pybytes().split(b"\n")
                lines.pop()
                if single:
                    lines = [v if v else b'""' for v in lines]
                parts.append(lines)
        if len(parts) == 1:
            return b"\n".join(parts[0]) + b"\n"
        return b"\n".join([sepb.join(cells) for cells in zip(*parts)]) + b"\n"

    starts = range(0, n, rows)
    if len(starts) == 1 or not fast:
        for r0 in starts:
            yield block(r0)
        return
    import pyarrow as pa

    with ThreadPoolExecutor(max(1, min(2, pa.cpu_count()))) as ex:
        pending: deque = deque()
        for r0 in starts:
            pending.append(ex.submit(block, r0))
            if len(pending) >= 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def gzip_chunks(chunks, level: int = 6):
    """``chunks`` compressed as one gzip stream (mtime 0: the same table gives the same bytes)."""
    import zlib

    comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    # zlib's gzip header has mtime 0 and no file name
    for chunk in chunks:
        out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


__all__ = ["Unreadable", "available", "read_csv", "csv_chunks", "gzip_chunks", "Column", "check_float_format",
           "decimals", "fixed_strings", "python_strings", "quote", "text_rows", "row_chunks"]
