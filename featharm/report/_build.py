"""Assemble the one-file HTML report: numbers, tables and figures, rendered by a jinja2 template."""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._validation import align_covariates, batch_levels, check_features, get_batch, rows_of, show_columns
from ..exceptions import BatchError, ColumnNotFoundError, InputError
from . import _stats

_FORMATS = ("svg", "png")


# ------------------------------------------------------------------------------------------ small pieces
def fmt(x) -> str:
    """A number as short text (integers plain, p-values in scientific notation when small)."""
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        v = float(x)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3g}" if abs(v) >= 1e5 else f"{v:.2e}"
        return f"{v:.4g}"
    return str(x)


def table(df: pd.DataFrame, caption: str = "", max_rows: int | None = None) -> dict:
    """A DataFrame as plain strings for the template (escaped there, never marked safe)."""
    shown = df if max_rows is None else df.head(max_rows)
    return {
        "caption": caption,
        "columns": [str(c) for c in shown.columns],
        "rows": [[fmt(v) for v in row] for row in shown.itertuples(index=False, name=None)],
        "more": 0 if max_rows is None else max(0, len(df) - max_rows),
    }


def figure_uri(fig, fmt_: str = "svg", dpi: int = 100) -> str:
    """A Figure as a ``data:`` URI (base64 SVG with text kept as text, or PNG); no timestamps inside."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "featharm"}):
        meta = {"Date": None} if fmt_ == "svg" else {"Software": None}
        fig.savefig(buf, format=fmt_, dpi=dpi, metadata=meta)
    mime = "image/svg+xml" if fmt_ == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    stats: list = field(default_factory=list)  # (label, value) pairs
    tables: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    notes: list = field(default_factory=list)


class HTMLReport:
    """A rendered report: one self-contained HTML document.

    Attributes
    ----------
    html : str
        The document (CSS inline, figures embedded as ``data:`` URIs, no network access).
    sections : list of str
        Titles of the sections, in order.
    warnings : list of dict
        Warnings shown in the report (``source``, ``category``, ``message``).
    """

    def __init__(self, html_text: str, sections, warnings_):
        self.html = html_text
        self.sections = list(sections)
        self.warnings = list(warnings_)

    def save_as_html(self, path) -> None:
        """Write the document to ``path`` (atomically, UTF-8)."""
        from ..persistence import atomic_write_bytes

        atomic_write_bytes(path, self.html.encode("utf-8"))

    def _repr_html_(self) -> str:  # Jupyter: isolate the document in an iframe
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:800px;'
                'border:1px solid #ccc"></iframe>')

    def __str__(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"<HTMLReport: {len(self.sections)} sections, {len(self.warnings)} warning(s), {len(self.html)} chars>"


# ------------------------------------------------------------------------------------------ inputs
def _model_formula(model):
    """The model's covariates as a linear formula for the diagnostics (smooth terms enter linearly)."""
    import re

    design = getattr(model, "design_", None)
    f = getattr(model, "formula", None)
    f = f if f is not None else (design.formula if design is not None else None)
    terms = [re.sub(r"\bs\(\s*([A-Za-z_]\w*)[^()]*\)", r"\1", f)] if f else []
    smooth = getattr(model, "smooth", None)
    terms += [smooth] if isinstance(smooth, str) else list(smooth or [])
    return " + ".join(t for t in terms if t.strip()) or None


def _formula_columns(formula, covariates) -> list[str]:
    from ..design import _clean_formula, _formula_variables

    f = _clean_formula(formula)
    return list(_formula_variables(f, covariates.columns)[0]) if f else []


def _pick_features(tests: pd.DataFrame, k: int = 3) -> list[str]:
    t = tests[tests["test"] == tests["test"].iloc[0]]
    return t.sort_values("effect_size", ascending=False, kind="mergesort")["feature"].head(k).tolist()


def _pick_x(covariates: pd.DataFrame, columns) -> str | None:
    cands = (["age"] if "age" in covariates.columns else []) + list(columns)
    for c in cands:
        s = covariates[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) and s.nunique() > 5:
            return c
    return None


