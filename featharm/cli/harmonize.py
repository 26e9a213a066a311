"""``featharm harmonize``: fit a harmonization model on DATA and write DATA with its features harmonized.

The model is built from two tables: :data:`METHODS` (``--method NAME`` -> estimator class) and
:data:`OPTIONS` (command-line option -> constructor parameter). An option the user gives is passed to the
estimator only if the estimator has that parameter (its ``get_params()``); otherwise it is a one-line
error naming the option and the method, never silently ignored. Options not given leave the estimator's
own defaults. Parsing imports neither table's classes: the models load when the command runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from ._common import DATA_HELP, KB, MB, add_data_options, add_include_option, add_missing_option

# --method NAME -> the estimator's class, by name in featharm.models (imported only to build the model).
METHODS: dict[str, str] = {
    "combat": "ComBat",
    "covbat": "CovBat",
    "combatls": "ComBatLS",
    "gam": "ComBatGAM",
    "longitudinal": "LongComBat",
    "traveling": "TravelingSubjects",
    "longgam": "LongComBatGAM",
}

# --method NAME -> options it cannot do without (the estimator's default would guess a column name).
REQUIRED: dict[str, dict[str, str]] = {
    "longitudinal": {"--subject": "--method longitudinal needs --subject COL: the column identifying each "
                                  "scan's subject."},
    "traveling": {"--subject": "--method traveling needs --subject COL: the column identifying the traveling "
                               "subject of each scan."},
    "longgam": {"--subject": "--method longgam needs --subject COL: the column identifying each scan's subject."},
}


def _columns_of_formula(rhs) -> list:
    from ..formula import parse_formula

    return parse_formula(rhs).variables()


@dataclass(frozen=True)
class Option:
    """A command-line option of ``featharm harmonize`` that sets a parameter of the estimator.

    ``flag`` (``--ref-batch``) sets ``param`` (``ref_batch``) to the option's value, or, for an on/off
    switch, to ``switch`` (``--nonparametric``: ``parametric=False``). ``columns`` lists the covariate
    columns the value names (they are not features). ``methods`` only titles the ``--help`` section the
    option is listed in; whether an option applies is decided by the estimator's parameters (and
    ``tests/cli/test_cli_options.py`` checks that the two agree).
    """

    flag: str
    param: str
    help: str
    methods: tuple = ()  # () = every method
    switch: Any = None  # a switch (no value): the parameter's value when the option is given
    columns: Callable | None = None
    argparse_kw: dict = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    def given(self, args) -> bool:
        return getattr(args, self.dest, None) is not None

    def value(self, args):
        return self.switch if self.switch is not None else getattr(args, self.dest)

    def add_to(self, group) -> None:
        if self.switch is not None:
            group.add_argument(self.flag, action="store_const", const=True, default=None, help=self.help)
        else:
            group.add_argument(self.flag, default=None, help=self.help, **self.argparse_kw)


_COMBAT_EB = ("combat", "combatls", "covbat", "gam")  # built on ComBat's step: reference batch, EB variants

OPTIONS: tuple[Option, ...] = (
    Option("--batch", "batch", "batch (site/scanner) column", argparse_kw=dict(metavar="COL", required=True)),
    Option("--formula", "formula", 'covariates to preserve, e.g. "age + sex"', argparse_kw=dict(metavar="RHS")),
    Option("--no-eb", "eb", "no empirical Bayes shrinkage", (*_COMBAT_EB, "longitudinal", "longgam"), switch=False),
    Option("--ref-batch", "ref_batch", "reference batch: its rows are left unchanged", (*_COMBAT_EB, "traveling"),
           argparse_kw=dict(metavar="LEVEL")),
    Option("--nonparametric", "parametric", "non-parametric empirical Bayes", _COMBAT_EB, switch=False),
    Option("--mean-only", "mean_only", "adjust location only", _COMBAT_EB, switch=True),
    Option("--missing-covariates", "missing_covariates", "rows missing the batch or a --formula covariate: "
           "'error' (default) or 'exclude' them (their features come back empty)", ("combat", "covbat"),
           argparse_kw=dict(choices=["error", "exclude"])),
    Option("--subject", "subject", "subject id column (longitudinal, longgam: random effect; traveling: the "
           "traveling subject)", ("longitudinal", "longgam", "traveling"),
           columns=lambda v: [v], argparse_kw=dict(metavar="COL")),
    Option("--time", "time", "numeric time column (for --random-slope)", ("longitudinal", "longgam"),
           columns=lambda v: [v], argparse_kw=dict(metavar="COL")),
    Option("--random-slope", "random_slope", "random slope on --time as well as a random intercept",
           ("longitudinal",), switch=True),
    Option("--standardize", "standardize", "residual standardization (default reml = longCombat)",
           ("longitudinal", "longgam"), argparse_kw=dict(choices=["reml", "msr", "marginal"])),
    Option("--smooth", "smooth", "covariate column(s) with smooth (spline) effects, e.g. age", ("gam", "longgam"),
           columns=list, argparse_kw=dict(nargs="+", metavar="COL")),
    Option("--smooth-method", "method", "criterion for the smoothing parameter (default REML)", ("gam",),
           argparse_kw=dict(choices=["REML", "GCV"])),
    Option("--shared-smoothing", "shared_smoothing", "one smoothing parameter for all features", ("gam",),
           switch=True),
    Option("--percent-var", "percent_var", "harmonize the principal components explaining more than this "
           "share of the residual variance (default 0.95)", ("covbat",), argparse_kw=dict(type=float, metavar="P")),
    Option("--n-components", "n_components", "harmonize exactly K principal components (overrides "
           "--percent-var)", ("covbat",), argparse_kw=dict(type=int, metavar="K")),
    Option("--scale-formula", "scale_formula", 'covariates of the log-SD, e.g. "age + sex" (default: constant '
           "SD)", ("combatls",), columns=_columns_of_formula, argparse_kw=dict(metavar="RHS")),
    Option("--scale", "scale", "also correct each site's gain (multiplicative effect), estimated by maximum "
           "likelihood from the traveling subjects", ("traveling",), switch=True),
    Option("--n-jobs", "n_jobs", "BLAS threads (default: chosen per call from the problem size and the CPUs "
           "free; -1: every usable CPU); not saved with the model", argparse_kw=dict(metavar="N", type=int)),
)


def estimator_class(method: str):
    from .. import models

    return getattr(models, METHODS[method])


def estimator_params(method: str) -> set:
    """The constructor parameters of the estimator of ``--method``."""
    return set(estimator_class(method)().get_params())


def methods_of(opt: Option) -> list:
    """The methods whose estimator has the parameter ``opt`` sets."""
    return [m for m in METHODS if opt.param in estimator_params(m)]


def build_model(args):
    """The unfitted estimator of ``--method``, with the parameters of the options given.

    An option given whose parameter the estimator does not have is an
    :class:`~featharm.exceptions.InputError` naming the option and the method.
    """
    from ..exceptions import InputError

    cls = estimator_class(args.method)
    params = estimator_params(args.method)
    kwargs = {}
    for opt in OPTIONS:
        if not opt.given(args):
            continue
        if opt.param not in params:
            raise InputError(f"{opt.flag} does not apply to --method {args.method} ({cls.__name__} has no "
                             f"{opt.param!r} parameter); it applies to --method {', '.join(methods_of(opt))}.")
        kwargs[opt.param] = opt.value(args)
    for flag, message in REQUIRED.get(args.method, {}).items():
        if not next(o for o in OPTIONS if o.flag == flag).given(args):
            raise InputError(message)
    return cls(**kwargs)


def option_columns(args) -> list:
    """The covariate columns named by the options given (subject, time, smooth terms ...): not features."""
    return [c for opt in OPTIONS if opt.columns is not None and opt.given(args) for c in opt.columns(opt.value(args))]


def add_parser(sub) -> argparse.ArgumentParser:
    h = sub.add_parser("harmonize", help="fit a harmonization model on a table and write the harmonized table",
                       description="Fit a harmonization model (ComBat by default) on DATA and write DATA with its "
                                   "feature columns harmonized. An option that does not apply to the --method "
                                   "is an error.")
    h.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    h.add_argument("--method", default="combat", choices=sorted(METHODS),
                   help="harmonization model (default: combat)")
    groups = {}  # the model's options, listed by the methods they apply to
    for opt in OPTIONS:
        if opt.methods not in groups:
            which = f"--method {', '.join(opt.methods)}" if opt.methods else "every --method"
            groups[opt.methods] = h.add_argument_group(f"options of {which}")
        opt.add_to(groups[opt.methods])
    h.add_argument("--features", nargs="+", metavar="PATTERN",
                   help="feature columns (globs such as '*_thickness'); default: every other numeric column "
                        "except QC and global columns (see --include)")
    add_include_option(h)
    h.add_argument("--save-model", metavar="MODEL", help="save the fitted model to this file")
    h.add_argument("--report", metavar="HTML", help="also write the one-file HTML report of the fit")
    add_missing_option(h)
    add_data_options(h)
    h.set_defaults(func=cmd_harmonize)
    return h


def cmd_harmonize(args) -> int:
    from .._staging import Output
    from ..persistence import model_bytes
    from ._common import (check_batch, check_missing, choose_features, file_size, formula_columns, load_source,
                          missing_summary, output_table, possible_features, report_inputs, report_parameters,
                          stage)

    from ._store import harmonize_store, store_input

    if store_input(args):  # a Zarr feature store: out of core, into a store
        return harmonize_store(args, build_model(args))
    outputs = [Output("table", "--out", args.out, size=file_size(args.data)),
               Output("model", "--save-model", args.save_model, size=64 * KB),
               Output("report", "--report", args.report, size=1 * MB)]
    model = build_model(args)  # an option that does not apply: refused before anything is read or staged
    with stage(args, outputs) as staged:  # OUT, MODEL and HTML appear together at the end, or none
        not_features = [args.batch, args.id, *option_columns(args)]
        source, cov = load_source(args, possible_features(args, not_features))
        data = source.frame
        check_batch(cov, args.batch)
        used = formula_columns(args.formula, cov)
        feats = choose_features(args, data, [*not_features, *used], source.measures)
        n_missing = check_missing(args, data, feats)
        X = source.features(feats)  # the numbers as read: no copy
        Xh = model.fit_transform(X, cov)
        if args.save_model:
            staged.write("model", model_bytes(model))
        if args.report:
            report = model.report(X, cov, X_harmonized=Xh, inputs=report_inputs(args),
                                  parameters=report_parameters(args))
            staged.write("report", report.html.encode("utf-8"))
        n_rows = len(data)
        summary = missing_summary(n_missing, data, feats, getattr(model, "excluded_rows_", []))
        del X, data, cov  # OUT needs the harmonized numbers and the other columns' text only
        staged.write("table", output_table(source, Xh, args.out, args.float_format, release=True))
    if not args.quiet:
        print(f"harmonized {len(feats)} features of {n_rows} subjects from {len(model.batches_)} "
              f"batches with {type(model).__name__} -> {args.out}"
              + (f"; model -> {args.save_model}" if args.save_model else "")
              + (f"; report -> {args.report}" if args.report else "")
              + summary)
    return 0
