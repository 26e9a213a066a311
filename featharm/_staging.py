"""Staged outputs: the files a command writes appear together at the end, or none of them does.

::

    outputs = [Output("out", "--out", args.out, size=estimate), Output("model", "--save-model", args.save_model)]
    with staged_outputs(outputs, inputs=[("DATA", args.data)]) as st:
        ...                                  # the work
        st.write("out", table_bytes)
        st.write("model", model_bytes)
    # here every output is in place; after an exception, SIGTERM or Ctrl-C none is, and no temporary is left

In order:

1. :func:`check_outputs`, before anything is touched: the outputs are distinct files (the same file through
   a symlink, a hard link, ``..`` or a change of letter case is refused), none is an input, none is a folder
   or a device, each folder exists or can be created and is writable, and each file system has room for an
   estimate of the outputs' size.
2. Entering the block reserves one hidden temporary file per output in its destination folder
   (``.NAME.XXXXXXXX.featharm-tmp``), creating missing folders. This is the operation the final write
   needs, so a folder featharm cannot write (a read-only file system, ``/proc``, a path under a file) fails
   here, before the work.
3. :meth:`StagedOutputs.write` fills a temporary (bytes given at once are first checked against the free
   space; content streamed in chunks or written by a function meets the disk's own "no space left"); a full
   disk or any other OSError becomes one :class:`~featharm.exceptions.OutputError` naming the option and
   the file.
4. Leaving the block normally renames every temporary over its output (``os.replace``), with SIGINT and
   SIGTERM held back; leaving it with an exception removes the temporaries and the folders step 2 created.

Limits: each rename is atomic, the set is not; it is committed last, in a few back-to-back renames. If a
rename fails, the renames already done are undone (a replaced file is restored from a backup taken just
before it: a hard link, or a rename where hard links are not available). A SIGKILL or a power cut cannot be
caught: during the work it leaves the empty hidden temporaries, between two renames part of the set.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .exceptions import OutputError

__all__ = ["Output", "staged_outputs", "StagedOutputs", "check_outputs", "Interrupted", "signals_interrupt",
           "quiet_pyarrow", "check_interrupted",
           "TEMP_SUFFIX"]

TEMP_SUFFIX = ".featharm-tmp"
_HELD = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
_live: list = []  # staged sets not yet committed or discarded (cleaned up by discard_all)
_commits = 0  # sets committed in this process (so an interruption can say whether anything was written)


@dataclass
class Output:
    """One output file: ``key`` names it for :meth:`StagedOutputs.write`; ``option`` and ``path`` name it in
    messages (``--out h.csv``). ``size`` is an estimate in bytes for the free-space check; an ``optional``
    output that is never written is left alone (its temporary is removed)."""

    key: str
    option: str
    path: str | os.PathLike
    size: int = 0
    optional: bool = False
    directory: bool = False  # a folder written whole (a Zarr store): replaces a Zarr store, never another folder

    @property
    def label(self) -> str:
        return f"{self.option} {self.path}"


# --------------------------------------------------------------------------------------------- checks
def _first_existing(path: Path) -> Path:
    q = path
    while not os.path.lexists(q) and q != q.parent:
        q = q.parent
    return q


def _identity(path) -> tuple:
    """(real path, real path with case folded, (st_dev, st_ino) or None) of a path."""
    real = os.path.realpath(os.path.abspath(path))
    try:
        st = os.stat(path)
        ino = (st.st_dev, st.st_ino)
    except OSError:
        ino = None
    return real, os.path.normcase(real).casefold(), ino


def _same(a: tuple, b: tuple) -> str | None:
    """'' when a and b are one file, 'case' when they differ only by letter case, None otherwise."""
    if a[0] == b[0] or (a[2] is not None and a[2] == b[2]):
        return ""
    if a[1] == b[1]:
        return "case"
    return None


def _how(pa, pb, a: tuple, b: tuple) -> str:
    """Why two different spellings are one file (for the message)."""
    if os.path.abspath(pa) == os.path.abspath(pb):  # abspath also resolves "a/../b"
        return ""
    return " (through a symbolic link)" if a[0] == b[0] else " (hard links to one file)"


def check_outputs(outputs, inputs=()) -> None:
    """Refuse, before any work, outputs that would fail late or clobber something (see the module docstring).

    ``outputs``: :class:`Output` objects; ``inputs``: (label, path) pairs, e.g. ``("DATA", "data.csv")``.
    Raises :class:`~featharm.exceptions.OutputError` (or ``InputError`` for a directory given as a file).
    """
    from .exceptions import InputError

    outputs = [o for o in outputs if o.path]
    inputs = [(label, p) for label, p in inputs if p]
    for o in outputs:
        p = Path(o.path)
        if o.directory:
            if p.is_dir() and any(p.iterdir()) and not _is_zarr(p):
                raise OutputError(f"{o.label} is a folder that is not a Zarr store; featharm would replace it. "
                                  "Give a new name (or remove that folder).")
            if os.path.lexists(p) and not p.is_dir():
                raise OutputError(f"{o.label} exists and is not a folder (a Zarr store is one); give another name.")
        elif p.is_dir():
            raise InputError(f"{o.option} {o.path} is a directory; give a file name.")
        if os.path.lexists(p) and not o.directory:
            mode = os.stat(p).st_mode if p.exists() else os.lstat(p).st_mode
            if not stat.S_ISREG(mode) and not stat.S_ISLNK(mode):
                raise OutputError(f"{o.label} is not a regular file (a device, pipe or socket); featharm "
                                  "would replace it. Give the name of a file.")
        anc = _first_existing(Path(os.path.abspath(p)).parent)
        if not anc.is_dir():
            raise OutputError(f"cannot write {o.label}: {anc} is a file, not a folder; choose another path.")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {o.label}: the folder {anc} is not writable; choose another "
                              "folder (or fix its permissions).")
    ids = [_identity(o.path) for o in outputs]
    for i, o in enumerate(outputs):
        for j in range(i):
            how = _same(ids[j], ids[i])
            if how == "case":
                raise OutputError(f"{outputs[j].label} and {o.label} differ only by letter case (one file on "
                                  "macOS and Windows); give each output its own name.")
            if how is not None:
                raise OutputError(f"{outputs[j].label} and {o.label} are the same file"
                                  f"{_how(outputs[j].path, o.path, ids[j], ids[i])}; give each output its own name.")
        for label, path in inputs:
            how = _same(ids[i], _identity(path))
            if how == "case":
                raise OutputError(f"{o.label} and the input {label} {path} differ only by letter case (one "
                                  "file on macOS and Windows); write the result to another file (featharm never "
                                  "overwrites its inputs).")
            if how is not None:
                raise OutputError(f"{o.label} is also an input, {label} {path}"
                                  f"{_how(o.path, path, ids[i], _identity(path))}; write the result to another "
                                  "file (featharm never overwrites its inputs).")
    _check_space(outputs)


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _check_space(outputs) -> None:
    """Refuse when a file system has less free space than the estimated size of the outputs bound to it."""
    need: dict = {}
    for o in outputs:
        anc = _first_existing(Path(os.path.abspath(o.path)).parent)
        dev = os.stat(anc).st_dev
        total, labels, where = need.get(dev, (0, [], anc))
        need[dev] = (total + max(int(o.size), 0), labels + [o.label], where)
    for total, labels, where in need.values():
        if not total:
            continue
        try:
            usage = shutil.disk_usage(where)
        except OSError:  # cannot tell: the writes will say
            continue
        free = usage.free
        if usage.total and free < total:  # total 0: /proc and the like (reserving a file will fail)
            raise OutputError(f"not enough free space for {', '.join(labels)}: {_size(free)} free on the disk "
                              f"of {where}, about {_size(total)} needed; free some space or write elsewhere.")


# --------------------------------------------------------------------------------------------- staging
def _write_file(path, data) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (so the rename never exposes an empty file).

    ``data``: bytes, an iterable of bytes (written chunk by chunk: a big table never is one bytes object),
    or a function that writes to the binary file object it is given."""
    with open(path, "wb") as fh:
        if isinstance(data, (bytes, bytearray, memoryview)):
            fh.write(data)
        elif callable(data):
            data(fh)
        else:
            for chunk in data:
                fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())


