"""The site classification's default classifier (LDA on the training folds' principal components) and its
permutation null: agreement with a plain computation, calibration without a site effect, power on planted
site effects, Besag–Clifford stopping, permutations inside the CV cells, and the logistic option reproducing
featharm's earlier default."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import featharm as fh
from featharm import diagnostics as dg
from featharm.diagnostics import _lda, _parallel, _permutation
from featharm.diagnostics import multivariate as mv


def _sites(seed, n=60, V=6, m=3, shift=0.0, age_shift=5.0):
    """``m`` equal sites; age differs by site and moves every feature (a covariate the folds residualize);
    ``shift``: site means of every feature drawn N(0, shift²), in units of the within-site SD."""
    rng = np.random.default_rng(seed)
    site = rng.permutation(np.arange(n) % m)
    age = rng.normal(50 + age_shift * (site - (m - 1) / 2), 10)
    Y = rng.standard_normal((n, V)) + 0.03 * (age[:, None] - 50) + shift * rng.normal(size=(m, V))[site]
    ids = [f"s{i}" for i in range(n)]
    return (pd.DataFrame(Y, index=ids, columns=[f"f{j}" for j in range(V)]),
            pd.DataFrame({"site": [f"site{k}" for k in site], "age": age}, index=ids))


def _reference_lda(Ttr, Tte, ytr, yte):
    """LDA written out for one label vector: class means, pooled covariance, discriminants, softmax; balanced
    accuracy and sklearn's one-vs-rest AUC on the posterior probabilities."""
    from sklearn.metrics import roc_auc_score

    cls = np.unique(ytr)
    mus = np.array([Ttr[ytr == c].mean(axis=0) for c in cls])
    Sw = sum((Ttr[ytr == c] - mus[i]).T @ (Ttr[ytr == c] - mus[i]) for i, c in enumerate(cls)) / (len(ytr) - len(cls))
    Si = np.linalg.inv(Sw)
    d = Tte @ Si @ mus.T - 0.5 * np.einsum("gk,kl,gl->g", mus, Si, mus)
    pred = cls[np.argmax(d, axis=1)]
    P = np.exp(d - d.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    present = np.unique(yte)
    bacc = np.mean([np.mean(pred[yte == c] == c) for c in present])
    col = {c: j for j, c in enumerate(cls)}
    auc = np.mean([roc_auc_score(yte == c, P[:, col[c]]) for c in present if c in col and 0 < np.sum(yte == c) < yte.size])
    return bacc, auc


def test_lda_scores_equal_a_plain_computation():
    """All label vectors at once (Woodbury m × m solves with the training Gram matrix's Cholesky factor, or
    with its diagonal on principal component scores; mid-ranks) equal the textbook LDA of each on the original
    coordinates (LDA does not change under an invertible linear map), also when a site is missing from the
    training rows."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        m, k = int(rng.integers(2, 6)), int(rng.integers(1, 8))
        A = rng.standard_normal((k, k))
        Ttr = rng.standard_normal((int(rng.integers(30, 80)), k)) @ A + 3.0
        Tte = rng.standard_normal((int(rng.integers(10, 30)), k)) @ A + 3.0
        ytr, yte = rng.integers(0, m, (3, Ttr.shape[0])), rng.integers(0, m, (3, Tte.shape[0]))
        if trial % 4 == 0:
            ytr[:, ytr[0] == m - 1] = 0
        centre = Ttr.mean(axis=0)
        Fc, Fte = Ttr - centre, Tte - centre
        rot = np.linalg.eigh(Fc.T @ Fc)[1]  # principal axes: diagonal training scatter
        folds = [(_lda.Fold(Fte, len(Fc), gram=Fc.T @ Fc), Fc),
                 (_lda.Fold(Fte @ rot, len(Fc), lam=np.einsum("ij,ij->j", Fc @ rot, Fc @ rot)), Fc @ rot)]
        for fold, F in folds:
            S, cnt = _lda.site_sums(_lda.column_blocks(F), np.arange(len(F)), ytr, m)
            bacc, auc = _lda.lda_scores(fold, S, cnt, yte, m)
            for b in range(3):
                ref = _reference_lda(Ttr, Tte, ytr[b], yte[b])
                assert bacc[b] == pytest.approx(ref[0], abs=1e-12) and auc[b] == pytest.approx(ref[1], abs=1e-12)


@pytest.mark.parametrize("k", [None, 5])
def test_fold_features_from_moments_equal_the_direct_computation(k):
    """A raw-table fold (moments of the whole table minus its test rows'; site sums of the whole table minus
    the test rows') equals the direct computation on the training rows: standardized covariate residuals
    (all features) or their first principal components (k = 5), a constant feature left out, large feature
    means losing no accuracy; the fold's own tables (the harmonizer's path) give the same."""
    rng = np.random.default_rng(1)
    n, V, m = 300, 25, 3
    Y = rng.standard_normal((n, V)) @ rng.standard_normal((V, V)) + 1e4
    Y[:, 3] = 2.0
    Xc = rng.standard_normal((n, 2))
    W = np.hstack([np.ones((n, 1)), Xc])
    tr, te = np.arange(240), np.arange(240, 300)
    labels = rng.integers(0, m, (4, n))
    raw = _lda.RawFolds(Y, Xc)
    kk = V if k is None else k
    a = raw.fold(tr, te, kk)
    b = _lda.table_fold(Y[tr], Y[te], W[tr], W[te], kk)
    coef = np.linalg.lstsq(W[tr], Y[tr], rcond=None)[0]
    R, Rte = Y[tr] - W[tr] @ coef, Y[te] - W[te] @ coef
    keep = R.std(axis=0) > 1e-6
    sd = R[:, keep].std(axis=0)
    F, Fte = R[:, keep] / sd, Rte[:, keep] / sd
    if k is not None:
        vec = np.linalg.svd(F, full_matrices=False)[2][:k].T
        F, Fte = F @ vec, Fte @ vec
    S = np.stack([[F[labels[j, tr] == g].sum(axis=0) for g in range(m)] for j in range(4)])
    splits = [(tr, te), (te, tr)]  # the test rows of the "first repeat" partition the table
    for fold in (a, b):
        Sraw, cnt = raw.train_sums(labels, splits, 2, m)[0] if fold is a else fold.own_sums(labels[:, tr], m)
        if fold is a:  # without a partition of the rows the whole table's sums are computed directly
            direct = raw.train_sums(labels, splits[:1], 1, m)[0]
            np.testing.assert_allclose(direct[0], Sraw, atol=1e-9)
            np.testing.assert_array_equal(direct[1], cnt)
        Sf = fold.features(Sraw)
        test = fold.test @ fold.chol.T if fold.chol is not None else fold.test * fold.root  # not whitened
        sign = np.sign(np.sum(test * Fte, axis=0))  # principal axes have no sign
        np.testing.assert_allclose(test * sign, Fte, atol=1e-8)
        np.testing.assert_allclose(Sf * sign, S, atol=1e-7)
        np.testing.assert_array_equal(cnt, [np.bincount(labels[j, tr], minlength=m) for j in range(4)])


def test_null_is_calibrated_without_site_effect():
    """No site effect (but age differs by site and moves the features): the permutation p-values of balanced
    accuracy and AUC reject at 0.05 in ~5 % of 250 data sets (binomial 99.9 % band; observed 3.2 % and 3.2 %
    when written; balanced accuracy is discrete, so slightly conservative)."""
    N = 250
    p = np.array([dg.site_classification(*_sites(i), formula="age", n_permutations=99, n_repeats=1,
                                         random_state=i).p_perm.to_numpy() for i in range(N)])
    lo, hi = stats.binom.ppf(0.0005, N, 0.05) / N, stats.binom.isf(0.0005, N, 0.05) / N
    for j in range(2):
        assert lo <= np.mean(p[:, j] <= 0.05) <= hi, np.mean(p[:, j] <= 0.05)
    # Besag–Clifford: most null runs stop after a few dozen permutations
    assert np.all((p >= 0.01) & (p <= 1))


@pytest.mark.parametrize("shift, power", [(0.3, 0.4), (0.6, 0.95)])
def test_power_on_planted_site_effects(shift, power):
    """Site means shifted by N(0, shift²) within-site SDs per feature (n = 60, 6 features, 3 sites): the
    balanced accuracy's p-value rejects at 0.05 in at least ``power`` of 40 data sets (written: 0.45 and
    0.975; the AUC's 0.6 and 1.0)."""
    p = np.array([dg.site_classification(*_sites(100 + i, shift=shift), formula="age", n_permutations=99,
                                         n_repeats=1, random_state=i).p_perm[0] for i in range(40)])
    assert np.mean(p <= 0.05) >= power


def test_besag_clifford_stopping():
    rng = np.random.default_rng(3)
    pool = rng.random((500, 2))

    def drawer():
        it = iter(pool)
        return lambda B: np.array([next(it) for _ in range(B)])

    # statistic 0: exceeded by ~half the permutations (decided after ~2h); statistic 1: never exceeded
    obs = np.array([0.5, 2.0])
    res = _permutation.sequential_null(obs, drawer(), 200, 10)
    assert not res.decided[1] and res.n_run == 200 and res.p[1] == pytest.approx(1 / 201)
    hits = np.cumsum(pool[:, 0] >= 0.5)
    L0 = int(np.flatnonzero(hits == 10)[0]) + 1
    assert res.decided[0] and res.p[0] == pytest.approx(10 / L0)
    # both decided: stops at the later of the two stopping points, whatever the block sizes
    obs = np.array([0.5, 0.3])
    runs = [_permutation.sequential_null(obs, drawer(), 200, 10, first_block=fb, max_block=mb)
            for fb, mb in [(1, 1), (20, 100), (7, 13)]]
    L1 = int(np.flatnonzero(np.cumsum(pool[:, 1] >= 0.3) == 10)[0]) + 1
    for r in runs:
        assert r.decided.all() and r.n_run == max(L0, L1) < 200
        np.testing.assert_array_equal(r.null, pool[:max(L0, L1)])
        np.testing.assert_allclose(r.p, [10 / L0, 10 / L1])
    # without stopping: the fixed-count p-value (1 + #exceed) / (1 + n)
    full = _permutation.sequential_null(obs, drawer(), 200, None)
    assert full.n_run == 200 and full.p[0] == (1 + np.sum(pool[:200, 0] >= 0.5)) / 201
    # a valid p-value: P(p <= u) <= u for exchangeable statistics (observed value drawn like the null)
    ps = []
    for i in range(3000):
        vals = rng.random(100)
        ps.append(_permutation.sequential_null(vals[:1], lambda B, it=iter(vals[1:]): np.array(
            [next(it) for _ in range(B)]), 99, 10).p[0])
    ps = np.array(ps)
    for u in (0.01, 0.05, 0.1, 0.2, 0.5):
        assert np.mean(ps <= u) <= u + 3 * np.sqrt(u * (1 - u) / ps.size)


def test_classification_stops_early_only_without_site_effect():
    X, cov = _sites(5)
    null = dg.site_classification(X, cov, formula="age", random_state=0)
    strong = dg.site_classification(*_sites(5, shift=1.0), formula="age", random_state=0)
    assert list(null.columns) == mv.CLASSIFICATION_COLUMNS
    assert (null.max_permutations == 100).all() and (null.classifier == "lda").all()
    assert (null.n_permutations < 100).all() and (null.p_perm >= 0.05).all()
    assert (strong.n_permutations == 100).all() and (strong.p_perm == 1 / 101).all()
    everything = dg.site_classification(X, cov, formula="age", random_state=0, stop_after=None)
    assert (everything.n_permutations == 100).all()


def test_permutations_stay_inside_the_cv_cells():
    """Every fold keeps its rows and its number of rows per site under the permutations."""
    X, cov = _sites(7, n=90)
    codes = pd.factorize(cov.site, sort=True)[0]
    from sklearn.model_selection import RepeatedStratifiedKFold

    splits = list(RepeatedStratifiedKFold(n_splits=5, n_repeats=2, random_state=0).split(X, codes))
    cells = _permutation.cv_cells(splits, len(codes), 5)
    assert len(np.unique(cells)) <= 25
    perm = _permutation.CellPermuter(codes, cells)
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(20):
        lab = perm.draw(rng)
        moved += np.sum(lab != codes)
        for tr, te in splits:
            np.testing.assert_array_equal(np.bincount(lab[te], minlength=3), np.bincount(codes[te], minlength=3))
    assert moved > 0


def test_logistic_option_reproduces_the_earlier_default():
    """``classifier="logistic", stop_after=None`` gives featharm 0.x's numbers (multinomial logistic regression,
    permutations of all rows), written down from the earlier implementation with the same seed."""
    s = fh.datasets.make_multisite(n_subjects=200, n_sites=4, n_features=12, unbalanced=False, random_state=3)
    t = dg.site_classification(s.X, s.covariates, batch="site", formula="age + sex", n_permutations=6, n_repeats=1,
                               random_state=7, classifier="logistic", stop_after=None)
    expected = {"value": [0.7550000000000001, 0.9273333333333333], "sd": [0.03674234614174767, 0.01559380218762141],
                "null_mean": [0.2677611393236394, 0.4962853900117783],
                "null_sd": [0.019606632454716874, 0.026131682549877324], "p_perm": [1 / 7, 1 / 7]}
    for col, vals in expected.items():
        np.testing.assert_allclose(t[col].to_numpy(), vals, rtol=1e-9, err_msg=col)
    assert (t.classifier == "logistic").all() and t.n_components.isna().all()


def test_threads_do_not_change_the_numbers(monkeypatch):
    X, cov = _sites(11, n=120, V=30)
    one = dg.diagnose(X, cov, formula="age", random_state=0, n_permutations=199)
    monkeypatch.setattr(_parallel, "n_threads", lambda: 2)
    two = dg.diagnose(X, cov, formula="age", random_state=0, n_permutations=199)
    for k in one:
        pd.testing.assert_frame_equal(one[k], two[k])


def test_classifier_options_are_checked():
    X, cov = _sites(1)
    with pytest.raises(fh.exceptions.InputError, match="classifier"):
        dg.site_classification(X, cov, classifier="svm")
    with pytest.raises(fh.exceptions.InputError, match="stop_after"):
        dg.site_classification(X, cov, stop_after=0)
    with pytest.raises(fh.exceptions.InputError, match="n_components"):
        dg.diagnose(X, cov, classification_components=-1)


# ------------------------------------------------------------------------- threads of a diagnostics call
def _blas_threads():
    from threadpoolctl import threadpool_info

    return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})


