"""ComBat from per-batch sufficient statistics equals ComBat fitted on the rows (``docs/methods.md`` §1.9).

The statistics are accumulated over random row blocks, in random order, merged, and fitted; every stored
array and the harmonized output must equal the in-memory ``ComBat.fit`` to 1e-10 (relative), for every
option, with volume-like features (mean ~1e4, SD ~1e2), with NaN cells, and for new sites (§5.7).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import featharm
from featharm._core.suffstats import SuffStats
from featharm.exceptions import BatchError, ConfoundingError, InputError
from featharm.models._from_stats import extend_with_statistics, fit_from_statistics, freeze_design

TOL = 1e-10

OPTIONS = {
    "parametric": {},
    "nonparametric": {"parametric": False},
    "mean_only": {"mean_only": True},
    "mean_only_nonparametric": {"mean_only": True, "parametric": False},
    "eb_false": {"eb": False},
    "ref_batch": {"ref_batch": "site1"},
    "ref_batch_nonparametric": {"ref_batch": "site0", "parametric": False},
    "ref_batch_eb_false": {"ref_batch": "site2", "eb": False},
    "mean_only_form_n": {"mean_only": True, "mean_only_form": "n"},
    "compat_neuroCombat": {"compat": "neuroCombat"},
}


def make_volumes(seed: int, n_sites: int, nan_fraction: float = 0.0, p: int = 36, offset: float | None = None):
    """Sites of 40-150 subjects; most features volume-like (mean 5e3-2e4, SD 50-200), a few thickness-like
    (mean ~2.5, SD ~0.1); age and sex effects, additive and multiplicative site effects. With
    ``nan_fraction``, that share of the cells of the second half of the features is NaN (scattered). ``offset``
    replaces the mean of the volume-like features (their SD and covariate effects unchanged)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(40, 150, n_sites)
    n = int(sizes.sum())
    site = np.repeat([f"site{i}" for i in range(n_sites)], sizes)
    rng.shuffle(site)
    codes = np.unique(site, return_inverse=True)[1]
    age = rng.uniform(20, 85, n)
    sex = rng.choice(["F", "M"], n)
    thick = np.arange(p) % 6 == 5
    mu = np.where(thick, rng.uniform(2.0, 3.0, p), rng.uniform(5e3, 2e4, p))
    sd = np.where(thick, rng.uniform(0.08, 0.15, p), rng.uniform(50, 200, p))
    slope = rng.normal(-0.004, 0.001, p) * mu  # about -0.4 % per year (volumes), -0.01 per year (thickness)
    if offset is not None:
        mu = np.where(thick, mu, offset)
    gamma = rng.normal(rng.normal(0, 0.5, n_sites)[:, None], 0.4, (n_sites, p))
    delta = np.exp(rng.normal(0, 0.3, n_sites))[:, None] * np.exp(rng.normal(0, 0.15, (n_sites, p)))
    Y = (mu + np.outer(age - 50, slope) + np.outer(sex == "M", rng.normal(0, 0.5, p)) * sd
         + sd * (gamma[codes] + delta[codes] * rng.standard_normal((n, p))))
    if nan_fraction:
        M = rng.random((n, p)) < nan_fraction
        M[:, : p // 2] = False
        Y[M] = np.nan
    ids = pd.Index([f"sub-{k:05d}" for k in rng.permutation(n)], name="id")
    X = pd.DataFrame(Y, index=ids, columns=[f"roi_{j}" for j in range(p)])
    cov = pd.DataFrame({"site": site, "age": age, "sex": sex}, index=ids)
    return X, cov


def summarize(frozen, Y: np.ndarray, seed: int, n_blocks: int = 7, center: bool = True) -> SuffStats:
    """Statistics of the rows, accumulated over random row blocks (random sizes, shuffled rows), each block into
    its own object, merged in a random order."""
    rng = np.random.default_rng(seed)
    n = Y.shape[0]
    perm = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), n_blocks - 1, replace=False))
    pieces = []
    for rows in np.split(perm, cuts):
        s = SuffStats(len(frozen.batches), frozen.X.shape[1], Y.shape[1], center=center)
        # some blocks are fed in two updates, to exercise the shift set by an earlier update of the same object
        half = rows.size // 2
        s.update(frozen.X[rows[:half]], Y[rows[:half]], frozen.codes[rows[:half]])
        s.update(frozen.X[rows[half:]], Y[rows[half:]], frozen.codes[rows[half:]])
        pieces.append(s)
    order = rng.permutation(len(pieces))
    return SuffStats.combine([pieces[i] for i in order])


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| over the finite entries of ``b`` (which must be finite exactly where ``a`` is)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    ok = np.isfinite(b)
    if not ok.any():
        return 0.0
    scale = np.abs(b[ok]).max()
    return float(np.abs(a[ok] - b[ok]).max() / scale) if scale > 0 else float(np.abs(a[ok]).max())