# ------------------------------------------------------------------------------------------ make_report
def make_report(X, covariates, *, model=None, X_harmonized=None, batch=None, formula=None, features=None,
                covariate_columns=None, x=None, inputs=None, title=None, figure_format="svg",
                extra_warnings=None, parameters=None, date=None, command=None, classification=True) -> HTMLReport:
    """Build the one-file HTML report of a harmonization (or of raw data alone).

    Sections: data summary, covariate balance, site effects before and after (summary numbers, tables,
    figures), preservation of biology, the model's parameters, the warnings raised during the fit and
    while computing the report, and provenance (versions, parameters, input hashes, date).

    Parameters
    ----------
    X : DataFrame
        Raw features (subjects × features).
    covariates : DataFrame
        The batch column and covariates, matched to ``X`` by index.
    model : fitted harmonizer, optional
        Its parameters, EB priors and fit warnings are reported; ``batch`` and ``formula`` default to
        the model's, and ``X_harmonized`` to ``model.transform(X, covariates)``.
    X_harmonized : DataFrame, optional
        Harmonized features (same index and columns as ``X``). Without it (and without a model) the
        report describes the raw data only.
    batch : str, optional
        Batch (site) column; default the model's, else ``"site"``.
    formula : str, optional
        Covariates of the diagnostic models (``"age + sex"``); default the model's.
    features : list of str, optional
        Features drawn individually (distributions, trajectories); default the 3 with the largest site
        effect before harmonization.
    covariate_columns : list of str, optional
        Covariates in the balance section; default the formula's columns.
    x : str, optional
        Continuous covariate of the trajectory plots; default ``age`` (or the first continuous one).
    inputs : dict, optional
        ``label -> path`` of the input files; their size and SHA-256 go into the provenance section.
    title : str, optional
    figure_format : {"svg", "png"}, default "svg"
    extra_warnings : list, optional
        More warnings to list (strings or ``{"category", "message"}`` dicts), e.g. from the command line.
    parameters : dict, optional
        Extra parameters recorded in the provenance (e.g. the command-line options).
    date : str, optional
        Report date (default: now, UTC, ISO 8601); fix it for byte-identical reports.
    command : str, optional
        The command line that made the report.
    classification : bool, default True
        Add the cross-validated site classification (multinomial logistic regression, covariates
        residualized inside the folds) to the site-effects section, before and after harmonization; with a
        model it is refitted inside every training fold. A modest default keeps the report fast: one
        stratified 5-fold CV and no permutation null (``featharm diagnose`` runs repeats and the null).

    Returns
    -------
    HTMLReport
        ``.html`` holds the document; ``.save_as_html(path)`` writes it.
    """
    if figure_format not in _FORMATS:
        raise InputError(f"The 'figure_format' parameter of make_report must be one of {list(_FORMATS)}. "
                         f"Got {figure_format!r} instead.")
    if model is not None and not hasattr(model, "batches_"):
        from ..exceptions import NotFittedError

        raise NotFittedError(f"make_report needs a fitted model; this {type(model).__name__} is not fitted. "
                             "Call fit first.")
    batch = batch if batch is not None else (getattr(model, "batch", None) or "site")
    formula = formula if formula is not None else (_model_formula(model) if model is not None else None)
    # a NumPy array: rows of the covariates, in order; the model's feature names
    _, index, columns = check_features(X, "make_report", index=rows_of(covariates),
                                       columns=getattr(model, "feature_names_in_", None))
    cov = align_covariates(index, covariates, "make_report")
    levels = batch_levels(get_batch(cov, batch))
    if len(levels) < 2:  # every section compares sites
        raise BatchError(f"a report compares sites, so it needs at least 2 batches in {batch!r}; found only "
                         f"{levels}. Give the data of all the sites.")
    X = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X, index=index, columns=columns)
    if X_harmonized is None and model is not None:
        X_harmonized = model.transform(X, cov)
    if X_harmonized is not None:
        check_features(X_harmonized, "make_report", index=index, columns=columns)
        if not isinstance(X_harmonized, pd.DataFrame):
            X_harmonized = pd.DataFrame(X_harmonized, index=index, columns=columns)
        if list(map(str, X_harmonized.columns)) != list(map(str, columns)) or not X_harmonized.index.equals(index):
            raise InputError("X_harmonized must have the same index and columns as X (the raw features), "
                             "in the same order.")
    if features is not None:
        features = [features] if isinstance(features, str) else list(features)
        absent = list(dict.fromkeys(f for f in features if str(f) not in set(map(str, columns))))
        if absent:
            raise ColumnNotFoundError(f"make_report: features {absent} are not columns of X; columns: "
                                      f"{show_columns(columns)}.")
    cov_cols = list(covariate_columns) if covariate_columns is not None else _formula_columns(formula, cov)
    missing = [c for c in cov_cols if c not in cov.columns]
    if missing:
        raise ColumnNotFoundError(f"make_report: covariates have no column(s) {missing}; columns present: "
                                  f"{show_columns(cov.columns)}.")

    import matplotlib

    from .. import plots

    caught: list = []
    with warnings.catch_warnings(record=True) as rec, matplotlib.rc_context({"figure.max_open_warning": 0}):
        warnings.simplefilter("always")
        ctx = _build(X, X_harmonized, cov, model, batch, formula, features, cov_cols, x, inputs,
                     figure_format, plots, parameters, date, command, title, classification)
        caught = [{"source": "report", "category": w.category.__name__, "message": str(w.message)} for w in rec]
    warn_rows = []
    for w in (getattr(model, "fit_warnings_", None) or []):
        warn_rows.append({"source": "fit", "category": w.get("category", ""), "message": w.get("message", "")})
    for w in extra_warnings or []:
        if isinstance(w, dict):
            warn_rows.append({"source": w.get("source", "run"), "category": w.get("category", "warning"),
                              "message": w.get("message", "")})
        else:
            warn_rows.append({"source": "run", "category": "warning", "message": str(w)})
    seen = set()
    unique = []
    for w in warn_rows + caught:
        key = (w["category"], w["message"])
        if key not in seen:
            seen.add(key)
            unique.append(w)
    sections = ctx["sections"]
    wsec = Section("warnings", "Warnings",
                   intro=("Warnings raised while fitting the model and while computing this report."
                          if unique else "No warnings were raised while fitting the model or computing this report."))
    if unique:
        wsec.tables.append(table(pd.DataFrame(unique, columns=["source", "category", "message"])))
    wsec.stats.append(("warnings", str(len(unique))))
    sections.insert(len(sections) - 1, wsec)  # before provenance
    ctx["n_warnings"] = len(unique)
    from ._render import render

    text = render(ctx)
    return HTMLReport(text, [s.title for s in sections], unique)


