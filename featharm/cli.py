"""The ``featharm`` command line: a thin layer over the public API.

A user's mistake (a missing column, an unseen site, a bad file ...) prints one line, ``featharm: error:
...``, and exits with status 2; warnings print as one line each. Anything else is a bug and keeps its
traceback (exit 1).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import _progress
from ._validation import show_columns
from ._version import __version__
from .exceptions import ColumnNotFoundError, FeatharmError, FeatharmWarning, InputError, NonNumericFeatureError

EXIT_USER_ERROR = 2


def _err(msg: str) -> None:
    sys.stderr.write(f"featharm: error: {msg}\n")


def _showwarning(message, category, filename, lineno, file=None, line=None):
    kind = category.__name__ if issubclass(category, FeatharmWarning) else "warning"
    sys.stderr.write(f"featharm: {kind}: {message}\n")


# --------------------------------------------------------------------------------------------- tables
def _load_inputs(args, batch: str | None, formula: str | None):
    """DATA (and optional covariate FILE) -> (data table, covariates aligned to it)."""
    from .io import read_table

    data = read_table(args.data, index_col=args.id)
    if not args.id:  # rows are named in messages as the user sees them: by their line (header = line 1)
        from .io.tables import table_format

        first = 1 if table_format(args.data) == "parquet" else 2
        data.index = pd.RangeIndex(first, first + len(data))
    if args.covariates:
        if not args.id:
            raise InputError("--covariates needs --id COL: the id column that joins DATA and the covariate file.")
        cov = read_table(args.covariates, index_col=args.id)
        data, cov = _same_id_type(data, cov)
        missing = data.index.difference(cov.index, sort=False)
        if len(missing):
            raise InputError(
                f"{len(missing)} id(s) of {args.data} are not in {args.covariates}: "
                f"{list(missing[:5])}{' ...' if len(missing) > 5 else ''}. Every subject needs covariates."
            )
        cov = cov.loc[data.index]
    else:
        cov = data
    return data, cov


_UNNAMED = re.compile(r"Unnamed: \d+")


def _same_id_type(a: pd.DataFrame, b: pd.DataFrame):
    """Two tables indexed by id, with ids of one type (a Parquet file's integers match a CSV's text)."""
    if a.index.dtype != b.index.dtype:
        a, b = a.set_axis(a.index.astype(str)), b.set_axis(b.index.astype(str))
    return a, b


_INPUTS = (("data", "DATA"), ("covariates", "--covariates"), ("model", "--model"), ("harmonized", "--harmonized"))
KB, MB = 1024, 1024 * 1024


def _inputs(args) -> list:
    """(label, path) of every input file of the command (none of them may be an output)."""
    found = []
    for attr, label in _INPUTS:
        path = getattr(args, attr, None)
        if path:
            found.append(("MODEL" if attr == "model" and args.func is cmd_apply else label, path))
    return found


def _file_size(path) -> int:
    try:
        return os.path.getsize(path)
    except (OSError, TypeError):
        return 0


def _stage(args, outputs, inputs=None):
    """Check every output (format from the extension, distinct files, not an input, writable folder,
    free space) and stage them (see featharm._staging): written all together at the end of the block,
    or not at all."""
    from ._staging import staged_outputs
    from .io.tables import table_format

    for o in outputs:
        if not o.path or Path(o.path).is_dir():  # a directory: check_outputs says so
            continue
        if o.key == "table":
            table_format(o.path)
        elif o.key == "report" and Path(o.path).suffix.lower() not in (".html", ".htm"):
            raise InputError(f"{o.option} {o.path}: the report is an HTML file; give it a .html name.")
    return staged_outputs(outputs, _inputs(args) if inputs is None else inputs)


_FEATURES_FIX = ("Fix those cells in the file (featharm does not guess numbers), or leave the column out of "
                 "the features by naming them with --features PATTERN.")


def _feature_columns(data: pd.DataFrame, patterns, exclude) -> list[str]:
    """The feature columns: those matching ``--features`` globs, else every other numeric column.

    A column is judged by what most of its values are: a column of numbers spoiled by a few text cells
    (``n/a?``, ``"2,45"``, ``45y``: pandas reads it as text) is an error naming the cells, not silently
    left out of the features; a genuine text column (site names, sex) is not a feature.
    """
    exclude = {str(c) for c in exclude if c is not None}
    if patterns:
        cols = [c for c in data.columns if any(fnmatch.fnmatchcase(str(c), p) for p in patterns)]
        if not cols:
            raise ColumnNotFoundError(f"no column matches --features {list(dict.fromkeys(patterns))}; columns: "
                                      f"{show_columns(data.columns)}")
        cols = [c for c in cols if str(c) not in exclude]
        _check_feature_values(data, cols, f"matched by --features {patterns}", _FEATURES_FIX,
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
            _check_feature_values(data, [c], "", _FEATURES_FIX)
            text.append(c)
        if not cols:
            raise InputError("no numeric feature columns found"
                             + (f" (text columns: {show_columns(text, 6)})" if text else "")
                             + "; name the feature columns with --features PATTERN.")
    return cols


def _check_feature_values(data: pd.DataFrame, cols, how: str, fix: str, *, text_fix: str | None = None) -> None:
    """Refuse feature columns ``cols`` that are not numbers, naming the cells (rows as in the file).

    A numeric column spoiled by a few text cells is refused, ending with ``fix``; a column of text,
    true/false values or nothing at all is refused ending with ``text_fix`` (``None``: it is let through,
    not being a feature: auto-detection).
    """
    from ._validation import numbers_with_text, numbers_with_text_error, show_cells

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


def _read_harmonized(args, data: pd.DataFrame, feats: list):
    """The ``--harmonized`` table's feature columns, rows matched to DATA (by ``--id`` or by position)."""
    if not args.harmonized:
        return None
    from .io import read_table

    hdata = read_table(args.harmonized, index_col=args.id)
    if args.id:
        data, hdata = _same_id_type(data, hdata)
    lacking = [c for c in feats if c not in hdata.columns]
    if lacking:
        raise ColumnNotFoundError(f"{args.harmonized} lacks the feature column(s) {lacking[:5]}"
                                  f"{' ...' if len(lacking) > 5 else ''}.")
    if args.id:
        absent = data.index.difference(hdata.index, sort=False)
        if len(absent):
            raise InputError(f"{len(absent)} id(s) of {args.data} are not in {args.harmonized}: "
                             f"{list(absent[:5])}{' ...' if len(absent) > 5 else ''}.")
        return hdata.loc[data.index, feats]
    if len(hdata) != len(data):
        raise InputError(f"{args.harmonized} has {len(hdata)} rows but {args.data} has {len(data)}; "
                         "pass --id COL to match them by id.")
    return hdata[feats].set_axis(data.index, axis=0)


