"""What the commands share: reading DATA (and its covariates), finding the feature columns, writing OUT,
staging the outputs, and the options of several commands.

Importing this module loads nothing but the standard library: ``featharm --help`` parses the arguments
through it, and pandas, the models and the rest load only when a command runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

KB, MB = 1024, 1024 * 1024


# --------------------------------------------------------------------------------------------- options
def add_data_options(p: argparse.ArgumentParser) -> None:
    """--covariates, --id, --out, --float-format and --quiet of ``harmonize`` and ``apply``."""
    p.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet) joined on --id")
    p.add_argument("--id", metavar="COL", help="id column (joins DATA and --covariates; kept in OUT)")
    p.add_argument("--out", required=True, metavar="OUT", help="output table (format from the extension)")
    p.add_argument("--float-format", default="shortest", type=float_format, metavar="FMT",
                   help="how a CSV/TSV OUT writes the harmonized numbers: 'shortest' (default: the shortest text "
                        "that reads back as the same number), 'input' (each column with as many decimals as it "
                        "has in DATA) or one printf-style conversion such as %%.6g or %%.4f (slower, except "
                        "%%.Nf); the other columns are always copied as written")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def add_missing_option(p: argparse.ArgumentParser) -> None:
    """--missing of ``harmonize`` and ``apply``: empty feature cells allowed (default) or refused."""
    p.add_argument("--missing", choices=["allow", "error"], default="allow",
                   help="empty (NaN) feature cells: 'allow' (default: each feature is harmonized on its observed "
                        "rows and empty cells stay empty; ComBat only) or 'error' (refuse them)")


def check_missing(args, data: pd.DataFrame, feats) -> int:
    """The number of empty feature cells; with ``--missing error`` any is an error."""
    from ..exceptions import MissingValueError

    na = data[feats].isna()
    n = int(na.to_numpy().sum())
    if n and getattr(args, "missing", "allow") == "error":
        from .._validation import show_rows

        c = na.any().idxmax()
        raise MissingValueError(
            f"--missing error: {n} feature cell(s) are empty, e.g. {c!r} at {show_rows(data.index, na[c].to_numpy())}. "
            "Fill or drop them, or leave out --missing error (ComBat harmonizes each feature on its observed rows "
            "and leaves empty cells empty)."
        )
    return n


def missing_summary(n_missing: int, data: pd.DataFrame, feats, excluded) -> str:
    """The summary line's words about empty cells and rows left out (empty when there are none)."""
    parts = []
    if n_missing:
        cells = len(data) * len(feats)
        n_feats = int(data[feats].isna().any().sum())
        parts.append(f"{n_missing:,} of {cells:,} feature cells missing ({100 * n_missing / cells:.2g} %, in "
                     f"{n_feats} feature{'s' if n_feats != 1 else ''}), left empty")
    if len(excluded):
        parts.append(f"{len(excluded)} row(s) left out for a missing batch or covariate, written empty")
    return "".join("; " + p for p in parts)


_FLOAT_FORMAT = re.compile(r"shortest|input|%[-+ #0]*\d*(?:\.\d+)?[eEfFgG]")  # as io._arrow.check_float_format


def float_format(value: str) -> str:
    """The value of ``--float-format`` (argparse type; the standard library only: parsing loads no pandas)."""
    if not _FLOAT_FORMAT.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r}: give 'shortest', 'input' or one printf-style conversion "
                                          "such as %.6g, %.4f or %.8e")
    return value


def report_inputs(args) -> dict:
    """The input files of the command, as the report's provenance lists them."""
    names = (("data", "data"), ("covariates", "covariates"), ("model", "model"), ("harmonized", "harmonized"))
    return {label: getattr(args, attr) for label, attr in names if getattr(args, attr, None)}


def report_parameters(args) -> dict:
    """The options given on the command line, as the report's provenance lists them."""
    return {f"--{k.replace('_', '-')}": v for k, v in sorted(vars(args).items())
            if k not in ("func", "command") and v not in (None, False)}


# --------------------------------------------------------------------------------------------- inputs
_UNNAMED = re.compile(r"Unnamed: \d+")


def load_inputs(args, numeric=None):
    """DATA (and optional covariate FILE) -> (data table, covariates aligned to it)."""
    source, cov = load_source(args, numeric)
    return source.frame, cov


