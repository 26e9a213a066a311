"""featharm.report: the IXI report holds its sections, numbers and warnings; user strings stay text."""

from __future__ import annotations

import base64
import html
import json
import re
import xml.etree.ElementTree as ET

import matplotlib

matplotlib.use("Agg")

import markupsafe  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import featharm as fh  # noqa: E402
from featharm.exceptions import ColumnNotFoundError, InputError, NotFittedError, SmallBatchWarning  # noqa: E402
from featharm.report import HTMLReport, make_report  # noqa: E402
from featharm.report._build import fmt  # noqa: E402
from featharm.report._stats import preservation, sha256_file  # noqa: E402

SECTIONS = ["Data summary", "Covariate balance", "Site effects before and after harmonization",
            "Preservation of biology", "Age trends before and after", "Model parameters", "Methods text",
            "Warnings", "Provenance"]
DATE = "2026-01-02T03:04:05+00:00"


def _images(text: str) -> list[tuple[str, bytes]]:
    out = []
    for mime, payload in re.findall(r'<img src="data:([^;"]+);base64,([^"]+)"', text):
        out.append((mime, base64.b64decode(payload, validate=True)))
    return out


@pytest.fixture(scope="module")
def ixi():
    data = fh.datasets.load_ixi()
    X = data[fh.datasets.ixi_feature_columns(data)]
    hm = fh.ComBat(batch="site", formula="age + sex")
    Xh = hm.fit_transform(X, data)
    rep = hm.report(X, data, X_harmonized=Xh, inputs={"IXI table": fh.datasets.ixi_path()}, date=DATE)
    return data, X, Xh, hm, rep


@pytest.fixture(scope="module")
def small():
    sim = fh.datasets.make_multisite(n_subjects=120, n_sites=3, n_features=6, random_state=0)
    return sim.X, sim.covariates


# ------------------------------------------------------------------------------------------ IXI report
@pytest.mark.slow
def test_ixi_report_sections_in_order(ixi):
    rep = ixi[-1]
    assert isinstance(rep, HTMLReport)
    assert rep.sections == SECTIONS
    positions = [rep.html.index(f"<h2>{html.escape(s)}</h2>") for s in SECTIONS]
    assert positions == sorted(positions)
    assert rep.html.startswith("<!DOCTYPE html>") and rep.html.rstrip().endswith("</html>")


@pytest.mark.slow
def test_ixi_report_data_summary_numbers(ixi):
    data, X, _, _, rep = ixi
    text = rep.html
    assert "<dt>subjects</dt><dd>556</dd>" in text
    assert "<dt>sites</dt><dd>3</dd>" in text and "<dt>features</dt><dd>68</dd>" in text
    for site, n in data["site"].value_counts().items():
        assert f"<td>{site}</td><td>{n}</td>" in text
    mean_age = data.groupby("site")["age"].mean()
    assert f"{mean_age['IOP']:.3g} (" in text


@pytest.mark.slow
def test_ixi_report_site_effect_numbers(ixi):
    data, X, Xh, _, rep = ixi
    before = fh.diagnostics.test_site_effects(X, data, batch="site", formula="age + sex")
    after = fh.diagnostics.test_site_effects(Xh, data, batch="site", formula="age + sex")
    a_b, a_a = before[before.test == "anova"], after[after.test == "anova"]
    nb, na = int((a_b.p_fdr < 0.05).sum()), int((a_a.p_fdr < 0.05).sum())
    assert nb > 50 and na == 0  # IXI has a strong site effect that ComBat removes
    assert f"site effect before</dt><dd>{nb}/68</dd>" in rep.html
    assert f"site effect after</dt><dd>{na}/68</dd>" in rep.html
    assert f"<dd>{fmt(float(np.median(a_b.effect_size)))}</dd>" in rep.html
    assert f"<dd>{fmt(float(np.median(a_a.effect_size)))}</dd>" in rep.html
    top = a_b.sort_values("effect_size", ascending=False).iloc[0]
    assert f"<td>{top.feature}</td><td>{fmt(top.effect_size)}</td>" in rep.html
    for test in before.test.unique():
        assert f"<td>{test}</td>" in rep.html
    z = fh.plots._common.standardized_site_effects(fh.plots._common.prepare(X, data, "site", "t"), "age + sex")
    assert f"site effect before</dt><dd>{fmt(float(z.abs().to_numpy().mean()))}</dd>" in rep.html
    iop = z.loc["IOP"].abs()
    assert f"<td>IOP</td><td>{fmt(iop.mean())}</td><td>{fmt(iop.max())}</td>" in rep.html


