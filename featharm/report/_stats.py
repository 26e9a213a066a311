"""The report's tables: the tables of a :class:`~featharm.diagnostics.DiagnosticsResult` in the report's
layout (nothing is recomputed here), and the provenance (versions, input hashes, date).

The diagnostics are computed once, by :func:`featharm.diagnostics.diagnose` with the report's options
(:data:`REPORT_OPTIONS`), so the report prints the numbers ``featharm diagnose`` writes.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

DEPENDENCIES = ("numpy", "pandas", "scipy", "statsmodels", "scikit-learn", "matplotlib", "seaborn", "jinja2")

#: The report runs the diagnostics with :func:`featharm.diagnostics.diagnose`'s own defaults (seed 0), so its
#: numbers are those of ``featharm diagnose --seed 0``: site classification by LDA on the training folds'
#: principal components, stratified 5-fold CV repeated twice, a permutation null of at most 100
#: permutations with Besag–Clifford stopping; PERMANOVA with 999 seeded permutations.
CLASSIFICATION_SPLITS = 5
CLASSIFICATION_REPEATS = 2
CLASSIFICATION_PERMUTATIONS = 100
#: Seeded permutations of PERMANOVA in the report.
PERMANOVA_PERMUTATIONS = 999
#: Options of :func:`featharm.diagnostics.diagnose` for the report (the default tests, OLS models).
REPORT_OPTIONS = {"n_permutations": PERMANOVA_PERMUTATIONS, "classification_permutations": CLASSIFICATION_PERMUTATIONS,
                  "n_splits": CLASSIFICATION_SPLITS, "n_repeats": CLASSIFICATION_REPEATS, "random_state": 0}

BEFORE_AFTER = {"raw": "before", "harmonized": "after"}


# ------------------------------------------------------------------------------------------ site tests
def summarize_tests(result, alpha: float = 0.05) -> pd.DataFrame:
    """One row per test family: features significant (BH-FDR < alpha) and median effect size, before/after
    (the report's layout of :meth:`DiagnosticsResult.summary_table`)."""
    summ = result.summary_table(alpha)
    raw = summ[summ["data"] == "raw"]
    after = summ[summ["data"] == "harmonized"].set_index("test") if "harmonized" in result.data else None
    rows = []
    for r in raw.itertuples():
        row = {"test": r.test, "variant": r.variant, "effect size": r.effect_size_name, "features": r.n_features,
               "significant before": r.n_significant, "median effect before": r.median_effect_size}
        if after is not None:
            row["significant after"] = int(after.loc[r.test, "n_significant"])
            row["median effect after"] = float(after.loc[r.test, "median_effect_size"])
        rows.append(row)
    return pd.DataFrame(rows)


def split_tests(result) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The ``site_effects`` table of the raw and of the harmonized data (None without), without ``data``."""
    se = result["site_effects"]
    parts = {d: se[se["data"] == d].drop(columns="data").reset_index(drop=True) for d in result.data}
    return parts["raw"], parts.get("harmonized")


def top_features(before: pd.DataFrame, after: pd.DataFrame | None, test: str, k: int = 10) -> pd.DataFrame:
    """The ``k`` features with the largest site effect before harmonization for one test."""
    b = before[before["test"] == test].set_index("feature")
    out = pd.DataFrame({"effect before": b["effect_size"], "p_fdr before": b["p_fdr"]})
    if after is not None:
        a = after[after["test"] == test].set_index("feature")
        out["effect after"] = a["effect_size"].reindex(out.index)
        out["p_fdr after"] = a["p_fdr"].reindex(out.index)
    out = out.sort_values("effect before", ascending=False, kind="mergesort").head(k)
    return out.reset_index()


def site_effects_per_site(result, batch) -> pd.DataFrame:
    """Per site: mean and max over features of the absolute standardized site effect, before/after."""
    out = None
    for data in result.data:
        z = result.site_effect_matrix(data).abs()
        label = BEFORE_AFTER[data]
        if out is None:
            out = pd.DataFrame({str(batch): [str(v) for v in z.index]})
        out[f"mean |effect| {label}"] = z.mean(axis=1).to_numpy()
        out[f"max |effect| {label}"] = z.max(axis=1).to_numpy()
    return out


def with_before_after(table: pd.DataFrame, keep) -> pd.DataFrame:
    """A table with a ``data`` column (raw / harmonized) as ``before`` / ``after``, columns ``keep`` after it."""
    t = table.assign(data=table["data"].map(BEFORE_AFTER).fillna(table["data"]))
    return t[["data"] + [c for c in keep if c in t.columns]].reset_index(drop=True)


MULTIVARIATE_KEEP = ["test", "n", "variant", "statistic", "df1", "df2", "p_unc", "effect_size", "effect_size_name",
                     "n_components", "n_permutations"]
MIXING_KEEP = ["metric", "n", "rows_averaged", "value", "ideal", "worst", "neighbours", "n_components"]
CLASSIFICATION_KEEP = ["metric", "n", "value", "sd", "chance", "null_mean", "p_perm", "n_permutations", "n_splits"]


# ------------------------------------------------------------------------------------------ covariates, biology
def balance_layout(t: pd.DataFrame) -> pd.DataFrame:
    """The ``covariate_balance`` table in the report's layout."""
    return pd.DataFrame({"covariate": t["covariate"], "test": t["test"], "statistic": t["statistic"], "df": t["df"],
                         "p": t["p_unc"], "effect size": [f"{n} {v:.3g}" for n, v in zip(t["effect_size_name"],
                                                                                          t["effect_size"])],
                         "confounded": t["confounded"], "by site": t["detail"]})


def preservation_layout(table: pd.DataFrame, summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The preservation tables in the report's layout: the table with ``term`` (the design column) and
    ``effect_before`` / ``effect_after`` (partial R²) added; one summary row per term."""
    t = table.assign(term=table["covariate"], effect_before=table["partial_r2_before"],
                     effect_after=table["partial_r2_after"])
    s = summary
    summ = pd.DataFrame({
        "term": s["covariate"], "median partial R² before": s["median_partial_r2_before"],
        "median partial R² after": s["median_partial_r2_after"], "Lin's CCC (partial R²)": s["ccc_partial_r2"],
        "Lin's CCC (t)": s["ccc_t"], "Pearson r (t)": s["pearson_t"],
        "significant before": s["n_sig_fdr_before"], "significant after": s["n_sig_fdr_after"]})
    return t, summ


def preservation(X, Xh, covariates, *, batch, formula):
    """:func:`featharm.diagnostics.biology_preservation` in the report's layout (:func:`preservation_layout`),
    or ``(None, None)`` when the formula has no covariate column."""
    from ..design import CovariateDesign
    from ..diagnostics import biology_preservation

    if not CovariateDesign.fit(formula, covariates, exclude=(batch,))[0].columns:
        return None, None
    res = biology_preservation(X, Xh, covariates, batch=batch, formula=formula)
    return preservation_layout(res.table, res.summary)


# ------------------------------------------------------------------------------------------ provenance
def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_table(df: pd.DataFrame) -> str:
    """Hash of a table's index, column names and values (stable across runs)."""
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes())
    return h.hexdigest()


def versions() -> list[tuple[str, str]]:
    from importlib import metadata

    from .._version import __version__

    out = [("featharm", __version__), ("python", sys.version.split()[0]), ("platform", platform.platform())]
    for name in DEPENDENCIES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def input_files(inputs) -> list[dict]:
    rows = []
    for label, path in (inputs or {}).items():
        p = Path(path)
        rows.append({"input": str(label), "file": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)})
    return rows


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
