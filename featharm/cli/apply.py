"""``featharm apply``: harmonize DATA with a model saved by ``featharm harmonize --save-model``."""

from __future__ import annotations

import argparse

from ._common import DATA_HELP, add_abcd_event_option, add_data_options, add_missing_option


def add_parser(sub) -> argparse.ArgumentParser:
    a = sub.add_parser("apply", help="apply a saved model to new subjects",
                       description="Harmonize DATA with a model saved by 'featharm harmonize --save-model'.")
    a.add_argument("model", metavar="MODEL", help="model file")
    a.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    a.add_argument("--new-sites", choices=["error", "estimate"], default="error",
                   help="sites not seen at fit: 'error' (default) or 'estimate' their effects against the "
                        "frozen model (each needs --min-new-site-size subjects)")
    a.add_argument("--min-new-site-size", type=int, default=5, metavar="N",
                   help="with --new-sites estimate: fewest subjects of a new site (default 5)")
    a.add_argument("--extrapolate", choices=["linear"],
                   help="GAM models: continue smooth curves linearly beyond the fitted covariate range "
                        "(default: such rows are an error)")
    add_missing_option(a)
    add_data_options(a)
    add_abcd_event_option(a)
    a.set_defaults(func=cmd_apply)
    return a


def cmd_apply(args) -> int:
    from .._staging import Output
    from ..models import load_model
    from ._common import file_size, output_table, stage
    from ._store import apply_store, store_input

    if store_input(args):  # a Zarr feature store: out of core, into a store
        return apply_store(args, load_model(args.model))
    with stage(args, [Output("table", "--out", args.out, size=file_size(args.data))]) as staged:
        Xh, source, feats, model, summary = _apply(args, load_model(args.model))
        n_rows = len(source.frame)
        staged.write("table", output_table(source, Xh, args.out, args.float_format, release=True))
    if not args.quiet:
        print(f"applied {type(model).__name__} to {n_rows} subjects, {len(feats)} features -> {args.out}"
              + summary)
    return 0


def _left_out(model, cov) -> list:
    """Rows a ``missing_covariates="exclude"`` model left out: a missing batch or formula covariate."""
    if model.get_params().get("missing_covariates") != "exclude":
        return []
    from ..formula import formula_columns

    cols = [c for c in [model.batch, *formula_columns(model.formula, cov.columns)] if c in cov.columns]
    return list(cov.index[cov[cols].isna().any(axis=1)])


def _apply(args, model):
    """The harmonized features of DATA (and DATA as read, the feature names, the model, the summary's words
    about missing values) for ``featharm apply``."""
    from ..exceptions import InputError
    from ._common import check_feature_values, check_missing, check_model_features, load_source, missing_summary

    if getattr(args, "extrapolate", None):
        if "extrapolate" not in model.get_params():
            raise InputError(f"--extrapolate applies to models with smooth terms; {args.model} holds a "
                             f"{type(model).__name__}.")
        model.set_params(extrapolate=args.extrapolate)
    feats = list(model.feature_names_in_)
    wanted = set(map(str, feats))
    args.repeated_measures = type(model).__name__ == "LongComBat"  # ABCD tables with several events: modelled
    source, cov = load_source(args, lambda labels: [c for c in labels if str(c) in wanted])
    data = source.frame
    check_model_features(args, data, feats)
    fix = "Fix those cells in the file: the model needs every feature it was fitted on."
    check_feature_values(data, feats, "fitted by the model", fix, text_fix=fix)
    n_missing = check_missing(args, data, feats)
    kw = {}
    if args.new_sites == "estimate":  # every family estimates new sites against its frozen model
        kw = {"new_sites": "estimate", "min_new_site_size": args.min_new_site_size}
    Xh = model.transform(source.features(feats), cov, **kw)
    return Xh, source, feats, model, missing_summary(n_missing, data, feats, _left_out(model, cov))
