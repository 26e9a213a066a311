"""The report opens in a real browser (headless Chromium over the DevTools protocol, through a pipe).

Checks: the page loads, nothing is logged to the console as an error and no script error is thrown,
every <img> decodes to a non-empty bitmap, and no request leaves the file (only file:// and data: URLs).
Skipped with a reason when Chromium is not installed (CI installs Debian's `chromium` and turns the skip
into a failure through FEATHARM_REQUIRE_REFERENCES).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from _cdp import CHROMIUM, DevTools  # noqa: E402

import featharm as fh  # noqa: E402

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    sim = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=8, random_state=5)
    X = sim.X.rename(columns={sim.X.columns[0]: "<script>alert(1)</script>"})
    hm = fh.ComBat(batch="site", formula="age + sex").fit(X, sim.covariates)
    path = tmp_path_factory.mktemp("browser") / "report.html"
    hm.report(X, sim.covariates, features=[X.columns[0]]).save_as_html(path)
    return path


@pytest.fixture(scope="module")
def many_sites_file(tmp_path_factory):
    from featharm.datasets._many_sites import make_fcon1000_like

    from featharm.exceptions import SmallBatchWarning

    sim = make_fcon1000_like(23, 700, 12, random_state=2)
    with pytest.warns(SmallBatchWarning):  # the sites cut to 3 and 8 subjects
        hm = fh.ComBat(batch="site", formula="age + sex").fit(sim.X, sim.covariates)
    path = tmp_path_factory.mktemp("browser23") / "report.html"
    hm.report(sim.X, sim.covariates, classification=False).save_as_html(path)
    return path


@pytest.mark.slow
def test_report_loads_in_chromium(report_file, tmp_path):
    cdp = DevTools(tmp_path / "profile")
    try:
        session = cdp.open_page(report_file.as_uri())
        images = cdp.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().then("
                              "() => [i.naturalWidth, i.naturalHeight], e => 'failed: ' + e)))", session)
        title = cdp.evaluate("document.title", session)
        text = cdp.evaluate("document.body.innerText", session)
        scripts = cdp.evaluate("Array.from(document.scripts).map(s => s.id || s.type || 'inline')", session)
        explorer = cdp.evaluate("document.querySelectorAll('#fx-plot svg rect').length", session)
    finally:
        cdp.close()
    assert title == "featharm harmonization report"
    assert len(images) >= 7
    assert all(isinstance(v, list) and v[0] > 0 and v[1] > 0 for v in images), images
    assert cdp.errors() == []
    urls = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    # only the report's own scripts (its data block and its inline script); the feature name is shown as text
    assert scripts == ["fx-data", "inline"] and "<script>alert(1)</script>" in text
    for section in ("Data summary", "Covariate balance", "Preservation of biology", "Methods text", "Provenance"):
        assert section in text
    assert explorer == 2 * 3 + 2  # 3 sites x (before, after) boxes + the 2 panel frames


@pytest.mark.slow
def test_tables_sort_filter_and_the_feature_explorer(many_sites_file, tmp_path):
    """Clicking a header sorts the rows (numbers as numbers), the filter box hides rows, the explorer redraws
    another feature with one row per site, sections fold, and nothing is logged as an error."""
    cdp = DevTools(tmp_path / "profile")
    try:
        session = cdp.open_page(many_sites_file.as_uri())
        # the per-site subjects table of the data summary: sort by "subjects", descending on the second click
        sort = cdp.evaluate("""(() => {
            const t = document.querySelector('#data table.data');
            const th = Array.from(t.tHead.rows[0].cells).find(c => c.textContent === 'subjects');
            const col = th.cellIndex, read = () => Array.from(t.tBodies[0].rows).map(r => +r.cells[col].textContent);
            th.click(); const up = read(); th.click(); const down = read();
            return [up, down, th.getAttribute('aria-sort')];
        })()""", session)
        filt = cdp.evaluate("""(() => {
            const t = document.querySelector('#data table.data.filterable');
            const box = t.parentNode.previousElementSibling.querySelector('input');
            box.value = 'AnnArbor'; box.dispatchEvent(new Event('input'));
            const shown = Array.from(t.tBodies[0].rows).filter(r => !r.hidden).map(r => r.cells[0].textContent);
            return [shown, t.tBodies[0].rows.length];
        })()""", session)
        fx = cdp.evaluate("""(() => {
            const sel = document.getElementById('fx-select');
            const n0 = sel.options.length, first = document.querySelector('#fx-plot svg title').textContent;
            sel.value = '3'; sel.dispatchEvent(new Event('change'));
            const svg = document.querySelector('#fx-plot svg');
            return [n0, first, svg.querySelector('title').textContent, svg.querySelectorAll('rect').length,
                    document.querySelector('#fx .fx-static').hidden, sel.options[3].textContent,
                    sel.options[0].textContent];
        })()""", session)
        fold = cdp.evaluate("""(() => {
            const d = document.querySelector('#balance details'), img = document.querySelector('#balance figure img');
            const before = img.checkVisibility(); d.open = false;
            return [before, d.open, img.checkVisibility()];
        })()""", session)
        methods = cdp.evaluate("document.getElementById('methods-text').textContent", session)
    finally:
        cdp.close()
    assert cdp.errors() == []
    up, down, state = sort
    assert up == sorted(up) and down == sorted(up, reverse=True) and state == "descending"
    assert len(up) == 23 and min(up) == 3  # numbers sorted as numbers (3 before 10)
    shown, total = filt
    assert total == 23 and shown and all("AnnArbor" in s for s in shown)
    n_options, first, now, rects, static_hidden, option, option0 = fx
    assert n_options == 12 and static_hidden  # every feature; the static image replaced by the drawing
    assert first.startswith(option0 + ":") and now.startswith(option + ":") and option != option0
    assert rects == 2 * 23 + 2  # one box per site and panel, plus the panel frames
    assert fold == [True, False, False]  # a section folds away
    assert "23 sites" in methods and "Johnson WE, Li C, Rabinovic A (2007)" in methods


@pytest.mark.slow
def test_static_content_without_javascript(many_sites_file, tmp_path):
    """With JavaScript off every table is complete, the explorer shows its first feature as an image and no
    control that needs a script is visible."""
    cdp = DevTools(tmp_path / "profile")
    try:
        session = cdp.open_page(many_sites_file.as_uri(), javascript=False)
        # Runtime.evaluate still runs with page scripts disabled (DevTools evaluations are not page scripts)
        state = cdp.evaluate("""(() => ({
            rows: document.querySelector('#data table.data').tBodies[0].rows.length,
            filters: document.querySelectorAll('p.filter').length,
            svg: document.querySelectorAll('#fx-plot svg').length,
            staticShown: getComputedStyle(document.querySelector('#fx .fx-static')).display !== 'none',
            staticImg: document.querySelector('#fx .fx-static img').naturalWidth,
            selectShown: getComputedStyle(document.querySelector('#fx .fx-controls')).display !== 'none',
            methods: document.getElementById('methods-text').textContent.length,
            open: Array.from(document.querySelectorAll('section > details')).every(d => d.open),
        }))()""", session)
    finally:
        cdp.close()
    assert cdp.errors() == []
    assert state["rows"] == 23 and state["filters"] == 0 and state["svg"] == 0
    assert state["staticShown"] and state["staticImg"] > 0 and not state["selectShown"]
    assert state["methods"] > 200 and state["open"]
