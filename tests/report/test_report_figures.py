"""Every figure of the report stays readable at 3, 23 and 120 sites: no two tick labels on one axis overlap
(matplotlib's text extents after the layout), site names are drawn at a readable size, every site is named
where the figure has one row per site, and legends sit outside the axes (or are left out beyond 12 sites)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import featharm as fh  # noqa: E402
from featharm.datasets._many_sites import make_fcon1000_like  # noqa: E402
from featharm.plots._common import LEGEND_SITES, SITE_FONT, tick_label_overlaps  # noqa: E402
from featharm.report import _build  # noqa: E402


def _report_figures(n_sites, n_subjects, n_features, monkeypatch):
    """The report's figures (the Figure objects, as the report embeds them) and the site names."""
    sim = make_fcon1000_like(n_sites, n_subjects, n_features, random_state=n_sites)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fh.exceptions.SmallBatchWarning)  # the small sites are the point
        hm = fh.ComBat(batch="site", formula="age + sex").fit(sim.X, sim.covariates)
    figs = []
    real = _build.figure_uri

    def keep(fig, *a, **kw):
        figs.append(fig)
        return real(fig, *a, **kw)

    monkeypatch.setattr(_build, "figure_uri", keep)
    hm.report(sim.X, sim.covariates, classification=False)
    return figs, sorted(map(str, sim.covariates["site"].unique())), hm


@pytest.mark.slow
@pytest.mark.parametrize(("n_sites", "n_subjects", "n_features"), [(3, 300, 20), (23, 1078, 40), (120, 2400, 30)])
def test_no_tick_labels_overlap_at_3_23_and_120_sites(n_sites, n_subjects, n_features, monkeypatch):
    figs, sites, hm = _report_figures(n_sites, n_subjects, n_features, monkeypatch)
    assert len(figs) >= 7  # balance, site effects, p-values, PCA, explorer, preservation, age trends, EB check
    site_set = set(sites)
    every_site_named = 0
    for fig in figs:
        fig.canvas.draw()  # the figure as embedded, laid out again from scratch
        assert tick_label_overlaps(fig) == [], fig.axes[0].get_title()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                labels = [t for t in axis.get_ticklabels() if t.get_text()]
                names = [t.get_text().split(" (n=")[0] for t in labels]
                if not labels or not set(names) <= site_set or len(names) < min(n_sites, 3):
                    continue
                shown = [t for t in labels if t.get_visible()]
                assert all(t.get_fontsize() >= SITE_FONT for t in shown)
                if len(names) == n_sites and len(shown) == n_sites:
                    every_site_named += 1
                # sized to the sites: every name up to 60 sites; beyond, at least every other one
                assert len(shown) == len(names) or (n_sites > 60 and len(shown) >= len(names) // 2)
            leg = ax.get_legend()
            if leg is not None and leg.get_visible():
                texts = [t.get_text() for t in leg.get_texts()]
                assert len(texts) <= LEGEND_SITES
                # outside the axes: the legend's box does not cover the data area
                lb, ab = leg.get_window_extent(), ax.get_window_extent()
                if any(t.split(" (n=")[0] in site_set for t in texts):
                    assert lb.x0 >= ab.x1 - 1 or lb.y0 >= ab.y1 - 1
    # the one-row-per-site panels (covariates, EB sites) name every site even at 120 sites
    assert every_site_named >= 1


@pytest.mark.slow
def test_eb_check_many_sites_draws_the_worst_fitting_and_tabulates_all(monkeypatch):
    figs, sites, hm = _report_figures(23, 1078, 40, monkeypatch)
    eb = [f for f in figs if any("gamma_hat" in ax.get_xlabel() for ax in f.axes)]
    assert len(eb) == 1
    titles = [ax.get_title() for ax in eb[0].axes if "gamma_hat" in ax.get_xlabel()]
    assert len(titles) == _build.EB_FIGURE_SITES
    from featharm.report._stats import eb_fit_table

    fit = eb_fit_table(hm, "site")
    worst = fit.assign(w=fit[["KS γ̂ vs normal", "KS δ̂² vs inverse gamma"]].max(axis=1))
    expected = set(worst.sort_values("w", ascending=False, kind="mergesort")["site"].head(_build.EB_FIGURE_SITES))
    assert {t.split(" (")[0] for t in titles} == expected
    assert np.all(fit["KS γ̂ vs normal"].between(0, 1))