def _output_table(data: pd.DataFrame, harmonized: pd.DataFrame, out, source=None) -> bytes:
    """The bytes of OUT: DATA with the harmonized columns replaced; the other columns of a CSV/TSV
    ``source`` are copied as text, exactly as written (``007``, ``NA``, ``1`` stay so)."""
    from .io.tables import read_text_columns, table_bytes

    changed = set(harmonized.columns)
    keep = [j for j, c in enumerate(data.columns) if c not in changed]
    text = read_text_columns(source, keep) if source is not None and keep else None
    if text is not None and text.shape == (len(data), len(keep)):
        text_cols = iter(text.columns)
        result = pd.DataFrame({c: harmonized[c].to_numpy() if c in changed else text[next(text_cols)].to_numpy()
                               for c in data.columns}, columns=data.columns)
        header = text.attrs.get("header")
        if header is not None and len(header) == len(keep):  # an empty header cell stays empty
            names = dict(zip(keep, header))
            result.columns = [names.get(j, c) for j, c in enumerate(data.columns)]
    else:
        result = data.copy()
        for c in harmonized.columns:
            result[c] = harmonized[c].to_numpy()
    return table_bytes(result, out, index=False)


# --------------------------------------------------------------------------------------------- commands
# Harmonization methods of `featharm harmonize --method NAME`: name -> (builder, extra columns).
# A builder turns the parsed arguments into an unfitted model; `columns(args)` lists the covariate
# columns the method uses besides the batch and the formula (subject, time, smooth terms ...), which are
# therefore not features. Each model family registers itself here with one entry.
def _combat_model(args):
    from .models import ComBat

    return ComBat(batch=args.batch, formula=args.formula, eb=not args.no_eb,
                  parametric=not args.nonparametric, mean_only=args.mean_only, ref_batch=args.ref_batch)


