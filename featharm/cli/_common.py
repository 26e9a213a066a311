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
DATA_HELP = ("table(s) with the features (and covariates): CSV, TSV or Parquet, or one Zarr feature store "
             "(STORE.zarr, harmonized out of core into --out OUT.zarr); also FreeSurfer asegstats2table/"
             "aparcstats2table tables, ENIGMA CSVs and ABCD 5.x tables (mri_y_smr_*.csv, mri_y_adm_info.csv, "
             "abcd_y_lt.csv ...), told by their header. Several files are joined on their ids (FreeSurfer and "
             "ENIGMA: the first column; ABCD: src_subject_id and eventname; plain tables: --id)")


def add_data_options(p: argparse.ArgumentParser) -> None:
    """--covariates, --id, --out, --float-format, --quiet and --scheduler of ``harmonize`` and ``apply``."""
    p.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet) joined on --id")
    p.add_argument("--id", metavar="COL", help="id column (joins DATA and --covariates; kept in OUT)")
    p.add_argument("--out", required=True, metavar="OUT", help="output table (format from the extension)")
    p.add_argument("--float-format", default="shortest", type=float_format, metavar="FMT",
                   help="how a CSV/TSV OUT writes the harmonized numbers: 'shortest' (default: the shortest text "
                        "that reads back as the same number), 'input' (each column with as many decimals as it "
                        "has in DATA) or one printf-style conversion such as %%.6g or %%.4f (slower, except "
                        "%%.Nf); the other columns are always copied as written")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with DATA a Zarr feature store (out of core): run on the Dask cluster whose scheduler is at "
                        "ADDRESS (tcp://host:8786); default: Dask's threads on this machine")


def add_abcd_event_option(p: argparse.ArgumentParser) -> None:
    """--abcd-event of the commands that read DATA (harmonize, apply, diagnose, report)."""
    p.add_argument("--abcd-event", nargs="+", metavar="EVENT",
                   help="with ABCD tables: keep the rows of these eventname values (e.g. baseline_year_1_arm_1), "
                        "or 'all'. Without it, tables holding several events are refused (repeated scans of a "
                        "subject are not independent rows) unless the method models them (--method longitudinal, "
                        "diagnose --random, a longitudinal MODEL)")