@pytest.mark.slow
def test_ixi_report_model_balance_and_provenance(ixi):
    data, _, _, hm, rep = ixi
    text = rep.html
    for site in hm.batches_:
        assert f"<td>{fmt(hm.priors_.loc[site, 'gamma_bar'])}</td>" in text
    assert re.search(r"<tr><td>age</td><td>[^<]*kruskal[^<]*</td>", text, re.I)
    assert re.search(r"<tr><td>sex</td><td>[^<]*chi[^<]*</td>", text, re.I)
    assert DATE in text and f"<td>numpy</td><td>{np.__version__}</td>" in text
    assert f"<dd>{fh.__version__}</dd>" in text
    assert sha256_file(fh.datasets.ixi_path()) in text
    assert "Lin&#39;s CCC (partial R²)" in text and "<td>age</td>" in text and "<td>sex[T.M]</td>" in text
    pres = fh.diagnostics.biology_preservation(ixi[1], ixi[2], data, batch="site", formula="age + sex").summary
    for _, row in pres.iterrows():
        assert (f"<td>{row.covariate}</td><td>{fmt(row.median_partial_r2_before)}</td>"
                f"<td>{fmt(row.median_partial_r2_after)}</td><td>{fmt(row.ccc_partial_r2)}</td>") in text
    assert "No warnings were raised" in text and rep.warnings == []


@pytest.mark.slow
def test_ixi_report_is_self_contained(ixi):
    text = ixi[-1].html
    imgs = _images(text)
    assert len(imgs) >= 7
    assert text.count("<img ") == len(imgs)
    for mime, raw in imgs:
        assert mime == "image/svg+xml"
        assert ET.fromstring(raw).tag.endswith("svg")
    # nothing is fetched: every src/href is an embedded image or an in-page anchor
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs and all(r.startswith(("data:", "#")) for r in refs)
    assert "<link" not in text.lower()
    # two scripts, both inline: the feature explorer's data (JSON) and the page's own small script
    assert re.findall(r"<script[^>]*>", text, flags=re.I) == ['<script type="application/json" id="fx-data">',
                                                              "<script>"]
    assert len(text.encode()) < 3_000_000


# ------------------------------------------------------------------------------------------ warnings, escaping
@pytest.fixture(scope="module")
def odd(small):
    """A fit with a 6-subject site (a SmallBatchWarning) and hostile feature, site and title strings."""
    X, cov = small
    X = X.rename(columns={X.columns[0]: "<script>alert(1)</script>", X.columns[1]: "a&b\"c"})
    cov = cov.assign(site=cov["site"].replace({"site01": "<img src=x onerror=alert(2)>"}))
    cov.loc[cov.index[:6], "site"] = "tiny"
    hm = fh.ComBat(batch="site", formula="age + sex")
    with pytest.warns(SmallBatchWarning, match="'tiny'"):
        hm.fit(X, cov)
    rep = hm.report(X, cov, features=["<script>alert(1)</script>"], date=DATE, title="<i>title</i>",
                    extra_warnings=["checked by hand <b>"])
    return X, cov, hm, rep


def test_fit_warnings_reach_the_report_and_survive_save(odd, tmp_path):
    _, _, hm, rep = odd
    assert [w["category"] for w in hm.fit_warnings_] == ["SmallBatchWarning"]
    msg = hm.fit_warnings_[0]["message"]
    assert "'tiny' (n=6)" in msg
    assert str(markupsafe.escape(msg)) in rep.html and "<td>SmallBatchWarning</td>" in rep.html
    assert "checked by hand &lt;b&gt;" in rep.html
    assert [w["category"] for w in rep.warnings] == ["SmallBatchWarning", "warning"]
    assert "<dt>warnings</dt><dd>2</dd>" in rep.html
    hm.save(tmp_path / "m.fhm")
    assert fh.load_model(tmp_path / "m.fhm").fit_warnings_ == hm.fit_warnings_  # what a later report lists