def _gam_model(args):
    from .models import ComBatGAM

    return ComBatGAM(batch=args.batch, formula=args.formula, smooth=args.smooth, method=args.smooth_method,
                     shared_smoothing=args.shared_smoothing, eb=not args.no_eb,
                     parametric=not args.nonparametric, mean_only=args.mean_only, ref_batch=args.ref_batch)


def _longitudinal_model(args):
    from .models import LongComBat

    if not args.subject:
        raise InputError("--method longitudinal needs --subject COL: the column identifying each scan's subject.")
    return LongComBat(batch=args.batch, subject=args.subject, time=args.time, formula=args.formula,
                      random_slope=args.random_slope, standardize=args.standardize, eb=not args.no_eb)


def _covbat_model(args):
    from .models import CovBat

    return CovBat(batch=args.batch, formula=args.formula, percent_var=args.percent_var,
                  n_components=args.n_components, eb=not args.no_eb, parametric=not args.nonparametric,
                  mean_only=args.mean_only, ref_batch=args.ref_batch)


def _combatls_model(args):
    from .models import ComBatLS

    return ComBatLS(batch=args.batch, formula=args.formula, scale_formula=args.scale_formula,
                    eb=not args.no_eb, parametric=not args.nonparametric, mean_only=args.mean_only,
                    ref_batch=args.ref_batch)


def _scale_formula_columns(args) -> list:
    from .formula import parse_formula

    return parse_formula(args.scale_formula).variables()


METHODS: dict = {
    "combat": (_combat_model, lambda args: []),
    "covbat": (_covbat_model, lambda args: []),
    "combatls": (_combatls_model, _scale_formula_columns),
    "longitudinal": (_longitudinal_model, lambda args: [c for c in (args.subject, args.time) if c]),
    "gam": (_gam_model, lambda args: list(args.smooth or [])),
}


def cmd_harmonize(args) -> int:
    from ._staging import Output
    from .design import _clean_formula, _formula_variables
    from .persistence import model_bytes

    outputs = [Output("table", "--out", args.out, size=_file_size(args.data)),
               Output("model", "--save-model", args.save_model, size=64 * KB),
               Output("report", "--report", args.report, size=1 * MB)]
    with _stage(args, outputs) as staged:  # OUT, MODEL and HTML appear together at the end, or none
        data, cov = _load_inputs(args, args.batch, args.formula)
        if args.batch not in cov.columns:
            raise ColumnNotFoundError(
                f"no batch column {args.batch!r}; columns present: {show_columns(cov.columns)}."
            )
        build, method_columns = METHODS[args.method]
        if getattr(args, "smooth", None) and args.method != "gam":
            raise InputError(f"--smooth needs --method gam (got --method {args.method}).")
        f = _clean_formula(args.formula)
        used = _formula_variables(f, cov.columns)[0] if f else []
        feats = _feature_columns(data, args.features, [args.batch, args.id, *used, *method_columns(args)])
        model = build(args)
        Xh = model.fit_transform(data[feats], cov)
        staged.write("table", _output_table(data, Xh, args.out, source=args.data))
        if args.save_model:
            staged.write("model", model_bytes(model))
        if args.report:
            report = model.report(data[feats], cov, X_harmonized=Xh, inputs=_report_inputs(args),
                                  parameters=_report_parameters(args))
            staged.write("report", report.html.encode("utf-8"))
    if not args.quiet:
        print(f"harmonized {len(feats)} features of {len(data)} subjects from {len(model.batches_)} "
              f"batches with {type(model).__name__} -> {args.out}"
              + (f"; model -> {args.save_model}" if args.save_model else "")
              + (f"; report -> {args.report}" if args.report else ""))
    return 0


def cmd_apply(args) -> int:
    from ._staging import Output
    from .persistence import load_model

    with _stage(args, [Output("table", "--out", args.out, size=_file_size(args.data))]) as staged:
        Xh, data, feats, model = _apply(args, load_model(args.model))
        staged.write("table", _output_table(data, Xh, args.out, source=args.data))
    if not args.quiet:
        print(f"applied {type(model).__name__} to {len(data)} subjects, {len(feats)} features -> {args.out}")
    return 0


