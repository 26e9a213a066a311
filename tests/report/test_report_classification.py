"""featharm.report: the site-classification table (diagnose's defaults: LDA on the folds' principal components,
5-fold CV repeated twice, a permutation null with Besag–Clifford stopping)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import html  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import featharm as fh  # noqa: E402
from featharm.report import make_report  # noqa: E402
from featharm.report import _stats  # noqa: E402

DATE = "2026-01-02T03:04:05+00:00"
CAPTION = "Site classification: linear discriminant analysis on all features"


@pytest.fixture(scope="module")
def sim():
    s = fh.datasets.make_multisite(n_subjects=160, n_sites=3, n_features=8, random_state=2)
    return s.X, s.covariates


def _bacc(text: str, data: str) -> float:
    m = re.search(rf"site classification balanced accuracy {data} \(chance [0-9.]+\)</[^>]+>\s*<[^>]+>([0-9.]+)<",
                  text)
    assert m, f"no balanced accuracy {data} in the report"
    return float(m.group(1))


def test_report_has_site_classification_before_and_after(sim):
    X, cov = sim
    hm = fh.ComBat(batch="site", formula="age + sex").fit(X, cov)
    rep = make_report(X, cov, model=hm, date=DATE)
    text = html.unescape(rep.html)
    assert CAPTION in text and "refitted on every training fold" in text
    before, after = _bacc(rep.html, "before"), _bacc(rep.html, "after")
    # planted site effects: site is predictable before; after ComBat (refitted in the folds) near chance 1/3
    assert before > 0.6
    assert after < 0.5
    # the same numbers as the diagnostics function with the report's defaults
    ref = fh.diagnostics.site_classification(X, cov, batch="site", formula="age + sex", random_state=0)
    assert before == pytest.approx(float(ref.value[0]), abs=5e-4)
    assert "p_perm from at most 100 label permutations, stopped once 10 reach the observed value" in text


def test_report_classification_can_be_left_out(sim):
    X, cov = sim
    rep = make_report(X, cov, batch="site", formula="age + sex", date=DATE, classification=False)
    assert CAPTION not in html.unescape(rep.html)
    assert _stats.CLASSIFICATION_PERMUTATIONS == 100 and _stats.CLASSIFICATION_SPLITS == 5


def test_report_classification_too_small_site_is_a_note(sim):
    X, cov = sim
    keep = np.ones(len(cov), dtype=bool)
    small = np.flatnonzero(cov.site.to_numpy() == sorted(cov.site.unique())[0])[3:]
    keep[small] = False  # the first site keeps 3 rows: fewer than 5 folds
    rep = make_report(X[keep], cov[keep], batch="site", formula="age + sex", date=DATE)
    text = html.unescape(rep.html)
    assert "Site classification not computed" in text and "n_splits=5" in text
