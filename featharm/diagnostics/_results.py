"""The result of :func:`featharm.diagnostics.diagnose`: named tidy tables and a description of the run.

:class:`DiagnosticsResult` is what ``featharm diagnose`` writes, what the HTML report shows and what the
``plot_*`` accessors draw, so every number is computed once and agrees everywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .univariate import effect_matrix

__all__ = ["DiagnosticsResult", "TABLES", "MISSINGNESS_COLUMNS", "format_number", "missingness_table"]

#: Tables :func:`~featharm.diagnostics.diagnose` returns (and ``featharm diagnose`` writes as ``<name>.csv``).
TABLES = ("site_effects", "site_effect_sizes", "multivariate", "site_mixing", "site_classification", "covariate_balance",
          "preservation", "preservation_summary", "missingness")

#: Columns of the ``missingness`` table (only with missing feature cells).
MISSINGNESS_COLUMNS = ["feature", "site", "n", "n_missing", "fraction_missing"]


def missingness_table(observed, features, levels, codes) -> pd.DataFrame:
    """Missing cells per site × feature (``observed``: n × V bool), sites in sorted order: ``n`` rows of the
    site, ``n_missing`` of them without a value of the feature, ``fraction_missing``."""
    m = len(levels)
    oh = np.zeros((len(codes), m))
    oh[np.arange(len(codes)), codes] = 1.0
    miss = (oh.T @ (~observed)).astype(np.int64)  # m × V
    size = np.bincount(codes, minlength=m)
    V = len(features)
    return pd.DataFrame({"feature": np.tile([str(f) for f in features], m),
                         "site": np.repeat(np.array([str(s) for s in levels], dtype=object), V),
                         "n": np.repeat(size, V), "n_missing": miss.ravel(),
                         "fraction_missing": (miss / np.maximum(size, 1)[:, None]).ravel()})

#: Labels of the ``data`` column and how the report and the plots name them.
DATA_LABELS = {"raw": "before", "harmonized": "after"}


def format_number(x) -> str:
    """A number as short text: integers plain, 4 significant digits, scientific notation below 1e-3.

    The one formatting of :meth:`DiagnosticsResult.summary` and the HTML report, so both print the same
    strings for the same number.
    """
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


def _median(s: pd.Series) -> float:
    return float(np.nanmedian(s)) if s.notna().any() else float("nan")


class DiagnosticsResult(Mapping):
    """Site-effect diagnostics of raw (and harmonized) data: named tidy tables and what produced them.

    Returned by :func:`~featharm.diagnostics.diagnose`. It is a read-only mapping from table name to
    DataFrame (``result["site_effects"]``, ``list(result)``, ``result.items()``, ``"preservation" in
    result``), so code written for the dict that ``diagnose`` used to return keeps working.

    Tables (those computed, in this order; the columns are documented by the function that makes each):
    ``site_effects`` (:func:`test_site_effects`, with a leading ``data`` column, ``"raw"`` or
    ``"harmonized"``), ``site_effect_sizes`` (:func:`site_effect_sizes`: the standardized site effect
    ``shift`` and ``log_var_ratio`` per site and feature), ``multivariate`` (:func:`permanova` and
    :func:`pc_covariance_tests`), ``site_mixing`` (:func:`site_mixing`: silhouette, kBET acceptance rate,
    iLISI), ``site_classification`` (:func:`site_classification`),
    ``covariate_balance`` (:func:`covariate_balance`), ``preservation`` and ``preservation_summary``
    (:func:`biology_preservation`, with harmonized data and covariates), ``missingness`` (only when feature
    cells are missing: :func:`missingness_table`).

    Attributes
    ----------
    tables : dict of str to DataFrame
        The tables (a new dict; the DataFrames are the result's own).
    n_samples : int
        Rows (subjects or scans).
    features : list of str
        Feature names, in input order; ``n_features`` their number.
    batch : str
        The batch (site) column.
    batch_sizes : Series
        Rows per batch, indexed by the batch levels (sorted; ``batches`` lists them).
    formula : str or None
        The covariates of the models.
    design_columns : list of str
        The covariate design columns (``age``, ``sex[T.M]`` ...).
    tests : tuple of str
        The per-feature tests run (names of :data:`~featharm.diagnostics.univariate.TESTS`).
    data : tuple of str
        ``("raw",)`` or ``("raw", "harmonized")``.
    options : dict
        The other options of the run (``model``, ``random``, ``groups``, ``n_permutations``,
        ``classification_permutations``, ``n_splits``, ``n_repeats``, ``n_components``, ``multivariate``,
        ``classification``, ``harmonizer`` (class name or None), ``random_state``, ``seeds``,
        ``fligner_ties``).
    refit_warnings : list of dict
        Warnings (``category``, ``message``) featharm raised while refitting the harmonizer inside the
        classification folds (they concern subsets of the data).
    n_missing : int
        Missing (NaN) cells of the raw features. With missing cells the per-feature tests use each feature's
        observed rows (``n`` in their tables), the multivariate checks the rows without a missing feature,
        and the ``missingness`` table counts the missing cells per site and feature (columns
        :data:`MISSINGNESS_COLUMNS`).
    n_complete : int
        Rows without a missing feature, those of the multivariate checks (``n_samples`` for complete data).
    """

    TABLES = TABLES

    def __init__(self, tables: dict, *, n_samples: int, features, batch, batch_sizes: pd.Series, formula,
                 design_columns, tests, data, options: dict, refit_warnings=(), n_missing: int = 0,
                 n_complete: int | None = None):
        self._tables = {k: tables[k] for k in TABLES if k in tables}
        self._tables.update({k: v for k, v in tables.items() if k not in self._tables})
        self.n_samples = int(n_samples)
        self.features = [str(f) for f in features]
        self.batch = batch
        self.batch_sizes = batch_sizes
        self.formula = formula
        self.design_columns = list(design_columns)
        self.tests = tuple(tests)
        self.data = tuple(data)
        self.options = dict(options)
        self.refit_warnings = list(refit_warnings)
        self.n_missing = int(n_missing)
        self.n_complete = self.n_samples if n_complete is None else int(n_complete)

    # ------------------------------------------------------------------------------ mapping
    def __getitem__(self, name: str) -> pd.DataFrame:
        try:
            return self._tables[name]
        except KeyError:
            why = ""
            if name in TABLES:
                why = (" (not computed in this run: preservation needs harmonized data and covariates; "
                       "multivariate (with site_mixing) and site_classification can be switched off; "
                       "missingness is made only "
                       "when feature cells are missing)")
            raise KeyError(f"no table {name!r} in this DiagnosticsResult{why}; tables: {list(self._tables)}.") \
                from None

    def __iter__(self):
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    __eq__ = object.__eq__  # DataFrames have no truth value: compare results by identity
    __hash__ = object.__hash__

    @property
    def tables(self) -> dict:
        return dict(self._tables)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def batches(self) -> list:
        return list(self.batch_sizes.index)

    # ------------------------------------------------------------------------------ summaries
    def summary_table(self, alpha: float = 0.05) -> pd.DataFrame:
        """Per data set and test: features tested, features with ``p_fdr < alpha``, median effect size.

        Columns ``data``, ``test``, ``variant``, ``effect_size_name``, ``n_features`` (rows of the test, one
        per feature), ``n_significant`` (BH-FDR adjusted p below ``alpha``) and ``median_effect_size``
        (over features, NaN where the test defines none).
        """
        rows = []
        se = self._tables.get("site_effects")
        if se is None:
            return pd.DataFrame(columns=["data", "test", "variant", "effect_size_name", "n_features",
                                         "n_significant", "median_effect_size"])
        for (data, test), t in se.groupby(["data", "test"], sort=False):
            rows.append({"data": data, "test": test, "variant": t["variant"].iloc[0],
                         "effect_size_name": t["effect_size_name"].iloc[0], "n_features": int(len(t)),
                         "n_significant": int((t["p_fdr"] < alpha).sum()),
                         "median_effect_size": _median(t["effect_size"])})
        return pd.DataFrame(rows)

    def site_effect_matrix(self, data: str = "raw", value: str = "shift") -> pd.DataFrame:
        """The ``site_effect_sizes`` table of one data set as a site × feature DataFrame: ``value="shift"``
        (the standardized site effect, ``(mean_i r_add - mean r_add) / sd(r_full)``, SD with n - 1) or
        ``"log_var_ratio"``."""
        t = self["site_effect_sizes"]
        if data not in self.data:
            raise KeyError(f"no data set {data!r}; data sets: {list(self.data)}.")
        return effect_matrix(t[t["data"] == data], value, index_name=self.batch)

    def missing_matrix(self, value: str = "fraction_missing") -> pd.DataFrame:
        """The ``missingness`` table as a site × feature DataFrame (``"fraction_missing"`` or ``"n_missing"``);
        zeros when no cell is missing."""
        t = self._tables.get("missingness")
        if t is None:
            return pd.DataFrame(0.0 if value == "fraction_missing" else 0,
                                index=pd.Index([str(b) for b in self.batches], name=self.batch),
                                columns=pd.Index(self.features, name="feature"))
        return effect_matrix(t, value, index_name=self.batch)

    def plot_missing(self):
        """Figure: heat map of the share of missing cells per site (rows) and feature (columns)
        (:func:`featharm.plots.missing_heatmap`)."""
        from .. import plots

        return plots.missing_heatmap(self.missing_matrix())

    def mean_abs_site_effect(self, data: str = "raw") -> float:
        """Mean over sites and features of ``|shift|``, the standardized site effect (NaN cells left out)."""
        return float(np.nanmean(np.abs(self.site_effect_matrix(data).to_numpy())))

    def summary(self, alpha: float = 0.05) -> str:
        """A short text: the inputs, and per data set the features with a site effect (BH-FDR ``alpha``) in
        every test, the median effect size of the location test, the mean absolute standardized site effect,
        the multivariate p-values, the site classification and the preservation of biology."""
        f = format_number
        sizes = ", ".join(f"{b} {int(n)}" for b, n in self.batch_sizes.items())
        lines = [f"DiagnosticsResult: {self.n_samples} rows x {self.n_features} features; "
                 f"{len(self.batch_sizes)} batches of {self.batch!r} ({sizes}); "
                 f"formula {self.formula or 'none'!r}; tests: {', '.join(self.tests)}"]
        if self.n_missing:
            cells = self.n_samples * self.n_features
            mt = self._tables.get("missingness")
            k = int((mt.groupby("feature", sort=False)["n_missing"].sum() > 0).sum()) if mt is not None else 0
            share = format_number(100 * self.n_missing / cells)
            lines.append(f"  missing: {self.n_missing} of {cells} feature cells ({share} %, in {k} features); "
                         "per-feature tests on each feature's observed rows, multivariate checks on the "
                         f"{self.n_complete} rows without a missing feature")
        summ = self.summary_table(alpha)
        for data in self.data:
            s = summ[summ["data"] == data]
            lines.append(f"  {data}: features with a site effect (BH-FDR {f(alpha)}): "
                         + ", ".join(f"{r.test} {r.n_significant}/{r.n_features}" for r in s.itertuples()))
            first = s.iloc[0] if len(s) else None
            extra = []
            if first is not None and first["effect_size_name"] != "none":
                extra.append(f"median {first['effect_size_name']} ({first['test']}) {f(first['median_effect_size'])}")
            if "site_effect_sizes" in self._tables:
                extra.append(f"mean |standardized site effect| {f(self.mean_abs_site_effect(data))}")
            if extra:
                lines.append("    " + "; ".join(extra))
            mv = self._tables.get("multivariate")
            if mv is not None:
                m = mv[mv["data"] == data]
                lines.append("    multivariate: " + ", ".join(f"{r.test} p={f(r.p_unc)}" for r in m.itertuples()))
            mix = self._tables.get("site_mixing")
            if mix is not None:
                m = mix[mix["data"] == data]
                lines.append("    site mixing: " + ", ".join(f"{r.metric} {f(r.value)} (ideal {f(r.ideal)})"
                                                            for r in m.itertuples()))
            clf = self._tables.get("site_classification")
            if clf is not None:
                c = clf[(clf["data"] == data) & (clf["metric"] == "balanced_accuracy")]
                if len(c):
                    r = c.iloc[0]
                    lines.append(f"    site classification: balanced accuracy {f(r['value'])} (chance "
                                 f"{f(r['chance'])}" + (f", p_perm {f(r['p_perm'])})" if r["n_permutations"] else ")"))
        ps = self._tables.get("preservation_summary")
        if ps is not None and len(ps):
            lines.append("  preservation of biology (raw with site as covariate -> harmonized): " + "; ".join(
                f"{r.covariate}: Lin's CCC of t {f(r.ccc_t)}, significant {r.n_sig_fdr_before} -> {r.n_sig_fdr_after}"
                for r in ps.itertuples()))
        lines.append("  tables: " + ", ".join(f"{k} ({len(v)} rows)" for k, v in self._tables.items()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<DiagnosticsResult: {self.n_samples} rows x {self.n_features} features, "
                f"{len(self.batch_sizes)} batches; data: {', '.join(self.data)}; tables: {', '.join(self._tables)}>")

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        e = html.escape
        sizes = ", ".join(f"{e(str(b))}: {int(n)}" for b, n in self.batch_sizes.items())
        head = (f"<p><b>DiagnosticsResult</b>: {self.n_samples} rows &times; {self.n_features} features; "
                f"{len(self.batch_sizes)} batches of <code>{e(str(self.batch))}</code> ({sizes}); formula "
                f"<code>{e(self.formula or 'none')}</code>; data: {e(', '.join(self.data))}</p>")
        summ = self.summary_table().to_html(index=False, na_rep="NaN", float_format=format_number, border=0)
        tabs = ", ".join(f"<code>{e(k)}</code> ({v.shape[0]} &times; {v.shape[1]})" for k, v in self._tables.items())
        return (f'<div class="featharm-diagnostics">{head}<p>Features with a site effect (BH-FDR 0.05) '
                f"per test:</p>{summ}<p>Tables: {tabs}</p></div>")

    # ------------------------------------------------------------------------------ writing
    def _csv_bytes(self, name: str) -> bytes:
        return self[name].to_csv(index=False, lineterminator="\n").encode("utf-8")

    def to_csv(self, path=None, *, table: str = "site_effects"):
        """One table as CSV: the text when ``path`` is None, else written to ``path`` (atomically)."""
        if path is None:
            return self._csv_bytes(table).decode("utf-8")
        from .._staging import Output, staged_outputs

        data = self._csv_bytes(table)
        with staged_outputs([Output(table, "to_csv", path, size=len(data))]) as st:
            st.write(table, data)
        return None

    def to_dir(self, path, *, staged=None) -> list[Path]:
        """Write every table as ``<path>/<name>.csv`` (the files ``featharm diagnose --out`` writes).

        All or nothing: the files are staged next to their destination and renamed into place together
        (``featharm._staging``); the folder is created if needed. ``staged`` (for the command line) is a
        staging set that already holds an output per table name; the tables are written into it and it
        commits them. Returns the paths.
        """
        from .._staging import Output, staged_outputs

        folder = Path(path)
        paths = [folder / f"{name}.csv" for name in self._tables]
        if staged is not None:
            for name in self._tables:
                staged.write(name, self._csv_bytes(name))
            return paths
        blobs = {name: self._csv_bytes(name) for name in self._tables}
        outputs = [Output(name, "to_dir", p, size=len(blobs[name])) for name, p in zip(self._tables, paths)]
        with staged_outputs(outputs) as st:
            for name, b in blobs.items():
                st.write(name, b)
        return paths

    # ------------------------------------------------------------------------------ plots
    def plot_site_effects(self, value: str = "shift"):
        """Figure: heatmap of the standardized site effect (``value="shift"``) or the log variance ratio
        (``"log_var_ratio"``), sites × features, one panel per data set on one colour scale
        (:func:`featharm.plots.effect_sizes_before_after`)."""
        from .. import plots

        return plots.effect_sizes_before_after(self["site_effect_sizes"], value=value)

    def plot_pvalues(self, p: str = "p_unc"):
        """Figure: ``-log10 p`` per feature and test, raw above harmonized
        (:func:`featharm.plots.pvalues_before_after`)."""
        from .. import plots

        se = self["site_effects"]
        parts = [se[se["data"] == d].drop(columns="data") for d in self.data]
        return plots.pvalues_before_after(parts[0], parts[1] if len(parts) > 1 else None, p=p)

    def plot_preservation(self, terms=None):
        """Figure: partial R² of each covariate term, raw (site as covariate) against harmonized, one point per
        feature and one panel per term (:func:`featharm.plots.preservation_scatters`)."""
        from .. import plots

        return plots.preservation_scatters(self["preservation"], terms=terms)
