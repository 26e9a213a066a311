"""``featharm report``: the one-file HTML report on site effects before/after harmonization.

A thin wrapper over :func:`featharm.report.make_report`.
"""

from __future__ import annotations

import argparse

from ._common import DATA_HELP, MB, add_abcd_event_option, add_include_option


def add_parser(sub) -> argparse.ArgumentParser:
    r = sub.add_parser("report", help="write a one-file HTML report on site effects before/after harmonization",
                       description="Write a self-contained HTML report: data summary, covariate balance, site "
                                   "effects before and after harmonization, preservation of biology, model "
                                   "parameters, warnings and provenance. DATA holds the raw features; the "
                                   "harmonized ones come from --harmonized FILE or from applying --model MODEL.")
    r.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    r.add_argument("--model", metavar="MODEL", help="fitted model (its batch, formula and features are used)")
    r.add_argument("--harmonized", metavar="FILE", help="harmonized table (e.g. the OUT of featharm harmonize)")
    r.add_argument("--batch", metavar="COL", help="batch (site/scanner) column (default: the model's)")
    r.add_argument("--formula", metavar="RHS", help='covariates of the diagnostic models (default: the model\'s)')
    r.add_argument("--features", nargs="+", metavar="PATTERN",
                   help="feature columns without --model (globs); default: every other numeric column except "
                        "QC and global columns (see --include)")
    add_include_option(r)
    add_abcd_event_option(r)
    r.add_argument("--plot-features", nargs="+", metavar="NAME",
                   help="features drawn one by one: box plots by site and age trends (default: the feature "
                        "explorer offers every feature; age trends of the 3 with the largest age effect)")
    r.add_argument("--figure-format", choices=["svg", "png"], default="svg", help="embedded figure format")
    r.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet) joined on --id")
    r.add_argument("--id", metavar="COL", help="id column (joins DATA, --covariates and --harmonized)")
    r.add_argument("--out", required=True, metavar="HTML", help="report file to write")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    r.set_defaults(func=cmd_report)
    return r


def cmd_report(args) -> int:
    from .._staging import Output
    from ._common import stage

    with stage(args, [Output("report", "--out", args.out, size=1 * MB)]) as staged:
        rep, feats, data = _report(args)
        staged.write("report", rep.html.encode("utf-8"))
    if not args.quiet:
        print(f"report on {len(feats)} features of {len(data)} subjects ({len(rep.warnings)} warning(s)) -> {args.out}")
    return 0


def _report(args):
    """The report of ``featharm report`` (and the feature names and DATA it covers)."""
    from ..exceptions import InputError
    from ..models import load_model
    from ..report import make_report
    from ._common import (check_batch, check_model_features, choose_features, formula_columns, load_source,
                          read_harmonized, report_inputs, report_parameters)

    model = load_model(args.model) if args.model else None
    batch = args.batch or (model.batch if model is not None else None)
    if batch is None:
        raise InputError("featharm report needs --batch COL (or --model MODEL, whose batch column is used).")
    source, cov = load_source(args)
    data = source.frame
    check_batch(cov, batch)
    if model is not None:
        feats = list(model.feature_names_in_)
        check_model_features(args, data, feats)
    else:
        feats = choose_features(args, data, [batch, args.id, *formula_columns(args.formula, cov)], source.measures)
    Xh = read_harmonized(args, data, feats)
    rep = make_report(data[feats], cov, model=model, X_harmonized=Xh, batch=batch, formula=args.formula,
                      features=args.plot_features, inputs=report_inputs(args),
                      parameters=report_parameters(args), figure_format=args.figure_format)
    return rep, feats, data
