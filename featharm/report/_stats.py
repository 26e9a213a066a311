"""Numbers behind the report: data summary, covariate balance, site tests, preservation, provenance.

Per-feature site tests come from :mod:`featharm.diagnostics`; the small summaries here only reshape them.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..design import CovariateDesign

DEPENDENCIES = ("numpy", "pandas", "scipy", "statsmodels", "scikit-learn", "matplotlib", "seaborn", "jinja2")


# ------------------------------------------------------------------------------------------ site tests
def site_tests(X, covariates, *, batch, formula) -> pd.DataFrame:
    """Tidy per-feature site tests: :func:`featharm.diagnostics.test_site_effects` (default tests)."""
    from ..diagnostics import test_site_effects

    return test_site_effects(X, covariates, batch=batch, formula=formula)


def summarize_tests(before: pd.DataFrame, after: pd.DataFrame | None, alpha: float = 0.05) -> pd.DataFrame:
    """One row per test family: features significant (BH-FDR < alpha) and median effect size, before/after."""
    rows = []
    for test, b in before.groupby("test", sort=False):
        row = {
            "test": test,
            "variant": b["variant"].iloc[0],
            "effect size": b["effect_size_name"].iloc[0],
            "features": int(len(b)),
            "significant before": int((b["p_fdr"] < alpha).sum()),
            "median effect before": float(np.nanmedian(b["effect_size"])) if b["effect_size"].notna().any() else np.nan,
        }
        if after is not None:
            a = after[after["test"] == test]
            row["significant after"] = int((a["p_fdr"] < alpha).sum())
            row["median effect after"] = (float(np.nanmedian(a["effect_size"])) if a["effect_size"].notna().any()
                                          else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


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


# ------------------------------------------------------------------------------------------ covariates, biology
def covariate_balance(covariates: pd.DataFrame, columns, batch: str) -> pd.DataFrame:
    """:func:`featharm.diagnostics.covariate_balance` in the report's layout (its confounding warning is kept)."""
    from ..diagnostics import covariate_balance as balance

    t = balance(covariates, batch=batch, columns=list(columns))
    return pd.DataFrame({"covariate": t["covariate"], "test": t["test"], "statistic": t["statistic"], "df": t["df"],
                         "p": t["p_unc"], "effect size": [f"{n} {v:.3g}" for n, v in zip(t["effect_size_name"],
                                                                                          t["effect_size"])],
                         "confounded": t["confounded"], "by site": t["detail"]})


def preservation(X, Xh, covariates, *, batch, formula):
    """:func:`featharm.diagnostics.biology_preservation` in the report's layout, or ``(None, None)`` when the
    formula has no covariate column.

    Returns ``(table, summary)``: the table with ``term`` (the design column) and ``effect_before`` /
    ``effect_after`` (partial R²) added; one summary row per term.
    """
    from ..diagnostics import biology_preservation

    if not CovariateDesign.fit(formula, covariates, exclude=(batch,))[0].columns:
        return None, None
    res = biology_preservation(X, Xh, covariates, batch=batch, formula=formula)
    t = res.table.assign(term=res.table["covariate"], effect_before=res.table["partial_r2_before"],
                         effect_after=res.table["partial_r2_after"])
    s = res.summary
    summary = pd.DataFrame({
        "term": s["covariate"], "median partial R² before": s["median_partial_r2_before"],
        "median partial R² after": s["median_partial_r2_after"], "Lin's CCC (partial R²)": s["ccc_partial_r2"],
        "Lin's CCC (t)": s["ccc_t"], "Pearson r (t)": s["pearson_t"],
        "significant before": s["n_sig_fdr_before"], "significant after": s["n_sig_fdr_after"]})
    return t, summary


def multivariate(X, covariates, *, batch, formula, n_permutations=199, random_state=0) -> pd.DataFrame:
    """PERMANOVA (seeded permutations) and the MANOVA / Box's M tests on the top PCs, one row per test."""
    from ..diagnostics import pc_covariance_tests, permanova

    out = pd.concat([permanova(X, covariates, batch=batch, formula=formula, n_permutations=n_permutations,
                               random_state=random_state),
                     pc_covariance_tests(X, covariates, batch=batch, formula=formula)], ignore_index=True)
    keep = ["test", "variant", "statistic", "df1", "df2", "p_unc", "effect_size", "effect_size_name",
            "n_components", "n_permutations"]
    return out[[c for c in keep if c in out.columns]]


#: Site classification in the report: a modest default (one 5-fold CV, no permutation null) to keep the
#: report fast; ``featharm diagnose`` runs the full version (repeats and a permutation null).
CLASSIFICATION_SPLITS = 5
CLASSIFICATION_REPEATS = 1
CLASSIFICATION_PERMUTATIONS = 0


def site_classification(X, covariates, *, batch, formula, harmonizer=None, groups=None, n_splits=None,
                        n_permutations=None, random_state=0) -> pd.DataFrame:
    """Cross-validated site classification (covariates residualized in the folds), the report's defaults."""
    from ..diagnostics import site_classification as _sc

    t = _sc(X, covariates, batch=batch, formula=formula,
            n_splits=CLASSIFICATION_SPLITS if n_splits is None else n_splits, n_repeats=CLASSIFICATION_REPEATS,
            n_permutations=CLASSIFICATION_PERMUTATIONS if n_permutations is None else n_permutations,
            harmonizer=harmonizer, groups=groups, random_state=random_state)
    keep = ["metric", "value", "sd", "chance", "null_mean", "p_perm", "n_splits"]
    return t[keep]


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