def load_source(args, numeric=None):
    """DATA (and optional covariate FILE) -> (DATA as a :class:`~featharm.io.tables.SourceTable`, covariates
    aligned to it). ``numeric(labels)``: the columns of DATA that may be features (read as one block of
    numbers when they are numbers); see :func:`possible_features`."""
    import pandas as pd

    from ..exceptions import InputError
    from ..io import read_table
    from ..io.tables import read_source

    source = read_source(args.data, index_col=args.id, numeric=numeric)
    data = source.frame
    if not args.id:  # rows are named in messages as the user sees them: by their line (header = line 1)
        first = 1 if source.fmt == "parquet" else 2
        data.index = pd.RangeIndex(first, first + len(data))
    if args.covariates:
        if not args.id:
            raise InputError("--covariates needs --id COL: the id column that joins DATA and the covariate file.")
        cov = read_table(args.covariates, index_col=args.id)
        data, cov = same_id_type(data, cov)
        missing = data.index.difference(cov.index, sort=False)
        if len(missing):
            raise InputError(
                f"{len(missing)} id(s) of {args.data} are not in {args.covariates}: "
                f"{list(missing[:5])}{' ...' if len(missing) > 5 else ''}. Every subject needs covariates."
            )
        cov = cov.loc[data.index]
        source.frame = data
    else:
        cov = data
    return source, cov


def possible_features(args, exclude=()):
    """``numeric(labels)`` for :func:`load_source`: the columns that may be features given ``--features``
    and the columns that are not features (batch, id, the formula's, ``exclude``)."""

    def numeric(labels) -> list:
        from ..exceptions import FeatharmError

        skip = {str(c) for c in (args.batch, args.id, *exclude) if c}
        try:
            skip.update(formula_columns(args.formula, labels))
        except FeatharmError:  # a bad formula: said later, where it is said today
            pass
        cols = [c for c in labels if str(c) not in skip]
        if getattr(args, "features", None):
            return [c for c in cols if any(fnmatch.fnmatchcase(str(c), p) for p in args.features)]
        return [c for c in cols if not _UNNAMED.fullmatch(str(c))]

    return numeric


def same_id_type(a: pd.DataFrame, b: pd.DataFrame):
    """Two tables indexed by id, with ids of one type (a Parquet file's integers match a CSV's text)."""
    if a.index.dtype != b.index.dtype:
        a, b = a.set_axis(a.index.astype(str)), b.set_axis(b.index.astype(str))
    return a, b


def check_batch(cov: pd.DataFrame, batch: str) -> None:
    """The batch column must be in the covariates."""
    if batch not in cov.columns:
        from .._validation import show_columns
        from ..exceptions import ColumnNotFoundError

        raise ColumnNotFoundError(f"no batch column {batch!r}; columns present: {show_columns(cov.columns)}.")


def formula_columns(formula, cov) -> list:
    """The covariate columns (of the DataFrame or list of labels ``cov``) a ``--formula`` uses (they are not
    features)."""
    from ..formula import formula_columns

    return formula_columns(formula, getattr(cov, "columns", cov))


def check_model_features(args, data: pd.DataFrame, feats) -> None:
    """DATA must hold every feature column the model was fitted on."""
    missing = [c for c in feats if c not in data.columns]
    if missing:
        from ..exceptions import ColumnNotFoundError

        raise ColumnNotFoundError(
            f"{args.data} lacks {len(missing)} feature column(s) the model was fitted on: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}."
        )


_FEATURES_FIX = ("Fix those cells in the file (featharm does not guess numbers), or leave the column out of "
                 "the features by naming them with --features PATTERN.")


def feature_columns(data: pd.DataFrame, patterns, exclude) -> list[str]:
    """The feature columns: those matching ``--features`` globs, else every other numeric column.

    A column is judged by what most of its values are: a column of numbers spoiled by a few text cells
    (``n/a?``, ``"2,45"``, ``45y``: pandas reads it as text) is an error naming the cells, not silently
    left out of the features; a genuine text column (site names, sex) is not a feature.
    """
    import pandas as pd

    from .._validation import show_columns
    from ..exceptions import ColumnNotFoundError, InputError

    exclude = {str(c) for c in exclude if c is not None}
    if patterns:
        cols = [c for c in data.columns if any(fnmatch.fnmatchcase(str(c), p) for p in patterns)]
        if not cols:
            raise ColumnNotFoundError(f"no column matches --features {list(dict.fromkeys(patterns))}; columns: "
                                      f"{show_columns(data.columns)}")
        cols = [c for c in cols if str(c) not in exclude]
        check_feature_values(data, cols, f"matched by --features {patterns}", _FEATURES_FIX,
                             text_fix="Choose patterns that match only the feature columns.")
    else:  # "Unnamed: 0": a column without a header, usually an index written by pandas' to_csv
        cols, text = [], []
        for c in data.columns:
            if str(c) in exclude or _UNNAMED.fullmatch(str(c)):
                continue
            s = data[c]
            if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
                cols.append(c)
                continue
            check_feature_values(data, [c], "", _FEATURES_FIX)
            text.append(c)
        if not cols:
            raise InputError("no numeric feature columns found"
                             + (f" (text columns: {show_columns(text, 6)})" if text else "")
                             + "; name the feature columns with --features PATTERN.")
    return cols