def _apply(args, model):
    """The harmonized features of DATA (and DATA, the feature names, the model) for ``featharm apply``."""
    if getattr(args, "extrapolate", None):
        if "extrapolate" not in model.get_params():
            raise InputError(f"--extrapolate applies to models with smooth terms; {args.model} holds a "
                             f"{type(model).__name__}.")
        model.set_params(extrapolate=args.extrapolate)
    data, cov = _load_inputs(args, model.batch, None)
    feats = list(model.feature_names_in_)
    missing = [c for c in feats if c not in data.columns]
    if missing:
        raise ColumnNotFoundError(
            f"{args.data} lacks {len(missing)} feature column(s) the model was fitted on: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}."
        )
    fix = "Fix those cells in the file: the model needs every feature it was fitted on."
    _check_feature_values(data, feats, "fitted by the model", fix, text_fix=fix)
    kw = {}
    if args.new_sites == "estimate":
        import inspect

        if "new_sites" not in inspect.signature(model.transform).parameters:
            raise InputError(f"--new-sites estimate is not available for {type(model).__name__} models.")
        kw = {"new_sites": "estimate", "min_new_site_size": args.min_new_site_size}
    return model.transform(data[feats], cov, **kw), data, feats, model


def cmd_demo(args) -> int:
    from .datasets import ixi_feature_columns, load_ixi
    from .diagnostics import test_site_effects
    from ._staging import Output
    from .datasets import ixi_path
    from .io.tables import table_bytes
    from .models import ComBat
    from .persistence import model_bytes

    out = Path(args.out)
    outputs = [Output("table", "--out", out / "ixi_harmonized.csv", size=1 * MB),
               Output("model", "--out", out / "combat_model.fhm", size=64 * KB),
               Output("report", "--out", out / "report.html", size=1 * MB)]
    with _stage(args, outputs, inputs=[("the bundled IXI table", ixi_path())]) as staged:
        data = load_ixi()
        feats = ixi_feature_columns(data)
        X = data[feats]
        model = ComBat(batch="site", formula="age + sex")
        Xh = model.fit_transform(X, data)
        harmonized = data.copy()
        harmonized[feats] = Xh
        staged.write("table", table_bytes(harmonized, out / "ixi_harmonized.csv"))
        staged.write("model", model_bytes(model))
        report = model.report(X, data, X_harmonized=Xh, inputs={"IXI table": ixi_path()})
        staged.write("report", report.html.encode("utf-8"))
        before = test_site_effects(X, data, batch="site", formula="age + sex", tests="anova")
        after = test_site_effects(Xh, data, batch="site", formula="age + sex", tests="anova")
    alpha = 0.05 / len(feats)
    counts = model.batch_sizes_.astype(int)
    lines = [
        "featharm demo: ComBat on IXI cortical thickness (batch = site, covariates age + sex)",
        f"  sites: {len(counts)} ({', '.join(f'{k}: {v}' for k, v in counts.items())})",
        f"  subjects: {len(data)}   features: {len(feats)}",
        "  site variance (partial eta^2 of site in y ~ age + sex + site, median over features): "
        f"{before.effect_size.median():.1%} before -> {after.effect_size.median():.2%} after",
        f"  share of the site variance removed (sum over features): "
        f"{1 - after.effect_size.sum() / before.effect_size.sum():.1%}",
        f"  features with a significant site effect (F test, Bonferroni 0.05): "
        f"{int((before.p_unc < alpha).sum())}/{len(feats)} before -> {int((after.p_unc < alpha).sum())}/{len(feats)} after",
        f"  wrote {out / 'ixi_harmonized.csv'}, {out / 'combat_model.fhm'} and {out / 'report.html'}",
    ]
    print("\n".join(lines))
    return 0


def _report_inputs(args) -> dict:
    names = (("data", "data"), ("covariates", "covariates"), ("model", "model"), ("harmonized", "harmonized"))
    return {label: getattr(args, attr) for label, attr in names if getattr(args, attr, None)}


def _report_parameters(args) -> dict:
    return {f"--{k.replace('_', '-')}": v for k, v in sorted(vars(args).items())
            if k not in ("func", "command") and v not in (None, False)}


def cmd_report(args) -> int:
    from ._staging import Output

    with _stage(args, [Output("report", "--out", args.out, size=1 * MB)]) as staged:
        rep, feats, data = _report(args)
        staged.write("report", rep.html.encode("utf-8"))
    if not args.quiet:
        print(f"report on {len(feats)} features of {len(data)} subjects ({len(rep.warnings)} warning(s)) -> {args.out}")
    return 0


