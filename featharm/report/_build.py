"""Assemble the one-file HTML report: numbers, tables and figures, rendered by a jinja2 template.

The numbers come from one :func:`featharm.diagnostics.diagnose` run (a :class:`DiagnosticsResult`); each
section is built by a small function from the validated inputs (:class:`ReportData`), that result and the
fitted model (read through the protocol of :mod:`featharm.report._protocol`; the models are never imported).
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._validation import align_covariates, batch_levels, check_features, get_batch, rows_of, show_columns
from ..diagnostics._results import format_number
from ..exceptions import BatchError, ColumnNotFoundError, FeatharmError, InputError, NotFittedError
from . import _stats
from ._protocol import model_formula, model_groups

_FORMATS = ("svg", "png")


# ------------------------------------------------------------------------------------------ small pieces
#: A number as short text: the formatting of DiagnosticsResult.summary(), so the report and
#: ``featharm diagnose`` print the same strings.
fmt = format_number


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
@dataclass
class ReportData:
    """Validated inputs of a report: raw and harmonized features, aligned covariates and the choices."""

    X: pd.DataFrame
    Xh: pd.DataFrame | None
    cov: pd.DataFrame
    batch: str
    formula: str | None
    features: list | None  # drawn individually; None: the largest site effects
    cov_cols: list
    x: str | None  # continuous covariate of the trajectories and the PCA colouring
    excluded: list = field(default_factory=list)  # rows left out (model with missing_covariates="exclude")

    @property
    def has_after(self) -> bool:
        return self.Xh is not None


@dataclass
class Provenance:
    """What the provenance section records besides the data: files, parameters, date, command."""

    inputs: dict | None = None
    parameters: dict | None = None
    date: str | None = None
    command: str | None = None


class Figures:
    """Renders figures into a section as embedded images (SVG or PNG)."""

    def __init__(self, figure_format: str):
        self.format = figure_format

    def add(self, section: Section, fig, title: str, caption: str, alt: str) -> None:
        section.figures.append({"title": title, "uri": figure_uri(fig, self.format), "caption": caption, "alt": alt})


def _formula_columns(formula, covariates) -> list[str]:
    from ..formula import parse_formula

    cols = set(map(str, covariates.columns))
    return [v for v in parse_formula(formula).variables() if v in cols]


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


def _validate(X, covariates, *, model, X_harmonized, batch, formula, features, covariate_columns, x) -> ReportData:
    """Check the inputs of :func:`make_report` (named errors) and harmonize with the model if needed."""
    if model is not None and not hasattr(model, "batches_"):
        raise NotFittedError(f"make_report needs a fitted model; this {type(model).__name__} is not fitted. "
                             "Call fit first.")
    batch = batch if batch is not None else (getattr(model, "batch", None) or "site")
    formula = formula if formula is not None else (model_formula(model) if model is not None else None)
    # a NumPy array: rows of the covariates, in order; the model's feature names
    _, index, columns, _ = check_features(X, "make_report", index=rows_of(covariates),
                                          columns=getattr(model, "feature_names_in_", None), allow_nan=True)
    cov = align_covariates(index, covariates, "make_report")
    X = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X, index=index, columns=columns)
    excluded = _excluded_rows(model, cov, batch, formula)
    if excluded is not None:  # rows the model leaves out (missing_covariates="exclude"): out of the report too
        if X_harmonized is None:
            X_harmonized = model.transform(X, cov)
        if isinstance(X_harmonized, pd.DataFrame):
            X_harmonized = X_harmonized.loc[~excluded.to_numpy()]
        elif X_harmonized is not None:
            X_harmonized = np.asarray(X_harmonized)[~excluded.to_numpy()]
        X, cov = X.loc[~excluded.to_numpy()], cov.loc[~excluded.to_numpy()]
        index = X.index
    levels = batch_levels(get_batch(cov, batch))
    if len(levels) < 2:  # every section compares sites
        raise BatchError(f"a report compares sites, so it needs at least 2 batches in {batch!r}; found only "
                         f"{levels}. Give the data of all the sites.")
    if X_harmonized is None and model is not None:
        X_harmonized = model.transform(X, cov)
    if X_harmonized is not None:
        check_features(X_harmonized, "make_report", index=index, columns=columns, allow_nan=True)
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
    return ReportData(X=X, Xh=X_harmonized, cov=cov, batch=batch, formula=formula, features=features,
                      cov_cols=cov_cols, x=x,
                      excluded=[] if excluded is None else list(excluded.index[excluded.to_numpy()]))


def _excluded_rows(model, cov: pd.DataFrame, batch, formula) -> pd.Series | None:
    """Rows without a batch label or a formula covariate, when the model leaves such rows out
    (``missing_covariates="exclude"``): a boolean Series, or None (no such row, or a model that refuses them:
    the diagnostics then name the rows in their error)."""
    if model is None or model.get_params(deep=False).get("missing_covariates") != "exclude":
        return None
    used = [c for c in [batch, *_formula_columns(formula, cov)] if c in cov.columns]
    bad = cov[used].isna().any(axis=1)
    return bad if bad.any() else None


def run_diagnostics(data: ReportData, model=None, classification: bool = True):
    """The report's diagnostics, computed once: :func:`featharm.diagnostics.diagnose` with
    :data:`~featharm.report._stats.REPORT_OPTIONS`. Returns ``(result, note)``: when the site classification
    cannot run (a site with fewer rows or subjects than folds ...), the rest is computed without it and
    ``note`` says why (else None)."""
    from ..diagnostics import diagnose

    kw = dict(batch=data.batch, formula=data.formula, X_harmonized=data.Xh,
              harmonizer=model if (model is not None and data.has_after) else None,
              groups=model_groups(model, data.cov), balance_columns=data.cov_cols, **_stats.REPORT_OPTIONS)
    if not classification:
        return diagnose(data.X, data.cov, classification=False, **kw), None
    try:
        return diagnose(data.X, data.cov, classification=True, **kw), None
    except FeatharmError as exc:  # e.g. a site with fewer rows (subjects) than folds; anything else fails again
        return diagnose(data.X, data.cov, classification=False, **kw), f"Site classification not computed: {exc}"


# ------------------------------------------------------------------------------------------ make_report
def make_report(X, covariates, *, model=None, X_harmonized=None, batch=None, formula=None, features=None,
                covariate_columns=None, x=None, inputs=None, title=None, figure_format="svg",
                extra_warnings=None, parameters=None, date=None, command=None, classification=True) -> HTMLReport:
    """Build the one-file HTML report of a harmonization (or of raw data alone).

    Sections: data summary, missing values (only when feature cells are missing: per feature and per site,
    a heat map; ``docs/methods.md`` §6.9), covariate balance, site effects before and after (summary numbers, tables,
    figures), preservation of biology, the model's parameters, the warnings raised during the fit and
    while computing the report, and provenance (versions, parameters, input hashes, date). The numbers
    come from one :func:`featharm.diagnostics.diagnose` run, so they equal what ``featharm diagnose`` writes
    for the same data and options.

    Parameters
    ----------
    X : DataFrame
        Raw features (subjects × features); NaN cells (missing values) are allowed.
    covariates : DataFrame
        The batch column and covariates, matched to ``X`` by index.
    model : fitted harmonizer, optional
        Its parameters, EB priors and fit warnings are reported; ``batch`` and ``formula`` default to
        the model's, and ``X_harmonized`` to ``model.transform(X, covariates)``. Read through a small
        protocol (:class:`featharm.report._protocol.ReportableModel`): ``batch``, ``batches_``,
        ``feature_names_in_``, ``design_``, ``get_params``, ``transform`` (and optional attributes).
    X_harmonized : DataFrame, optional
        Harmonized features (same index and columns as ``X``). Without it (and without a model) the
        report describes the raw data only.
    batch : str, optional
        Batch (site) column; default the model's, else ``"site"``.
    formula : str, optional
        Covariates of the diagnostic models (``"age + sex"``); default the model's (smooth terms ``s(x)``
        enter linearly).
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
    data = _validate(X, covariates, model=model, X_harmonized=X_harmonized, batch=batch, formula=formula,
                     features=features, covariate_columns=covariate_columns, x=x)
    prov = Provenance(inputs, parameters, date or _stats.utc_now(), command)
    import matplotlib

    with warnings.catch_warnings(record=True) as rec, matplotlib.rc_context({"figure.max_open_warning": 0}):
        warnings.simplefilter("always")
        result, note = run_diagnostics(data, model, classification)
        sections = build_sections(data, result, model, Figures(figure_format), prov, classification_note=note,
                                  classification=classification)
        caught = [{"source": "report", "category": w.category.__name__, "message": str(w.message)} for w in rec]
    refits = {(w["category"], w["message"]) for w in result.refit_warnings}
    caught = [w for w in caught if (w["category"], w["message"]) not in refits]  # summarized in a note
    unique = _warning_rows(model, extra_warnings, caught)
    sections.insert(len(sections) - 1, _warnings_section(unique))  # before provenance
    from .._version import __version__
    from ._render import render

    text = render({"title": title or ("featharm harmonization report" if data.has_after
                                      else "featharm site-effect report"),
                   "sections": sections, "date": prov.date, "version": __version__,
                   "model": type(model).__name__ if model is not None else None, "n_warnings": len(unique)})
    return HTMLReport(text, [s.title for s in sections], unique)


