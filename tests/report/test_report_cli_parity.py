"""The report and ``featharm diagnose`` print the same numbers for the same data: standardized site effect,
partial eta², test counts (both come from one DiagnosticsResult)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import re  # noqa: E402
from html.parser import HTMLParser  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import featharm as fh  # noqa: E402
from featharm.cli import main  # noqa: E402
from featharm.datasets._simulate import make_multisite  # noqa: E402
from featharm.report._build import fmt  # noqa: E402


class _Page(HTMLParser):
    """The report's summary numbers (``<dt>label</dt><dd>value</dd>``) and tables (caption, header, rows)."""

    def __init__(self, text: str):
        super().__init__()
        self.stats, self.tables = {}, []
        self._tag, self._dt, self._cell = None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "table":
            self.tables.append({"caption": "", "header": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            t = self.tables[-1]
            (t["header"] if tag == "th" else t["rows"][-1]).append(self._cell)
            self._cell = None
        self._tag = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._tag == "dt":
            self._dt = data
        elif self._tag == "dd" and self._dt is not None:
            self.stats[self._dt] = data
            self._dt = None
        elif self._tag == "caption":
            self.tables[-1]["caption"] += data

    def table(self, caption_start: str) -> pd.DataFrame:
        (t,) = [t for t in self.tables if t["caption"].startswith(caption_start)]
        return pd.DataFrame([r for r in t["rows"] if r], columns=t["header"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    s = make_multisite(n_subjects=180, n_sites=3, n_features=9, unbalanced=False, random_state=11)
    s.covariates.join(s.X).rename_axis("subject").reset_index().to_csv(d / "data.csv", index=False)
    Xh = fh.ComBat(batch="site", formula="age + sex").fit_transform(s.X, s.covariates)
    s.covariates.join(Xh).rename_axis("subject").reset_index().to_csv(d / "harm.csv", index=False)
    common = [str(d / "data.csv"), "--batch", "site", "--formula", "age + sex", "--id", "subject",
              "--harmonized", str(d / "harm.csv")]
    assert main(["report", *common, "--out", str(d / "report.html"), "--quiet"]) == 0
    return d, common


@pytest.fixture(scope="module")
def cli(runs):
    d, common = runs
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["diagnose", *common, "--out", str(d / "diag"), "--n-permutations", "0",
                     "--no-classification"]) == 0
    return buf.getvalue()


def test_report_and_diagnose_print_the_same_numbers(runs, cli):
    d, _ = runs
    page = _Page((d / "report.html").read_text(encoding="utf-8"))
    se = pd.read_csv(d / "diag" / "site_effects.csv")
    sizes = pd.read_csv(d / "diag" / "site_effect_sizes.csv")
    data_of = {"before": "raw", "after": "harmonized"}

    # test counts: the report's families table, its summary numbers, the CLI's summary and its table agree
    fam = page.table("Test families").set_index("test")
    assert list(fam.index) == list(pd.unique(se.test))
    for label, data in data_of.items():
        line = re.search(rf"  {data}: features with a site effect \(BH-FDR 0.05\): (.*)", cli).group(1)
        printed = dict(item.rsplit(" ", 1) for item in line.split(", "))
        for test, t in se[se.data == data].groupby("test", sort=False):
            n_sig = int((t.p_fdr < 0.05).sum())
            assert printed[test] == f"{n_sig}/9" == f"{fam.loc[test, f'significant {label}']}/{fam.loc[test, 'features']}"
        assert page.stats[f"features with a significant anova site effect {label}"] == printed["anova"]

        # partial eta² (anova effect size): median over features
        eta = fmt(float(np.median(se[(se.data == data) & (se.test == "anova")].effect_size)))
        assert page.stats[f"median partial_eta2 (anova) {label}"] == eta == fam.loc["anova", f"median effect {label}"]
        assert re.search(rf"  {data}: .*\n    median partial_eta2 \(anova\) {re.escape(eta)};", cli)

        # standardized site effect (shift of site_effect_sizes, SD with n - 1): overall and per site
        shift = sizes[sizes.data == data]
        overall = fmt(float(np.abs(shift["shift"]).mean()))
        assert page.stats[f"mean absolute standardized site effect {label}"] == overall
        assert re.search(rf"  {data}: .*\n    .*mean \|standardized site effect\| {re.escape(overall)}\n", cli)
        per_site = page.table("Standardized site effects per site").set_index("site")
        for site, g in shift.groupby("site"):
            assert per_site.loc[site, f"mean |effect| {label}"] == fmt(float(np.abs(g["shift"]).mean()))
            assert per_site.loc[site, f"max |effect| {label}"] == fmt(float(np.abs(g["shift"]).max()))

    # the standardized site effect is the documented one: (site mean of r_add - mean) / sd(r_full, ddof=1)
    raw = sizes[sizes.data == "raw"]
    X = pd.read_csv(d / "data.csv", index_col="subject")
    ref = fh.diagnostics.site_effect_sizes(X[list(pd.unique(raw.feature))], X, formula="age + sex")
    np.testing.assert_allclose(raw["shift"].to_numpy(), ref["shift"].to_numpy(), rtol=1e-12)