def test_diagnostics_thread_rule():
    """One thread below ``THREADED`` elements (IXI's 556 × 68); from there on, the free CPUs, as a large model
    problem gets them; ``n_jobs`` as given."""
    machine = dict(cpus=2, host_cpus=2, env_limit=None, current=None)
    assert _parallel.diagnostics_threads(556 * 68, others=0.0, **machine) == 1
    assert _parallel.diagnostics_threads(5000 * 400, others=0.0, **machine) == 2
    assert _parallel.diagnostics_threads(5000 * 400, others=1.0, **machine) == 1   # the other core is busy
    assert _parallel.diagnostics_threads(5000 * 400, others=0.0, **{**machine, "env_limit": 1}) == 1
    assert _parallel.diagnostics_threads(556 * 68, n_jobs=2, others=1.0, **machine) == 2
    assert _parallel.diagnostics_threads(5000 * 400, n_jobs=-1, others=1.0, **machine) == 2


def test_diagnostics_n_jobs_reaches_the_blas_and_keeps_the_numbers(monkeypatch):
    """``n_jobs`` sets the BLAS threads during the call (which the per-block threads follow) and is restored
    after; the tables are identical with one and two threads; a bad value is an InputError naming it."""
    seen = []
    original = _parallel.n_threads

    def spy():
        seen.append(_blas_threads())
        return original()

    monkeypatch.setattr(_parallel, "n_threads", spy)
    X, cov = _sites(12, n=120, V=30)
    before = _blas_threads()
    one = dg.diagnose(X, cov, formula="age", random_state=0, n_permutations=199, n_jobs=1)
    assert seen and all(s == [1] for s in seen)
    seen.clear()
    two = dg.diagnose(X, cov, formula="age", random_state=0, n_permutations=199, n_jobs=2)
    assert seen and all(s == [2] for s in seen)
    assert _blas_threads() == before
    for k in one:
        pd.testing.assert_frame_equal(one[k], two[k])
    with pytest.raises(fh.exceptions.InputError, match="'n_jobs' parameter of permanova"):
        dg.permanova(X, cov, n_jobs=0)