def stored_errors(got, want) -> dict[str, float]:
    """The relative error of every stored array (``_arr``) of ``got`` against ``want`` (both have the same arrays):
    feature by feature for arrays with a feature axis (each feature's column against its own largest value, so a
    feature with a small SD is held to the same standard as the others; features passed through as constant
    are left out), over the whole array otherwise."""
    assert sorted(got._arr) == sorted(want._arr)
    assert np.array_equal(got._arr["constant"], want._arr["constant"])
    varying = np.flatnonzero(~want._arr["constant"])  # a constant feature's sigma is rounding, and unused
    out = {}
    for k, b in want._arr.items():
        a = got._arr[k]
        if featharm.models._base._ARRAY_AXES.get(k, ())[-1:] == ("feature",) and k != "constant":
            out[k] = max(rel_error(a[..., j], b[..., j]) for j in varying)
        else:
            out[k] = rel_error(a, b)
    return out


def output_error(got: pd.DataFrame, want: pd.DataFrame, sigma: np.ndarray) -> float:
    """Largest difference of the harmonized values, in units of each feature's SD (stricter than relative to the
    values, which are ~1e4 for volumes)."""
    a, b = got.to_numpy(), want.to_numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b))
    return float(np.nanmax(np.abs(a - b) / sigma))


