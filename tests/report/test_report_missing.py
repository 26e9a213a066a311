"""The report and the plots with missing (NaN) feature cells: a 'Missing values' section (tables per feature
and per site, a heat map) only when cells are missing, the rows of the multivariate checks stated, and
plots that draw the observed values."""

from __future__ import annotations

import html
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import featharm as fh  # noqa: E402
from featharm import diagnostics as dg  # noqa: E402

DATE = "2026-01-02T03:04:05+00:00"


@pytest.fixture(scope="module")
def data():
    sim = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=8, random_state=5)
    rng = np.random.default_rng(0)
    X = sim.X.mask(rng.random(sim.X.shape) < 0.05)
    X.loc[sim.covariates["site"] == "site02", "roi003"] = np.nan  # a whole site without this feature
    return X, sim.covariates


@pytest.fixture(scope="module")
def report(data):
    X, cov = data
    hm = fh.ComBat(batch="site", formula="age + sex")
    with pytest.warns(fh.exceptions.MissingValueWarning):  # the empty site × feature, in the fit
        Xh = hm.fit_transform(X, cov)
    return hm.report(X, cov, X_harmonized=Xh, date=DATE)


def _text(h: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", h)))


def _section(h: str, sid: str) -> str:
    start = h.index(f'<section id="{sid}">')
    return h[start:h.index("</section>", start)]


def test_report_has_a_missing_values_section(data, report):
    X, cov = data
    assert report.sections[:3] == ["Data summary", "Missing values", "Covariate balance"]
    sec = _section(report.html, "missing")
    text = _text(sec)
    n_miss, cells = int(X.isna().to_numpy().sum()), X.size
    assert f"missing feature cells {n_miss} of {cells}" in text
    n_complete = int(X.notna().all(axis=1).sum())
    assert f"rows without a missing feature (used by the multivariate checks) {n_complete} of {len(X)}" in text
    assert "Missing cells per feature" in text and "Missing cells per site" in text
    per_site = X.isna().groupby(cov["site"]).sum().sum(axis=1)
    for site, k in per_site.items():
        assert re.search(rf"{site} \d+ {k} ", text), site
    assert sec.count("<img") == 1 and "heat map of the fraction of missing cells" in sec
    # the multivariate tables state the rows they used
    site = _text(_section(report.html, "site-effects"))
    assert f"the {n_complete} of {len(X)} rows without a missing feature" in site


def test_complete_report_has_no_missing_section():
    sim = fh.datasets.make_multisite(n_subjects=90, n_sites=3, n_features=4, random_state=1)
    rep = fh.report.make_report(sim.X, sim.covariates, batch="site", formula="age + sex", date=DATE,
                                classification=False)
    assert "Missing values" not in rep.sections and 'id="missing"' not in rep.html
    assert "rows without a missing feature" not in rep.html


def test_plots_draw_observed_values(data):
    X, cov = data
    ax = Figure().subplots()
    fh.plots.site_distribution(X, cov, feature="roi003", batch="site", ax=ax)  # site02 has no value: empty box
    fh.plots.site_distribution(X, cov, feature="roi003", batch="site", kind="violin", ax=Figure().subplots())
    empty = X.assign(roi000=np.nan)
    ax = Figure().subplots()
    fh.plots.trajectory(empty, cov, feature="roi000", batch="site", ax=ax)  # never observed: an empty panel
    assert not ax.lines and ax.get_legend() is None
    ax = Figure().subplots()
    fh.plots.trajectory(X, cov, feature="roi001", batch="site", ax=ax)
    assert len(ax.lines) == 3  # a curve per site, from the observed rows
    ax = Figure().subplots()
    with pytest.warns(fh.exceptions.MissingValueWarning, match="site02"):  # no complete row in site02
        fh.plots.residual_pca(X, cov, batch="site", formula="age + sex", ax=ax)
    n_drawn = sum(len(c.get_offsets()) for c in ax.collections)
    keep = X.notna().all(axis=1)  # none in site02
    assert n_drawn == int(keep.sum()) and "rows without a missing feature" in ax.get_title()
    with pytest.warns(fh.exceptions.MissingValueWarning):
        r = dg.diagnose(X, cov, batch="site", formula="age + sex", n_permutations=0, classification=False)
    z = r.missing_matrix()
    assert z.loc["site02", "roi003"] == 1.0
    fig = fh.plots.missing_heatmap(z)
    im = fig.axes[0].images[0]
    np.testing.assert_array_equal(im.get_array(), z.to_numpy())
    with pytest.raises(fh.exceptions.InputError):
        fh.plots.missing_heatmap(z.to_numpy())


def test_report_leaves_out_the_rows_the_model_excluded():
    sim = fh.datasets.make_multisite(n_subjects=120, n_sites=3, n_features=5, random_state=0)
    X, cov = sim.X.copy(), sim.covariates.copy()
    X.iloc[[1, 2], 0] = np.nan
    cov.iloc[[3, 8], cov.columns.get_loc("age")] = np.nan
    hm = fh.ComBat(batch="site", formula="age + sex", missing_covariates="exclude")
    with pytest.warns(fh.exceptions.MissingValueWarning, match="sub-00003"):
        hm.fit(X, cov)
    with pytest.warns(fh.exceptions.MissingValueWarning):
        rep = hm.report(X, cov, date=DATE, classification=False)
    text = _text(_section(rep.html, "data"))
    assert "2 row(s) left out of the model and of this report" in text and "sub-00003, sub-00008" in text
    assert "subjects 118" in text and "Missing values" in rep.sections
    # a model that refuses such rows: the report names them in its error
    with pytest.raises(fh.exceptions.MissingValueError, match="sub-00003"):
        fh.report.make_report(X, cov, batch="site", formula="age + sex", classification=False)