def _warning_rows(model, extra_warnings, caught) -> list[dict]:
    """The fit's warnings, the extra ones and those raised while computing the report, each listed once."""
    rows = [{"source": "fit", "category": w.get("category", ""), "message": w.get("message", "")}
            for w in (getattr(model, "fit_warnings_", None) or [])]
    for w in extra_warnings or []:
        if isinstance(w, dict):
            rows.append({"source": w.get("source", "run"), "category": w.get("category", "warning"),
                         "message": w.get("message", "")})
        else:
            rows.append({"source": "run", "category": "warning", "message": str(w)})
    seen, unique = set(), []
    for w in rows + caught:
        key = (w["category"], w["message"])
        if key not in seen:
            seen.add(key)
            unique.append(w)
    return unique


def _warnings_section(rows: list[dict]) -> Section:
    s = Section("warnings", "Warnings",
                intro=("Warnings raised while fitting the model and while computing this report."
                       if rows else "No warnings were raised while fitting the model or computing this report."))
    if rows:
        s.tables.append(table(pd.DataFrame(rows, columns=["source", "category", "message"])))
    s.stats.append(("warnings", str(len(rows))))
    return s


# ------------------------------------------------------------------------------------------ sections
def build_sections(data: ReportData, result, model, figs: Figures, prov: Provenance, *,
                   classification_note: str | None = None, classification: bool = True) -> list[Section]:
    """Every section but the warnings, in order."""
    missing = [missing_section(data, result, figs)] if result.n_missing else []
    return [data_section(data), *missing,
            balance_section(data, result, figs),
            site_effects_section(data, result, figs, classification=classification, note=classification_note),
            preservation_section(data, result, figs),
            model_section(model, data.batch, figs),
            provenance_section(data, model, prov)]