def test_refits_of_a_smooth_model_cover_every_fold():
    """A ComBatGAM refitted inside the folds gets the whole table's age range as its boundary knots: a test
    fold holding the youngest or oldest subject no longer raises OutOfRangeError, and the user's own bounds
    are kept."""
    from featharm.diagnostics.multivariate import _with_smooth_bounds

    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=8, unbalanced=False, random_state=4)
    X, cov = s.X, s.covariates
    gam = fh.ComBatGAM(formula="sex", smooth="age", df=6)
    Xh = gam.fit_transform(X, cov)
    t = dg.site_classification(Xh, cov, formula="age + sex", harmonizer=gam, n_permutations=0, random_state=0,
                               n_repeats=1)
    assert np.isfinite(t.value).all()
    h = _with_smooth_bounds(fh.ComBatGAM(formula="sex", smooth="age"), cov)
    assert h.smooth_bounds == {"age": (cov.age.min(), cov.age.max())}
    own = _with_smooth_bounds(fh.ComBatGAM(formula="sex", smooth="age", smooth_bounds={"age": (0, 120)}), cov)
    assert own.smooth_bounds == {"age": (0, 120)}
    assert _with_smooth_bounds(fh.ComBat(formula="age"), cov).get_params() == fh.ComBat(formula="age").get_params()


