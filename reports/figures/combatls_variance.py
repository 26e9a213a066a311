"""Figure: ComBatLS keeps a covariate-dependent variance that ComBat flattens (simulated data, known truth).

Run from the repository root: ``python reports/figures/combatls_variance.py`` writes
``reports/figures/combatls_variance.png`` and prints the numbers quoted in README.md. The simulation is the one
of ``tests/models/test_combatls.py::simulate_age_dependent_variance``: 4 sites of 150 subjects with different age
ranges (20-45, 30-60, 45-75, 55-85), 20 features whose SD grows by 1-2.5 % per year of age, and site
shifts and scales.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import featharm  # noqa: E402
from test_combatls import log_sd_age_slope, simulate_age_dependent_variance  # noqa: E402


def main() -> None:
    X, cov, c_age = simulate_age_dependent_variance(0)
    outs = {
        "raw (site effects in)": X,
        "ComBat": featharm.ComBat(batch="site", formula="age + sex").fit_transform(X, cov),
        "ComBatLS": featharm.ComBatLS(batch="site", formula="age + sex", scale_formula="age + sex").fit_transform(X, cov),
    }
    ratios = {k: log_sd_age_slope(v, cov) / c_age for k, v in outs.items()}
    for k, r in ratios.items():
        print(f"{k:>22}: log-SD age slope / truth = {r.mean():.2f} (mean over 20 features; "
              f"range {r.min():.2f}-{r.max():.2f})")

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    colors = {"raw (site effects in)": "0.5", "ComBat": "tab:red", "ComBatLS": "tab:blue"}
    ax1.boxplot(list(ratios.values()), tick_labels=list(ratios))
    for i, (k, r) in enumerate(ratios.items(), start=1):
        ax1.scatter(np.full(r.size, i) + np.random.default_rng(i).uniform(-0.12, 0.12, r.size), r, s=12,
                    color=colors[k], zorder=3)
    ax1.axhline(1.0, color="k", lw=0.8, ls="--")
    ax1.set_ylabel("estimated / true age slope of log SD")
    ax1.set_title("Age-dependent variance kept? (20 features)")

    j = int(np.argmax(c_age))
    bins = np.arange(20, 90, 10)
    mid = (bins[:-1] + bins[1:]) / 2
    age = cov["age"].to_numpy()
    for k, D in outs.items():
        if k.startswith("raw"):
            continue
        y = D.iloc[:, j].to_numpy()
        W = np.column_stack([np.ones(len(age)), age, cov["sex"] == "M"]).astype(float)
        r = y - W @ np.linalg.lstsq(W, y, rcond=None)[0]
        sd = [r[(age >= a) & (age < b)].std(ddof=1) for a, b in zip(bins[:-1], bins[1:])]
        ax2.plot(mid, sd, "o-", color=colors[k], label=k)
    # truth up to the pooled site scale: shape exp(c_age * (age - 50)), matched at age 50 to ComBatLS
    ref = outs["ComBatLS"].iloc[:, j].to_numpy()
    W = np.column_stack([np.ones(len(age)), age, cov["sex"] == "M"]).astype(float)
    rr = ref - W @ np.linalg.lstsq(W, ref, rcond=None)[0]
    s50 = rr[(age >= 40) & (age < 60)].std(ddof=1)
    grid = np.linspace(20, 85, 100)
    ax2.plot(grid, s50 * np.exp(c_age[j] * (grid - 50)), "k--", lw=1, label="true shape")
    ax2.set_xlabel("age (years)")
    ax2.set_ylabel("residual SD after harmonization")
    ax2.set_title(f"Feature {X.columns[j]}: SD grows {100 * c_age[j]:.1f} %/year")
    ax2.legend()
    out = Path(__file__).with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
