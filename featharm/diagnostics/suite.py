"""All diagnostics in one call, for raw (and harmonized) data: what ``featharm diagnose`` writes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._validation import check_features, check_option
from ..exceptions import AlignmentError, InputError, MissingValueWarning, record_warnings, warn
from . import _stages
from ._common import prepare
from ._parallel import sized_by_features
from ._permutation import STOP_AFTER
from ._common import complete_rows
from ._results import TABLES, DiagnosticsResult, missingness_table
from .balance import covariate_balance
from .multivariate import (MULTIVARIATE_COLUMNS, _check_classifier_options, check_cv_sites,
                           classification_table, multivariate_data, pc_tests_table, permanova_table,
                           unavailable_classification, unavailable_table)
from .mixing import mixing_table
from .preservation import preservation_tables
from .residuals import ols_residuals
from .univariate import _resolve_tests, per_site_table, run_tests

__all__ = ["diagnose", "TABLES"]


def _one(X, covariates, batch, formula, tests, model, random, groups, n_permutations, classification_permutations,
         n_splits, n_repeats, n_components, multivariate, classification, seeds, fligner_ties="r",
         classifier="lda", classification_components=None, classification_stop_after=STOP_AFTER,
         progress=None):
    P = prepare(X, covariates, batch, formula, "diagnose")
    Pm = multivariate_data(P, "diagnose") if (multivariate or classification) else P
    if classification and Pm is not None:  # fail before the slow steps, not after them
        check_cv_sites(Pm, n_splits, groups)
    fit = None
    with progress(1, _stages.TESTS):
        if model == "ols":
            fit = ols_residuals(P)
            r_add, r_full = fit[:2]
        else:
            from .mixed import lmm_residuals, subject_codes

            r_add, r_full = lmm_residuals(P, subject_codes(P.covariates, random, "diagnose"))
        out = {"site_effects": run_tests(P, tests, model=model, random=random, n_permutations=n_permutations,
                                         random_state=seeds[0], ols_fit=fit, fligner_ties=fligner_ties,
                                         residuals=None if model == "ols" else (r_add, r_full), progress=progress),
               "site_effect_sizes": per_site_table(P, r_add, r_full)}
    del fit, r_full  # the multivariate checks use the additive residuals only: free the rest (memory)
    if multivariate:
        if Pm is None:
            out["multivariate"] = pd.concat([
                unavailable_table(P, [("test", "permanova"), ("test", "mdmr")], MULTIVARIATE_COLUMNS, "diagnose",
                                  n_permutations=int(n_permutations)),
                unavailable_table(P, [("test", "manova_pillai"), ("test", "box_m")], MULTIVARIATE_COLUMNS,
                                  "diagnose")], ignore_index=True)
        else:
            if Pm is not P:  # missing values: the additive residuals of the rows without a missing feature
                r_add = _additive(Pm, model, random)
            perm = permanova_table(Pm, r_add, n_permutations, seeds[1], progress=progress)
            with progress(1, _stages.PC_TESTS):
                out["multivariate"] = pd.concat([perm, _pc_tests(Pm, r_add, n_components, P)], ignore_index=True)
            with progress(1, _stages.MIXING):  # silhouette, kBET, iLISI on the same embedding
                out["site_mixing"] = mixing_table(Pm, r_add, random_state=seeds[1])
    del r_add  # the classification works on the features
    if classification:
        out["site_classification"] = (
            _classify(Pm, n_splits, n_repeats, classification_permutations, seeds[2], None, groups, classifier,
                      classification_components, classification_stop_after, progress) if Pm is not None
            else unavailable_classification(P, n_splits, n_repeats, classification_permutations, classifier))
    return P, out


def _additive(P, model, random):
    if model == "ols":
        return ols_residuals(P)[0]
    from .mixed import lmm_residuals, subject_codes

    return lmm_residuals(P, subject_codes(P.covariates, random, "diagnose"))[0]


def _pc_tests(Pm, r_add, n_components, P):
    """MANOVA and Box's M; on the rows without a missing feature, too few rows per site for the default number
    of components gives NaN rows (and a warning) instead of an error."""
    if Pm is P or n_components is not None:
        return pc_tests_table(Pm, r_add, n_components)
    try:
        return pc_tests_table(Pm, r_add, n_components)
    except InputError as exc:
        warn(f"diagnose: MANOVA and Box's M not computed on the {Pm.n} rows without a missing feature: {exc}",
             MissingValueWarning)
        t = pd.DataFrame([{"test": name, "n": Pm.n, "variant": f"not computed: {exc}"}
                          for name in ("manova_pillai", "box_m")])
        return t.reindex(columns=MULTIVARIATE_COLUMNS + ["explained_variance"])


def _classify(P, n_splits, n_repeats, permutations, seed, harmonizer, groups, classifier, components, stop_after,
              progress):
    return classification_table(P, n_splits, n_repeats, permutations, 1.0, seed, harmonizer, groups,
                                classifier=classifier, n_components=components, stop_after=stop_after,
                                progress=progress)


def _seeds(random_state) -> list[int]:
    """One seed per randomized step (Anderson–Darling, PERMANOVA, classification).

    An integer seeds every step with itself, so each table equals the one its own function gives with
    that ``random_state``; a Generator (or None) draws one seed per step.
    """
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return [int(random_state)] * 3
    rng = np.random.default_rng(random_state)
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=3)]


@sized_by_features
def diagnose(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site", formula: str | None = None,
             X_harmonized: pd.DataFrame | None = None, tests=None, model: str = "ols", random: str | None = None,
             n_permutations: int = 999, classification_permutations: int = 100, n_splits: int = 5,
             n_repeats: int = 2, n_components: int | None = None, multivariate: bool = True,
             classification: bool = True, harmonizer=None, groups: str | None = None, balance_columns=None,
             random_state=None, fligner_ties: str = "r", classifier: str = "lda",
             classification_components: int | None = None,
             classification_stop_after: int | None = STOP_AFTER, n_jobs: int | None = None) -> DiagnosticsResult:
    """Run the site-effect diagnostics on the raw data and, if given, on the harmonized data.

    Feature tables with missing (NaN) cells are accepted (``docs/methods.md`` §6.9): the per-feature tests,
    effect sizes and preservation use each feature's observed rows, the multivariate checks and the site
    classification the rows without a missing feature; every table's ``n`` column says how many rows were
    used, and the result gets a ``missingness`` table (missing cells per site and feature).

    Parameters
    ----------
    X, covariates, batch, formula, tests, model, random
        As in :func:`test_site_effects`.
    X_harmonized : DataFrame, optional
        The harmonized features (same rows and columns as ``X``): every table is computed for it too,
        and the preservation-of-biology tables compare the two.
    n_permutations : int, default 999
        Permutations of PERMANOVA and Anderson–Darling (0: no permutation p-values).
    classification_permutations : int, default 100
        Largest number of label permutations of the site-classification null (0: none); the run stops
        earlier once both p-values are decided (``classification_stop_after``).
    n_splits, n_repeats : int
        Stratified k-fold CV of the site classification (grouped by ``groups``).
    n_components : int, optional
        Principal components for MANOVA and Box's M (:func:`pc_covariance_tests`).
    multivariate, classification : bool
        Skip the multivariate tests or the classification (the slowest part) when False.
    harmonizer : harmonizer, optional
        The model that produced ``X_harmonized`` (fitted or not: a clone is used). When given, the site
        classification of the harmonized data refits it inside every training fold on the raw data;
        without it the harmonized table is classified as it is, which is biased *below* chance (see
        :func:`site_classification`). Any object with ``get_params`` (``sklearn.base.clone`` copies it),
        ``fit_transform(X, covariates)`` and ``transform(X, covariates)`` returning the features works.
        Warnings featharm raises in these refits are kept in ``refit_warnings`` of the result.
        A model with smooth terms (``ComBatGAM``, ``LongComBatGAM``) is refitted with the whole table's
        range of each smooth covariate as its ``smooth_bounds`` (unless given), so no test fold falls outside it.
    groups : str, optional
        Subject column of the classification's grouped CV (all scans of a subject in one fold); default
        ``random`` with ``model="lmm"``, else none.
    balance_columns : list of str, optional
        Covariates of the ``covariate_balance`` table; default the formula's variables (every column but
        the batch without a formula).
    random_state : int or Generator, optional
        Seeds every permutation and CV split (reproducible output). An integer seeds each step with
        itself, so every table equals its function's with ``random_state=`` that integer
        (:func:`test_site_effects`, :func:`permanova`, :func:`site_classification`).
    fligner_ties : {"r", "exact"}, default "r"
        Tie handling of Fligner–Killeen, as in :func:`test_site_effects` (``"r"`` reproduces R).
    classifier : {"lda", "logistic"}, default "lda"
        The site classifier (:func:`site_classification`): LDA on the training fold's principal components
        (closed form; its permutations reuse each fold's decomposition), or multinomial logistic regression
        on all features (refitted for every permutation; ``classification_stop_after=None`` reproduces
        featharm's earlier default).
    classification_components : int, optional
        Principal components of the LDA (default 20, capped by the features and the training folds).
    classification_stop_after : int or None, default 10
        Besag–Clifford sequential stopping of the classification null: a p-value is decided once this many
        permuted statistics reach the observed one (None: all ``classification_permutations``).
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    DiagnosticsResult
        A mapping of table name to DataFrame, keys from ``DiagnosticsResult.TABLES`` (those computed):
        ``site_effects`` (the columns of :func:`test_site_effects` with a leading ``data`` column,
        ``"raw"`` or ``"harmonized"``), ``site_effect_sizes``, ``multivariate``, ``site_mixing``, ``site_classification``
        (each with ``data``), ``covariate_balance``, and with ``X_harmonized`` and covariates in the
        formula, ``preservation`` and ``preservation_summary`` (see :func:`biology_preservation`), and with
        missing feature cells ``missingness`` (:data:`~featharm.diagnostics._results.MISSINGNESS_COLUMNS`;
        ``n_missing`` and ``n_complete`` of the result count the missing cells and the complete rows). It also
        describes the run (rows, features, batches, formula, tests, options) and has ``summary()``,
        ``to_dir()``, ``to_csv()`` and ``plot_*`` accessors.
    """
    check_option("model", model, ("ols", "lmm"), "diagnose")
    _check_classifier_options(classifier, classification_components, classification_stop_after, "diagnose")
    chosen = _resolve_tests(tests, model)
    seeds = _seeds(random_state)
    groups = groups if groups is not None else (random if model == "lmm" else None)
    kw = dict(batch=batch, formula=formula, tests=tests, model=model, random=random, groups=groups,
              n_permutations=n_permutations, classification_permutations=classification_permutations,
              n_splits=n_splits, n_repeats=n_repeats, n_components=n_components, multivariate=multivariate,
              classification=classification, seeds=seeds, fligner_ties=fligner_ties, classifier=classifier,
              classification_components=classification_components,
              classification_stop_after=classification_stop_after)
    steps = _stages.plan(["raw"] if X_harmonized is None else ["raw", "harmonized"], n_permutations=n_permutations,
                         anderson_darling="anderson_darling" in chosen, multivariate=multivariate,
                         classification=classification, classifier=classifier,
                         classification_permutations=classification_permutations, harmonizer=harmonizer is not None)
    with _stages.StageBar(steps) as bar:
        P, raw = _one(X, covariates, **kw, progress=bar.steps("raw"))
        runs = [("raw", raw)]
        refit_warnings: list = []
        if X_harmonized is not None:
            Yh, idx_h, cols_h, _ = check_features(X_harmonized, "diagnose", index=P.index, columns=P.features,
                                                  allow_nan=True)
            if not idx_h.equals(P.index) or [str(c) for c in cols_h] != P.features:
                raise AlignmentError(
                    "X_harmonized must have the same rows (index, same order) and feature columns as X; "
                    "reorder it with X_harmonized.loc[X.index, X.columns]."
                )
            steps_h = bar.steps("harmonized")
            _, harm = _one(X_harmonized, covariates, **{**kw, "classification": classification and harmonizer is None},
                           progress=steps_h)
            if classification and harmonizer is not None:
                Pm = multivariate_data(P, "diagnose")  # the raw rows without a missing feature (or all)
                with record_warnings() as refit_warnings:
                    harm["site_classification"] = (
                        unavailable_classification(P, n_splits, n_repeats, classification_permutations, classifier)
                        if Pm is None else
                        _classify(Pm, n_splits, n_repeats, classification_permutations, seeds[2], harmonizer,
                                  groups, classifier, classification_components, classification_stop_after, steps_h))
            runs.append(("harmonized", harm))
    out: dict[str, pd.DataFrame] = {}
    for key in ("site_effects", "site_effect_sizes", "multivariate", "site_mixing", "site_classification"):
        parts = [r[key].assign(data=label) for label, r in runs if key in r]
        if parts:
            t = pd.concat(parts, ignore_index=True)
            out[key] = t[["data"] + [c for c in t.columns if c != "data"]]
    out["covariate_balance"] = covariate_balance(P.covariates, batch=batch, formula=formula, columns=balance_columns)
    if P.missing:
        out["missingness"] = missingness_table(P.observed, P.features, P.levels, P.codes)
    if X_harmonized is not None and P.Xc.shape[1] > 0:
        pres = preservation_tables(P, Yh)
        out["preservation"], out["preservation_summary"] = pres.table, pres.summary
    options = {"model": model, "random": random, "groups": groups, "n_permutations": n_permutations,
               "classification_permutations": classification_permutations, "n_splits": n_splits,
               "n_repeats": n_repeats, "n_components": n_components, "multivariate": multivariate,
               "classification": classification,
               "harmonizer": type(harmonizer).__name__ if harmonizer is not None else None,
               "random_state": random_state if isinstance(random_state, (int, np.integer, type(None)))
               else type(random_state).__name__, "seeds": seeds, "fligner_ties": fligner_ties,
               "classifier": classifier, "classification_components": classification_components,
               "classification_stop_after": classification_stop_after}
    return DiagnosticsResult(
        out, n_samples=P.n, features=P.features, batch=batch,
        batch_sizes=pd.Series(P.counts.astype(int), index=pd.Index([str(v) for v in P.levels], name=str(batch)),
                              name="n"),
        formula=formula, design_columns=P.design.columns, tests=chosen, data=[label for label, _ in runs],
        options=options, refit_warnings=refit_warnings,
        n_missing=int((~P.observed).sum()) if P.missing else 0,
        n_complete=complete_rows(P, "diagnose").n if P.missing else P.n)