def data_section(data: ReportData) -> Section:
    X, cov, batch = data.X, data.cov, data.batch
    levels = batch_levels(cov[batch])
    counts = cov[batch].astype(str).value_counts().reindex([str(v) for v in levels]).astype(int)
    s = Section("data", "Data summary")
    s.stats += [("subjects", str(len(X))), ("sites", str(len(levels))), ("features", str(X.shape[1])),
                ("batch column", str(batch)), ("covariates in the model", data.formula or "none (grand mean only)")]
    per_site = pd.DataFrame({str(batch): counts.index, "subjects": counts.to_numpy(),
                             "share": counts.to_numpy() / counts.sum()})
    for c in data.cov_cols:
        col = cov[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col) and col.nunique() > 5:
            g = col.groupby(cov[batch].astype(str).to_numpy())
            per_site[f"{c} mean (sd)"] = [f"{g.mean()[lv]:.3g} ({g.std()[lv]:.2g})" for lv in counts.index]
    s.tables.append(table(per_site, "Subjects per site"))
    if data.excluded:
        s.notes.append(f"{len(data.excluded)} row(s) left out of the model and of this report: their batch or a "
                       "covariate of the formula is missing (missing_covariates='exclude'): "
                       + ", ".join(map(str, data.excluded[:20])) + (" ..." if len(data.excluded) > 20 else "") + ".")
    miss = pd.DataFrame({"column": [str(c) for c in cov.columns], "missing values": cov.isna().sum().to_numpy()})
    s.stats.append(("missing values in the features", str(int(X.isna().sum().sum()))))
    s.stats.append(("covariate columns with missing values", str(int((miss["missing values"] > 0).sum()))))
    if (miss["missing values"] > 0).any():
        s.tables.append(table(miss[miss["missing values"] > 0], "Covariate columns with missing values"))
    else:
        s.notes.append("No missing values in the features or the covariate table.")
    s.tables.append(table(pd.DataFrame({"feature": [str(c) for c in X.columns],
                                        "mean": X.mean().to_numpy(), "sd": X.std().to_numpy(),
                                        "min": X.min().to_numpy(), "max": X.max().to_numpy()}),
                          "Features (raw)", max_rows=None))
    return s


