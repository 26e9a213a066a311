"""Every input layout and container gives the same harmonization, without a copy of the data; float32 stays
float32 (computed in float64)."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm import _threads
from featharm._core import blocks, eb, ols


def _data(n=240, p=30, sites=4, seed=0):
    rng = np.random.default_rng(seed)
    site = np.array([f"s{k}" for k in rng.integers(0, sites, n)])
    codes = np.unique(site, return_inverse=True)[1]
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    Y = (rng.uniform(1, 10, p) + np.outer(age - 50, rng.normal(0, 0.01, p)) + np.outer(sex == "M", rng.normal(0, 0.2, p))
         + rng.normal(0, 0.5, (sites, p))[codes] + rng.uniform(0.1, 0.5, p) * np.exp(rng.normal(0, 0.2, (sites, p)))[codes]
         * rng.standard_normal((n, p)))
    Y += rng.normal(0, 0.5, (n // 2 + 1, p))[np.arange(n) // 2]  # a subject effect (two scans each)
    cov = pd.DataFrame({"site": site, "age": age, "sex": sex, "subject": [f"p{i // 2}" for i in range(n)],
                        "time": np.tile([0.0, 1.0], n // 2)}, index=[f"sub{i:04d}" for i in range(n)])
    return Y, cov


MODELS = {
    "ComBat": lambda: fh.ComBat(formula="age + sex"),
    "ComBat-ref": lambda: fh.ComBat(formula="age + sex", ref_batch="s1"),
    "ComBatGAM": lambda: fh.ComBatGAM(formula="sex", smooth="age", df=5),
    "ComBatLS": lambda: fh.ComBatLS(formula="age + sex", scale_formula="age"),
    "CovBat": lambda: fh.CovBat(formula="age + sex"),
    "LongComBat": lambda: fh.LongComBat(formula="age + sex + time", subject="subject"),
}


def _inputs(Y, cov):
    cols = [f"f{j}" for j in range(Y.shape[1])]
    C = np.ascontiguousarray(Y)
    return {
        "c-array": C,
        "f-array": np.asfortranarray(Y),
        "frame": pd.DataFrame(C, index=cov.index, columns=cols),
        "frame-over-c": pd.DataFrame(C, index=cov.index, columns=cols, copy=False),
        "frame-int-columns": pd.DataFrame(C, index=cov.index),
    }


@pytest.mark.parametrize("model", list(MODELS))
def test_every_layout_gives_the_same_output(model):
    Y, cov = _data()
    ref_model = MODELS[model]().fit(np.asfortranarray(Y), cov)
    ref = ref_model.transform(np.asfortranarray(Y), cov).to_numpy()
    for name, X in _inputs(Y, cov).items():
        hm = MODELS[model]()
        out = hm.fit_transform(X, cov)
        assert out.shape == Y.shape and out.to_numpy().dtype == np.float64, name
        np.testing.assert_allclose(out.to_numpy(), ref, rtol=0, atol=1e-11, err_msg=name)
        np.testing.assert_allclose(hm.transform(X, cov).to_numpy(), ref, rtol=0, atol=1e-11, err_msg=name)
        # a model fitted on one layout applies to another (an array's columns are the fitted ones)
        A = X.to_numpy(copy=False) if isinstance(X, pd.DataFrame) else X
        np.testing.assert_allclose(ref_model.transform(A, cov).to_numpy(), ref, rtol=0, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("container", ["frame", "f-array", "c-array"])
def test_float32_stays_float32(model, container):
    Y, cov = _data()
    Y32 = Y.astype(np.float32)
    X = {"frame": pd.DataFrame(Y32, index=cov.index), "f-array": np.asfortranarray(Y32),
         "c-array": np.ascontiguousarray(Y32)}[container]
    hm = MODELS[model]()
    out = hm.fit_transform(X, cov)
    assert set(out.dtypes) == {np.dtype(np.float32)}
    assert hm.transform(X, cov).to_numpy().dtype == np.float32
    # the float64 computation on the same (float32) values, rounded to float32: equal within float32 precision
    ref = MODELS[model]().fit_transform(pd.DataFrame(Y32.astype(np.float64), index=cov.index), cov).to_numpy()
    np.testing.assert_array_max_ulp(out.to_numpy(), ref.astype(np.float32), maxulp=2)


def test_float32_table_is_not_copied_to_float64():
    Y, cov = _data(n=4000, p=2000, sites=5)  # 32 MB of float32: its blocks (~2 MB each) are small beside it
    X = np.ascontiguousarray(Y.astype(np.float32))
    hm = fh.ComBat(formula="age + sex").fit(X, cov)
    tracemalloc.start()
    try:
        hm.transform(X, cov)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * X.nbytes  # the float32 output, a few float64 blocks; a float64 copy alone is 2x


@pytest.mark.parametrize("name", ["c-array", "f-array", "frame", "frame-int-columns"])
def test_no_copy_of_the_features(name):
    """fit allocates no table of the input's size, transform only its output (blocks are ~2 MB)."""
    Y, cov = _data(n=4000, p=1200, sites=6)  # 38 MB: above SMALL_PROBLEM, so the threaded path
    X = _inputs(Y, cov)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fh.ComBat(formula="age + sex").fit(X, cov)  # warm-up
        tracemalloc.start()
        try:
            hm = fh.ComBat(formula="age + sex").fit(X, cov)
            fit_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            hm.transform(X, cov)
            transform_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert fit_peak < 0.5 * Y.nbytes, fit_peak / Y.nbytes
    assert transform_peak < 1.5 * Y.nbytes, transform_peak / Y.nbytes