def check_feature_values(data: pd.DataFrame, cols, how: str, fix: str, *, text_fix: str | None = None) -> None:
    """Refuse feature columns ``cols`` that are not numbers, naming the cells (rows as in the file).

    A numeric column spoiled by a few text cells is refused, ending with ``fix``; a column of text,
    true/false values or nothing at all is refused ending with ``text_fix`` (``None``: it is let through,
    not being a feature: auto-detection).
    """
    import pandas as pd

    from .._validation import numbers_with_text, numbers_with_text_error, show_cells
    from ..exceptions import NonNumericFeatureError

    for c in cols:
        s = data[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            continue
        bad = numbers_with_text(s)
        if bad is not None:
            raise numbers_with_text_error(s, c, bad, fix=fix)
        if text_fix is None:
            continue
        what = f"feature column {c!r}" + (f" ({how})" if how else "")
        present = s.notna().to_numpy()
        if pd.api.types.is_bool_dtype(s) or not present.any():
            raise NonNumericFeatureError(f"{what} {'holds true/false values' if present.any() else 'is empty'}, "
                                         f"not numbers. {text_fix}")
        raise NonNumericFeatureError(f"{what} holds text, not numbers: {show_cells(s, present, 3)}. {text_fix}")


def read_harmonized(args, data: pd.DataFrame, feats: list):
    """The ``--harmonized`` table's feature columns, rows matched to DATA (by ``--id`` or by position)."""
    if not args.harmonized:
        return None
    from ..exceptions import ColumnNotFoundError, InputError
    from ..io.tables import read_source

    wanted = set(map(str, feats))
    hsource = read_source(args.harmonized, index_col=args.id, numeric=lambda labels: [c for c in labels
                                                                                      if str(c) in wanted])
    hdata = hsource.frame
    if args.id:
        data, hdata = same_id_type(data, hdata)
    lacking = [c for c in feats if c not in hdata.columns]
    if lacking:
        raise ColumnNotFoundError(f"{args.harmonized} lacks the feature column(s) {lacking[:5]}"
                                  f"{' ...' if len(lacking) > 5 else ''}.")
    if args.id:
        absent = data.index.difference(hdata.index, sort=False)
        if len(absent):
            raise InputError(f"{len(absent)} id(s) of {args.data} are not in {args.harmonized}: "
                             f"{list(absent[:5])}{' ...' if len(absent) > 5 else ''}.")
        values = hsource.features(feats).set_axis(hdata.index, axis=0)  # a view of the numbers, ids as DATA's
        return values if values.index.equals(data.index) else values.loc[data.index]
    if len(hdata) != len(data):
        raise InputError(f"{args.harmonized} has {len(hdata)} rows but {args.data} has {len(data)}; "
                         "pass --id COL to match them by id.")
    return hsource.features(feats).set_axis(data.index, axis=0)


# --------------------------------------------------------------------------------------------- outputs
_INPUTS = (("data", "DATA"), ("covariates", "--covariates"), ("model", "--model"), ("harmonized", "--harmonized"))


def _inputs(args) -> list:
    """(label, path) of every input file of the command (none of them may be an output)."""
    found = []
    for attr, label in _INPUTS:
        path = getattr(args, attr, None)
        if path:  # `featharm apply MODEL DATA`: the model is a positional argument
            found.append(("MODEL" if attr == "model" and args.command == "apply" else label, path))
    return found


def file_size(path) -> int:
    try:
        return os.path.getsize(path)
    except (OSError, TypeError):
        return 0


def stage(args, outputs, inputs=None):
    """Check every output (format from the extension, distinct files, not an input, writable folder,
    free space) and stage them (see featharm._staging): written all together at the end of the block,
    or not at all."""
    from .._staging import staged_outputs
    from ..exceptions import InputError
    from ..io.tables import table_format

    for o in outputs:
        if not o.path or Path(o.path).is_dir():  # a directory: check_outputs says so
            continue
        if o.key == "table":
            table_format(o.path)
        elif o.key == "report" and Path(o.path).suffix.lower() not in (".html", ".htm"):
            raise InputError(f"{o.option} {o.path}: the report is an HTML file; give it a .html name.")
    return staged_outputs(outputs, _inputs(args) if inputs is None else inputs)


def output_table(source, harmonized: pd.DataFrame, out, float_format: str = "shortest", release: bool = False):
    """OUT for ``staged.write``: DATA (a :class:`~featharm.io.tables.SourceTable`) with the harmonized
    columns replaced, streamed in chunks; the other columns of a CSV/TSV DATA are copied as text, exactly as
    written (``007``, ``NA``, ``1`` stay so). ``release``: ``source`` lets go of what writing does not need
    (the numbers as read), so that their memory is free while OUT is written."""
    from ..io.tables import source_chunks

    return source_chunks(source, harmonized, out, float_format, release=release)