def missing_section(data: ReportData, result, figs: Figures) -> Section:
    """Missing feature cells (only when there are some): per feature, per site, and a site × feature heat map."""
    X, batch = data.X, data.batch
    n, V = X.shape
    mt = result["missingness"]
    s = Section("missing", "Missing values",
                intro="Empty (NaN) feature cells are not filled. Every per-feature test uses the feature's observed "
                      "rows (column n of its tables); a site with fewer than 2 observed values of a feature is "
                      "left out of that feature's tests. The multivariate checks (PERMANOVA, MDMR, MANOVA, Box's "
                      "M, site classification) use the rows without a missing feature. Harmonization leaves "
                      "empty cells empty.")
    by_feature = mt.groupby("feature", sort=False)[["n_missing"]].sum()
    sites_with = mt[mt["n_missing"] > 0].groupby("feature", sort=False)["site"].apply(lambda x: ", ".join(x))
    by_feature = by_feature.assign(fraction=by_feature["n_missing"] / n, observed=n - by_feature["n_missing"],
                                   sites=sites_with.reindex(by_feature.index).fillna(""))
    with_missing = by_feature[by_feature["n_missing"] > 0]
    s.stats += [("missing feature cells", f"{result.n_missing} of {n * V} ({fmt(100 * result.n_missing / (n * V))} %)"),
                ("features with missing cells", f"{len(with_missing)} of {V}"),
                ("rows without a missing feature (used by the multivariate checks)",
                 f"{result.n_complete} of {n}")]
    tab = with_missing.sort_values("n_missing", ascending=False, kind="mergesort").reset_index()
    s.tables.append(table(tab.rename(columns={"n_missing": "missing cells", "fraction": "fraction missing",
                                              "observed": "observed rows", "sites": "sites with missing cells"}),
                          "Missing cells per feature (features with missing cells, most first)", max_rows=30))
    by_site = mt.groupby("site", sort=False).agg(subjects=("n", "first"), missing=("n_missing", "sum"),
                                                 features=("n_missing", lambda x: int((x > 0).sum())))
    by_site["fraction of cells"] = by_site["missing"] / (by_site["subjects"] * V)
    codes = data.cov[batch].astype(str).to_numpy()
    complete = ~X.isna().to_numpy().any(axis=1)
    by_site["rows without a missing feature"] = [int(complete[codes == st].sum()) for st in by_site.index]
    s.tables.append(table(by_site.reset_index().rename(columns={"site": str(batch), "missing": "missing cells",
                                                                 "features": "features with missing cells"}),
                          "Missing cells per site"))
    untested = _untested(result)
    if untested:
        s.notes.append(f"{len(untested)} feature(s) could not be tested on their observed rows (NaN statistics): "
                       + ", ".join(untested[:20]) + (" ..." if len(untested) > 20 else "") + ".")
    figs.add(s, result.plot_missing(), "Missing cells by site and feature",
             "Share of each site's rows without a value of the feature (white: none missing).",
             "heat map of the fraction of missing cells, sites by features")
    return s


def _untested(result) -> list:
    se = result["site_effects"]
    raw = se[(se["data"] == "raw") & (se["test"] == se["test"].iloc[0])]
    return [str(f) for f in raw.loc[raw["statistic"].isna(), "feature"]]


