"""``featharm federated plan|summarize|show|combine|extend``: ComBat (or ComBat-GAM) across sites that cannot share
their rows, in one round (see :mod:`featharm.federated` and docs/methods.md §5.2)."""

from __future__ import annotations

import argparse

MAX_FEATURES_FILE = 64 * 2**20


def add_parser(sub) -> argparse.ArgumentParser:
    f = sub.add_parser(
        "federated", help="ComBat across sites that cannot share data (one summary per site)",
        description="Federated ComBat in one round: the coordinator writes a plan, each site summarizes its rows "
                    "with it (sums over at least --min-count subjects, no subject's row), the coordinator combines "
                    "the summaries into an ordinary model file, and each site applies it with 'featharm apply'.")
    fs = f.add_subparsers(dest="federated_command", metavar="STEP")
    fs.required = True

    p = fs.add_parser("plan", help="write the plan every site follows (coordinator)",
                      description="Write the plan: batch levels, covariate coding, features and their order, "
                                  "options and, for ComBat-GAM, the spline basis of each smooth term (fixed by "
                                  "its --smooth-range). A small JSON file sent to every site.")
    p.add_argument("--batch", required=True, metavar="COL", help="batch (site/scanner) column")
    p.add_argument("--batches", required=True, metavar="A,B,...", help="every batch level that takes part")
    p.add_argument("--formula", metavar="FORMULA", help='covariates whose effects are kept, e.g. "age + sex"')
    p.add_argument("--levels", action="append", default=[], metavar="VAR=L1,L2",
                   help="levels of a categorical covariate (repeat per covariate); covariates without --levels are "
                        "continuous. Coded as featharm codes them: sorted, the first the baseline (another with "
                        "C(VAR, Treatment(\"L\")) in the formula)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--features", nargs="+", metavar="NAME", help="feature columns, in order")
    g.add_argument("--features-file", metavar="FILE", help="feature columns, one per line")
    p.add_argument("--ref-batch", metavar="LEVEL", help="reference batch (its rows stay unchanged)")
    p.add_argument("--nonparametric", action="store_true", help="non-parametric empirical Bayes")
    p.add_argument("--mean-only", action="store_true", help="adjust the batch means only")
    p.add_argument("--no-eb", action="store_true", help="no empirical Bayes shrinkage")
    p.add_argument("--method", default="combat", choices=["combat", "gam"],
                   help="'combat' (default: linear covariates) or 'gam' (ComBat-GAM: smooth terms, --smooth)")
    p.add_argument("--smooth", action="append", default=[], metavar="VAR",
                   help="gam: a continuous covariate with a smooth (spline) effect (repeat per covariate); a plain "
                        "VAR term of --formula becomes smooth, s(VAR) in --formula is one too")
    p.add_argument("--smooth-range", action="append", default=[], metavar="VAR=LO,HI",
                   help="gam: the range of smooth covariate VAR (one per smooth term, required), covering every "
                        "site's values; it fixes the basis: cubic B-splines with DF - 4 interior knots evenly "
                        "spaced over [LO, HI]")
    p.add_argument("--df", type=int, default=10, metavar="DF",
                   help="gam: B-spline basis size per smooth term, as ComBatGAM's df (default 10: 9 columns)")
    p.add_argument("--smooth-method", default="REML", choices=["REML", "GCV"],
                   help="gam: criterion for each feature's smoothing parameter (default REML)")
    p.add_argument("--shared-smoothing", action="store_true",
                   help="gam: one smoothing parameter for all features")
    p.add_argument("--min-count", type=int, default=10, metavar="K",
                   help="fewest subjects a summary may sum over: per batch, per categorical level in a batch, per "
                        "observed feature in a batch (default 10)")
    p.add_argument("--out", required=True, metavar="PLAN", help="plan file to write (.json)")
    p.add_argument("--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=cmd_plan)

    s = fs.add_parser("summarize", help="summarize this site's rows with the plan (each site)",
                      description="Write this site's summary: for each of its batches, sums over its subjects "
                                  "(no subject's row). Refuses, naming batch and level, sums over fewer than the "
                                  "plan's min_count subjects. Check it with 'featharm federated show'.")
    from ._common import DATA_HELP

    s.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    s.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet) joined on --id")
    s.add_argument("--id", metavar="COL", help="id column (joins DATA and --covariates)")
    s.add_argument("--plan", required=True, metavar="PLAN", help="the coordinator's plan file")
    s.add_argument("--out", required=True, metavar="SUMMARY", help="summary file to write (.fhs)")
    s.add_argument("--quiet", action="store_true", help="no summary line")
    s.set_defaults(func=cmd_summarize)

    w = fs.add_parser("show", help="print exactly what a summary discloses",
                      description="Print what a summary file discloses: which sums, over how many subjects, for "
                                  "each batch. The file is checked completely first.")
    w.add_argument("summary", metavar="SUMMARY", help="summary file (.fhs)")
    w.set_defaults(func=cmd_show)

    c = fs.add_parser("combine", help="fit the model from the summaries (coordinator)",
                      description="Check the summaries against the plan, fit ComBat (ComBat-GAM for a gam plan) "
                                  "from them and write an ordinary model file for 'featharm apply'.")
    c.add_argument("summaries", nargs="+", metavar="SUMMARY", help="the sites' summary files")
    c.add_argument("--plan", required=True, metavar="PLAN", help="the plan the sites used")
    c.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.fhm)")
    c.add_argument("--quiet", action="store_true", help="no summary line")
    c.set_defaults(func=cmd_combine)

    e = fs.add_parser("extend", help="add a late site's batches to a combined model",
                      description="Estimate the batches of a late site's summary (made with the same plan) against "
                                  "the frozen model; the other batches' parameters are unchanged.")
    e.add_argument("model", metavar="MODEL", help="combined model file")
    e.add_argument("summary", metavar="SUMMARY", help="the late site's summary file")
    e.add_argument("--out", required=True, metavar="MODEL2", help="model file to write")
    e.add_argument("--quiet", action="store_true", help="no summary line")
    e.set_defaults(func=cmd_extend)
    return f