def _unlink(path) -> None:
    """Remove a file (or a staged folder, with everything in it)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        os.unlink(path)


def _is_zarr(path: Path) -> bool:
    """Whether the folder is a Zarr store (v3 ``zarr.json``, v2 ``.zgroup``/``.zarray``)."""
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM/SIGHUP back for the block (they are delivered at its end)."""
    held = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD) if held else None
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _oserror(o: Output, exc: OSError, stage: str = "") -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        reason += " (the disk is full); free some space or write elsewhere"
    err = OutputError(f"cannot write {o.label}{stage}: {reason}; nothing was written.")
    err.errno = exc.errno
    return err


class StagedOutputs:
    """The outputs of one command, staged as temporary files; see :func:`staged_outputs`."""

    def __init__(self, outputs, inputs=()):
        self.outputs = {o.key: o for o in outputs if o.path}
        self.inputs = list(inputs)
        self.tmp: dict = {}
        self.written: set = set()
        self.created: list = []  # folders made by reserve(), outermost first
        self.committed = False

    # ------------------------------------------------------------------ reserve / write
    def reserve(self) -> None:
        """Create the missing folders and one empty temporary per output (the real writability test)."""
        _live.append(self)
        for o in self.outputs.values():
            folder = Path(os.path.abspath(o.path)).parent
            try:
                missing = []
                q = folder
                while not os.path.lexists(q):
                    missing.append(q)
                    q = q.parent
                for d in reversed(missing):
                    os.mkdir(d)
                    self.created.append(d)
                name = Path(o.path).name[:100]
                if o.directory:
                    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=folder)
                else:
                    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=folder)
                    os.close(fd)
            except OSError as exc:
                raise _oserror(o, exc) from None
            self.tmp[o.key] = tmp

    def path(self, key: str) -> str:
        """The temporary file of output ``key`` (for writers that need a path)."""
        return self.tmp[key]

    def write(self, key: str, data) -> None:
        """Write the complete content of output ``key`` to its temporary file.

        ``data``: bytes, an iterable of bytes chunks, or a function writing to a binary file object."""
        o = self.outputs[key]
        tmp = self.tmp[key]
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                usage = shutil.disk_usage(os.path.dirname(tmp))
                free = usage.free if usage.total else None
            except OSError:
                free = None
            if free is not None and free < len(data):
                raise _oserror(o, OSError(errno.ENOSPC, f"{_size(len(data))} to write, {_size(free)} free"))
        try:
            _write_file(tmp, data)
        except OSError as exc:
            raise _oserror(o, exc) from None
        self.written.add(key)

    def write_directory(self, key: str, writer) -> None:
        """Fill the temporary folder of a ``directory`` output: ``writer(path)`` writes into it."""
        o = self.outputs[key]
        try:
            writer(self.tmp[key])
        except OSError as exc:
            raise _oserror(o, exc) from None
        self.written.add(key)

    # ------------------------------------------------------------------ commit / discard
    def commit(self) -> None:
        """Rename every written temporary over its output; on a failure undo the renames already done."""
        missing = [o.label for k, o in self.outputs.items() if k not in self.written and not o.optional]
        if missing:
            raise RuntimeError(f"outputs never written: {missing}")  # a bug in the command
        umask = os.umask(0)
        os.umask(umask)
        done: list = []  # (output, backup path or None)
        check_interrupted()  # a signal whose exception was swallowed: nothing is committed
        with _signals_held():
            try:
                for key, o in self.outputs.items():
                    if key not in self.written:
                        continue
                    tmp = self.tmp[key]
                    try:
                        os.chmod(tmp, (0o777 if o.directory else 0o666) & ~umask)
                        backup = self._backup(o, tmp)
                        try:
                            os.replace(tmp, o.path)
                        except OSError:
                            if backup is not None:
                                with contextlib.suppress(OSError):
                                    if not os.path.lexists(o.path):
                                        os.replace(backup, o.path)
                                _unlink(backup)
                            raise
                    except OSError as exc:
                        raise _oserror(o, exc) from None
                    done.append((o, backup))
            except BaseException:
                for o, backup in reversed(done):
                    with contextlib.suppress(OSError):
                        if backup is not None:
                            if o.directory:
                                _unlink(o.path)
                            os.replace(backup, o.path)
                        else:
                            os.unlink(o.path)
                self._cleanup()
                raise
            for _, backup in done:
                if backup is not None:
                    _unlink(backup)
            self._cleanup(created=False)
            self.committed = True
        global _commits
        _commits += 1

    @staticmethod
    def _backup(o: Output, tmp: str):
        """A name keeping the file ``o.path`` replaces until the set is committed (None: no such file)."""
        if not os.path.lexists(o.path):
            return None
        backup = tmp + ".bak"
        try:
            os.link(o.path, backup, follow_symlinks=False)
        except (OSError, NotImplementedError):
            os.replace(o.path, backup)  # no hard links here: move it aside instead
        return backup

    def discard(self) -> None:
        """Remove the temporaries and the folders reserve() created (if they are still empty)."""
        with _signals_held():
            self._cleanup()

    def _cleanup(self, created: bool = True) -> None:
        for tmp in self.tmp.values():
            _unlink(tmp)
        self.tmp = {}
        if created:
            for d in reversed(self.created):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
        self.created = []
        if self in _live:
            _live.remove(self)