def balance_section(data: ReportData, result, figs: Figures) -> Section:
    from .. import plots

    s = Section("balance", "Covariate balance",
                intro="Covariates whose distribution differs between sites are partly confounded with site: "
                      "their effect is estimated from fewer comparable subjects, and leaving them out of the "
                      "model would remove biology with the site effect.")
    if not data.cov_cols:
        s.notes.append("The model has no covariates; nothing to compare.")
        return s
    s.tables.append(table(_stats.balance_layout(result["covariate_balance"]),
                          "Covariates by site (Kruskal–Wallis for continuous, chi-square for categorical)"))
    figs.add(s, plots.covariate_distributions(data.cov, columns=data.cov_cols, batch=data.batch),
             "Covariate distributions by site", "Continuous covariates: density histograms per site; "
             "categorical: proportion of each level per site.", "covariate distributions by site")
    return s


def site_effects_section(data: ReportData, result, figs: Figures, *, classification: bool = True,
                         note: str | None = None) -> Section:
    s = Section("site-effects", "Site effects before and after harmonization",
                intro="Per-feature tests of site in y ~ covariates + site (location tests on the model or on "
                      "the additive residuals, scale tests on the full residuals). p-values are adjusted "
                      "within each test family (BH-FDR); 'significant' means p_fdr < 0.05.")
    before, after = _stats.split_tests(result)
    first = _test_counts(s, result)
    _standardized_effects(s, result, data.batch)
    s.tables.append(table(_stats.top_features(before, after, first), f"Features with the largest site effect "
                                                                      f"before harmonization ({first})"))
    s.tables.append(table(_stats.with_before_after(result["multivariate"], _stats.MULTIVARIATE_KEEP),
                          "Multivariate tests of site (" + _rows_words(result) + "additive residuals; PERMANOVA with "
                          f"{result.options.get('n_permutations')} seeded permutations; MDMR with its analytic "
                          "p-value; "
                          "MANOVA and Box's M on the top principal components)"))
    if "site_mixing" in result:
        mix = result["site_mixing"]
        s.tables.append(table(_stats.with_before_after(mix, _stats.MIXING_KEEP),
                              "Site mixing (" + _rows_words(result) + "first principal components of the "
                              "standardized additive residuals): silhouette of the site labels (ideal 0 or below), "
                              "kBET acceptance rate (ideal 1 - alpha) and median iLISI (ideal: the inverse Simpson "
                              "index of the site sizes); averaged over at most "
                              f"{int(mix['rows_averaged'].max())} seeded rows"))
    if note is not None:
        s.notes.append(note)
    elif classification:
        _classification(s, result)
    _site_effect_figures(s, data, result, figs, before)
    return s


def param_text(value) -> str:
    """A parameter's value for a table cell: its repr, or the shape of a table (the constructor's covariate
    table, ``covariates=``) rather than its whole contents."""
    if isinstance(value, pd.DataFrame):
        return f"DataFrame of {value.shape[0]} rows × {value.shape[1]} columns"
    return repr(value)


def _rows_words(result) -> str:
    """How many rows the multivariate checks used, when feature cells are missing (else nothing)."""
    if not result.n_missing:
        return ""
    return f"the {result.n_complete} of {result.n_samples} rows without a missing feature; "


def _test_counts(s: Section, result) -> str:
    """Features significant in the first test family and its median effect size, and the families' table."""
    summ = _stats.summarize_tests(result)
    b0 = summ.iloc[0]
    first = str(b0["test"])
    s.stats.append((f"features with a significant {first} site effect before",
                    f"{b0['significant before']}/{b0['features']}"))
    if "significant after" in summ.columns:
        s.stats.append((f"features with a significant {first} site effect after",
                        f"{b0['significant after']}/{b0['features']}"))
    s.stats.append((f"median {b0['effect size']} ({first}) before", fmt(b0["median effect before"])))
    if "median effect after" in summ.columns:
        s.stats.append((f"median {b0['effect size']} ({first}) after", fmt(b0["median effect after"])))
    s.tables.append(table(summ, "Test families: features with p_fdr < 0.05 and median effect size"))
    return first


def _standardized_effects(s: Section, result, batch) -> None:
    """The standardized site effect (``shift`` of site_effect_sizes) over features: overall and per site."""
    for d in result.data:
        s.stats.append((f"mean absolute standardized site effect {_stats.BEFORE_AFTER[d]}",
                        fmt(result.mean_abs_site_effect(d))))
    s.tables.append(table(_stats.site_effects_per_site(result, batch),
                          "Standardized site effects per site (site mean of the additive residuals minus the grand "
                          "mean, in SDs of the full residuals), over features"))