def abcd_events(args, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the ABCD table ``frame`` (a column ``eventname``) at the events of ``--abcd-event``.

    Without the option, one event is kept as it is; several are an error listing them, unless the command
    models repeated scans (``--method longitudinal``, ``--random``, a longitudinal model) or has no such option.
    """
    from ..exceptions import InputError

    if not hasattr(args, "abcd_event"):  # a command without the option: every row
        return frame
    present = sorted(set(frame["eventname"].astype(str)))
    chosen = args.abcd_event
    if not chosen:
        repeated = (getattr(args, "method", None) == "longitudinal" or getattr(args, "random", None)
                    or getattr(args, "repeated_measures", False))
        if len(present) <= 1 or repeated:
            return frame
        counts = frame["eventname"].astype(str).value_counts()
        shown = ", ".join(f"{e} ({int(counts[e])} rows)" for e in present)
        raise InputError(
            f"the ABCD tables hold {len(present)} events: {shown}. Repeated scans of a subject are not independent "
            f"rows: pass --abcd-event EVENT to keep one (e.g. --abcd-event {present[0]}), --abcd-event all to take "
            "every scan as its own row, or model them (harmonize --method longitudinal --subject src_subject_id).")
    if [str(e) for e in chosen] == ["all"]:
        return frame
    unknown = [e for e in chosen if str(e) not in present]
    if unknown:
        raise InputError(f"--abcd-event {' '.join(map(str, unknown))}: no rows at that event; the ABCD tables hold "
                         f"{', '.join(present)} (or pass --abcd-event all).")
    return frame[frame["eventname"].astype(str).isin([str(e) for e in chosen])]


def add_missing_option(p: argparse.ArgumentParser) -> None:
    """--missing of ``harmonize`` and ``apply``: empty feature cells allowed (default) or refused."""
    p.add_argument("--missing", choices=["allow", "error"], default="allow",
                   help="empty (NaN) feature cells: 'allow' (default: each feature is harmonized on its observed "
                        "rows and empty cells stay empty; CovBat's covariance step skips rows with one) or 'error' "
                        "(refuse them)")


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
            "Fill or drop them, or leave out --missing error (every family harmonizes each feature on its observed rows "
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
    names = (("covariates", "covariates"), ("model", "model"), ("harmonized", "harmonized"))
    paths = data_paths(args)
    found = {("data" if len(paths) == 1 else f"data {k + 1}"): p for k, p in enumerate(paths)}
    return {**found, **{label: getattr(args, attr) for label, attr in names if getattr(args, attr, None)}}


def report_parameters(args) -> dict:
    """The options given on the command line, as the report's provenance lists them."""
    return {f"--{k.replace('_', '-')}": v for k, v in sorted(vars(args).items())
            if k not in ("func", "command") and v not in (None, False)}


def add_include_option(p: argparse.ArgumentParser) -> None:
    """--include of the commands that pick the features themselves (harmonize, diagnose, report)."""
    p.add_argument("--include", nargs="+", metavar="PATTERN",
                   help="without --features, the QC and global columns left out of the features (Euler number "
                        "such as avg_en, surface holes, eTIV/ICV, BrainSegVol, MaskVol, SupraTentorialVol ...) "
                        "that are features after all (names or globs, e.g. eTIV 'BrainSegVol*')")


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
    from ..io.formats import sniff_format
    from ..io.tables import read_source

    paths = data_paths(args)
    if len(paths) > 1 or sniff_format(paths[0]) != "table":
        return _load_formats(args, paths)
    if getattr(args, "abcd_event", None):
        raise InputError(f"--abcd-event selects rows of ABCD tables (keyed by src_subject_id and eventname); "
                         f"{paths[0]} is not one. Drop the option.")
    source = read_source(paths[0], index_col=args.id, numeric=numeric)
    data = source.frame
    if not args.id:  # rows are named in messages as the user sees them: by their line (header = line 1)
        first = 1 if source.fmt == "parquet" else 2
        data.index = pd.RangeIndex(first, first + len(data))
    if args.covariates:
        if not args.id:
            raise InputError("--covariates needs --id COL: the id column that joins DATA and the covariate file.")
        cov = read_table(args.covariates, index_col=args.id)
        return _join_covariates(args, source, cov)
    return source, data


def _load_formats(args, paths):
    """DATA of several files, or of a FreeSurfer, ENIGMA or ABCD table (see :mod:`featharm.io.formats`)."""
    import pandas as pd

    from ..exceptions import ColumnNotFoundError, DuplicateIndexError
    from ..io import read_table
    from ..io.formats import ABCD_KEYS, read_feature_tables
    from ..io.tables import SourceTable

    tables = read_feature_tables(paths, args.id)
    abcd = tables.id_columns == list(ABCD_KEYS)
    if abcd:
        tables.frame = abcd_events(args, tables.frame)
    elif getattr(args, "abcd_event", None):
        from ..exceptions import InputError

        raise InputError("--abcd-event selects rows of ABCD tables (keyed by src_subject_id and eventname); DATA "
                         "is not one. Drop the option.")
    source = SourceTable(tables.frame, Path(paths[0]), "joined", measures=tables.measures)
    data = source.frame
    if abcd and args.id:  # one event per subject: the rows are named by --id (it joins --covariates)
        if args.id not in data.columns:
            raise ColumnNotFoundError(f"--id {args.id!r}: the ABCD tables have no such column.")
        if data[args.id].duplicated().any():
            dup = data.loc[data[args.id].duplicated(), args.id].iloc[0]
            raise DuplicateIndexError(
                f"--id {args.id}: {dup!r} is on several rows (several events per subject); leave out --id (rows "
                "are then src_subject_id and eventname) and give covariates keyed by both, or keep one event.")
        data.index = pd.Index(data[args.id].astype(str).to_numpy())
    if not args.covariates:
        return source, data
    if abcd and not args.id:
        cov = read_table(args.covariates)
        lacking = [k for k in ABCD_KEYS if k not in cov.columns]
        if lacking:
            raise ColumnNotFoundError(f"--covariates {args.covariates} has no {' or '.join(lacking)} column: with "
                                      "ABCD DATA it is joined on src_subject_id and eventname (or pass --id COL "
                                      "for data with one event per subject).")
        cov.index = pd.Index([f"{a}/{b}" for a, b in zip(cov[ABCD_KEYS[0]], cov[ABCD_KEYS[1]])])
        if cov.index.has_duplicates:
            raise DuplicateIndexError(f"--covariates {args.covariates} repeats the subject and event "
                                      f"{cov.index[cov.index.duplicated()][0]!r}.")
    else:
        key = args.id or tables.id_columns[0]
        try:
            cov = read_table(args.covariates, index_col=key)
        except ColumnNotFoundError as exc:
            if args.id:
                raise
            raise ColumnNotFoundError(f"{exc} The ids of DATA are in its column {key!r}: name the id column of "
                                      f"the covariate file with --id COL (DATA's is renamed to match).") from None
        cov.index = pd.Index([str(i) for i in cov.index])
    return _join_covariates(args, source, cov)


def _join_covariates(args, source, cov):
    """(DATA, the covariate rows of its ids in its order): every id must have covariates."""
    from ..exceptions import InputError

    data, cov = same_id_type(source.frame, cov)
    missing = data.index.difference(cov.index, sort=False)
    if len(missing):
        raise InputError(
            f"{len(missing)} id(s) of {data_name(args)} are not in {args.covariates}: "
            f"{list(missing[:5])}{' ...' if len(missing) > 5 else ''}. Every subject needs covariates."
        )
    source.frame = data
    return source, cov.loc[data.index]


def data_paths(args) -> list:
    """The DATA files of the command (one or more)."""
    d = args.data
    return list(d) if isinstance(d, (list, tuple)) else [d]


def data_name(args) -> str:
    """DATA as messages name it: its path, or the paths joined by ' + '."""
    paths = data_paths(args)
    return str(paths[0]) if len(paths) == 1 else " + ".join(map(str, paths))


def possible_features(args, exclude=()):
    """``numeric(labels)`` for :func:`load_source`: the columns that may be features given ``--features``
    and the columns that are not features (batch, id, the formula's, ``exclude``)."""

    def numeric(labels) -> list:
        from ..exceptions import FeatharmError

        batch = args.batch if isinstance(args.batch, list) else [args.batch]  # harmonize: --batch repeatable
        skip = {str(c) for c in (*batch, args.id, *exclude) if c}
        try:
            skip.update(formula_columns(args.formula, labels))
        except FeatharmError:  # a bad formula: said later, where it is said today
            pass
        cols = [c for c in labels if str(c) not in skip]
        if getattr(args, "features", None):
            return [c for c in cols if any(fnmatch.fnmatchcase(str(c), p) for p in args.features)]
        cols = [c for c in cols if not _UNNAMED.fullmatch(str(c))]
        return qc_split(cols, getattr(args, "include", None))[0]  # the others are read as they are typed

    return numeric


def same_id_type(a: pd.DataFrame, b: pd.DataFrame):
    """Two tables indexed by id, with ids of one type (a Parquet file's integers match a CSV's text)."""
    if a.index.dtype != b.index.dtype:
        a, b = a.set_axis(a.index.astype(str)), b.set_axis(b.index.astype(str))
    return a, b


def check_batch(cov: pd.DataFrame, batch) -> None:
    """The batch column (each of a list of them: harmonize's repeated --batch) must be in the covariates."""
    for b in batch if isinstance(batch, list) else [batch]:
        _check_batch(cov, b)


def _check_batch(cov: pd.DataFrame, batch: str) -> None:
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
            f"{data_name(args)} lacks {len(missing)} feature column(s) the model was fitted on: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}."
        )


