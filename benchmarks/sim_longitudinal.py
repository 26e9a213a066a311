#!/usr/bin/env python
"""Longitudinal ComBat on simulated data with known truth: RMSE, ICC and within-subject variance.

For each seed, ``make_longitudinal`` draws 300 subjects with 2-4 visits (30 % change site), 4 sites,
30 features, a subject random intercept with ICC 0.66, site shifts and scales of the within-subject noise.
Each method's output is compared with the site-free truth:

* ``rmse``: root mean squared error to the truth, in units of the feature's SD (mean over features);
* ``icc``: tau2 / (tau2 + sigma2) of a REML random-intercept fit (``age + sex + time``) to the output;
* ``within``: the output's within-subject (residual) variance over the truth's;
* ``delta*``: scan-weighted mean of the EB scale estimates (1 = no net rescaling).

Usage: ``python benchmarks/sim_longitudinal.py [--seeds 5]``. tests/models/test_longitudinal_sim.py asserts the
same comparisons on one seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import featharm  # noqa: E402
from featharm.datasets._simulate_long import make_longitudinal  # noqa: E402
from featharm.mixed import fit_random_intercept  # noqa: E402


def components(Y, cov):
    W = np.column_stack([np.ones(len(cov)), cov["age"], cov["sex"] == "M", cov["time"]])
    fit = fit_random_intercept(Y.to_numpy(), W, cov["subject"].to_numpy())
    return fit.sigma2, fit.tau2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args(argv)
    rows = []
    for seed in range(args.seeds):
        sim = make_longitudinal(n_subjects=300, n_features=30, random_state=seed)
        s2t, t2t = components(sim.truth, sim.covariates)
        sd = sim.truth.std().to_numpy()
        outputs = {"raw (no harmonization)": (sim.X, None)}
        for st in ("reml", "msr", "marginal"):
            hm = featharm.LongComBat(batch="site", subject="subject", time="time", formula="age + sex + time",
                                     standardize=st)
            outputs[f"LongComBat standardize={st!r}"] = (hm.fit_transform(sim.X, sim.covariates), hm)
        cb = featharm.ComBat(batch="site", formula="age + sex + time")
        outputs["ComBat (cross-sectional)"] = (cb.fit_transform(sim.X, sim.covariates), cb)
        for name, (Xh, hm) in outputs.items():
            s2, t2 = components(Xh, sim.covariates)
            n = None if hm is None else hm.batch_sizes_.to_numpy()
            rows.append({
                "method": name, "seed": seed,
                "rmse": np.mean(np.sqrt(((Xh - sim.truth) ** 2).mean().to_numpy()) / sd),
                "icc": np.mean(t2 / (t2 + s2)), "icc_truth": np.mean(t2t / (t2t + s2t)),
                "within": np.mean(s2 / s2t),
                "delta*": np.nan if hm is None else np.mean(n @ hm.delta_star_.to_numpy() / n.sum()),
            })
    df = pd.DataFrame(rows).groupby("method", sort=False).mean().drop(columns="seed")
    print(f"mean over {args.seeds} seeds (300 subjects, 2-4 visits, 4 sites, 30 features, true ICC 0.66)")
    print(df.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
