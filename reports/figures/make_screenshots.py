"""Screenshots of the HTML report at 1400 px wide, for reviewers: IXI (3 sites), an fcon1000-like table
(23 sites, 218 FreeSurfer features) and a simulated 120-site table.

Run from the repository root (it takes a few minutes; run it under the benchmark lock on a shared machine):

    flock /tmp/featharm-bench.lock python reports/figures/make_screenshots.py [--keep-html DIR]

It writes ``reports/figures/report_*.png`` (parts of each report, cut at section or figure boundaries,
palette-quantized (256 colours) to stay small) and prints the size of every report. Headless Chromium draws the pages
through the DevTools protocol (the small client of ``tests/report/_cdp.py``); the pages load from local
files only. The fcon1000-like and 120-site data are simulated (``featharm.datasets._many_sites``): the real
fcon1000 table may not be shipped.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "report"))

import featharm as fh  # noqa: E402
from featharm.datasets._many_sites import make_fcon1000_like  # noqa: E402

OUT = Path(__file__).resolve().parent
WIDTH = 1400
MAX_HEIGHT = 1500  # px of one screenshot; taller parts are cut

# report -> [(file suffix, CSS selector of the part, what it shows)]
SHOTS = {
    "ixi": [("overview", "body", "top of the page: header, navigation, data summary"),
            ("explorer", "#fx", "feature explorer (3 sites)"),
            ("eb_check", "#model", "model parameters with the EB check table and figure"),
            ("methods", "#methods", "methods text block")],
    "fcon23": [("balance", "#balance", "covariate balance: one row per site, legends outside"),
               ("site_effects", "#site-effects figure", "standardized site effects heat map, 23 sites x 218 features"),
               ("explorer", "#fx", "feature explorer, 23 sites"),
               ("lifespan", "#lifespan", "age trends of the 3 features with the largest age effect"),
               ("eb_check", "#model figure", "EB check of the 12 worst-fitting sites")],
    "sites120": [("balance", "#balance", "covariate balance at 120 sites"),
                 ("explorer", "#fx", "feature explorer at 120 sites (scrolls)"),
                 ("table", "#site-effects .table-block:nth-of-type(2)", "a per-site table (sortable, filterable)")],
}


def build_reports(tmp: Path) -> dict:
    """The three reports as HTML files; returns name -> (path, seconds, description)."""
    out = {}
    t = time.perf_counter()
    d = fh.datasets.load_ixi()
    X = d[fh.datasets.ixi_feature_columns(d)]
    hm = fh.ComBat(batch="site", formula="age + sex").fit(X, d)
    hm.report(X, d).save_as_html(tmp / "ixi.html")
    out["ixi"] = (tmp / "ixi.html", time.perf_counter() - t, "IXI, 3 sites, 556 subjects, 68 features, ComBat")
    for name, n_sites, n_subj in (("fcon23", 23, 1078), ("sites120", 120, 3000)):
        t = time.perf_counter()
        sim = make_fcon1000_like(n_sites, n_subj, 218, random_state=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small sites: listed in the report's warnings
            hm = fh.ComBat(batch="site", formula="age + sex").fit(sim.X, sim.covariates)
            hm.report(sim.X, sim.covariates, classification=n_sites <= 30).save_as_html(tmp / f"{name}.html")
        out[name] = (tmp / f"{name}.html", time.perf_counter() - t,
                     f"simulated, {n_sites} sites, {len(sim.X)} subjects, 218 features, ComBat")
    return out


def shoot(cdp, path: Path, shots, profile_events_ok=True) -> list[Path]:
    session = cdp.open_page(path.as_uri(), width=WIDTH, height=1000)
    written = []
    for suffix, selector, _ in shots:
        rect = cdp.evaluate(f"""(() => {{
            const e = document.querySelector({selector!r});
            if (!e) return null;
            e.scrollIntoView();
            const r = e.getBoundingClientRect();
            return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height];
        }})()""", session)
        if rect is None:
            raise RuntimeError(f"{path.name}: no element {selector!r}")
        x, y, w, h = rect
        clip = {"x": 0, "y": max(0.0, y - 8), "width": WIDTH, "height": min(h + 16, MAX_HEIGHT), "scale": 1}
        png = cdp.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True},
                       session=session, timeout=120)["data"]
        target = OUT / f"report_{path.stem}_{suffix}.png"
        target.write_bytes(_small_png(base64.b64decode(png)))
        written.append(target)
    errors = cdp.errors()
    if errors:
        raise RuntimeError(f"{path.name}: console errors {errors}")
    return written


def _small_png(raw: bytes) -> bytes:
    """The screenshot with a 256-colour palette (the report is flat colours and text): a few hundred KB less."""
    from PIL import Image

    img = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main(argv=None) -> int:
    from _cdp import CHROMIUM, DevTools

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep-html", type=Path, help="write the three reports here too")
    args = ap.parse_args(argv)
    if CHROMIUM is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reports = build_reports(args.keep_html or tmp)
        cdp = DevTools(tmp / "profile")
        try:
            for name, (path, secs, what) in reports.items():
                files = shoot(cdp, path, SHOTS[name])
                print(f"{name}: {what}; report {path.stat().st_size / 1e6:.2f} MB, built in {secs:.0f} s")
                for f in files:
                    print(f"  {f.relative_to(ROOT)} ({f.stat().st_size // 1024} KB)")
        finally:
            cdp.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