_FEATURES_FIX = ("Fix those cells in the file (featharm does not guess numbers), or leave the column out of "
                 "the features by naming them with --features PATTERN.")


def feature_columns(data: pd.DataFrame, patterns, exclude, candidates=None) -> list[str]:
    """The feature columns: those matching ``--features`` globs, else every other numeric column (of
    ``candidates``, when given: the measure columns of a FreeSurfer, ENIGMA or ABCD table).

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
        pool = data.columns if candidates is None else [c for c in data.columns if c in set(candidates)]
        for c in pool:
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


def qc_split(cols, include=None) -> tuple[list, list]:
    """(``cols`` without the QC and global columns, those left out); ``include``: globs of the QC and
    global columns kept as features after all."""
    from ..io.freesurfer import not_a_feature

    kept, left = [], []
    for c in cols:
        if not_a_feature(c) and not any(fnmatch.fnmatchcase(str(c), p) for p in include or ()):
            left.append(c)
        else:
            kept.append(c)
    return kept, left


def choose_features(args, data: pd.DataFrame, exclude, candidates=None) -> list:
    """The features of a command that picks them (harmonize, diagnose, report): ``--features`` globs, else
    every other numeric column (of ``candidates`` when DATA's format says which columns are measures)
    except the QC and global columns (Euler number, surface holes, head size ...: see
    :func:`featharm.io.not_a_feature`), which are left out with one line saying so and how to include
    them (``--include PATTERN``)."""
    import sys

    from .._validation import show_columns
    from ..exceptions import ColumnNotFoundError, InputError

    include = getattr(args, "include", None)
    if args.features and include:
        raise InputError("--include adds QC or global columns to the features featharm picks itself; with "
                         "--features, add those patterns to --features instead.")
    feats = feature_columns(data, args.features, exclude, candidates)
    if args.features:
        return feats
    unmatched = [p for p in include or () if not any(fnmatch.fnmatchcase(str(c), p) for c in data.columns)]
    if unmatched:
        raise ColumnNotFoundError(f"--include {unmatched}: no column of DATA matches; columns: "
                                  f"{show_columns(data.columns)}")
    feats, left = qc_split(feats, include)
    if left and not feats:
        raise InputError(f"the only numeric columns are QC or global measures ({show_columns(left, 6)}); "
                         "harmonize them with --include PATTERN or name the features with --features PATTERN.")
    if left and not getattr(args, "quiet", False):
        from ..io.freesurfer import not_a_feature

        kinds = sorted({not_a_feature(c) for c in left})
        sys.stderr.write(f"featharm: note: left out {len(left)} {' and '.join(kinds)} column(s) from the features: "
                         f"{', '.join(map(str, left[:8]))}{' ...' if len(left) > 8 else ''}; to harmonize them "
                         f"too pass --include {' '.join(_shell_word(c) for c in left[:3])}"
                         f"{' ...' if len(left) > 3 else ''} (or name every feature with --features PATTERN)\n")
    return feats


def _shell_word(name) -> str:
    import shlex

    return shlex.quote(str(name))


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
            raise InputError(f"{len(absent)} id(s) of {data_name(args)} are not in {args.harmonized}: "
                             f"{list(absent[:5])}{' ...' if len(absent) > 5 else ''}.")
        values = hsource.features(feats).set_axis(hdata.index, axis=0)  # a view of the numbers, ids as DATA's
        return values if values.index.equals(data.index) else values.loc[data.index]
    if len(hdata) != len(data):
        raise InputError(f"{args.harmonized} has {len(hdata)} rows but {data_name(args)} has {len(data)}; "
                         "pass --id COL to match them by id.")
    return hsource.features(feats).set_axis(data.index, axis=0)


# --------------------------------------------------------------------------------------------- outputs
_INPUTS = (("data", "DATA"), ("covariates", "--covariates"), ("model", "--model"), ("harmonized", "--harmonized"))


def _inputs(args) -> list:
    """(label, path) of every input file of the command (none of them may be an output)."""
    found = []
    for attr, label in _INPUTS:
        path = getattr(args, attr, None)
        for p in (path if isinstance(path, (list, tuple)) else [path] if path else []):
            # `featharm apply MODEL DATA`: the model is a positional argument
            found.append(("MODEL" if attr == "model" and args.command == "apply" else label, p))
    return found


def file_size(path) -> int:
    """The size of a file (the sum of several), 0 if unknown."""
    if isinstance(path, (list, tuple)):
        return sum(file_size(p) for p in path)
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


# --------------------------------------------------------------------------------------------- priors
def check_feature_groups_option(args) -> None:
    """``--feature-groups`` goes with per-group priors only (checked before anything is read)."""
    if getattr(args, "feature_groups", None) and getattr(args, "priors", None) == "pool":
        from ..exceptions import InputError

        raise InputError("--feature-groups gives the measure groups of --priors group; it does not go with "
                         "--priors pool (one prior across all features). Drop one of them.")


def set_feature_groups(args, model, feats) -> None:
    """``--feature-groups FILE``: the model's priors per the groups of the file, checked against the features."""
    path = getattr(args, "feature_groups", None)
    if not path:
        return
    from ..io.groups import read_feature_groups

    model.set_params(priors=read_feature_groups(path, [str(f) for f in feats]))


def priors_summary(model) -> str:
    """The summary line's words about the empirical-Bayes priors: the groups and their feature counts."""
    groups = getattr(model, "feature_groups_", None)
    if groups is None:
        return "one empirical-Bayes prior across all features"
    counts = groups.value_counts(sort=False)
    shown = ", ".join(f"{g} ({int(n)})" for g, n in counts.items())
    return f"empirical-Bayes priors per measure group: {shown}"