def _report(args):
    """The report of ``featharm report`` (and the feature names and DATA it covers)."""
    from .design import _clean_formula, _formula_variables
    from .persistence import load_model
    from .report import make_report

    model = load_model(args.model) if args.model else None
    batch = args.batch or (model.batch if model is not None else None)
    if batch is None:
        raise InputError("featharm report needs --batch COL (or --model MODEL, whose batch column is used).")
    data, cov = _load_inputs(args, batch, args.formula)
    if batch not in cov.columns:
        raise ColumnNotFoundError(f"no batch column {batch!r}; columns present: {show_columns(cov.columns)}.")
    if model is not None:
        feats = list(model.feature_names_in_)
        missing = [c for c in feats if c not in data.columns]
        if missing:
            raise ColumnNotFoundError(
                f"{args.data} lacks {len(missing)} feature column(s) the model was fitted on: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}."
            )
    else:
        f = _clean_formula(args.formula)
        used = _formula_variables(f, cov.columns)[0] if f else []
        feats = _feature_columns(data, args.features, [batch, args.id, *used])
    Xh = _read_harmonized(args, data, feats)
    rep = make_report(data[feats], cov, model=model, X_harmonized=Xh, batch=batch, formula=args.formula,
                      features=args.plot_features, inputs=_report_inputs(args),
                      parameters=_report_parameters(args), figure_format=args.figure_format)
    return rep, feats, data


def cmd_diagnose(args) -> int:
    from ._staging import Output
    from .diagnostics.suite import TABLES

    out = Path(args.out)
    outputs = [Output(name, "--out", out / f"{name}.csv", size=16 * KB, optional=True) for name in TABLES]
    with _stage(args, outputs) as staged:  # the tables appear together at the end, or none
        result, feats, data = _diagnose(args)
        result.to_dir(out, staged=staged)
    if not args.quiet:
        print(f"diagnosed {len(feats)} features of {len(data)} rows; tables -> {out}/")
        print(result.summary())
    return 0


def _diagnose(args):
    """The DiagnosticsResult of ``featharm diagnose`` (and the feature names and DATA it covers)."""
    from .design import _clean_formula, _formula_variables
    from .diagnostics import diagnose

    data, cov = _load_inputs(args, args.batch, args.formula)
    if args.batch not in cov.columns:
        raise ColumnNotFoundError(f"no batch column {args.batch!r}; columns present: {show_columns(cov.columns)}.")
    f = _clean_formula(args.formula)
    used = _formula_variables(f, cov.columns)[0] if f else []
    feats = _feature_columns(data, args.features, [args.batch, args.id, args.random, *used])
    Xh = _read_harmonized(args, data, feats)
    harmonizer = None
    if args.model:
        from sklearn.base import clone

        from .persistence import load_model

        fitted = load_model(args.model)
        lacking = [c for c in feats if c not in list(fitted.feature_names_in_)]
        if lacking:
            raise ColumnNotFoundError(f"the model {args.model} was not fitted on the feature column(s) "
                                      f"{lacking[:5]}{' ...' if len(lacking) > 5 else ''}; pick them with --features.")
        if Xh is None:
            Xh = fitted.transform(data[list(fitted.feature_names_in_)], cov)[feats]
        harmonizer = clone(fitted)  # unfitted copy, refitted inside every CV training fold
    result = diagnose(data[feats], cov, batch=args.batch, formula=args.formula, X_harmonized=Xh,
                      tests=args.tests, model="lmm" if args.random else "ols", random=args.random,
                      n_permutations=args.n_permutations,
                      classification_permutations=args.classification_permutations,
                      classification=not args.no_classification, n_splits=args.n_splits, harmonizer=harmonizer,
                      random_state=args.seed)
    return result, feats, data