def _classification(s: Section, result) -> None:
    """Site classification before/after into section ``s`` (table, summary numbers, note on the refits)."""
    if "site_classification" not in result:
        return
    tab = _stats.with_before_after(result["site_classification"], _stats.CLASSIFICATION_KEEP)
    o = result.options
    how = ""
    if "harmonized" in result.data and result.options.get("harmonizer") is not None:
        how = " After: the model is refitted on every training fold and applied to its test fold."
        if result.refit_warnings:
            kinds = sorted({w["category"] for w in result.refit_warnings})
            s.notes.append(f"The model's refits inside the classification folds raised {len(result.refit_warnings)} "
                           f"warning(s) ({', '.join(kinds)}); they concern subsets of the data and are "
                           "not listed under Warnings.")
    elif "harmonized" in result.data:
        how = (" After: the harmonized table as given; data harmonized on all rows score below chance "
               "in cross-validation (the test rows helped equalize the site means), so read 'after' as "
               "an upper bound on the remaining site information; pass the model for an unbiased check.")
    for d, part in tab.groupby("data", sort=False):
        bacc = part[part.metric == "balanced_accuracy"].iloc[0]
        s.stats.append((f"site classification balanced accuracy {d} (chance {fmt(bacc['chance'])})",
                        fmt(bacc["value"])))
    s.tables.append(table(tab, f"Site classification: {_rows_words(result)}{_classifier_words(result)}, stratified "
                               f"{o.get('n_splits')}-fold CV ({o.get('n_repeats')} repeats), covariates "
                               f"residualized inside the training folds; {_null_words(o)}. Chance: 1/sites for "
                               "balanced accuracy, 0.5 for AUC." + how))


def _classifier_words(result) -> str:
    if result.options.get("classifier") == "logistic":
        return "multinomial logistic regression on all features"
    k = int(result["site_classification"]["n_components"].max())
    if k >= result.n_features:
        return "linear discriminant analysis on all features"
    return f"linear discriminant analysis on the training folds' first {k} principal components"


def _null_words(o: dict) -> str:
    n = o.get("classification_permutations") or 0
    if not n:
        return "no permutation null"
    h = o.get("classification_stop_after")
    stop = f", stopped once {h} reach the observed value (Besag–Clifford)" if h else ""
    return f"p_perm from at most {n} label permutations{stop}"


def _site_effect_figures(s: Section, data: ReportData, result, figs: Figures, before: pd.DataFrame) -> None:
    from .. import plots

    X, Xh, cov, batch = data.X, data.Xh, data.cov, data.batch
    figs.add(s, result.plot_site_effects(), "Standardized site effects",
             "Each cell: (site mean of the additive residuals − grand mean) / SD of the full residuals; one "
             "colour scale for both panels.", "heatmap of standardized site effects, sites by features")
    figs.add(s, result.plot_pvalues(p="p_unc"), "−log10 p per feature and test family",
             "Uncorrected p-values of every test; darker is a stronger site effect.", "heatmap of -log10 p-values")
    hue = data.x if data.x is not None else _pick_x(cov, data.cov_cols)
    figs.add(s, plots.pca_before_after(X, Xh, cov, batch=batch, formula=data.formula, hue=hue),
             "PCA of the additive residuals", "Covariate effects removed, site effects kept, features "
             "standardized; coloured by site" + (f" and by {hue}" if hue else "") + ".",
             "principal component scatter plots")
    feats = [str(f_) for f_ in data.features] if data.features is not None else _pick_features(before)
    figs.add(s, plots.distributions_before_after(X, Xh, cov, features=feats, batch=batch),
             "Distributions by site", "Selected features" + (" (largest site effect before harmonization)"
                                                             if data.features is None else "") + ".",
             "box plots by site")
    if hue is not None:
        figs.add(s, plots.trajectories_before_after(X, Xh, cov, features=feats, x=hue, batch=batch),
                 f"Trajectories against {hue}", "Points and a quadratic fit per site.", f"feature against {hue} by site")