def _classification(s, X, Xh, cov, model, batch, formula) -> None:
    """Site classification before/after into section ``s`` (table, summary numbers, or a note why not)."""
    from ..exceptions import FeatharmError

    groups = getattr(model, "subject", None) if model is not None else None
    groups = groups if isinstance(groups, str) and groups in cov.columns else None
    try:
        parts = [_stats.site_classification(X, cov, batch=batch, formula=formula, groups=groups).assign(data="before")]
        how = ""
        if Xh is not None and model is not None:
            # the in-fold refits repeat the fit's warnings on subsets (e.g. a small site, smaller still):
            # summarized in one note instead of the Warnings section
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                parts.append(_stats.site_classification(X, cov, batch=batch, formula=formula, groups=groups,
                                                        harmonizer=model).assign(data="after"))
            how = " After: the model is refitted on every training fold and applied to its test fold."
            if rec:
                kinds = sorted({w.category.__name__ for w in rec})
                s.notes.append(f"The model's refits inside the classification folds raised {len(rec)} "
                               f"warning(s) ({', '.join(kinds)}); they concern subsets of the data and are "
                               "not listed under Warnings.")
        elif Xh is not None:
            parts.append(_stats.site_classification(Xh, cov, batch=batch, formula=formula,
                                                    groups=groups).assign(data="after"))
            how = (" After: the harmonized table as given; data harmonized on all rows score below chance "
                   "in cross-validation (the test rows helped equalize the site means), so read 'after' as "
                   "an upper bound on the remaining site information; pass the model for an unbiased check.")
    except FeatharmError as exc:  # e.g. a site with fewer rows (subjects) than folds
        s.notes.append(f"Site classification not computed: {exc}")
        return
    tab = pd.concat(parts, ignore_index=True)
    for data, part in tab.groupby("data", sort=False):
        bacc = part[part.metric == "balanced_accuracy"].iloc[0]
        s.stats.append((f"site classification balanced accuracy {data} (chance {fmt(bacc['chance'])})",
                        fmt(bacc["value"])))
    s.tables.append(table(tab[["data"] + [c for c in tab.columns if c != "data"]],
                          f"Site classification: multinomial logistic regression, stratified "
                          f"{_stats.CLASSIFICATION_SPLITS}-fold CV ({_stats.CLASSIFICATION_REPEATS} repeat), "
                          "covariates residualized inside the training folds; no permutation null in the report "
                          "(featharm diagnose runs one). Chance: 1/sites for balanced accuracy, 0.5 for AUC." + how))


