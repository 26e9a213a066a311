"""Validation on traveling-subject data: how much of a scan depends on the site, before and after harmonization.

When the same people are scanned at several sites, any harmonizer can be judged directly: after it, a
subject's scans should agree across sites as well as repeat scans at one site agree (``docs/methods.md``
§6.10). :func:`traveling_subject_reliability` computes, per feature and for the raw data and every
harmonized version, the within-subject between-site SD, the intra-class correlation and the ratio of the
between-site variance to the repeat (same-site) variance.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .._core import missing
from .._core.twoway import cell_means, fit_two_way, group_sums, site_components
from .._validation import _show, align_covariates, batch_levels, check_features, covariate_column, encode_batches
from ..exceptions import AlignmentError, BatchError, DisconnectedSitesError, InputError

__all__ = ["traveling_subject_reliability", "TravelingSubjectReliability", "RELIABILITY_COLUMNS",
           "RELIABILITY_SUMMARY_COLUMNS"]

#: Columns of :attr:`TravelingSubjectReliability.table` (one row per data version × feature).
RELIABILITY_COLUMNS = ["data", "feature", "n_scans", "n_subjects", "n_traveling", "n_sites", "between_site_sd",
                       "site_var", "subject_var", "residual_var", "repeat_var", "repeat_df", "icc",
                       "icc_consistency", "site_to_repeat", "site_to_residual"]

#: Columns of :attr:`TravelingSubjectReliability.summary_table` (one row per data version).
RELIABILITY_SUMMARY_COLUMNS = ["data", "n_features", "between_site_sd", "between_site_sd_ratio", "icc",
                               "icc_consistency", "site_to_repeat", "site_to_residual", "repeat_sd"]


class TravelingSubjectReliability:
    """The result of :func:`traveling_subject_reliability`: a per-feature table and a summary.

    Attributes
    ----------
    table : DataFrame
        One row per data version × feature, columns :data:`RELIABILITY_COLUMNS` (see the function).
    summary_table : DataFrame
        One row per data version, columns :data:`RELIABILITY_SUMMARY_COLUMNS`: medians over the features
        (``between_site_sd_ratio`` is the median of each feature's between-site SD divided by its raw
        value; ``repeat_sd`` the median of ``sqrt(repeat_var)``, NaN without repeat scans).
    """

    def __init__(self, table: pd.DataFrame, summary_table: pd.DataFrame, *, subject, batch, n_sites: int):
        self.table, self.summary_table = table, summary_table
        self.subject, self.batch, self.n_sites = subject, batch, n_sites

    def __getitem__(self, data: str) -> pd.DataFrame:
        """The per-feature rows of one data version (``"raw"`` or a harmonized name), indexed by feature."""
        if data not in set(self.table["data"]):
            raise KeyError(f"no data version {data!r}; versions: {list(dict.fromkeys(self.table['data']))}")
        return self.table[self.table["data"] == data].drop(columns="data").set_index("feature")

    def summary(self) -> str:
        """One line per data version: the medians over the features."""
        from ._results import format_number as fmt

        lines = [f"Traveling-subject reliability ({self.n_sites} sites of {self.batch!r}, subjects in "
                 f"{self.subject!r}; medians over features):"]
        for _, r in self.summary_table.iterrows():
            lines.append(
                f"  {r['data']}: between-site SD {fmt(r['between_site_sd'])} (x{fmt(r['between_site_sd_ratio'])} of "
                f"raw), repeat SD {fmt(r['repeat_sd'])}, ICC(A,1) {fmt(r['icc'])}, ICC(C,1) "
                f"{fmt(r['icc_consistency'])}, site/repeat variance {fmt(r['site_to_repeat'])}, site/residual "
                f"variance {fmt(r['site_to_residual'])}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def traveling_subject_reliability(X, covariates, *, subject: str = "subject", batch: str = "site",
                                  harmonized=None) -> TravelingSubjectReliability:
    """Agreement of traveling subjects' scans across sites, before and after harmonization.

    Parameters
    ----------
    X : DataFrame
        Raw features of the traveling-subject scans (scans × features). NaN cells are allowed: each feature
        is assessed on the scans where it is observed.
    covariates : DataFrame
        The subject and site columns, aligned with ``X`` by index.
    subject, batch : str
        The subject id and site columns.
    harmonized : DataFrame, dict of name -> DataFrame, or None
        Harmonized versions of ``X`` (same index and columns; a single DataFrame is named ``"harmonized"``).
        Any harmonizer's output on the same scans. Judging :class:`~featharm.TravelingSubjects` on the scans it
        was fitted on is optimistic (its biases are fitted to them): fit it on some subjects and assess the
        others.

    Returns
    -------
    TravelingSubjectReliability
        ``.table``, one row per data version (``"raw"``, then the harmonized names) × feature:

        * ``n_scans``, ``n_subjects``, ``n_traveling`` (subjects observed at 2 or more sites), ``n_sites``;
        * ``between_site_sd``: the within-subject between-site SD, ``sqrt(sum_s sum_k (ybar_sk - ybar_s)^2 /
          sum_s (K_s - 1))`` over the subjects seen at ``K_s >= 2`` sites, with ``ybar_sk`` the mean of
          subject ``s``'s scans at site ``k`` and ``ybar_s`` the mean of those ``K_s`` means. With one scan
          per subject and site it estimates ``sqrt(site_var + residual_var)``; perfectly harmonized, the
          noise level ``sqrt(residual_var)``;
        * ``site_var``, ``subject_var``, ``residual_var``: variance components of the two-way model
          ``y = mu + p_subject + m_site + e`` fitted by least squares (sum-to-zero site effects).
          ``residual_var = RSS / (n - subjects - sites + 1)``; ``site_var = (sum_k m_k^2 - trace Var(m)) /
          (sites - 1)``; ``subject_var = var_s(p_s) - mean_s(residual_var / n_s)`` (moment estimators:
          unbiased in a complete design, nearly so otherwise; not truncated, so they can be negative when the
          true component is near 0);
        * ``repeat_var``: pooled variance of repeat scans (same subject, same site), with ``repeat_df``
          degrees of freedom; NaN (and ``repeat_df`` 0) when no subject was scanned twice at a site;
        * ``icc``: ICC(A,1), absolute agreement of single scans across sites,
          ``subject_var / (subject_var + site_var + residual_var)``; in a complete design with one scan per
          subject and site it equals Shrout & Fleiss's ICC(2,1) (McGraw & Wong's ICC(A,1)) exactly;
        * ``icc_consistency``: ICC(C,1) = ICC(3,1), ``subject_var / (subject_var + residual_var)``, which
          ignores constant site offsets (harmonization moves ``icc`` towards it);
        * ``site_to_repeat``: ``site_var / repeat_var`` (NaN without repeats); ``site_to_residual``:
          ``site_var / residual_var`` (always defined; the residual includes repeat noise and any
          subject × site interaction).

        ``.summary_table`` and ``.summary()``: medians over the features per data version.

    Raises
    ------
    DisconnectedSitesError
        When the sites are not all linked by shared subjects (the message names the sites not connected).
    """
    owner = "traveling_subject_reliability"
    if not isinstance(X, pd.DataFrame):
        raise InputError(f"{owner} needs X as a pandas DataFrame (scans × features); got {type(X).__name__}.")
    cov = align_covariates(X.index, covariates, owner)
    versions = {"raw": X}
    if harmonized is not None:
        extra = {"harmonized": harmonized} if isinstance(harmonized, pd.DataFrame) else harmonized
        if not isinstance(extra, Mapping):
            raise InputError(f"{owner}: harmonized must be a DataFrame or a dict of name -> DataFrame; got "
                             f"{type(harmonized).__name__}.")
        for name, df in extra.items():
            if name == "raw" or not isinstance(name, str):
                raise InputError(f"{owner}: harmonized names must be strings other than 'raw'; got {name!r}.")
            if not isinstance(df, pd.DataFrame):
                raise InputError(f"{owner}: harmonized[{name!r}] must be a DataFrame; got {type(df).__name__}.")
            if set(df.columns) != set(X.columns) or not df.index.sort_values().equals(X.index.sort_values()):
                cols = [str(c) for c in X.columns if c not in set(df.columns)]
                unexpected = [str(c) for c in df.columns if c not in set(X.columns)]
                rows_missing = [str(r) for r in X.index.difference(df.index)]
                raise AlignmentError(
                    f"{owner}: harmonized[{name!r}] must have the rows (index) and feature columns of X; missing "
                    f"columns {cols[:5]}, unexpected columns {unexpected[:5]}, missing rows {rows_missing[:5]}. Pass "
                    "the harmonized version of the same table."
                )
            versions[name] = df.loc[X.index, X.columns]
    s_col = covariate_column(cov, subject, "subject", fix="Pass subject=<name of the subject id column>.",
                             missing_fix="every scan needs a subject id.")
    b_col = covariate_column(cov, batch, "batch", fix="Pass batch=<name of the site column>.",
                             missing_fix="every scan needs a site.")
    sites = batch_levels(b_col)
    site = encode_batches(b_col, sites, batch)
    subjects = batch_levels(s_col)
    g = encode_batches(s_col, subjects, subject)
    K, S = len(sites), len(subjects)
    if K < 2:
        raise BatchError(f"{owner} needs scans from 2 or more sites of {batch!r}; the data have {sites}.")
    rows = []
    for name, df in versions.items():
        Y = np.array(check_features(df, owner, allow_nan=True)[0], dtype=np.float64)
        rows.append(_metrics(Y, g, site, S, K, sites, batch, [str(c) for c in X.columns], name))
    table = pd.concat(rows, ignore_index=True)[RELIABILITY_COLUMNS]
    return TravelingSubjectReliability(table, _summary(table), subject=subject, batch=batch, n_sites=K)


def _metrics(Y, g, site, S, K, sites, batch, features, name) -> pd.DataFrame:
    n, p = Y.shape
    mask = np.isnan(Y)
    cols_out = {c: np.full(p, np.nan) for c in RELIABILITY_COLUMNS[2:]}
    if mask.any():
        first, inverse = missing.missingness_patterns(mask)
        groups = [(~mask[:, c], np.flatnonzero(inverse == u)) for u, c in enumerate(first)]
    else:
        groups = [(np.ones(n, dtype=bool), np.arange(p))]
    for rows, cols in groups:
        part = _pattern_metrics(Y[np.ix_(rows, cols)], g[rows], site[rows], S, K, sites, batch,
                                None if rows.all() else [features[j] for j in cols])
        for k, v in part.items():
            cols_out[k][cols] = v
    out = pd.DataFrame({"data": name, "feature": features, **cols_out})
    for c in ("n_scans", "n_subjects", "n_traveling", "n_sites", "repeat_df"):
        out[c] = out[c].astype(int)
    return out


def _pattern_metrics(Y, g, site, S, K, sites, batch, features) -> dict:
    """The metrics of the features of ``Y`` (all observed on these scans)."""
    n, p = Y.shape
    present = np.flatnonzero(np.bincount(site, minlength=K) > 0)
    where = "" if features is None else f" on the scans where {_show(features)} are observed"
    if present.size < 2:
        raise BatchError(f"traveling_subject_reliability needs 2 or more sites{where}; found {len(present)}.")
    comp = site_components(g, site, S, K)[present]
    if np.unique(comp).size > 1:
        main = np.bincount(comp).argmax()
        off = [sites[k] for k, c in zip(present, comp) if c != main]
        raise DisconnectedSitesError(
            f"site(s) {off} of {batch!r} share no subject, directly or through other sites, with the others"
            f"{where}: the between-site variance is not defined across them. Assess each group of linked "
            "sites separately."
        )
    # the sites present, recoded 0..k-1 (a site without scans of these features drops out)
    recode = np.full(K, -1)
    recode[present] = np.arange(present.size)
    st = recode[site]
    k = present.size
    subj_present, g2 = np.unique(g, return_inverse=True)
    S2 = subj_present.size
    # within-subject between-site SD (cell means of each subject × site)
    cell = g2 * k + st
    cell_ids, cell_code = np.unique(cell, return_inverse=True)
    means, sizes = cell_means(Y, cell_code, cell_ids.size)
    cell_subject = cell_ids // k
    n_sites_s = np.bincount(cell_subject, minlength=S2)
    subj_mean = group_sums(means, cell_subject, S2) / np.maximum(n_sites_s, 1)[:, None]
    dev = means - subj_mean[cell_subject]
    travel = n_sites_s >= 2
    df_between = float((n_sites_s[travel] - 1).sum())
    ss_between = group_sums(dev * dev, cell_subject, S2)[travel].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        between_sd = np.sqrt(ss_between / df_between) if df_between > 0 else np.full(p, np.nan)
    # repeat variance (same subject and site)
    within = Y - means[cell_code]
    repeat_df = float((sizes - 1).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        repeat_var = (within * within).sum(axis=0) / repeat_df if repeat_df > 0 else np.full(p, np.nan)
    # variance components of the two-way model
    dof = n - S2 - (k - 1)
    if dof < 1:
        raise InputError(f"traveling_subject_reliability: {n} scans of {S2} subjects at {k} sites{where} leave no "
                         "residual degree of freedom for the variance components; more scans are needed.")
    fit = fit_two_way(Y, g2, st, S2, k)
    sigma2 = fit.sigma2
    m = fit.site_effect
    site_var = ((m * m).sum(axis=0) - np.trace(fit.site_cov) * sigma2) / (k - 1)
    ns = np.bincount(g2, minlength=S2).astype(np.float64)
    p_hat = fit.subject_mean
    subject_var = p_hat.var(axis=0, ddof=1) - sigma2 * np.mean(1.0 / ns) if S2 > 1 else np.full(p, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        icc = subject_var / (subject_var + site_var + sigma2)
        icc_c = subject_var / (subject_var + sigma2)
        site_to_repeat = site_var / repeat_var
        site_to_residual = site_var / sigma2
    return {"n_scans": np.full(p, n), "n_subjects": np.full(p, S2), "n_traveling": np.full(p, int(travel.sum())),
            "n_sites": np.full(p, k), "between_site_sd": between_sd, "site_var": site_var, "subject_var": subject_var,
            "residual_var": sigma2, "repeat_var": repeat_var, "repeat_df": np.full(p, repeat_df), "icc": icc,
            "icc_consistency": icc_c, "site_to_repeat": site_to_repeat, "site_to_residual": site_to_residual}


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    raw = table[table["data"] == "raw"].set_index("feature")["between_site_sd"]
    out = []
    for name, t in table.groupby("data", sort=False):
        t = t.set_index("feature")
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (t["between_site_sd"] / raw.reindex(t.index)).replace([np.inf, -np.inf], np.nan)

        def med(s):
            s = pd.Series(s, dtype=float)
            return float(np.nanmedian(s)) if s.notna().any() else float("nan")

        out.append({"data": name, "n_features": len(t), "between_site_sd": med(t["between_site_sd"]),
                    "between_site_sd_ratio": med(ratio), "icc": med(t["icc"]),
                    "icc_consistency": med(t["icc_consistency"]), "site_to_repeat": med(t["site_to_repeat"]),
                    "site_to_residual": med(t["site_to_residual"]), "repeat_sd": med(np.sqrt(t["repeat_var"]))})
    return pd.DataFrame(out, columns=RELIABILITY_SUMMARY_COLUMNS)
