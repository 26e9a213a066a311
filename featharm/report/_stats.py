"""The report's tables: the tables of a :class:`~featharm.diagnostics.DiagnosticsResult` in the report's
layout (nothing is recomputed here), and the provenance (versions, input hashes, date).

The diagnostics are computed once, by :func:`featharm.diagnostics.diagnose` with the report's options
(:data:`REPORT_OPTIONS`), so the report prints the numbers ``featharm diagnose`` writes.
"""

from __future__ import annotations

import base64
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


# ------------------------------------------------------------------------------------------ feature explorer
def box_stats(X: pd.DataFrame, codes, n_levels: int):
    """Tukey box statistics of every feature in every site: an array (sites × features × 5) of the lower
    whisker (smallest value within 1.5 IQR of the lower quartile), lower quartile, median, upper quartile and
    upper whisker, and the observed counts (sites × features). Missing cells (NaN) are left out; a site
    without an observed value of a feature gets NaN. Vectorized over features (one pass per site)."""
    import numpy as np

    Y = X.to_numpy(dtype=float)
    out = np.full((n_levels, Y.shape[1], 5), np.nan)
    counts = np.zeros((n_levels, Y.shape[1]), dtype=int)
    for i in range(n_levels):
        Yi = Y[codes == i]
        obs = ~np.isnan(Yi)
        counts[i] = obs.sum(axis=0)
        ok = counts[i] > 0
        if not ok.any():
            continue
        with np.errstate(all="ignore"):
            q1, med, q3 = np.nanquantile(Yi[:, ok], [0.25, 0.5, 0.75], axis=0)
            iqr = q3 - q1
            inside = (Yi[:, ok] >= q1 - 1.5 * iqr) & (Yi[:, ok] <= q3 + 1.5 * iqr)
            lo = np.nanmin(np.where(inside, Yi[:, ok], np.nan), axis=0)
            hi = np.nanmax(np.where(inside, Yi[:, ok], np.nan), axis=0)
        out[i, ok] = np.stack([lo, q1, med, q3, hi], axis=1)
    return out, counts


#: Levels of the 16-bit codes of the explorer's box statistics (65535 marks a missing value).
EXPLORER_LEVELS = 65534


def _encode(stats, lo, span) -> str:
    """Box statistics (features × sites × 5) as base64 of little-endian uint16 codes on each feature's range
    ``lo + code / EXPLORER_LEVELS * span`` (65535: missing); a few bytes per number, resolution span / 65534."""
    import numpy as np

    z = (stats - lo[:, None, None]) / span[:, None, None] * EXPLORER_LEVELS
    codes = np.where(np.isfinite(z), np.clip(np.rint(z), 0, EXPLORER_LEVELS), EXPLORER_LEVELS + 1)
    return base64.b64encode(codes.astype("<u2").tobytes()).decode("ascii")


def explorer_data(X: pd.DataFrame, Xh: pd.DataFrame | None, cov: pd.DataFrame, batch: str, order) -> dict:
    """What the report's feature explorer draws: for each feature (in ``order``) the per-site box statistics
    (lower whisker, quartiles, median, upper whisker) before (and after) harmonization, packed as 16-bit
    codes on the feature's range (``lo``, ``span``; :func:`_encode`), and the observed counts per site
    (``n``: one list when every feature has the same counts, else one per feature)."""
    import numpy as np

    from .._validation import batch_levels, encode_batches, get_batch

    s = get_batch(cov, batch)
    levels = batch_levels(s)
    codes = encode_batches(s, levels, batch)
    cols = [list(map(str, X.columns)).index(str(f)) for f in order]
    before, counts = box_stats(X.iloc[:, cols], codes, len(levels))
    parts = [before.transpose(1, 0, 2)]  # features × sites × 5
    if Xh is not None:
        parts.append(box_stats(Xh.iloc[:, cols], codes, len(levels))[0].transpose(1, 0, 2))
    with np.errstate(all="ignore"):
        both = np.concatenate(parts, axis=1)
        lo = np.nan_to_num(np.nanmin(both[:, :, 0], axis=1, initial=np.inf), posinf=0.0)
        hi = np.nan_to_num(np.nanmax(both[:, :, 4], axis=1, initial=-np.inf), neginf=0.0)
    span = np.where(hi > lo, hi - lo, 1.0)
    same = bool((counts == counts[:, :1]).all())
    out = {"sites": [str(v) for v in levels], "batch": str(batch), "features": [str(f) for f in order],
           "lo": lo.tolist(), "span": span.tolist(), "levels": EXPLORER_LEVELS,
           "n": counts[:, 0].tolist() if same else counts.T.tolist(), "before": _encode(parts[0], lo, span)}
    if Xh is not None:
        out["after"] = _encode(parts[1], lo, span)
    return out