@contextlib.contextmanager
def staged_outputs(outputs, inputs=()):
    """Check ``outputs`` (see :func:`check_outputs`), reserve their temporaries, and yield the
    :class:`StagedOutputs`; commit them when the block ends normally, discard them otherwise."""
    outputs = [o for o in outputs if o.path]
    check_outputs(outputs, inputs)
    st = StagedOutputs(outputs, inputs)
    try:
        st.reserve()
        yield st
    except BaseException:
        st.discard()
        raise
    try:
        st.commit()
    except BaseException:
        st.discard()  # commit undid its renames; nothing may stay (a no-op when nothing is left)
        raise


def discard_all() -> None:
    """Remove every staged set not committed yet (the last resort of an interrupted command)."""
    for st in list(_live):
        st.discard()


def commits() -> int:
    """How many staged sets this process has committed."""
    return _commits


# --------------------------------------------------------------------------------------------- signals
class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM, SIGINT or SIGHUP while :func:`signals_interrupt` is active.

    A BaseException (like KeyboardInterrupt), so that ``except Exception`` blocks let it through and the
    staged outputs are discarded on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


_PENDING: int | None = None  # the signal signals_interrupt received, if any


def _raise(signum, frame):
    global _PENDING
    _PENDING = signum  # kept: the exception can be swallowed on its way up (a bare `except:` in a library)
    raise Interrupted(signum)