@pytest.mark.parametrize("model", [fh.ComBat, fh.ComBatLS])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_threads_give_the_same_bits(monkeypatch, layout, model):
    # 3,000 x 2,000: with the whole-table BLAS products they replaced, one or two BLAS threads changed the
    # last bits of both models' output
    Y, cov = _data(n=3000, p=2000, sites=6)
    _same_bits_for_any_threads(monkeypatch, lambda n_jobs: model(formula="age + sex", n_jobs=n_jobs),
                               np.asarray(Y, order=layout), cov)


@pytest.mark.parametrize("make", [
    lambda n_jobs: fh.CovBat(formula="age + sex", n_jobs=n_jobs),  # its QR and SVD on one BLAS thread
    lambda n_jobs: fh.ComBatGAM(formula="sex", smooth="age", n_jobs=n_jobs),  # projections in blocks
], ids=["CovBat", "ComBatGAM"])
def test_threads_give_the_same_bits_in_the_other_families(monkeypatch, make):
    # above SMALL_PROBLEM, so the automatic choice may use two threads; before, one or two BLAS threads
    # changed the last bits of both (up to 7e-13 for CovBat, 1e-14 for ComBat-GAM at 3,000 x 2,000)
    Y, cov = _data(n=3000, p=1400, sites=6)
    _same_bits_for_any_threads(monkeypatch, make, np.asfortranarray(Y), cov, configs=(("1", 1), ("2", 2)))


LONGITUDINAL_AND_OTHERS = {
    "LongComBat": lambda n_jobs: fh.LongComBat(formula="age + sex + time", subject="subject", n_jobs=n_jobs),
    "LongComBatGAM": lambda n_jobs: fh.LongComBatGAM(formula="sex", smooth="age", df=5, subject="subject",
                                                     time="time", n_jobs=n_jobs),
    "TravelingSubjects": lambda n_jobs: fh.TravelingSubjects(formula="age + sex", subject="subject", n_jobs=n_jobs),
    "TravelingSubjects-scale": lambda n_jobs: fh.TravelingSubjects(formula="age + sex", subject="subject",
                                                                   scale=True, n_jobs=n_jobs),
    "NestedComBat": lambda n_jobs: fh.NestedComBat(batches=("vendor", "site"), formula="age + sex", n_jobs=n_jobs),
    "ComBatLS": lambda n_jobs: fh.ComBatLS(formula="age + sex", scale_formula="age", n_jobs=n_jobs),
    "ComBatGAM": lambda n_jobs: fh.ComBatGAM(formula="sex", smooth="age", df=5, n_jobs=n_jobs),
}


@pytest.mark.parametrize("cells", ["complete", "missing"])
@pytest.mark.parametrize("name", sorted(LONGITUDINAL_AND_OTHERS))
def test_threads_give_the_same_bits_in_every_family(monkeypatch, name, cells):
    # 3,000 x 1,400 is above SMALL_PROBLEM. Before the fixed-block cross products (blocks.crossprod), one or
    # two BLAS threads changed the last bits of LongComBat, LongComBatGAM and TravelingSubjects (and, with
    # missing cells, of ComBatLS and ComBat-GAM): a BLAS splits a thin product with a long inner dimension
    # between its threads. (LongComBat's random slope shares the cross products of the random intercept; at
    # this size it takes 20 s a fit, so it was checked by hand, complete and missing, not here.)
    Y, cov = _data(n=3000, p=1400, sites=6)
    cov["vendor"] = np.where(cov["site"].isin(["s0", "s1", "s2"]), "A", "B")
    if cells == "missing":
        rows = np.random.default_rng(1).permutation(3000)
        Y[rows[:40], :500] = np.nan  # two missingness patterns (the random-slope model fits one per pattern)
        Y[rows[40:70], 500:900] = np.nan
    outs = []
    for threads, n_jobs in (("1", 1), ("2", 2)):
        monkeypatch.setenv("FEATHARM_THREADS", threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hm = LONGITUDINAL_AND_OTHERS[name](n_jobs)
            out = hm.fit_transform(np.asfortranarray(Y), cov).to_numpy()
            again = hm.transform(np.asfortranarray(Y[:500]), cov.iloc[:500]).to_numpy()
        state = {**vars(hm), **getattr(hm, "_arr", {})}  # the learned arrays (a nested model: its output)
        learned = [np.asarray(v) for v in state.values() if isinstance(v, (np.ndarray, pd.DataFrame))]
        learned = [v for v in learned if v.dtype.kind == "f"]
        outs.append([out, again] + learned)
    assert len(outs[0]) == len(outs[1]) >= 2
    for a, b in zip(*outs):
        assert a.tobytes() == b.tobytes()


def _same_bits_for_any_threads(monkeypatch, make, X, cov, configs=(("1", 1), ("2", 2), ("1", 2), ("2", 1))):
    outs = []
    # featharm's block threads and the BLAS's threads (n_jobs): the model and its output to the bit
    for threads, n_jobs in configs:
        monkeypatch.setenv("FEATHARM_THREADS", threads)
        hm = make(n_jobs)
        outs.append((hm.fit_transform(X, cov).to_numpy(), hm.gamma_hat_.to_numpy(), hm.beta_.to_numpy()))
    for other in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], other))