# --------------------------------------------------------------------------------------------- parser
def _add_common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet) joined on --id")
    p.add_argument("--id", metavar="COL", help="id column (joins DATA and --covariates; kept in OUT)")
    p.add_argument("--out", required=True, metavar="OUT", help="output table (format from the extension)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


class _Parser(argparse.ArgumentParser):
    """argparse with featharm's one-line errors (a bad option is a user error like any other)."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"featharm: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="featharm",
        description="Harmonize multi-site MRI regional features (ComBat family).",
    )
    parser.add_argument("--version", action="version", version=f"featharm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    h = sub.add_parser("harmonize", help="fit a harmonization model on a table and write the harmonized table",
                       description="Fit a harmonization model (ComBat by default) on DATA and write DATA with its "
                                   "feature columns harmonized.")
    h.add_argument("data", metavar="DATA", help="table with features (and covariates): CSV, TSV or Parquet")
    h.add_argument("--batch", required=True, metavar="COL", help="batch (site/scanner) column")
    h.add_argument("--method", default="combat", choices=sorted(METHODS),
                   help="harmonization model (default: combat)")
    h.add_argument("--formula", metavar="RHS", help='covariates to preserve, e.g. "age + sex"')
    h.add_argument("--features", nargs="+", metavar="PATTERN",
                   help="feature columns (globs such as '*_thickness'); default: every other numeric column")
    h.add_argument("--ref-batch", metavar="LEVEL", help="reference batch: its rows are left unchanged")
    h.add_argument("--no-eb", action="store_true", help="no empirical Bayes shrinkage")
    h.add_argument("--nonparametric", action="store_true", help="non-parametric empirical Bayes")
    h.add_argument("--mean-only", action="store_true", help="adjust location only")
    h.add_argument("--subject", metavar="COL", help="--method longitudinal: subject id column (random effect)")
    h.add_argument("--time", metavar="COL", help="--method longitudinal: numeric time column (for --random-slope)")
    h.add_argument("--random-slope", action="store_true",
                   help="--method longitudinal: random slope on --time as well as a random intercept")
    h.add_argument("--standardize", default="reml", choices=["reml", "msr", "marginal"],
                   help="--method longitudinal: residual standardization (default reml = longCombat)")
    h.add_argument("--smooth", nargs="+", metavar="COL",
                   help="--method gam: covariate column(s) with smooth (spline) effects, e.g. age")
    h.add_argument("--smooth-method", default="REML", choices=["REML", "GCV"],
                   help="--method gam: criterion for the smoothing parameter (default REML)")
    h.add_argument("--shared-smoothing", action="store_true",
                   help="--method gam: one smoothing parameter for all features")
    h.add_argument("--percent-var", type=float, default=0.95, metavar="P",
                   help="--method covbat: harmonize the principal components explaining more than this share "
                        "of the residual variance (default 0.95)")
    h.add_argument("--n-components", type=int, metavar="K",
                   help="--method covbat: harmonize exactly K principal components (overrides --percent-var)")
    h.add_argument("--scale-formula", metavar="RHS",
                   help='--method combatls: covariates of the log-SD, e.g. "age + sex" (default: constant SD)')
    h.add_argument("--save-model", metavar="MODEL", help="save the fitted model to this file")
    h.add_argument("--report", metavar="HTML", help="also write the one-file HTML report of the fit")
    _add_common_data(h)
    h.set_defaults(func=cmd_harmonize)

    a = sub.add_parser("apply", help="apply a saved model to new subjects",
                       description="Harmonize DATA with a model saved by 'featharm harmonize --save-model'.")
    a.add_argument("model", metavar="MODEL", help="model file")
    a.add_argument("data", metavar="DATA", help="table with the model's features and covariates")
    a.add_argument("--new-sites", choices=["error", "estimate"], default="error",
                   help="sites not seen at fit: 'error' (default) or 'estimate' their effects against the "
                        "frozen model (each needs --min-new-site-size subjects)")
    a.add_argument("--min-new-site-size", type=int, default=5, metavar="N",
                   help="with --new-sites estimate: fewest subjects of a new site (default 5)")
    a.add_argument("--extrapolate", choices=["linear"],
                   help="GAM models: continue smooth curves linearly beyond the fitted covariate range "
                        "(default: such rows are an error)")
    _add_common_data(a)
    a.set_defaults(func=cmd_apply)

    r = sub.add_parser("report", help="write a one-file HTML report on site effects before/after harmonization",
                       description="Write a self-contained HTML report: data summary, covariate balance, site "
                                   "effects before and after harmonization, preservation of biology, model "
                                   "parameters, warnings and provenance. DATA holds the raw features; the "
                                   "harmonized ones come from --harmonized FILE or from applying --model MODEL.")
    r.add_argument("data", metavar="DATA", help="table with the raw features (and covariates)")
    r.add_argument("--model", metavar="MODEL", help="fitted model (its batch, formula and features are used)")
    r.add_argument("--harmonized", metavar="FILE", help="harmonized table (e.g. the OUT of featharm harmonize)")
    r.add_argument("--batch", metavar="COL", help="batch (site/scanner) column (default: the model's)")
    r.add_argument("--formula", metavar="RHS", help='covariates of the diagnostic models (default: the model\'s)')
    r.add_argument("--features", nargs="+", metavar="PATTERN",
                   help="feature columns without --model (globs); default: every other numeric column")
    r.add_argument("--plot-features", nargs="+", metavar="NAME",
                   help="features drawn one by one (default: the 3 with the largest site effect)")
    r.add_argument("--figure-format", choices=["svg", "png"], default="svg", help="embedded figure format")
    r.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet) joined on --id")
    r.add_argument("--id", metavar="COL", help="id column (joins DATA, --covariates and --harmonized)")
    r.add_argument("--out", required=True, metavar="HTML", help="report file to write")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    r.set_defaults(func=cmd_report)

    g = sub.add_parser("diagnose", help="test for site effects (and preservation of biology) and write tables",
                       description="Per-feature location and scale tests of site, multivariate tests, site "
                                   "classification and covariate balance on DATA (and on --harmonized FILE, with "
                                   "preservation-of-biology tables); writes site_effects.csv and the other tables "
                                   "into --out DIR.")
    g.add_argument("data", metavar="DATA", help="table with the raw features (and covariates)")
    g.add_argument("--batch", required=True, metavar="COL", help="batch (site/scanner) column")
    g.add_argument("--formula", metavar="RHS", help='covariates of the diagnostic models, e.g. "age + sex"')
    g.add_argument("--features", nargs="+", metavar="PATTERN",
                   help="feature columns (globs); default: every other numeric column")
    g.add_argument("--harmonized", metavar="FILE", help="harmonized table (e.g. the OUT of featharm harmonize)")
    g.add_argument("--model", metavar="MODEL",
                   help="saved model (featharm harmonize --save-model): harmonizes DATA when --harmonized is not "
                        "given, and is refitted inside the CV folds for the site classification of the "
                        "harmonized data (without it that classification is biased below chance)")
    g.add_argument("--random", metavar="COL",
                   help="subject column: random-intercept mixed models (longitudinal data) instead of OLS")
    g.add_argument("--tests", nargs="+", metavar="TEST",
                   help="per-feature tests (default: all without permutations; 'all' adds anderson_darling)")
    g.add_argument("--n-permutations", type=int, default=999, metavar="N",
                   help="permutations of PERMANOVA and Anderson-Darling (default 999; 0 = none)")
    g.add_argument("--classification-permutations", type=int, default=100, metavar="N",
                   help="label permutations of the site-classification null (default 100; 0 = none)")
    g.add_argument("--no-classification", action="store_true", help="skip the site classification")
    g.add_argument("--n-splits", type=int, default=5, metavar="K",
                   help="folds of the site classification's stratified CV (default 5; every site needs K rows)")
    g.add_argument("--seed", type=int, default=0, help="seed of permutations and CV splits (default 0)")
    g.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet) joined on --id")
    g.add_argument("--id", metavar="COL", help="id column (joins DATA, --covariates and --harmonized)")
    g.add_argument("--out", required=True, metavar="DIR", help="folder for the tables")
    g.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    g.set_defaults(func=cmd_diagnose)

    from .cli_collect import add_collect_parser

    add_collect_parser(sub)

    d = sub.add_parser("demo", help="harmonize the bundled IXI data",
                       description="Harmonize the bundled IXI data (3 sites, 556 subjects, 68 thickness ROIs) "
                                   "with ComBat (age + sex preserved) and write the results.")
    d.add_argument("--out", default="reports/demo", metavar="DIR", help="output folder (default reports/demo)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    from . import _staging

    old = warnings.showwarning
    warnings.showwarning = _showwarning
    commits = _staging.commits()
    try:
        with _staging.signals_interrupt(), _progress.enable(not getattr(args, "quiet", False)), \
                np.errstate(all="ignore"):
            return args.func(args)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