def test_warning_records_are_per_thread():
    """record_warnings collects the warnings of its own thread: a warning issued meanwhile in another thread
    (another model's fit) is not in it. add_to_records hands another thread's list over, in order."""
    import threading
    import warnings

    from featharm.exceptions import FeatharmWarning, add_to_records, record_warnings, warn

    inside, warned = threading.Event(), threading.Event()
    seen = {}

    def recorder():
        with record_warnings() as log:
            inside.set()
            warned.wait(10)
        seen["log"] = log

    def other():
        inside.wait(10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warn("from the other thread", FeatharmWarning)
        warned.set()

    threads = [threading.Thread(target=recorder), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen["log"] == []
    with record_warnings() as outer:
        add_to_records([{"category": "SmallBatchWarning", "message": "a"}, {"category": "X", "message": "b"}])
    assert [w["message"] for w in outer] == ["a", "b"]


def test_fold_refits_on_threads_give_the_same_tables_and_warnings(monkeypatch):
    """The harmonizer's refits in the CV folds run on the diagnostics' threads: with two threads the tables
    and the recorded refit warnings (in fold order) are those of one thread."""
    s = fh.datasets.make_multisite(n_subjects=240, n_sites=4, n_features=10, unbalanced=False, random_state=6)
    keep = ~((s.covariates.site == "site04").to_numpy() & (np.cumsum(s.covariates.site == "site04") > 11))
    X, cov = s.X[keep], s.covariates[keep]  # site04 keeps 11 rows: 8 or 9 in each training fold
    model = fh.ComBat(batch="site", formula="age + sex")
    Xh = model.fit_transform(X, cov)
    kw = dict(formula="age + sex", X_harmonized=Xh, harmonizer=model, random_state=0, n_permutations=0,
              classification_permutations=20)
    with pytest.warns(fh.exceptions.SmallBatchWarning):
        one = dg.diagnose(X, cov, n_jobs=1, **kw)
    monkeypatch.setattr(_parallel, "n_threads", lambda: 2)
    with pytest.warns(fh.exceptions.SmallBatchWarning):
        two = dg.diagnose(X, cov, n_jobs=2, **kw)
    assert one.refit_warnings and one.refit_warnings == two.refit_warnings
    assert len(one.refit_warnings) >= 10  # every fold's fit warned about the small site
    for k in one:
        pd.testing.assert_frame_equal(one[k], two[k])