# ------------------------------------------------------------------------------------------ EB check
def eb_fit_table(model, batch) -> pd.DataFrame:
    """How well the empirical-Bayes priors fit each site's estimates (ComBatFamQC's 'EB check', in numbers):
    per site the normal prior of γ̂ (γ̄, τ²), the mean and variance of the inverse-gamma prior of δ̂²
    (b/(a-1), b²/((a-1)²(a-2)); NaN where they do not exist) and the Kolmogorov–Smirnov distance between
    the estimates and each prior (0: a perfect fit). The priors are moment estimates (the mean and variance
    of the estimates over features), so the distance measures the shape the moments cannot.
    Features without variance and undefined estimates are left out, as in the fit."""
    import numpy as np
    from scipy import stats as st

    keep = ~np.isin(np.asarray(model.feature_names_in_, dtype=object), list(getattr(model, "constant_features_", [])))
    g_all, d_all = model.gamma_hat_.to_numpy()[:, keep], model.delta_hat_.to_numpy()[:, keep]
    rows = []
    for i, site in enumerate(model.batches_):
        pri = model.priors_.iloc[i]
        g, d = g_all[i][np.isfinite(g_all[i])], d_all[i][np.isfinite(d_all[i])]
        gb, t2, a, b = (float(pri[k]) for k in ("gamma_bar", "tau2", "a_prior", "b_prior"))
        g_ok = np.isfinite(gb) and np.isfinite(t2) and t2 > 0 and g.size > 1
        d_ok = np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0 and d.size > 1
        rows.append({
            str(batch): str(site), "features": int(g.size),
            "prior mean γ̄": gb, "prior τ²": t2,
            "KS γ̂ vs normal": st.kstest(g, st.norm(gb, np.sqrt(t2)).cdf).statistic if g_ok else np.nan,
            "prior mean δ²": b / (a - 1) if a > 1 else np.nan,
            "prior var δ²": b * b / ((a - 1) ** 2 * (a - 2)) if a > 2 else np.nan,
            "KS δ̂² vs inverse gamma": st.kstest(d, st.invgamma(a, scale=b).cdf).statistic
            if d_ok else np.nan,
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ lifespan
def age_features(result, X: pd.DataFrame, cov: pd.DataFrame, x: str, k: int = 3) -> tuple[list[str], str]:
    """The ``k`` features with the largest effect of ``x`` (age) before harmonization, and how they were
    chosen: the largest partial R² of ``x`` in y ~ covariates + site (the preservation table) when ``x`` is a
    term of the formula, else the largest absolute Pearson correlation with ``x`` on the raw data."""
    import numpy as np

    if "preservation" in result:
        p = result["preservation"]
        p = p[p["covariate"].astype(str) == str(x)]
        if len(p):
            top = p.sort_values("partial_r2_before", ascending=False, kind="mergesort")["feature"].head(k)
            return [str(f) for f in top], (f"the {k} features with the largest partial R² of {x} before "
                                           f"harmonization (y ~ covariates + site)")
    Y = X.to_numpy(dtype=float)
    xv = np.broadcast_to(cov[x].to_numpy(dtype=float)[:, None], Y.shape)
    ok = ~np.isnan(Y) & np.isfinite(xv)
    n = ok.sum(axis=0)
    with np.errstate(all="ignore"):  # pairwise-complete correlation of every feature with x at once
        my = np.where(ok, Y, 0.0).sum(axis=0) / n
        mx = np.where(ok, xv, 0.0).sum(axis=0) / n
        dy, dx = np.where(ok, Y - my, 0.0), np.where(ok, xv - mx, 0.0)
        r = (dy * dx).sum(axis=0) / np.sqrt((dy**2).sum(axis=0) * (dx**2).sum(axis=0))
    order = np.argsort(-np.abs(np.nan_to_num(r)), kind="mergesort")[:k]
    return [str(X.columns[j]) for j in order], f"the {k} features with the largest |correlation| with {x} (raw data)"
