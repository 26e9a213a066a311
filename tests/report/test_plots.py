"""featharm.plots: every function draws what it claims (artists and their data, not pixels)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats  # noqa: E402

import featharm as fh  # noqa: E402
from featharm import plots  # noqa: E402
from featharm.exceptions import ColumnNotFoundError, InputError, NotFittedError  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sim():
    return fh.datasets.make_multisite(n_subjects=160, n_sites=3, n_features=6, random_state=1)


@pytest.fixture(scope="module")
def data(sim):
    X, cov = sim.X, sim.covariates
    hm = fh.ComBat(batch="site", formula="age + sex")
    Xh = hm.fit_transform(X, cov)
    return X, Xh, cov, hm


def _ax():
    return Figure().subplots()


def _codes(cov):
    levels = sorted(cov["site"].astype(str).unique())
    return levels, cov["site"].astype(str).to_numpy()


# ------------------------------------------------------------------------------------------ distributions
def test_site_distribution_box_medians_and_colours(data):
    X, _, cov, _ = data
    f = X.columns[2]
    ax = _ax()
    out = plots.site_distribution(X, cov, feature=f, ax=ax)
    assert out is ax
    levels, site = _codes(cov)
    boxes = [p for p in ax.patches]
    assert len(boxes) == len(levels)
    medians = [ln for ln in ax.lines if ln.get_gid() == "median"]
    assert len(medians) == len(levels)
    for line, lv in zip(medians, levels):
        assert np.allclose(line.get_ydata(), np.median(X.loc[site == lv, f]))
    colours = {tuple(b.get_facecolor()[:3]) for b in boxes}
    assert len(colours) == len(levels)  # one colour per site
    assert [t.get_text() for t in ax.get_xticklabels()] == levels


def test_site_distribution_violin(data):
    X, _, cov, _ = data
    ax = plots.site_distribution(X, cov, feature=X.columns[0], kind="violin", ax=_ax())
    assert len(ax.collections) >= 3  # one body per site (plus the median/extrema lines)


def test_site_distribution_default_axes_is_pyplot_current(data):
    X, _, cov, _ = data
    fig = plt.figure()
    ax = plots.site_distribution(X, cov, feature=X.columns[0])
    assert ax is fig.axes[0]


def test_site_distribution_errors(data):
    X, _, cov, _ = data
    with pytest.raises(ColumnNotFoundError, match="no feature 'nope'"):
        plots.site_distribution(X, cov, feature="nope", ax=_ax())
    with pytest.raises(InputError, match="'kind'"):
        plots.site_distribution(X, cov, feature=X.columns[0], kind="bar", ax=_ax())
    with pytest.raises(ColumnNotFoundError, match="batch column 'scanner'"):
        plots.site_distribution(X, cov, feature=X.columns[0], batch="scanner", ax=_ax())


def test_distributions_before_after_layout(data):
    X, Xh, cov, _ = data
    n_before = len(plt.get_fignums())
    fig = plots.distributions_before_after(X, Xh, cov, features=list(X.columns[:2]))
    assert isinstance(fig, Figure)
    assert len(plt.get_fignums()) == n_before  # figure-level functions stay out of pyplot
    titles = [a.get_title() for a in fig.axes]
    assert titles == [f"{X.columns[0]} (before)", f"{X.columns[0]} (after)",
                      f"{X.columns[1]} (before)", f"{X.columns[1]} (after)"]
    only_before = plots.distributions_before_after(X, None, cov, features=X.columns[0])
    assert len(only_before.axes) == 1


# ------------------------------------------------------------------------------------------ trajectories
def test_trajectory_points_and_fitted_curves(data):
    X, _, cov, _ = data
    f = X.columns[1]
    ax = plots.trajectory(X, cov, feature=f, x="age", ax=_ax())
    levels, site = _codes(cov)
    assert len(ax.collections) == len(levels)
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(X)
    curves = [ln for ln in ax.lines]
    assert [ln.get_label() for ln in curves] == levels
    for ln, lv in zip(curves, levels):  # the curve is the per-site quadratic least-squares fit
        rows = site == lv
        coef = np.polyfit(cov.loc[rows, "age"], X.loc[rows, f], 2)
        xs, ys = ln.get_data()
        assert np.allclose(ys, np.polyval(coef, xs))
        assert xs.min() == pytest.approx(cov.loc[rows, "age"].min())
    # pooled=True adds the same fit over every site (dashed); a site with fewer than 10 rows gets a line
    ax = plots.trajectory(X, cov, feature=f, x="age", ax=_ax(), pooled=True)
    (pooled,) = [ln for ln in ax.lines if ln.get_gid() == "pooled"]
    xs, ys = pooled.get_data()
    assert np.allclose(ys, np.polyval(np.polyfit(cov["age"], X[f], 2), xs))
    small = cov.copy()
    small.loc[small.index[small["site"] == levels[0]][9:], "site"] = levels[1]  # 9 rows left
    ax = plots.trajectory(X, small, feature=f, x="age", ax=_ax())
    rows = (small["site"] == levels[0]).to_numpy()
    xs, ys = ax.lines[0].get_data()
    assert np.allclose(ys, np.polyval(np.polyfit(small.loc[rows, "age"], X.loc[rows, f], 1), xs))


def test_trajectory_needs_numeric_x(data):
    X, _, cov, _ = data
    with pytest.raises(InputError, match="must be numeric"):
        plots.trajectory(X, cov, feature=X.columns[0], x="sex", ax=_ax())
    fig = plots.trajectories_before_after(X, None, cov, features=[X.columns[0]])
    assert len(fig.axes) == 1


# ------------------------------------------------------------------------------------------ PCA
def test_residual_pca_by_site_and_by_covariate(data):
    X, _, cov, _ = data
    ax = plots.residual_pca(X, cov, formula="age + sex", ax=_ax())
    levels, _ = _codes(cov)
    assert len(ax.collections) == len(levels)
    pts = np.vstack([c.get_offsets() for c in ax.collections])
    assert pts.shape == (len(X), 2)
    # the scores' variance matches the explained-variance labels
    assert ax.get_xlabel().startswith("PC1 (") and ax.get_ylabel().startswith("PC2 (")
    assert pts[:, 0].var() > pts[:, 1].var()
    fig = Figure()
    ax2 = plots.residual_pca(X, cov, formula="age + sex", hue="age", ax=fig.subplots())
    assert len(fig.axes) == 2  # numeric hue adds a colour bar
    assert np.allclose(np.sort(ax2.collections[0].get_array()), np.sort(cov["age"].to_numpy()))


def test_pca_before_after_panels(data):
    X, Xh, cov, _ = data
    fig = plots.pca_before_after(X, Xh, cov, formula="age + sex", hue="sex")
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["before harmonization, colour: site", "after harmonization, colour: site",
                      "before harmonization, colour: sex", "after harmonization, colour: sex"]


# ------------------------------------------------------------------------------------------ heatmaps
def test_site_effect_heatmap_values(data):
    X, _, cov, _ = data
    ax = plots.site_effect_heatmap(X, cov, formula=None, ax=_ax())
    img = ax.images[0].get_array()
    levels, site = _codes(cov)
    # without covariates: (site mean - grand mean) / SD of the within-site residuals (n - 1, the definition
    # of featharm.diagnostics.site_effect_sizes, which the heatmap draws)
    centred = X - X.mean()
    means = centred.groupby(site).mean().loc[levels]
    within = X - X.groupby(site).transform("mean")
    expected = means / within.std(ddof=1)
    assert np.allclose(img, expected.to_numpy())
    lo, hi = ax.images[0].get_clim()
    assert lo == -hi and hi == pytest.approx(np.abs(expected.to_numpy()).max())


def test_site_effects_before_after_shared_scale(data):
    X, Xh, cov, _ = data
    fig = plots.site_effects_before_after(X, Xh, cov, formula="age + sex")
    ims = [a.images[0] for a in fig.axes if a.images]
    assert len(ims) == 2
    assert ims[0].get_clim() == ims[1].get_clim()
    assert np.abs(ims[1].get_array()).max() < np.abs(ims[0].get_array()).max()  # harmonization shrinks them


def test_pvalue_heatmap_values():
    t = pd.DataFrame({"feature": ["a", "b", "a", "b"], "test": ["anova", "anova", "levene", "levene"],
                      "p_unc": [1e-4, 0.5, 0.01, 0.0]})
    ax = plots.pvalue_heatmap(t, ax=_ax())
    img = ax.images[0].get_array()
    assert np.allclose(img, [[4, -np.log10(0.5)], [2, 300]])
    assert [tl.get_text() for tl in ax.get_xticklabels()] == ["a", "b"]
    with pytest.raises(ColumnNotFoundError, match="'p_fdr'"):
        plots.pvalue_heatmap(t, p="p_fdr", ax=_ax())


# ------------------------------------------------------------------------------------------ EB
def test_eb_prior_densities_match_priors(data):
    _, _, _, hm = data
    site = str(hm.batches_[1])
    ax = plots.eb_prior(hm, site=site, parameter="gamma", ax=_ax())
    pri = hm.priors_.loc[hm.batches_[1]]
    (line,) = ax.lines
    x, y = line.get_data()
    assert np.allclose(y, stats.norm.pdf(x, pri["gamma_bar"], np.sqrt(pri["tau2"])))
    heights = np.array([p.get_height() for p in ax.patches])
    widths = np.array([p.get_width() for p in ax.patches])
    assert np.sum(heights * widths) == pytest.approx(1.0)  # a density histogram of the estimates
    ax = plots.eb_prior(hm, site=site, parameter="delta", ax=_ax())
    x, y = ax.lines[0].get_data()
    assert np.allclose(y, stats.invgamma.pdf(x, pri["a_prior"], scale=pri["b_prior"]))


def test_eb_diagnostics_grid_and_reference_batch(sim):
    hm = fh.ComBat(batch="site", formula="age + sex", ref_batch=sorted(sim.covariates["site"].unique())[0])
    hm.fit(sim.X, sim.covariates)
    fig = plots.eb_diagnostics(hm)
    assert len(fig.axes) == 2 * len(hm.batches_)
    ref_axes = fig.axes[2 * hm.ref_index_: 2 * hm.ref_index_ + 2]
    assert all("no prior" in a.get_title() and not a.lines for a in ref_axes)
    with pytest.raises(NotFittedError):
        plots.eb_diagnostics(fh.ComBat())
    with pytest.raises(InputError, match="not a batch"):
        plots.eb_prior(hm, site="nowhere", ax=_ax())


# ------------------------------------------------------------------------------------------ covariates
def test_covariate_by_site_numeric_and_categorical(data):
    _, _, cov, _ = data
    levels, site = _codes(cov)
    ax = plots.covariate_by_site(cov, covariate="age", ax=_ax())
    assert len(ax.patches) == len(levels)  # one step histogram per site
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"{lv} (n={int((site == lv).sum())})" for lv in levels]
    ax = plots.covariate_by_site(cov, covariate="sex", ax=_ax())
    props = pd.crosstab(site, cov["sex"].astype(str), normalize="index").loc[levels]
    bars = ax.patches
    assert len(bars) == props.size
    first = np.array([b.get_height() for b in bars[: len(levels)]])
    assert np.allclose(first, props.iloc[:, 0].to_numpy())
    fig = plots.covariate_distributions(cov, columns=["age", "sex"])
    assert [a.get_title() for a in fig.axes if a.get_visible()] == ["age", "sex"]


# ------------------------------------------------------------------------------------------ preservation
def test_preservation_scatter_and_ccc():
    t = pd.DataFrame({"feature": list("abcd"), "term": "age", "effect_before": [0.1, 0.2, 0.3, 0.4],
                      "effect_after": [0.1, 0.2, 0.3, 0.5]})
    ax = plots.preservation_scatter(t, term="age", ax=_ax())
    assert np.allclose(ax.collections[0].get_offsets(), t[["effect_before", "effect_after"]].to_numpy())
    a, b = t["effect_before"].to_numpy(), t["effect_after"].to_numpy()
    ccc = 2 * np.cov(a, b, ddof=0)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)
    assert f"{ccc:.3f}" in ax.get_title()
    assert plots.lins_ccc(a, a) == pytest.approx(1.0)
    assert plots.lins_ccc(a, a + 1) < 1.0
    with pytest.raises(InputError, match="no rows for term 'sex'"):
        plots.preservation_scatter(t, term="sex", ax=_ax())
    alt = t.rename(columns={"term": "covariate", "effect_before": "partial_r2_before",
                            "effect_after": "partial_r2_after"})  # the diagnostics' layout
    ax = plots.preservation_scatter(alt, term="age", ax=_ax())
    assert np.allclose(ax.collections[0].get_offsets(), t[["effect_before", "effect_after"]].to_numpy())


# ------------------------------------------------------------------------------------------ user strings
def test_feature_names_are_drawn_literally(sim):
    X = sim.X.iloc[:, :3].copy()
    X.columns = ["$x^2$", "<script>alert(1)</script>", "plain"]
    fig = Figure()
    ax = fig.subplots()
    plots.site_effect_heatmap(X, sim.covariates, ax=ax)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    assert "$x^2$" in svg  # shown as typed, not typeset as mathtext
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg and "<script>" not in svg


def test_effect_size_heatmap_from_a_diagnose_table(data):
    X, Xh, cov, _ = data
    res = fh.diagnostics.diagnose(X, cov, formula="age + sex", X_harmonized=Xh, n_permutations=0,
                                  multivariate=False, classification=False)
    table = res["site_effect_sizes"]
    with pytest.raises(InputError, match="several data sets"):
        plots.effect_size_heatmap(table, ax=_ax())
    with pytest.raises(InputError, match="no data set 'after'"):
        plots.effect_size_heatmap(table, data="after", ax=_ax())
    ax = plots.effect_size_heatmap(table, data="harmonized", value="log_var_ratio", ax=_ax())
    np.testing.assert_array_equal(ax.images[0].get_array(), res.site_effect_matrix("harmonized", "log_var_ratio"))
    with pytest.raises(ColumnNotFoundError, match="'shift'"):
        plots.effect_size_heatmap(table.drop(columns="shift"), data="raw", ax=_ax())
    # the data-based heatmap draws the same numbers as the table
    ax = plots.site_effect_heatmap(X, cov, formula="age + sex", ax=_ax())
    np.testing.assert_allclose(ax.images[0].get_array(), res.site_effect_matrix("raw"), rtol=1e-12)