def test_core_kernels_agree_across_layouts_and_blocks(monkeypatch):
    rng = np.random.default_rng(3)
    n, p, m = 300, 70, 5
    codes = rng.integers(0, m, n)
    Y = rng.normal(size=(n, p)) + 4
    D = np.column_stack([np.ones(n), rng.uniform(20, 80, n)])
    coef = rng.normal(size=(2, p))
    args = (D, coef, codes, rng.uniform(0.5, 2, p), rng.normal(size=(m, p)), rng.uniform(0.5, 2, (m, p)))
    bf, cx = rng.normal(size=(m, p)), rng.normal(size=(1, p))
    expect_adj = eb.adjust(np.asfortranarray(Y), *args)
    onehot = np.eye(m)[codes]
    expect_ss = onehot.T @ (Y - bf[codes] - D[:, 1:] @ cx) ** 2
    for size in (8 * 7 * n, 8 * 7 * p, 8 * n * p):  # blocks of 7 features, of 7 rows, one block
        monkeypatch.setattr(blocks, "BLOCK_BYTES", size)
        for order in ("C", "F"):
            A = np.asarray(Y, order=order)
            out = eb.adjust(A, *args)
            assert blocks.row_major(out) == blocks.row_major(A)
            np.testing.assert_allclose(out, expect_adj, rtol=0, atol=1e-12)
            np.testing.assert_allclose(ols.batch_residual_ss(A, bf, D[:, 1:], cx, codes), expect_ss, rtol=1e-12)
            A32 = A.astype(np.float32)  # float32 in, float32 out, computed in float64
            out32 = eb.adjust(A32, *args, out=np.empty(A.shape, dtype=np.float32, order=order))
            np.testing.assert_array_max_ulp(out32, eb.adjust(A32.astype(np.float64), *args).astype(np.float32), 1)


def test_block_workers_follow_the_blas_and_the_override(monkeypatch):
    monkeypatch.delenv("FEATHARM_THREADS", raising=False)
    assert _threads.block_workers(10) == 1
    with _threads.blas_threads_for(10):  # one BLAS thread: one worker
        assert _threads.block_workers(_threads.SMALL_PROBLEM) == 1
    monkeypatch.setenv("FEATHARM_THREADS", "3")
    assert _threads.block_workers(10) == 3


@pytest.mark.parametrize("container", ["c-array", "frame-over-c", "float32"])
def test_missing_values_in_every_layout(container):
    # NaN cells (§1.8) take the column-wise missing-value path whatever the layout: the same NaN cells, the
    # same values as the Fortran-ordered float64 table (float32: to float32 rounding), float32 kept
    Y, cov = _data()
    Y[np.random.default_rng(3).random(Y.shape) < 0.05] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fh.exceptions.MissingValueWarning)
        ref = fh.ComBat(formula="age + sex").fit_transform(np.asfortranarray(Y), cov).to_numpy()
        X = np.asfortranarray(Y.astype(np.float32)) if container == "float32" else _inputs(Y, cov)[container]
        out = fh.ComBat(formula="age + sex").fit_transform(X, cov).to_numpy()
    assert out.dtype == (np.float32 if container == "float32" else np.float64)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(Y))
    obs = ~np.isnan(Y)
    if container == "float32":
        np.testing.assert_allclose(out[obs], ref[obs], rtol=2e-6, atol=2e-6)
    else:
        np.testing.assert_array_equal(out[obs], ref[obs])


@pytest.mark.parametrize("cells", [("inf", "-inf"), ("big", "big")])
def test_transform_names_bad_values_even_with_warnings_as_errors(cells):
    # the transform's finiteness check (a column sum) must not turn +inf with -inf, or a sum that
    # overflows, into a RuntimeWarning: the named error comes out, also under warnings-as-errors
    Y, cov = _data()
    hm = fh.ComBat(formula="age + sex").fit(np.asfortranarray(Y), cov)
    Z = np.ascontiguousarray(Y)
    values = {"inf": np.inf, "-inf": -np.inf, "big": 1.7e308}
    Z[0, 3], Z[1, 3] = values[cells[0]], values[cells[1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if cells[0] == "big":  # finite values: harmonized or refused by name, never a floating-point warning
            try:
                hm.transform(Z, cov)
            except (fh.exceptions.MissingValueError, fh.exceptions.InputError):
                pass
        else:
            with pytest.raises(fh.exceptions.MissingValueError, match="x3"):
                hm.transform(Z, cov)
