"""Covariate balance across sites (``docs/methods.md`` §6.8, pitfall 2): which covariates differ by site, and a
warning when one is (nearly) confounded with site."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .._validation import _show, batch_levels, encode_batches, get_batch, show_columns
from ..design import _is_categorical_dtype
from ..formula import clean_formula, formula_columns
from ..exceptions import CollinearityWarning, ColumnNotFoundError, InputError, warn

__all__ = ["covariate_balance", "BALANCE_COLUMNS"]

#: Columns of the :func:`covariate_balance` table.
BALANCE_COLUMNS = ["covariate", "kind", "test", "statistic", "df", "p_unc", "effect_size", "effect_size_name",
                   "differs", "confounded", "detail"]


def covariate_balance(covariates: pd.DataFrame, *, batch: str = "site", formula: str | None = None,
                      columns=None, alpha: float = 0.05, confound_threshold: float = 0.8,
                      warn_confounded: bool = True) -> pd.DataFrame:
    """Test every covariate for a difference across sites; warn when one is confounded with site.

    Continuous covariates: Kruskal–Wallis across sites, effect size eta² (between-site share of the
    covariate's variance). Categorical ones (strings, categories, booleans, or numbers with at most 2
    distinct values): chi-square test of independence with site, effect size Cramér's V.

    A covariate is flagged ``confounded`` when its effect size reaches ``confound_threshold`` or, for a
    continuous one, when some site's range does not overlap the range of the other sites (the effect is
    then extrapolated across sites). A :class:`~featharm.exceptions.CollinearityWarning` names each
    flagged covariate (``warn_confounded=False`` to silence).

    Parameters
    ----------
    covariates : DataFrame
        The batch column and the covariates.
    formula : str, optional
        Covariates to check: the formula's variables. ``columns`` lists them explicitly instead; with
        neither, every column but the batch.

    Returns
    -------
    DataFrame
        One row per covariate, columns :data:`BALANCE_COLUMNS`: ``kind`` (``continuous``/
        ``categorical``), ``test`` (``kruskal_wallis``/``chi2_independence``), ``statistic``, ``df``,
        ``p_unc``, ``effect_size`` and its name (``eta2``/``cramers_v``), ``differs`` (p_unc < alpha),
        ``confounded`` and ``detail`` (per-site median or level counts, as text).
    """
    if not isinstance(covariates, pd.DataFrame):
        raise InputError(f"covariate_balance needs a DataFrame; got {type(covariates).__name__}.")
    s = get_batch(covariates, batch)
    levels = batch_levels(s)
    codes = encode_batches(s, levels, batch)
    m = len(levels)
    if columns is None:
        columns = (formula_columns(formula, covariates.columns) if clean_formula(formula)
                   else [c for c in covariates.columns if c != batch])
    else:
        columns = list(columns)
        missing = [c for c in columns if c not in covariates.columns]
        if missing:
            raise ColumnNotFoundError(
                f"covariate_balance: no column(s) {missing}; columns present: {show_columns(covariates.columns)}."
            )
    rows = []
    for c in columns:
        x = covariates[c]
        if x.isna().any():
            raise InputError(f"covariate {c!r} has missing values at rows {_show(x.index[x.isna().to_numpy()])}.")
        categorical = (_is_categorical_dtype(x) or not pd.api.types.is_numeric_dtype(x)
                       or pd.api.types.is_bool_dtype(x) or x.nunique() <= 2)
        if categorical:
            tab = pd.crosstab(codes, x.astype(str).to_numpy())
            if tab.shape[1] < 2:
                rows.append({"covariate": c, "kind": "categorical", "test": "chi2_independence",
                             "statistic": np.nan, "df": np.nan, "p_unc": np.nan, "effect_size": np.nan,
                             "effect_size_name": "cramers_v", "differs": False, "confounded": False,
                             "detail": "constant"})
                continue
            res = stats.chi2_contingency(tab.to_numpy(), correction=False)
            k = min(tab.shape) - 1
            v = float(np.sqrt(res.statistic / (len(x) * k))) if k > 0 else np.nan
            detail = "; ".join(f"{levels[i]}: " + ", ".join(f"{lv}={int(n)}" for lv, n in tab.loc[i].items())
                               for i in tab.index)
            conf = bool(v >= confound_threshold)
            rows.append({"covariate": c, "kind": "categorical", "test": "chi2_independence",
                         "statistic": float(res.statistic), "df": float(res.dof), "p_unc": float(res.pvalue),
                         "effect_size": v, "effect_size_name": "cramers_v", "differs": bool(res.pvalue < alpha),
                         "confounded": conf, "detail": detail})
        else:
            v = x.to_numpy(dtype=float)
            groups = [v[codes == g] for g in range(m)]
            if np.ptp(v) == 0:
                H, p = np.nan, np.nan
            else:
                H, p = stats.kruskal(*groups)
            grand = v.mean()
            sst = float(((v - grand) ** 2).sum())
            ssb = float(sum(len(gv) * (gv.mean() - grand) ** 2 for gv in groups))
            eta = ssb / sst if sst > 0 else np.nan
            disjoint = []
            for g in range(m):
                rest = v[codes != g]
                if groups[g].max() < rest.min() or groups[g].min() > rest.max():
                    disjoint.append(str(levels[g]))
            conf = bool((np.isfinite(eta) and eta >= confound_threshold) or disjoint)
            detail = "; ".join(f"{levels[g]}: median {np.median(gv):.4g} [{gv.min():.4g}, {gv.max():.4g}]"
                               for g, gv in enumerate(groups))
            if disjoint:
                detail += f"; range of {', '.join(disjoint)} does not overlap the other sites"
            rows.append({"covariate": c, "kind": "continuous", "test": "kruskal_wallis", "statistic": float(H),
                         "df": float(m - 1), "p_unc": float(p), "effect_size": eta, "effect_size_name": "eta2",
                         "differs": bool(np.isfinite(p) and p < alpha), "confounded": conf, "detail": detail})
    table = pd.DataFrame(rows, columns=BALANCE_COLUMNS)
    if warn_confounded:
        for r in table[table.confounded].itertuples():
            warn(
                f"covariate {r.covariate!r} is confounded with {batch!r} ({r.effect_size_name} = "
                f"{r.effect_size:.2f}; {r.detail}): its effect and the site effect are hard to tell apart, so "
                "harmonization may remove biology (or keep site effects). Check the overlap across sites; "
                "consider a reference site or dropping the sites that do not overlap.",
                CollinearityWarning,
            )
    return table