def _split(text: str, option: str) -> list[str]:
    from ..exceptions import InputError

    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise InputError(f"{option} {text!r}: give comma-separated names without empty entries.")
    return items


def _features_file(path) -> list[str]:
    from ..federated import _read_bounded

    raw = _read_bounded(path, "features file", MAX_FEATURES_FILE)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        from ..exceptions import InputError

        raise InputError(f"--features-file {path}: not UTF-8 text ({exc}).") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _stage(args, key, path, inputs):
    from .._staging import Output
    from ._common import stage

    return stage(args, [Output(key, "--out", path)], inputs=inputs)


def cmd_plan(args) -> int:
    from ..exceptions import InputError
    from ..federated import plan, plan_bytes

    levels = {}
    for item in args.levels:
        var, sep, rest = item.partition("=")
        if not sep or not var.strip():
            raise InputError(f"--levels {item!r}: write VAR=LEVEL1,LEVEL2 (e.g. --levels sex=F,M).")
        if var.strip() in levels:
            raise InputError(f"--levels names {var.strip()!r} twice; give its levels once.")
        levels[var.strip()] = _split(rest, f"--levels {var.strip()}=")
    ranges = {}
    for item in args.smooth_range:
        var, sep, rest = item.partition("=")
        bounds = rest.split(",")
        try:
            lo, hi = (float(v) for v in bounds) if sep and var.strip() and len(bounds) == 2 else (None, None)
        except ValueError:
            lo = hi = None
        if lo is None:
            raise InputError(f"--smooth-range {item!r}: write VAR=LO,HI with two numbers (e.g. --smooth-range "
                             "age=5,90).")
        if var.strip() in ranges:
            raise InputError(f"--smooth-range names {var.strip()!r} twice; give its range once.")
        ranges[var.strip()] = (lo, hi)
    gam_only = [flag for flag, given in (("--smooth", args.smooth), ("--smooth-range", ranges),
                                         ("--df", args.df != 10), ("--smooth-method", args.smooth_method != "REML"),
                                         ("--shared-smoothing", args.shared_smoothing)) if given]
    if args.method != "gam" and gam_only:
        raise InputError(f"{gam_only[0]} applies to ComBat-GAM: add --method gam (with --smooth VAR "
                         "--smooth-range VAR=LO,HI).")
    gam = dict(smooth=args.smooth, smooth_range=ranges, df=args.df, smooth_method=args.smooth_method,
               shared_smoothing=args.shared_smoothing) if args.method == "gam" else {}
    feats = args.features if args.features else _features_file(args.features_file)
    inputs = [("--features-file", args.features_file)] if args.features_file else []
    with _stage(args, "plan", args.out, inputs) as st:
        p = plan(batch=args.batch, batches=_split(args.batches, "--batches"), formula=args.formula, levels=levels,
                 features=feats, ref_batch=args.ref_batch, parametric=not args.nonparametric,
                 mean_only=args.mean_only, eb=not args.no_eb, min_count=args.min_count, method=args.method, **gam)
        st.write("plan", plan_bytes(p))
    if not args.quiet:
        smooth = "".join(f", s({t}) over [{lo:g}, {hi:g}] ({p.df - 1} spline columns)"
                         for t, (lo, hi) in p.smooth_range.items())
        print(f"plan: {len(p.batches)} batches of {p.batch!r}, formula {p.formula or '(none)'} "
              f"({len(p.design.columns)} covariate column(s)){smooth}, {len(p.features)} features, min_count "
              f"{p.min_count}, digest {p.digest[:12]} -> {args.out}")
    return 0