def test_refit_forgets_old_warnings(small):
    X, cov = small
    hm = fh.ComBat(batch="site")
    tiny = cov.copy()
    tiny.loc[tiny.index[:6], "site"] = "tiny"
    with pytest.warns(SmallBatchWarning):
        hm.fit(X, tiny)
    hm.fit(X, cov)
    assert hm.fit_warnings_ == []


def test_feature_and_site_names_are_escaped(odd):
    text = odd[-1].html
    assert text.lower().count("<script") == 2  # the report's own: its JSON data and its inline script
    data = re.search(r'<script type="application/json" id="fx-data">(.*?)</script>', text, flags=re.S).group(1)
    assert "<" not in data and ">" not in data and "&" not in data  # inert inside the script element
    parsed = json.loads(data)
    assert "<img src=x onerror=alert(2)>" in parsed["sites"]
    assert "<script>alert(1)</script>" in parsed["features"]
    text = text.replace(data, "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a&amp;b&#34;c" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "<i>title</i>" not in text and "&lt;i&gt;title&lt;/i&gt;" in text
    for _, raw in _images(text):  # figure text is XML-escaped inside the SVGs
        ET.fromstring(raw)
        assert b"<script" not in raw


# ------------------------------------------------------------------------------------------ variants
def test_gam_report_models_the_smooth_covariate(small):
    X, cov = small
    hm = fh.ComBatGAM(batch="site", formula="sex", smooth=["age"]).fit(X, cov)
    rep = hm.report(X, cov, date=DATE)
    assert "<dt>covariates in the model</dt><dd>sex + age</dd>" in rep.html  # age enters the diagnostics
    assert "<dd>ComBatGAM</dd>" in rep.html and rep.sections == SECTIONS


def test_raw_only_report_counts_missing_values(small):
    X, cov = small
    cov = cov.assign(note=np.where(np.arange(len(cov)) % 10 == 0, None, "x"))
    rep = make_report(X, cov, batch="site", formula="age + sex", date=DATE)
    assert rep.sections == SECTIONS
    assert "No harmonized data: nothing to compare." in rep.html
    assert "No model was given" in rep.html
    assert "featharm site-effect report" in rep.html
    assert "<tr><td>note</td><td>12</td></tr>" in rep.html and "No missing values" not in rep.html


@pytest.mark.slow
def test_png_figures(small, tmp_path):
    X, cov = small
    hm = fh.ComBat(batch="site", formula="age + sex").fit(X, cov)
    a = hm.report(X, cov, date=DATE, figure_format="png")
    imgs = _images(a.html)
    assert imgs and all(m == "image/png" and raw.startswith(b"\x89PNG\r\n\x1a\n") for m, raw in imgs)
    a.save_as_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == a.html
    assert a._repr_html_().startswith("<iframe srcdoc=") and "<script" not in a._repr_html_()


@pytest.mark.slow
def test_report_is_reproducible(small):
    X, cov = small
    hm = fh.ComBat(batch="site", formula="age + sex").fit(X, cov)
    assert hm.report(X, cov, date=DATE).html == hm.report(X, cov, date=DATE).html  # byte for byte


def test_make_report_errors(small):
    X, cov = small
    with pytest.raises(NotFittedError, match="not fitted"):
        make_report(X, cov, model=fh.ComBat())
    with pytest.raises(InputError, match="figure_format"):
        make_report(X, cov, figure_format="jpg")
    with pytest.raises(InputError, match="same index and columns"):
        make_report(X, cov, X_harmonized=X.iloc[:, ::-1])
    with pytest.raises(ColumnNotFoundError, match="not columns of X"):
        make_report(X, cov, X_harmonized=X, features=["nope"])
    with pytest.raises(ColumnNotFoundError, match="'diagnosis'"):
        make_report(X, cov, covariate_columns=["diagnosis"])
    with pytest.raises(ColumnNotFoundError, match="batch column 'scanner'"):
        make_report(X, cov, batch="scanner")


# ------------------------------------------------------------------------------------------ preservation numbers
def test_preservation_matches_statsmodels(small):
    import statsmodels.formula.api as smf

    X, cov = small
    Xh = fh.ComBat(batch="site", formula="age + sex").fit_transform(X, cov)
    tab, summary = preservation(X, Xh, cov, batch="site", formula="age + sex")
    f = X.columns[3]
    d = cov.assign(y=X[f], yh=Xh[f])
    raw = smf.ols("y ~ age + sex + site", d).fit()
    har = smf.ols("yh ~ age + sex", d).fit()
    row = tab[(tab.feature == f) & (tab.term == "age")].iloc[0]
    assert row.t_before == pytest.approx(raw.tvalues["age"], rel=1e-9)
    assert row.t_after == pytest.approx(har.tvalues["age"], rel=1e-9)
    assert row.p_after == pytest.approx(har.pvalues["age"], rel=1e-7)
    t = raw.tvalues["sex[T.M]"]
    row = tab[(tab.feature == f) & (tab.term == "sex[T.M]")].iloc[0]
    assert row.effect_before == pytest.approx(t**2 / (t**2 + raw.df_resid), rel=1e-9)
    assert list(summary.term) == ["age", "sex[T.M]"]
    assert summary["Lin's CCC (t)"].between(0.9, 1.0).all()  # ComBat keeps the simulated effects


@pytest.mark.slow
def test_ixi_report_shows_site_mixing_before_and_after(ixi):
    rep = ixi[-1]
    i = rep.html.index("Site mixing (")
    block = rep.html[i:i + 6000]
    for metric in ("silhouette", "kbet_acceptance", "ilisi"):
        assert f"<td>{metric}</td>" in block
    assert "<td>before</td>" in block and "<td>after</td>" in block


def test_a_constructor_covariate_table_is_shown_by_its_shape(small):
    X, cov = small
    hm = fh.ComBat(batch="site", covariates=cov).fit(X)
    rep = hm.report(X, cov, date=DATE)
    assert f"DataFrame of {len(cov)} rows × {cov.shape[1]} columns" in rep.html
    assert "Empty DataFrame" not in rep.html and repr(cov).splitlines()[1] not in rep.html


def test_explorer_box_statistics_decode_to_matplotlib_boxplot_stats(small):
    """The explorer's packed numbers are Tukey box statistics: decoded, they equal matplotlib's own
    ``boxplot_stats`` per site (to the 16-bit resolution of the feature's range), before and after."""
    from matplotlib import cbook

    from featharm.report._stats import EXPLORER_LEVELS, explorer_data

    X, cov = small
    X = X.copy()
    X.iloc[:5, 1] = np.nan  # missing cells: left out of that feature's statistics
    Xh = fh.ComBat(batch="site", formula="age + sex").fit_transform(X, cov)
    order = [X.columns[2], X.columns[1], X.columns[0]]
    d = explorer_data(X, Xh, cov, "site", order)
    assert d["features"] == order and d["sites"] == sorted(cov["site"].unique())
    m = len(d["sites"])
    for which, data in (("before", X), ("after", Xh)):
        codes = np.frombuffer(base64.b64decode(d[which]), dtype="<u2").reshape(len(order), m, 5)
        assert codes.max() <= EXPLORER_LEVELS
        for j, f in enumerate(order):
            vals = d["lo"][j] + codes[j] / EXPLORER_LEVELS * d["span"][j]
            for i, site in enumerate(d["sites"]):
                y = data.loc[cov["site"] == site, f].dropna().to_numpy()
                st = cbook.boxplot_stats(y, whis=1.5)[0]
                expected = [st["whislo"], st["q1"], st["med"], st["q3"], st["whishi"]]
                assert np.allclose(vals[i], expected, atol=d["span"][j] / EXPLORER_LEVELS)
                assert (d["n"][j][i] if isinstance(d["n"][0], list) else d["n"][i]) == y.size
    assert isinstance(d["n"][0], list)  # the counts differ by feature (missing cells)
