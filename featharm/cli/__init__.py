"""The ``featharm`` command line: a thin layer over the public API.

A user's mistake (a missing column, an unseen site, a bad file, an option that does not apply to the
method ...) prints one line, ``featharm: error: ...``, and exits with status 2; warnings print as one line
each. Anything else is a bug and keeps its traceback (exit 1). SIGTERM, SIGINT and SIGHUP discard the
staged outputs and exit with 128 + the signal.

One module per command (``harmonize``, ``apply``, ``report``, ``diagnose``, ``collect``, ``info``, ``demo``;
``surfaces`` holds ``collect-surfaces`` and ``export-surfaces``), each
with ``add_parser(subparsers)`` and ``cmd_<name>(args)``; ``_common`` holds what they share. Parsing the
arguments imports neither the models nor pandas: ``featharm --help`` is fast, and the libraries load when
a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .._version import __version__

__all__ = ["main", "build_parser", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2

#: The commands, in the order ``featharm --help`` lists them (each is the module ``featharm.cli.NAME``).
COMMANDS = ("harmonize", "apply", "report", "diagnose", "collect", "surfaces", "info", "federated", "demo")


def _err(msg: str) -> None:
    sys.stderr.write(f"featharm: error: {msg}\n")


def _showwarning(message, category, filename, lineno, file=None, line=None):
    from ..exceptions import FeatharmWarning

    kind = category.__name__ if issubclass(category, FeatharmWarning) else "warning"
    sys.stderr.write(f"featharm: {kind}: {message}\n")


class _Parser(argparse.ArgumentParser):
    """argparse with featharm's one-line errors (a bad option is a user error like any other)."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"featharm: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="featharm",
        description="Harmonize multi-site MRI regional features (ComBat family).",
    )
    parser.add_argument("--version", action="version", version=f"featharm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    import numpy as np

    from .. import _progress, _staging
    from ..exceptions import FeatharmError

    old = warnings.showwarning
    warnings.showwarning = _showwarning
    commits = _staging.commits()
    try:
        with _staging.signals_interrupt(), _progress.enable(not getattr(args, "quiet", False)), \
                np.errstate(all="ignore"):
            try:
                code = args.func(args)
            except BaseException:  # after a signal whose exception a library swallowed, the signal is the cause
                _staging.check_interrupted()
                raise
            _staging.check_interrupted()  # such a signal, with the command otherwise done
            return code
    except (_staging.Interrupted, KeyboardInterrupt) as exc:  # SIGTERM (kill, timeout, SLURM), Ctrl-C
        _staging.discard_all()
        name, signum = (exc.name, exc.signum) if isinstance(exc, _staging.Interrupted) else ("SIGINT", 2)
        done = "the outputs were already written" if _staging.commits() > commits else "no output written"
        sys.stderr.write(f"featharm: interrupted ({name}); {done}\n")
        return 128 + signum
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FeatharmError, OSError) as exc:  # OSError: a file that cannot be read or written
        _err(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return EXIT_USER_ERROR
    finally:
        warnings.showwarning = old