def check_interrupted() -> None:
    """Raise :class:`Interrupted` again if a signal arrived under :func:`signals_interrupt`, even though its
    exception was swallowed (a signal during an import can meet a library's bare ``except:``; seen: a SIGTERM'd
    ``featharm harmonize`` ran to its end). Called before outputs are committed and when a command returns."""
    if _PENDING is not None:
        raise Interrupted(_PENDING)


_INTERRUPTING = False  # signals_interrupt is active
_PYARROW_QUIET = False  # and it turned pyarrow's own signal handlers off


def quiet_pyarrow() -> None:
    """Inside :func:`signals_interrupt`, turn pyarrow's own signal handlers off (once pyarrow is imported).

    While a pyarrow read runs, pyarrow takes SIGINT and SIGTERM from Python's handler and hands the signal back
    when the read ends; one that arrives as a read finishes can be lost (``featharm harmonize`` then ran to its
    end after a SIGTERM, in about 1 of 15 tries). Without them, Python's handler stays and the signal
    interrupts once the block being parsed is done. Called where featharm starts pyarrow's reads."""
    global _PYARROW_QUIET
    if _INTERRUPTING and not _PYARROW_QUIET:
        import sys

        pa = sys.modules.get("pyarrow")
        if pa is not None and hasattr(pa, "enable_signal_handlers"):
            pa.enable_signal_handlers(False)
            _PYARROW_QUIET = True


@contextlib.contextmanager
def signals_interrupt():
    """Turn SIGTERM (``kill``, ``timeout``, SLURM), SIGINT (Ctrl-C) and SIGHUP into :class:`Interrupted`.

    A signal that is ignored (``nohup``, a background job's SIGINT) stays ignored, and a handler someone
    else installed is kept. Only in the main thread; the previous handlers come back at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _INTERRUPTING, _PYARROW_QUIET, _PENDING
    old = {}
    for sig in _HELD:
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            old[sig] = current
            signal.signal(sig, _raise)
    outer = _INTERRUPTING
    _INTERRUPTING = True
    if not outer:
        _PENDING = None
    quiet_pyarrow()
    try:
        yield
    finally:
        _INTERRUPTING = outer
        if _PYARROW_QUIET and not outer:  # pyarrow's default again
            import sys

            sys.modules["pyarrow"].enable_signal_handlers(True)
            _PYARROW_QUIET = False
        for sig, handler in old.items():
            signal.signal(sig, handler)
