#!/usr/bin/env python
"""Time the one-file HTML report on the full IXI data (556 subjects × 68 regional thickness features).

The issue's target: rendering the full report takes under 20 s. One process; the ComBat fit (age + sex)
is done first and not counted. Then, ``--repeat`` times each (median and min reported):

* ``report``: ``model.report(X, data, X_harmonized=Xh)``: every section (site tests before and after,
  multivariate tests when featharm.diagnostics has them, preservation, all figures, jinja2 rendering);
* the parts, timed separately: the diagnostics (one ``featharm.diagnostics.diagnose`` run with the report's
  options, before + after, the site classification refitting the model in the folds), the figures.

There is no peer package that writes such a report, so no side-by-side comparison; the figure to beat is
the 20 s budget. Usage::

    python benchmarks/bench_report.py [--repeat 3] [--format svg|png] [--out report.html]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import matplotlib

matplotlib.use("Agg")


def _time(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", choices=["svg", "png"], default="svg")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args(argv)

    import featharm as fh
    from featharm import plots
    from featharm.report._build import figure_uri
    from featharm.report._stats import REPORT_OPTIONS

    data = fh.datasets.load_ixi()
    X = data[fh.datasets.ixi_feature_columns(data)]
    hm = fh.ComBat(batch="site", formula="age + sex")
    Xh = hm.fit_transform(X, data)
    print(f"IXI: {X.shape[0]} subjects x {X.shape[1]} features, {len(hm.batches_)} sites; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    rep, t_rep = _time(lambda: hm.report(X, data, X_harmonized=Xh, figure_format=args.format), args.repeat)
    _, t_tests = _time(lambda: fh.diagnostics.diagnose(X, data, batch="site", formula="age + sex", X_harmonized=Xh,
                                                       harmonizer=hm, **REPORT_OPTIONS), args.repeat)
    feats = list(X.columns[:3])

    def figures():
        figs = [plots.covariate_distributions(data, columns=["age", "sex"]),
                plots.site_effects_before_after(X, Xh, data, formula="age + sex"),
                plots.pca_before_after(X, Xh, data, formula="age + sex", hue="age"),
                plots.distributions_before_after(X, Xh, data, features=feats),
                plots.trajectories_before_after(X, Xh, data, features=feats),
                plots.eb_diagnostics(hm)]
        return [figure_uri(f, args.format) for f in figs]

    _, t_figs = _time(figures, args.repeat)
    rows = [("report (everything)", t_rep), ("  diagnostics before + after", t_tests),
            (f"  6 of the report's figures ({args.format})", t_figs)]
    print(f"{'step':<40} {'median':>9} {'min':>9}")
    for name, ts in rows:
        print(f"{name:<40} {statistics.median(ts):8.2f}s {min(ts):8.2f}s")
    print(f"report: {len(rep.html) / 1e6:.2f} MB, {len(rep.sections)} sections, {rep.html.count('<img ')} figures; "
          f"target < 20 s: {'met' if statistics.median(t_rep) < 20 else 'NOT met'}")
    if args.out:
        rep.save_as_html(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