def preservation_section(data: ReportData, result, figs: Figures) -> Section:
    s = Section("preservation", "Preservation of biology",
                intro="Covariate effects estimated on the raw data with site as a covariate (y ~ covariates + "
                      "site) against the same effects on the harmonized data (y ~ covariates). Harmonization "
                      "should keep them: points near the identity line, concordance near 1.")
    if not data.has_after:
        s.notes.append("No harmonized data: nothing to compare.")
        return s
    if "preservation" not in result:
        s.notes.append("The model has no covariates: there is no biological effect to compare.")
        return s
    tab, summary = _stats.preservation_layout(result["preservation"], result["preservation_summary"])
    s.tables.append(table(summary, "Per covariate term: partial R² and t before and after (BH-FDR "
                                   "significance counts at 0.05)"))
    figs.add(s, result.plot_preservation(), "Effect sizes before against after",
             "Partial R² of each term, one point per feature.", "scatter of effect sizes before against after")
    tab = tab.assign(change=tab["effect_after"] - tab["effect_before"])
    s.tables.append(table(tab.reindex(tab["change"].abs().sort_values(ascending=False, kind="mergesort").index)
                          [["feature", "term", "t_before", "t_after", "effect_before", "effect_after", "change"]],
                          "Largest changes of partial R²", max_rows=10))
    return s


def model_section(model, batch, figs: Figures) -> Section:
    """The fitted model's parameters and EB estimates, read through the report protocol."""
    s = Section("model", "Model parameters")
    if model is None:
        s.notes.append("No model was given: the report describes the data only.")
        return s
    from .. import plots

    s.stats += [("model", type(model).__name__), ("batches", ", ".join(map(str, model.batches_))),
                ("design columns", ", ".join(map(str, model.design_.columns)) or "none")]
    params = model.get_params(deep=False)
    s.tables.append(table(pd.DataFrame({"parameter": list(params), "value": [param_text(v) for v in params.values()]}),
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
    if hasattr(model, "bias_") and hasattr(model, "scale_"):  # TravelingSubjects: biases in feature units
        b, g = model.bias_, model.scale_
        est = pd.DataFrame({str(batch): [str(v) for v in b.index], "bias mean": b.mean(axis=1).to_numpy(),
                            "bias sd": b.std(axis=1).to_numpy(), "gain min": g.min(axis=1).to_numpy(),
                            "gain max": g.max(axis=1).to_numpy()})
        s.tables.append(table(est, "Site biases (feature units) and gains measured on the traveling subjects, "
                                   "summarized over features"))
    s.stats.append(("features passed through (no variance)", str(len(list(getattr(model, "constant_features_", []))))))
    if hasattr(model, "gamma_hat_") and hasattr(model, "priors_"):
        figs.add(s, plots.eb_diagnostics(model), "Empirical-Bayes priors", "Histograms of the per-site estimates "
                 "over features with the fitted prior densities (normal for γ, inverse gamma for δ²).",
                 "EB prior densities over site estimates")
    return s


def provenance_section(data: ReportData, model, prov: Provenance) -> Section:
    """Date, versions, parameters and hashes of the inputs."""
    from .._version import __version__

    s = Section("provenance", "Provenance")
    s.stats += [("date", prov.date or _stats.utc_now()), ("featharm", __version__)]
    if prov.command:
        s.stats.append(("command", prov.command))
    s.tables.append(table(pd.DataFrame(_stats.versions(), columns=["package", "version"]), "Versions"))
    prm = {"batch": data.batch, "formula": data.formula or "", "features": data.X.shape[1]}
    if model is not None:
        prm["model"] = type(model).__name__
        prm.update({f"model.{k}": param_text(v) for k, v in model.get_params(deep=False).items()})
    prm.update({str(k): v for k, v in (prov.parameters or {}).items()})
    s.tables.append(table(pd.DataFrame({"parameter": list(prm), "value": [str(v) for v in prm.values()]}),
                          "Parameters"))
    hashes = [{"input": "features (raw), in memory", "file": "", "bytes": "", "sha256": _stats.sha256_table(data.X)},
              {"input": "covariates, in memory", "file": "", "bytes": "", "sha256": _stats.sha256_table(data.cov)}]
    if data.has_after:
        hashes.append({"input": "features (harmonized), in memory", "file": "", "bytes": "",
                       "sha256": _stats.sha256_table(data.Xh)})
    s.tables.append(table(pd.DataFrame(_stats.input_files(prov.inputs) + hashes,
                                       columns=["input", "file", "bytes", "sha256"]),
                          "Inputs (SHA-256 of files; in-memory tables hashed over index, columns and values)"))
    return s