def fit_both(X, cov, options, seed, center=True):
    params = dict(batch="site", formula="age + sex", **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
        model = featharm.ComBat(**params)
        out = model.fit_transform(X, cov)
        frozen = freeze_design(featharm.ComBat(**params), cov)
        stats = summarize(frozen, X.to_numpy(), seed, center=center)
        fitted = featharm.ComBat.from_statistics(stats, batches=frozen.batches, design=frozen.design,
                                                 feature_names=X.columns, **params)
        out2 = fitted.transform(X, cov)
    return model, out, fitted, out2


@pytest.mark.parametrize("nan_fraction", [0.0, 0.04], ids=["complete", "nan_cells"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_statistics_fit_equals_in_memory_fit(option, nan_fraction):
    seed = sorted(OPTIONS).index(option)
    n_sites = 3 + seed % 4  # 3 to 6 sites
    X, cov = make_volumes(seed, n_sites, nan_fraction)
    model, out, fitted, out2 = fit_both(X, cov, OPTIONS[option], seed)
    errors = stored_errors(fitted, model)
    assert max(errors.values()) <= TOL, errors
    assert np.array_equal(fitted._arr["n_iter"], model._arr["n_iter"])
    assert np.array_equal(fitted._arr["constant"], model._arr["constant"])
    assert ("n_obs" in fitted._arr) == bool(nan_fraction)
    assert list(fitted.batches_) == list(model.batches_)
    assert fitted.design_.to_dict() == model.design_.to_dict()
    assert fitted.get_params() == model.get_params()
    assert output_error(out2, out, model._arr["sigma"]) <= TOL
    if model.ref_index_ is not None:  # reference rows unchanged, bit for bit, on both paths
        rows = (cov["site"] == model.batches_[model.ref_index_]).to_numpy()
        assert np.array_equal(out2[rows].to_numpy(), X[rows].to_numpy(), equal_nan=True)


def test_compat_sva_with_missing_values():
    X, cov = make_volumes(11, 4, 0.05)
    model, out, fitted, out2 = fit_both(X, cov, {"compat": "sva"}, 11)
    assert max(stored_errors(fitted, model).values()) <= TOL
    assert output_error(out2, out, model._arr["sigma"]) <= TOL


def test_empty_site_feature_cell_and_single_values():
    """A site with no observed value of a feature, and one with a single one (§1.8): the same warnings, the same
    numbers (the cell's site effect comes from the prior)."""
    X, cov = make_volumes(12, 4, 0.0)
    site = cov["site"].to_numpy()
    X.loc[site == "site1", "roi_30"] = np.nan
    one = np.flatnonzero(site == "site2")
    X.iloc[one[1:], X.columns.get_loc("roi_31")] = np.nan
    params = dict(batch="site", formula="age + sex")
    with pytest.warns(featharm.exceptions.MissingValueWarning) as rec_mem:
        model = featharm.ComBat(**params).fit(X, cov)
    frozen = freeze_design(featharm.ComBat(**params), cov)
    with pytest.warns(featharm.exceptions.MissingValueWarning) as rec_stats:
        fitted = featharm.ComBat.from_statistics(summarize(frozen, X.to_numpy(), 3), batches=frozen.batches,
                                                 design=frozen.design, feature_names=X.columns, **params)
    assert [str(w.message) for w in rec_stats] == [str(w.message) for w in rec_mem]
    assert fitted.fit_warnings_ == model.fit_warnings_
    assert max(stored_errors(fitted, model).values()) <= TOL


def test_no_covariates_and_a_constant_feature():
    X, cov = make_volumes(13, 3)
    X["flat"] = 7.0
    params = dict(batch="site", formula=None)
    with pytest.warns(featharm.exceptions.ConstantFeatureWarning):
        model = featharm.ComBat(**params).fit(X, cov)
    frozen = freeze_design(featharm.ComBat(**params), cov)
    with pytest.warns(featharm.exceptions.ConstantFeatureWarning):
        fitted = featharm.ComBat.from_statistics(summarize(frozen, X.to_numpy(), 5), batches=frozen.batches,
                                                 design=frozen.design, feature_names=X.columns, **params)
    assert fitted._arr["constant"][-1] and fitted.constant_features_ == ["flat"]
    assert max(stored_errors(fitted, model).values()) <= TOL


def test_shift_keeps_volumes_exact_where_naive_sums_are_not():
    """The shift is what makes the statistics exact: around 0 (``center=False``), the sums of squares of
    features with a large mean lose digits. On volumes (mean ~1e4, SD ~1e2) the naive error is already two
    orders of magnitude above the shifted one; with a mean of 1e6 (SD ~1e2) it exceeds the 1e-10 tolerance,
    while the shifted statistics stay within it."""
    X, cov = make_volumes(21, 4, p=24)
    _, _, shifted, _ = fit_both(X, cov, {}, 1)
    model, _, naive, _ = fit_both(X, cov, {}, 1, center=False)
    err_shifted, err_naive = max(stored_errors(shifted, model).values()), max(stored_errors(naive, model).values())
    assert err_shifted <= 1e-12 and err_naive > 20 * err_shifted
    X, cov = make_volumes(22, 4, p=24, offset=1e6)
    model, out, shifted, out2 = fit_both(X, cov, {}, 2)
    _, _, naive, _ = fit_both(X, cov, {}, 2, center=False)
    assert max(stored_errors(shifted, model).values()) <= TOL
    assert output_error(out2, out, model._arr["sigma"]) <= TOL
    assert max(stored_errors(naive, model).values()) > TOL


@pytest.mark.parametrize("shared_shifts", [False, True], ids=["own_shifts", "shared_shifts"])
def test_features_almost_explained_by_the_covariates(shared_shifts):
    """Features that age and sex explain but for 2e-8 to 2e-4 of their variance (above the 1e-10 at which ComBat
    passes a feature through as a function of the covariates): their residual sums of squares are a tiny
    difference of large sums unless the shift follows the covariates too (the pilot slopes). Row blocks of 40+ rows
    each with their own shifts, or many small blocks (2-20 rows, too few for a pilot) sharing the shifts of a first
    block (``SuffStats.empty_like``): both within 1e-10, feature by feature."""
    X, cov = make_volumes(71, 4, 0.03)
    rng = np.random.default_rng(5)
    age, male = cov["age"].to_numpy(), (cov["sex"] == "M").to_numpy()
    site = np.unique(cov["site"], return_inverse=True)[1]
    # residual SD against an age effect of SD ~750: 1 - R² from 2e-8 to 2e-4. (At 1 - R² = 2e-10 the site effects
    # gamma_hat, differences of intercepts ~1e4 divided by a sigma of 0.01, carry a float64 rounding of ~1e-10
    # relative on either path: the in-memory fit itself is that far from the exact value.)
    noise = np.array([0.1, 1.0, 10.0])
    for k, sd in enumerate(noise):
        X[f"roi_{k}"] = (1e4 - 40 * age + 30 * male + sd * (rng.normal(0, 0.5, 4)[site]
                                                           + rng.standard_normal(len(X))))
    params = dict(batch="site", formula="age + sex")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
        model = featharm.ComBat(**params)
        out = model.fit_transform(X, cov)
        frozen = freeze_design(featharm.ComBat(**params), cov)
        Y = X.to_numpy()
        perm = rng.permutation(len(Y))
        if shared_shifts:
            first = SuffStats(4, 2, Y.shape[1]).update(frozen.X[perm[:60]], Y[perm[:60]], frozen.codes[perm[:60]])
            pieces, start = [first], 60
            while start < len(Y):
                rows = perm[start:start + int(rng.integers(2, 20))]
                pieces.append(SuffStats.empty_like(first).update(frozen.X[rows], Y[rows], frozen.codes[rows]))
                start += rows.size
        else:
            pieces = [SuffStats(4, 2, Y.shape[1]).update(frozen.X[rows], Y[rows], frozen.codes[rows])
                      for rows in np.array_split(perm, len(Y) // 45)]
        rng.shuffle(pieces)
        fitted = featharm.ComBat.from_statistics(SuffStats.combine(pieces), batches=frozen.batches,
                                                 design=frozen.design, feature_names=X.columns, **params)
        out2 = fitted.transform(X, cov)
    assert not model._arr["constant"][:3].any()
    errors = stored_errors(fitted, model)
    assert max(errors.values()) <= TOL, errors
    assert output_error(out2, out, model._arr["sigma"]) <= TOL


@pytest.mark.parametrize("spread", [0.08, 0.003], ids=["warning", "error"])
def test_confounding_checked_from_statistics_as_in_memory(spread):
    """A covariate mostly explained by the site (``check_full_rank``'s rho below 0.1: a warning; below 0.01: an
    error): the statistics give the same warning (same message) or refuse the same way, without the rows."""
    X, cov = make_volumes(81, 4)
    rng = np.random.default_rng(0)
    level = cov["site"].map({"site0": 1.0, "site1": 2.0, "site2": 3.0, "site3": 4.0}).to_numpy()
    cov = cov.assign(field=level + spread * rng.standard_normal(len(cov)))
    params = dict(batch="site", formula="age + field")
    frozen = freeze_design(featharm.ComBat(**params), cov)
    stats = summarize(frozen, X.to_numpy(), 1)

    def from_stats():
        return featharm.ComBat.from_statistics(stats, batches=frozen.batches, design=frozen.design,
                                               feature_names=X.columns, **params)

    if spread > 0.01:
        with pytest.warns(featharm.exceptions.CollinearityWarning) as rec_mem:
            model = featharm.ComBat(**params).fit(X, cov)
        with pytest.warns(featharm.exceptions.CollinearityWarning) as rec_stats:
            fitted = from_stats()
        assert [str(w.message) for w in rec_stats] == [str(w.message) for w in rec_mem]
        assert fitted.fit_warnings_ == model.fit_warnings_
    else:
        with pytest.raises(ConfoundingError) as mem:
            featharm.ComBat(**params).fit(X, cov)
        with pytest.raises(ConfoundingError) as st:
            from_stats()
        assert str(st.value) == str(mem.value)


def test_merge_order_gives_the_same_model_bit_for_bit():
    X, cov = make_volumes(31, 5, 0.03)
    params = dict(batch="site", formula="age + sex")
    frozen = freeze_design(featharm.ComBat(**params), cov)
    Y = X.to_numpy()
    rng = np.random.default_rng(0)
    blocks = np.array_split(rng.permutation(len(X)), 6)
    pieces = []
    for rows in blocks:
        s = SuffStats(len(frozen.batches), 2, Y.shape[1])
        pieces.append(s.update(frozen.X[rows], Y[rows], frozen.codes[rows]))
    fits = []
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 4, 2], [2, 4, 0, 5, 1, 3]):
        stats = SuffStats.combine([pieces[i] for i in order])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
            fits.append(featharm.ComBat.from_statistics(stats, batches=frozen.batches, design=frozen.design,
                                                        feature_names=X.columns, **params))
    for other in fits[1:]:
        assert sorted(other._arr) == sorted(fits[0]._arr)
        for k in fits[0]._arr:
            assert np.array_equal(other._arr[k], fits[0]._arr[k], equal_nan=True), k


def test_statistics_fitted_model_saves_and_loads(tmp_path):
    X, cov = make_volumes(41, 3, 0.03)
    _, _, fitted, out = fit_both(X, cov, {}, 4)
    path = tmp_path / "m.fhm"
    fitted.save(path)
    loaded = featharm.load_model(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
        assert np.array_equal(loaded.transform(X, cov).to_numpy(), out.to_numpy(), equal_nan=True)


# ---------------------------------------------------------------------------------------- new sites (§5.7)
@pytest.mark.parametrize("nan_fraction", [0.0, 0.04], ids=["complete", "nan_cells"])
@pytest.mark.parametrize("option", ["parametric", "nonparametric", "mean_only", "eb_false", "ref_batch"])
def test_new_site_from_statistics_equals_transform_estimate(option, nan_fraction):
    X, cov = make_volumes(51, 5, nan_fraction)
    new = cov["site"].isin(["site3", "site4"]).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
        model = featharm.ComBat(batch="site", formula="age + sex", **OPTIONS[option]).fit(X[~new], cov[~new])
        want = model.transform(X, cov, new_sites="estimate")
        before = {k: v.copy() for k, v in model._arr.items()}
        levels = ["site3", "site4"]
        codes = pd.Index(levels).get_indexer(cov["site"][new])
        Xn = model.design_.transform(cov[new])
        stats = summarize(type("F", (), {"X": Xn, "codes": codes, "batches": levels}), X[new].to_numpy(), 9)
        extended = extend_with_statistics(model, stats, levels)
        got = extended.transform(X, cov)
    assert list(extended.batches_) == list(model.batches_) + levels
    for k, v in before.items():  # the frozen model is not modified, and its batches keep their parameters
        assert np.array_equal(model._arr[k], v, equal_nan=True)
        if extended._arr[k].shape != v.shape:
            assert np.array_equal(extended._arr[k][: v.shape[0]], v, equal_nan=True), k
    # rows of seen sites: bit for bit as transform; the new sites to 1e-10
    assert np.array_equal(got[~new].to_numpy(), want[~new].to_numpy(), equal_nan=True)
    assert output_error(got, want, model._arr["sigma"]) <= TOL


def test_extended_model_saves_and_loads(tmp_path):
    X, cov = make_volumes(52, 4)
    new = (cov["site"] == "site3").to_numpy()
    model = featharm.ComBat(batch="site", formula="age + sex").fit(X[~new], cov[~new])
    s = SuffStats(1, 2, X.shape[1]).update(model.design_.transform(cov[new]), X[new].to_numpy(),
                                           np.zeros(int(new.sum()), dtype=int))
    extended = extend_with_statistics(model, s, ["site3"])
    extended.save(tmp_path / "e.fhm")
    loaded = featharm.load_model(tmp_path / "e.fhm")
    assert np.array_equal(loaded.transform(X, cov).to_numpy(), extended.transform(X, cov).to_numpy())


# ---------------------------------------------------------------------------------------- errors
def test_errors_name_the_problem():
    X, cov = make_volumes(61, 3)
    params = dict(batch="site", formula="age + sex")
    frozen = freeze_design(featharm.ComBat(**params), cov)
    stats = summarize(frozen, X.to_numpy(), 1)
    with pytest.raises(InputError, match="3 batches but 2 batch levels"):
        fit_from_statistics(featharm.ComBat(**params), stats, batches=frozen.batches[:2], design=frozen.design,
                            feature_names=X.columns)
    with pytest.raises(InputError, match="features but 3 feature names"):
        fit_from_statistics(featharm.ComBat(**params), stats, batches=frozen.batches, design=frozen.design,
                            feature_names=["a", "b", "c"])
    # a covariate constant within each site, only visible from the statistics
    cov2 = cov.assign(scanner_field=cov["site"].map({"site0": 1.5, "site1": 3.0, "site2": 1.5}))
    p2 = dict(batch="site", formula="age + scanner_field")
    fr2 = freeze_design(featharm.ComBat(**p2), cov2)
    with pytest.raises(ConfoundingError, match="'scanner_field' is confounded with 'site'"):
        featharm.ComBat.from_statistics(summarize(fr2, X.to_numpy(), 2), batches=fr2.batches, design=fr2.design,
                                        feature_names=X.columns, **p2)
    with pytest.raises(ConfoundingError, match="confounded"):
        featharm.ComBat(**p2).fit(X, cov2)  # the in-memory fit refuses it too
    model = featharm.ComBat(**params).fit(X, cov)
    s = SuffStats(1, 2, X.shape[1]).update(frozen.X[:3], X.to_numpy()[:3], np.zeros(3, dtype=int))
    with pytest.raises(BatchError, match="already in the model"):
        extend_with_statistics(model, s, ["site1"])
    with pytest.raises(BatchError, match="too few subjects"):
        extend_with_statistics(model, s, ["site9"])