def _build(X, Xh, cov, model, batch, formula, features, cov_cols, x, inputs, figure_format, plots, parameters,
           date, command, title, classification=True):
    levels = batch_levels(cov[batch])
    counts = cov[batch].astype(str).value_counts().reindex([str(v) for v in levels]).astype(int)
    has_after = Xh is not None
    fig = lambda f, title_, caption, alt: {"title": title_, "uri": figure_uri(f, figure_format),  # noqa: E731
                                           "caption": caption, "alt": alt}
    sections = []

    # -------------------------------------------------------------- data summary
    s = Section("data", "Data summary")
    s.stats += [("subjects", str(len(X))), ("sites", str(len(levels))), ("features", str(X.shape[1])),
                ("batch column", str(batch)), ("covariates in the model", formula or "none (grand mean only)")]
    per_site = pd.DataFrame({str(batch): counts.index, "subjects": counts.to_numpy(),
                             "share": counts.to_numpy() / counts.sum()})
    for c in cov_cols:
        col = cov[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col) and col.nunique() > 5:
            g = col.groupby(cov[batch].astype(str).to_numpy())
            per_site[f"{c} mean (sd)"] = [f"{g.mean()[lv]:.3g} ({g.std()[lv]:.2g})" for lv in counts.index]
    s.tables.append(table(per_site, "Subjects per site"))
    miss = pd.DataFrame({"column": [str(c) for c in cov.columns],
                         "missing values": cov.isna().sum().to_numpy()})
    n_missing_features = int(X.isna().sum().sum())
    s.stats.append(("missing values in the features", str(n_missing_features)))
    s.stats.append(("covariate columns with missing values", str(int((miss["missing values"] > 0).sum()))))
    if (miss["missing values"] > 0).any():
        s.tables.append(table(miss[miss["missing values"] > 0], "Covariate columns with missing values"))
    else:
        s.notes.append("No missing values in the features or the covariate table.")
    s.tables.append(table(pd.DataFrame({"feature": [str(c) for c in X.columns],
                                        "mean": X.mean().to_numpy(), "sd": X.std().to_numpy(),
                                        "min": X.min().to_numpy(), "max": X.max().to_numpy()}),
                          "Features (raw)", max_rows=None))
    sections.append(s)

    # -------------------------------------------------------------- covariate balance
    s = Section("balance", "Covariate balance",
                intro="Covariates whose distribution differs between sites are partly confounded with site: "
                      "their effect is estimated from fewer comparable subjects, and leaving them out of the "
                      "model would remove biology with the site effect.")
    if cov_cols:
        bal = _stats.covariate_balance(cov, cov_cols, batch)
        s.tables.append(table(bal, "Covariates by site (Kruskal–Wallis for continuous, chi-square for categorical)"))
        f = plots.covariate_distributions(cov, columns=cov_cols, batch=batch)
        s.figures.append(fig(f, "Covariate distributions by site", "Continuous covariates: density histograms "
                             "per site; categorical: proportion of each level per site.",
                             "covariate distributions by site"))
    else:
        s.notes.append("The model has no covariates; nothing to compare.")
    sections.append(s)

    # -------------------------------------------------------------- site effects
    s = Section("site-effects", "Site effects before and after harmonization",
                intro="Per-feature tests of site in y ~ covariates + site (location tests on the model or on "
                      "the additive residuals, scale tests on the full residuals). p-values are adjusted "
                      "within each test family (BH-FDR); 'significant' means p_fdr < 0.05.")
    before = _stats.site_tests(X, cov, batch=batch, formula=formula)
    after = _stats.site_tests(Xh, cov, batch=batch, formula=formula) if has_after else None
    summ = _stats.summarize_tests(before, after)
    first = str(before["test"].iloc[0])
    b0 = summ.iloc[0]
    s.stats.append((f"features with a significant {first} site effect before",
                    f"{b0['significant before']}/{b0['features']}"))
    if has_after:
        s.stats.append((f"features with a significant {first} site effect after",
                        f"{b0['significant after']}/{b0['features']}"))
    s.stats.append((f"median {b0['effect size']} ({first}) before", fmt(b0["median effect before"])))
    if has_after:
        s.stats.append((f"median {b0['effect size']} ({first}) after", fmt(b0["median effect after"])))
    s.tables.append(table(summ, "Test families: features with p_fdr < 0.05 and median effect size"))
    from ..plots._common import prepare as _prep
    from ..plots._common import standardized_site_effects

    z_before = standardized_site_effects(_prep(X, cov, batch, "make_report"), formula)
    per_site = pd.DataFrame({str(batch): [str(v) for v in z_before.index],
                             "mean |effect| before": z_before.abs().mean(axis=1).to_numpy(),
                             "max |effect| before": z_before.abs().max(axis=1).to_numpy()})
    s.stats.append(("mean absolute standardized site effect before", fmt(float(z_before.abs().to_numpy().mean()))))
    if has_after:
        z_after = standardized_site_effects(_prep(Xh, cov, batch, "make_report"), formula)
        per_site["mean |effect| after"] = z_after.abs().mean(axis=1).to_numpy()
        per_site["max |effect| after"] = z_after.abs().max(axis=1).to_numpy()
        s.stats.append(("mean absolute standardized site effect after", fmt(float(z_after.abs().to_numpy().mean()))))
    s.tables.append(table(per_site, "Standardized site effects per site (site mean of the additive residuals "
                                    "minus the grand mean, in SDs of the full residuals), over features"))
    s.tables.append(table(_stats.top_features(before, after, first), f"Features with the largest site effect "
                                                                      f"before harmonization ({first})"))
    mv = _stats.multivariate(X, cov, batch=batch, formula=formula).assign(data="before")
    if has_after:
        mv = pd.concat([mv, _stats.multivariate(Xh, cov, batch=batch, formula=formula).assign(data="after")],
                       ignore_index=True)
    s.tables.append(table(mv[["data"] + [c for c in mv.columns if c != "data"]],
                          "Multivariate tests of site (additive residuals; PERMANOVA with 199 seeded "
                          "permutations; MDMR with its analytic p-value; MANOVA and Box's M on the top principal "
                          "components)"))
    if classification:
        _classification(s, X, Xh, cov, model, batch, formula)
    f = plots.site_effects_before_after(X, Xh, cov, batch=batch, formula=formula)
    s.figures.append(fig(f, "Standardized site effects", "Each cell: (site mean of the additive residuals − "
                         "grand mean) / SD of the full residuals; one colour scale for both panels.",
                         "heatmap of standardized site effects, sites by features"))
    f = plots.pvalues_before_after(before, after, p="p_unc")
    s.figures.append(fig(f, "−log10 p per feature and test family", "Uncorrected p-values of every test; "
                         "darker is a stronger site effect.", "heatmap of -log10 p-values"))
    hue = x if x is not None else _pick_x(cov, cov_cols)
    f = plots.pca_before_after(X, Xh, cov, batch=batch, formula=formula, hue=hue)
    s.figures.append(fig(f, "PCA of the additive residuals", "Covariate effects removed, site effects kept, "
                         "features standardized; coloured by site" + (f" and by {hue}" if hue else "") + ".",
                         "principal component scatter plots"))
    feats = [str(f_) for f_ in features] if features is not None else _pick_features(before)
    f = plots.distributions_before_after(X, Xh, cov, features=feats, batch=batch)
    s.figures.append(fig(f, "Distributions by site", "Selected features" + (" (largest site effect before "
                         "harmonization)" if features is None else "") + ".", "box plots by site"))
    if hue is not None:
        f = plots.trajectories_before_after(X, Xh, cov, features=feats, x=hue, batch=batch)
        s.figures.append(fig(f, f"Trajectories against {hue}", "Points and a quadratic fit per site.",
                             f"feature against {hue} by site"))
    sections.append(s)

    # -------------------------------------------------------------- preservation
    s = Section("preservation", "Preservation of biology",
                intro="Covariate effects estimated on the raw data with site as a covariate (y ~ covariates + "
                      "site) against the same effects on the harmonized data (y ~ covariates). Harmonization "
                      "should keep them: points near the identity line, concordance near 1.")
    if has_after and formula:
        tab, summary = _stats.preservation(X, Xh, cov, batch=batch, formula=formula)
        if tab is not None:
            s.tables.append(table(summary, "Per covariate term: partial R² and t before and after (BH-FDR "
                                           "significance counts at 0.05)"))
            terms = list(summary["term"])
            ncol = min(3, len(terms))
            from ..plots._common import new_figure

            f = new_figure(3.8 * ncol, 3.4 * (-(-len(terms) // ncol)))
            axes = np.atleast_1d(f.subplots(-(-len(terms) // ncol), ncol, squeeze=False).ravel())
            for ax, term in zip(axes, terms):
                plots.preservation_scatter(tab, term=term, ax=ax)
            for ax in axes[len(terms):]:
                ax.set_visible(False)
            s.figures.append(fig(f, "Effect sizes before against after", "Partial R² of each term, one point "
                                 "per feature.", "scatter of effect sizes before against after"))
            tab = tab.assign(change=tab["effect_after"] - tab["effect_before"])
            s.tables.append(table(tab.reindex(tab["change"].abs().sort_values(ascending=False, kind="mergesort").index)
                                  [["feature", "term", "t_before", "t_after", "effect_before", "effect_after", "change"]],
                                  "Largest changes of partial R²", max_rows=10))
    elif not has_after:
        s.notes.append("No harmonized data: nothing to compare.")
    else:
        s.notes.append("The model has no covariates: there is no biological effect to compare.")
    sections.append(s)

    # -------------------------------------------------------------- model
    s = Section("model", "Model parameters")
    if model is not None:
        s.stats += [("model", type(model).__name__), ("batches", ", ".join(map(str, model.batches_))),
                    ("design columns", ", ".join(map(str, model.design_.columns)) or "none")]
        params = model.get_params(deep=False)
        s.tables.append(table(pd.DataFrame({"parameter": list(params), "value": [repr(v) for v in params.values()]}),
                              "Parameters"))
        if hasattr(model, "priors_"):
            pri = model.priors_.copy()
            pri.insert(0, str(batch), [str(v) for v in pri.index])
            if hasattr(model, "n_iter_"):
                pri["EB iterations"] = model.n_iter_.to_numpy()
            if hasattr(model, "batch_sizes_"):
                pri["subjects"] = model.batch_sizes_.to_numpy().astype(int)
            s.tables.append(table(pri.reset_index(drop=True), "Empirical-Bayes hyperparameters per site "
                                  "(a_prior, b_prior: inverse-gamma shape and scale of δ²)"))
        if hasattr(model, "gamma_star_") and hasattr(model, "delta_star_"):
            g, d = model.gamma_star_, model.delta_star_
            est = pd.DataFrame({str(batch): [str(v) for v in g.index],
                                "gamma* mean": g.mean(axis=1).to_numpy(), "gamma* sd": g.std(axis=1).to_numpy(),
                                "delta* mean": d.mean(axis=1).to_numpy(), "delta* min": d.min(axis=1).to_numpy(),
                                "delta* max": d.max(axis=1).to_numpy()})
            s.tables.append(table(est, "Site effects on the standardized scale, summarized over features"))
        consts = list(getattr(model, "constant_features_", []))
        s.stats.append(("features passed through (no variance)", str(len(consts))))
        if hasattr(model, "gamma_hat_") and hasattr(model, "priors_"):
            f = plots.eb_diagnostics(model)
            s.figures.append(fig(f, "Empirical-Bayes priors", "Histograms of the per-site estimates over features "
                                 "with the fitted prior densities (normal for γ, inverse gamma for δ²).",
                                 "EB prior densities over site estimates"))
    else:
        s.notes.append("No model was given: the report describes the data only.")
    sections.append(s)

    # -------------------------------------------------------------- provenance
    from .._version import __version__

    s = Section("provenance", "Provenance")
    when = date or _stats.utc_now()
    s.stats += [("date", when), ("featharm", __version__)]
    if command:
        s.stats.append(("command", command))
    s.tables.append(table(pd.DataFrame(_stats.versions(), columns=["package", "version"]), "Versions"))
    prm = {"batch": batch, "formula": formula or "", "features": X.shape[1]}
    if model is not None:
        prm["model"] = type(model).__name__
        prm.update({f"model.{k}": repr(v) for k, v in model.get_params(deep=False).items()})
    prm.update({str(k): v for k, v in (parameters or {}).items()})
    s.tables.append(table(pd.DataFrame({"parameter": list(prm), "value": [str(v) for v in prm.values()]}),
                          "Parameters"))
    files = _stats.input_files(inputs)
    hashes = [{"input": "features (raw), in memory", "file": "", "bytes": "", "sha256": _stats.sha256_table(X)},
              {"input": "covariates, in memory", "file": "", "bytes": "", "sha256": _stats.sha256_table(cov)}]
    if has_after:
        hashes.append({"input": "features (harmonized), in memory", "file": "", "bytes": "",
                       "sha256": _stats.sha256_table(Xh)})
    s.tables.append(table(pd.DataFrame(files + hashes, columns=["input", "file", "bytes", "sha256"]),
                          "Inputs (SHA-256 of files; in-memory tables hashed over index, columns and values)"))
    sections.append(s)
    return {"title": title or ("featharm harmonization report" if has_after else "featharm site-effect report"),
            "sections": sections, "date": when, "version": __version__,
            "model": type(model).__name__ if model is not None else None}