def cmd_summarize(args) -> int:
    from ..federated import load_plan, summarize
    from ._common import load_source

    p = load_plan(args.plan)
    wanted = set(p.features)
    inputs = [("DATA", d) for d in args.data] + [("--plan", args.plan)] + (
        [("--covariates", args.covariates)] if args.covariates else [])
    with _stage(args, "summary", args.out, inputs) as st:
        source, cov = load_source(args, lambda labels: [c for c in labels if str(c) in wanted])
        s = summarize(source.frame, cov, p)
        st.write("summary", s.to_bytes())
    if not args.quiet:
        sizes = ", ".join(f"{b} ({int(n)})" for b, n in zip(s.batches, s.stats.counts))
        late = [b for b in s.batches if b not in set(p.batches)]
        print(f"summarized {int(s.stats.counts.sum())} subjects in {len(s.batches)} batch(es): {sizes}; "
              f"{len(p.features)} features -> {args.out}. Check what it discloses with: featharm federated show "
              f"{args.out}" + (f"\nnote: batch(es) {late} are not in the plan: this summary can only be added to a "
                               "combined model with 'featharm federated extend'" if late else ""))
    return 0


def cmd_show(args) -> int:
    from ..federated import describe_summary, load_summary

    print("\n".join(describe_summary(load_summary(args.summary))))
    return 0


def cmd_combine(args) -> int:
    from ..federated import combine, load_plan, load_summary
    from ..persistence import model_bytes

    p = load_plan(args.plan)
    inputs = [("SUMMARY", s) for s in args.summaries] + [("--plan", args.plan)]
    with _stage(args, "model", args.out, inputs) as st:
        model = combine([load_summary(s, p) for s in args.summaries], p)
        st.write("model", model_bytes(model))
    if not args.quiet:
        n = int(model.batch_sizes_.sum()) if hasattr(model, "batch_sizes_") else int(model._arr["batch_sizes"].sum())
        print(f"combined {len(args.summaries)} summaries: {len(model.batches_)} batches, {n} subjects, "
              f"{model.n_features_in_} features -> {args.out}. Each site applies it with: featharm apply {args.out} "
              "DATA --out OUT")
    return 0


def cmd_extend(args) -> int:
    from ..federated import extend, load_summary
    from ..models import load_model
    from ..persistence import model_bytes

    inputs = [("MODEL", args.model), ("SUMMARY", args.summary)]
    with _stage(args, "model", args.out, inputs) as st:
        model = load_model(args.model)
        s = load_summary(args.summary)
        new = extend(model, s)
        st.write("model", model_bytes(new))
    if not args.quiet:
        print(f"added batch(es) {', '.join(s.batches)} to {args.model} ({len(new.batches_)} batches now) -> "
              f"{args.out}")
    return 0
