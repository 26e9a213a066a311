"""``featharm diagnose``: tests for site effects (and preservation of biology), written as tables.

A thin wrapper over :func:`featharm.diagnostics.diagnose`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import DATA_HELP, KB, add_abcd_event_option, add_include_option


def add_parser(sub) -> argparse.ArgumentParser:
    g = sub.add_parser("diagnose", help="test for site effects (and preservation of biology) and write tables",
                       description="Per-feature location and scale tests of site, multivariate tests, site "
                                   "classification and covariate balance on DATA (and on --harmonized FILE, with "
                                   "preservation-of-biology tables); writes site_effects.csv and the other tables "
                                   "into --out DIR.")
    g.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    g.add_argument("--batch", required=True, metavar="COL", help="batch (site/scanner) column")
    g.add_argument("--formula", metavar="RHS", help='covariates of the diagnostic models, e.g. "age + sex"')
    g.add_argument("--features", nargs="+", metavar="PATTERN",
                   help="feature columns (globs); default: every other numeric column except QC and global "
                        "columns (see --include)")
    add_include_option(g)
    add_abcd_event_option(g)
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
                   help="largest number of label permutations of the site-classification null (default 100; "
                        "0 = none); it stops earlier once the p-values are decided (--stop-after)")
    g.add_argument("--classifier", choices=("lda", "logistic"), default="lda",
                   help="site classifier: 'lda' (default; LDA on each training fold's principal components, "
                        "fast) or 'logistic' (multinomial logistic regression on all features, refitted for "
                        "every permutation: slow)")
    g.add_argument("--classification-components", type=int, metavar="K",
                   help="principal components of the LDA (default 20)")
    g.add_argument("--stop-after", type=int, default=10, metavar="H",
                   help="Besag-Clifford stopping of the classification null: stop once H permuted statistics "
                        "reach the observed one (default 10; 0 = run all permutations)")
    g.add_argument("--no-classification", action="store_true", help="skip the site classification")
    g.add_argument("--n-splits", type=int, default=5, metavar="K",
                   help="folds of the site classification's stratified CV (default 5; every site needs K rows)")
    g.add_argument("--seed", type=int, default=0, help="seed of permutations and CV splits (default 0)")
    g.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet) joined on --id")
    g.add_argument("--id", metavar="COL", help="id column (joins DATA, --covariates and --harmonized)")
    g.add_argument("--out", required=True, metavar="DIR", help="folder for the tables")
    g.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    g.add_argument("--n-jobs", type=int, metavar="N",
                   help="threads (default: one on a small table, else the CPUs the rest of the machine leaves "
                        "free; -1: every usable CPU); the results do not depend on it")
    g.set_defaults(func=cmd_diagnose)
    return g


def cmd_diagnose(args) -> int:
    from .._staging import Output
    from ..diagnostics.suite import TABLES
    from ._common import stage

    out = Path(args.out)
    outputs = [Output(name, "--out", out / f"{name}.csv", size=16 * KB, optional=True) for name in TABLES]
    with stage(args, outputs) as staged:  # the tables appear together at the end, or none
        result, feats, data = _diagnose(args)
        result.to_dir(out, staged=staged)
    if not args.quiet:
        print(f"diagnosed {len(feats)} features of {len(data)} rows; tables -> {out}/")
        print(result.summary())
    return 0


def _diagnose(args):
    """The DiagnosticsResult of ``featharm diagnose`` (and the feature names and DATA it covers)."""
    from ..diagnostics import diagnose
    from ..exceptions import ColumnNotFoundError
    from ._common import (check_batch, choose_features, formula_columns, load_source, possible_features,
                          read_harmonized)

    source, cov = load_source(args, possible_features(args, [args.random]))
    data = source.frame
    check_batch(cov, args.batch)
    used = formula_columns(args.formula, cov)
    feats = choose_features(args, data, [args.batch, args.id, args.random, *used], source.measures)
    X = source.features(feats)  # the numbers as read: no copy
    Xh = read_harmonized(args, data, feats)
    harmonizer = None
    if args.model:
        from sklearn.base import clone

        from ..models import load_model

        fitted = load_model(args.model)
        lacking = [c for c in feats if c not in list(fitted.feature_names_in_)]
        if lacking:
            raise ColumnNotFoundError(f"the model {args.model} was not fitted on the feature column(s) "
                                      f"{lacking[:5]}{' ...' if len(lacking) > 5 else ''}; pick them with --features.")
        if Xh is None:
            Xh = fitted.transform(source.features(fitted.feature_names_in_), cov)[feats]
        harmonizer = clone(fitted)  # unfitted copy, refitted inside every CV training fold
    result = diagnose(X, cov, batch=args.batch, formula=args.formula, X_harmonized=Xh,
                      tests=args.tests, model="lmm" if args.random else "ols", random=args.random,
                      n_permutations=args.n_permutations,
                      classification_permutations=args.classification_permutations,
                      classification=not args.no_classification, n_splits=args.n_splits, harmonizer=harmonizer,
                      random_state=args.seed, classifier=args.classifier,
                      classification_components=args.classification_components,
                      classification_stop_after=args.stop_after or None, n_jobs=args.n_jobs)
    return result, feats, data
