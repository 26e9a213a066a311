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
from scipy import stats

from .._validation import batch_levels, encode_batches
from ..design import CovariateDesign, batch_indicators

DEPENDENCIES = ("numpy", "pandas", "scipy", "statsmodels", "scikit-learn", "matplotlib", "seaborn", "jinja2",
                "formulaic")


# ------------------------------------------------------------------------------------------ site tests
def _adjust(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from statsmodels.stats.multitest import multipletests

    ok = np.isfinite(p)
    fdr, bonf = np.full(p.shape, np.nan), np.full(p.shape, np.nan)
    if ok.any():
        fdr[ok] = multipletests(p[ok], method="fdr_bh")[1]
        bonf[ok] = np.minimum(1.0, p[ok] * ok.sum())
    return fdr, bonf


def site_tests(X, covariates, *, batch, formula) -> pd.DataFrame:
    """Tidy per-feature site tests (``featharm.diagnostics.test_site_effects`` when available)."""
    from .. import diagnostics

    fn = getattr(diagnostics, "test_site_effects", None)
    if fn is not None:
        return fn(X, covariates, batch=batch, formula=formula)
    t = diagnostics.site_anova(X, covariates, batch=batch, formula=formula)
    t["test"] = "anova"
    t["p_fdr"], t["p_bonf"] = _adjust(t["p_unc"].to_numpy())
    t["effect_size_name"] = "partial_eta2"
    return t


def summarize_tests(before: pd.DataFrame, after: pd.DataFrame | None, alpha: float = 0.05) -> pd.DataFrame:
    """One row per test family: features significant (BH-FDR < alpha) and median effect size, before/after."""
    rows = []
    for test, b in before.groupby("test", sort=False):
        row = {
            "test": test,
            "variant": b["variant"].iloc[0] if "variant" in b else "",
            "effect size": b["effect_size_name"].iloc[0] if "effect_size_name" in b else "effect_size",
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


# ------------------------------------------------------------------------------------------ covariates
def covariate_balance(covariates: pd.DataFrame, columns, batch: str) -> pd.DataFrame:
    """Does each covariate differ by site? Kruskal–Wallis (numeric) or chi-square (categorical)."""
    site = covariates[batch].astype(str)
    rows = []
    for c in columns:
        s = covariates[c]
        ok = s.notna().to_numpy()
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) and s.nunique() > 5:
            groups = [s[ok & (site == lv).to_numpy()].to_numpy(float) for lv in sorted(site.unique())]
            groups = [g for g in groups if g.size]
            if len(groups) < 2 or np.ptp(s[ok].to_numpy(float)) == 0:
                continue
            h, p = stats.kruskal(*groups)
            desc = "; ".join(f"{lv}: {s[ok & (site == lv).to_numpy()].mean():.3g}" for lv in sorted(site.unique()))
            rows.append({"covariate": str(c), "test": "Kruskal-Wallis", "statistic": h, "df": len(groups) - 1,
                         "p": p, "by site": f"mean {desc}"})
        else:
            tab = pd.crosstab(site[ok], s[ok].astype(str))
            if tab.shape[0] < 2 or tab.shape[1] < 2:
                continue
            chi2, p, df, _ = stats.chi2_contingency(tab.to_numpy())
            props = tab.div(tab.sum(axis=1), axis=0)
            first = props.columns[-1]
            desc = "; ".join(f"{lv}: {props.loc[lv, first]:.0%}" for lv in props.index)
            rows.append({"covariate": str(c), "test": "chi-square", "statistic": chi2, "df": int(df), "p": p,
                         "by site": f"{first} {desc}"})
    return pd.DataFrame(rows, columns=["covariate", "test", "statistic", "df", "p", "by site"])


# ------------------------------------------------------------------------------------------ preservation
def _ols_t(W: np.ndarray, Y: np.ndarray, cols: slice):
    """t statistics, coefficients and residual df of the columns ``cols`` of W, for every feature."""
    Q, R = np.linalg.qr(W, mode="reduced")
    coef = np.linalg.solve(R, Q.T @ Y)
    resid = Y - W @ coef
    df = W.shape[0] - np.linalg.matrix_rank(W)
    s2 = np.einsum("ij,ij->j", resid, resid) / df
    Rinv = np.linalg.inv(R)
    diag = np.einsum("ij,ij->i", Rinv, Rinv)[cols]
    se = np.sqrt(np.outer(diag, s2))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef[cols] / se
    return t, coef[cols], df


def preservation(X: pd.DataFrame, Xh: pd.DataFrame, covariates: pd.DataFrame, *, batch: str, formula: str | None):
    """Covariate effects before (raw, ``y ~ covariates + site``) and after (harmonized, ``y ~ covariates``).

    One row per feature × design column (``methods.md`` §6.6): coefficient, t, p and partial R²
    ``t²/(t² + df)`` before and after. Returns ``(table, summary)``; the summary has one row per term
    with Lin's CCC and Pearson r of the partial R² and the number of features with BH-FDR < 0.05.
    """
    design, Xc = CovariateDesign.fit(formula, covariates, exclude=(batch,))
    if Xc.shape[1] == 0:
        return None, None
    levels = batch_levels(covariates[batch])
    codes = encode_batches(covariates[batch], levels, batch)
    m, n = len(levels), len(covariates)
    q = Xc.shape[1]
    Y0, Y1 = X.to_numpy(float), Xh[X.columns].to_numpy(float)
    t0, c0, df0 = _ols_t(np.hstack([batch_indicators(codes, m), Xc]), Y0, slice(m, m + q))
    t1, c1, df1 = _ols_t(np.hstack([np.ones((n, 1)), Xc]), Y1, slice(1, 1 + q))
    feats = [str(c) for c in X.columns]
    rows = []
    from ..plots import lins_ccc

    summary = []
    for k, term in enumerate(design.columns):
        p0 = 2 * stats.t.sf(np.abs(t0[k]), df0)
        p1 = 2 * stats.t.sf(np.abs(t1[k]), df1)
        r0 = t0[k] ** 2 / (t0[k] ** 2 + df0)
        r1 = t1[k] ** 2 / (t1[k] ** 2 + df1)
        fdr0, fdr1 = _adjust(p0)[0], _adjust(p1)[0]
        rows.append(pd.DataFrame({"feature": feats, "term": term, "coef_before": c0[k], "coef_after": c1[k],
                                  "t_before": t0[k], "t_after": t1[k], "p_before": p0, "p_after": p1,
                                  "effect_before": r0, "effect_after": r1}))
        summary.append({"term": term, "median partial R² before": float(np.median(r0)),
                        "median partial R² after": float(np.median(r1)), "Lin's CCC (partial R²)": lins_ccc(r0, r1),
                        "Lin's CCC (t)": lins_ccc(t0[k], t1[k]), "Pearson r (t)": float(np.corrcoef(t0[k], t1[k])[0, 1]),
                        "significant before": int((fdr0 < 0.05).sum()), "significant after": int((fdr1 < 0.05).sum())})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(summary)


def preservation_any(X, Xh, covariates, *, batch, formula):
    """:func:`featharm.diagnostics.biology_preservation` when available (else :func:`preservation`), in the
    report's layout: ``(table with feature, term, t_before, t_after, effect_before, effect_after; summary)``."""
    from .. import diagnostics

    fn = getattr(diagnostics, "biology_preservation", None)
    if fn is None:
        return preservation(X, Xh, covariates, batch=batch, formula=formula)
    if not CovariateDesign.fit(formula, covariates, exclude=(batch,))[0].columns:
        return None, None
    res = fn(X, Xh, covariates, batch=batch, formula=formula)
    t = res.table.rename(columns={"covariate": "term", "partial_r2_before": "effect_before",
                                  "partial_r2_after": "effect_after"})
    s = res.summary
    summary = pd.DataFrame({
        "term": s["covariate"], "median partial R² before": s["median_partial_r2_before"],
        "median partial R² after": s["median_partial_r2_after"], "Lin's CCC (partial R²)": s["ccc_partial_r2"],
        "Lin's CCC (t)": s["ccc_t"], "Pearson r (t)": s["pearson_t"],
        "significant before": s["n_sig_fdr_before"], "significant after": s["n_sig_fdr_after"]})
    return t, summary


def covariate_balance_any(covariates: pd.DataFrame, columns, batch: str) -> pd.DataFrame:
    """:func:`featharm.diagnostics.covariate_balance` when available (else :func:`covariate_balance`)."""
    from .. import diagnostics

    fn = getattr(diagnostics, "covariate_balance", None)
    if fn is None:
        return covariate_balance(covariates, columns, batch)
    t = fn(covariates, batch=batch, columns=list(columns))
    return pd.DataFrame({"covariate": t["covariate"], "test": t["test"], "statistic": t["statistic"], "df": t["df"],
                         "p": t["p_unc"], "effect size": [f"{n} {v:.3g}" for n, v in zip(t["effect_size_name"],
                                                                                          t["effect_size"])],
                         "confounded": t["confounded"], "by site": t["detail"]})


def multivariate(X, covariates, *, batch, formula, n_permutations=199, random_state=0):
    """PERMANOVA and the PC MANOVA/Box's M tests of :mod:`featharm.diagnostics` (None when unavailable)."""
    from .. import diagnostics

    parts = []
    if hasattr(diagnostics, "permanova"):
        parts.append(diagnostics.permanova(X, covariates, batch=batch, formula=formula,
                                           n_permutations=n_permutations, random_state=random_state))
    if hasattr(diagnostics, "pc_covariance_tests"):
        parts.append(diagnostics.pc_covariance_tests(X, covariates, batch=batch, formula=formula))
    if not parts:
        return None
    out = pd.concat(parts, ignore_index=True)
    keep = [c for c in ("test", "variant", "statistic", "df1", "df2", "p_unc", "effect_size", "effect_size_name",
                        "n_components", "n_permutations") if c in out.columns]
    return out[keep]


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
