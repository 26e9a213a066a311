"""ComBat out of core (Dask arrays, Zarr feature stores; ``featharm.models._scale``, ``docs/methods.md`` §1.9):
the same model and output as the in-memory fit, on the threaded scheduler and on a ``distributed`` cluster."""

from __future__ import annotations

import os
import warnings

import dask.array as da  # the test extra installs featharm[scale]: dask, distributed, zarr
import distributed
import numpy as np
import pandas as pd
import pytest
import zarr
from test_from_statistics import make_volumes, output_error, stored_errors

import featharm
from featharm import _dask
from featharm.exceptions import AlignmentError, FeatharmWarning, InputError, MissingValueError, MissingValueWarning
from featharm.io import FeatureStore, read_store, write_store

TOL = 1e-10


def volumes(n: int, p: int, n_sites: int, seed: int = 0, nan_fraction: float = 0.0, sort_sites: bool = False):
    """``n`` subjects × ``p`` volume-like features (mean 5e3-2e4, SD 50-200; a sixth thickness-like), ``n_sites``
    sites of unequal sizes, age and sex effects; NaN cells in the second half of the features."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 2.0, n_sites)
    codes = np.sort(rng.choice(n_sites, n, p=w / w.sum())) if sort_sites else rng.choice(n_sites, n, p=w / w.sum())
    site = np.array([f"site{i:02d}" for i in range(n_sites)])[codes]
    age = rng.uniform(20, 85, n)
    sex = rng.choice(["F", "M"], n)
    thick = np.arange(p) % 6 == 5
    mu = np.where(thick, rng.uniform(2.0, 3.0, p), rng.uniform(5e3, 2e4, p))
    sd = np.where(thick, rng.uniform(0.08, 0.15, p), rng.uniform(50, 200, p))
    slope = rng.normal(-0.004, 0.001, p) * mu
    gamma = rng.normal(rng.normal(0, 0.5, n_sites)[:, None], 0.4, (n_sites, p))
    delta = np.exp(rng.normal(0, 0.3, n_sites))[:, None] * np.exp(rng.normal(0, 0.15, (n_sites, p)))
    Y = mu + np.outer(age - 50, slope) + np.outer(sex == "M", rng.normal(0, 0.5, p)) * sd
    Y += sd * (gamma[codes] + delta[codes] * rng.standard_normal((n, p)))
    if nan_fraction:
        M = rng.random((n, p)) < nan_fraction
        M[:, : p // 2] = False
        Y[M] = np.nan
    ids = pd.Index([f"sub-{k:05d}" for k in range(n)], name="id")
    return (pd.DataFrame(Y, index=ids, columns=[f"roi_{j}" for j in range(p)]),
            pd.DataFrame({"site": site, "age": age, "sex": sex}, index=ids))


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatharmWarning)
        return fn(*args, **kwargs)


def uneven(total: int, sizes) -> tuple:
    """Chunk sizes cycling through ``sizes`` that add up to ``total``."""
    out, k = [], 0
    while sum(out) < total:
        out.append(min(sizes[k % len(sizes)], total - sum(out)))
        k += 1
    return tuple(out)


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    return float(np.abs(a[ok] - b[ok]).max() / np.abs(b[ok]).max())


@pytest.fixture(scope="module")
def big():
    """2,000 × 2,000 float64, 12 sites: the in-memory fit and its output, for the exactness tests."""
    X, cov = volumes(2000, 2000, 12, seed=1)
    model = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, X, cov)
    return X, cov, model, quiet(model.transform, X, cov)


def test_dask_fit_and_transform_equal_the_in_memory_fit(big):
    X, cov, want, out = big
    Y = da.from_array(X.to_numpy(), chunks=(uneven(2000, (300, 170, 410)), uneven(2000, (700, 512))))
    got = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, Y, cov)
    errors = stored_errors(got, want)
    assert max(errors.values()) <= TOL, errors
    assert list(got.feature_names_in_) == [f"x{j}" for j in range(2000)]
    lazy = got.transform(Y, cov)
    assert isinstance(lazy, da.Array) and lazy.chunks == Y.chunks and lazy.dtype == np.float64
    assert output_error(pd.DataFrame(lazy.compute(), index=X.index, columns=X.columns), out,
                        want._arr["sigma"]) <= TOL
    # the values themselves, relative to their size, too
    assert rel(lazy.compute(), out.to_numpy()) <= TOL


def test_float32_store_equals_the_float32_table_to_float32_rounding(big, tmp_path):
    X, cov, _, _ = big
    X32 = X.astype(np.float32)
    want = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, X32, cov)
    out = quiet(want.transform, X32, cov).to_numpy()
    write_store(tmp_path / "in.zarr", X32, chunks=(512, 700))
    store = read_store(tmp_path / "in.zarr")
    assert store.dtype == np.float32 and store.data.chunksize == (512, 700)
    got = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, store, cov.iloc[::-1])  # ids matched
    assert max(stored_errors(got, want).values()) <= TOL
    h = got.transform(store, cov)
    assert isinstance(h, FeatureStore) and h.dtype == np.float32 and h.ids.equals(X.index)
    got_out = h.data.compute()
    assert got_out.dtype == np.float32
    # both are the float32 rounding of float64 values equal to 1e-10: at most one unit in the last place apart
    assert np.all(np.abs(got_out - out) <= np.spacing(np.abs(out)))


@pytest.mark.parametrize("options", [{}, {"ref_batch": "site03"}, {"eb": False}, {"parametric": False},
                                     {"mean_only": True}], ids=["parametric", "ref_batch", "eb_false",
                                                                "nonparametric", "mean_only"])
def test_nan_cells_and_uneven_chunks(options):
    X, cov = volumes(700, 60, 5, seed=2, nan_fraction=0.05)
    params = dict(batch="site", formula="age + sex", **options)
    want = quiet(featharm.ComBat(**params).fit, X, cov)
    out = quiet(want.transform, X, cov)
    Y = da.from_array(X.to_numpy(), chunks=(uneven(700, (97, 250, 31)), (25, 35)))
    got = quiet(featharm.ComBat(**params).fit, Y, cov)
    assert "n_obs" in got._arr
    assert max(stored_errors(got, want).values()) <= TOL
    h = got.transform(Y, cov).compute()
    assert np.array_equal(np.isnan(h), np.isnan(X.to_numpy()))
    assert output_error(pd.DataFrame(h, index=X.index, columns=X.columns), out, want._arr["sigma"]) <= TOL


def test_a_site_in_only_some_chunks():
    """Rows sorted by site: the first chunk (whose means and slopes shift every piece) holds one site, and each
    site is in one or two chunks."""
    X, cov = volumes(900, 50, 6, seed=3, sort_sites=True)
    want = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, X, cov)
    Y = da.from_array(X.to_numpy(), chunks=(80, 20))
    assert cov["site"].iloc[:80].nunique() == 1
    got = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, Y, cov)
    assert max(stored_errors(got, want).values()) <= TOL


def test_same_model_for_any_chunking_to_rounding_and_any_run_bit_for_bit():
    X, cov = volumes(600, 40, 4, seed=4)
    fits = [quiet(featharm.ComBat(batch="site", formula="age").fit, da.from_array(X.to_numpy(), chunks=c), cov)
            for c in ((100, 40), (100, 40), (37, 13))]
    for k in fits[0]._arr:
        assert np.array_equal(fits[0]._arr[k], fits[1]._arr[k]), k  # the same graph: the same numbers
    assert max(stored_errors(fits[2], fits[0]).values()) <= TOL


def test_localcluster_equals_the_threaded_run_bit_for_bit():
    X, cov = volumes(800, 64, 5, seed=5, nan_fraction=0.02)
    Y = da.from_array(X.to_numpy(), chunks=(uneven(800, (150, 90)), (32, 32)))
    threaded = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, Y, cov)
    out_threaded = threaded.transform(Y, cov).compute()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl, set_as_default=False) as client:
        featharm.set_scheduler(client)
        try:
            assert featharm.get_scheduler() is client
            on_cluster = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, Y, cov)
            out_cluster, = _dask.compute(on_cluster.transform(Y, cov))
        finally:
            featharm.set_scheduler(None)
    assert featharm.get_scheduler() is None
    for k, v in threaded._arr.items():
        assert np.array_equal(on_cluster._arr[k], v, equal_nan=v.dtype.kind == "f"), k
    assert np.array_equal(out_cluster, out_threaded, equal_nan=True)


def test_set_scheduler_refuses_what_is_not_a_scheduler():
    with pytest.raises(InputError, match="distributed.Client"):
        featharm.set_scheduler(42)


# ---------------------------------------------------------------------------------------- other inputs and options
def test_zarr_array_is_taken_lazily(tmp_path):
    X, cov = volumes(300, 30, 3, seed=6)
    z = zarr.open_array(str(tmp_path / "raw.zarr"), mode="w", shape=X.shape, chunks=(64, 16), dtype="f8")
    z[:] = X.to_numpy()
    want = quiet(featharm.ComBat(batch="site").fit, X, cov)
    got = quiet(featharm.ComBat(batch="site").fit, z, cov)
    assert max(stored_errors(got, want).values()) <= TOL
    out = got.transform(z, cov)
    assert isinstance(out, da.Array) and out.chunksize == (64, 16)


def test_fit_transform_and_missing_covariates_exclude():
    X, cov = volumes(400, 30, 4, seed=7)
    cov = cov.copy()
    cov.loc[cov.index[[5, 77, 301]], "age"] = np.nan
    params = dict(batch="site", formula="age + sex", missing_covariates="exclude")
    with pytest.warns(MissingValueWarning, match="3 row"):
        want_out = featharm.ComBat(**params).fit_transform(X, cov)
    want = quiet(featharm.ComBat(**params).fit, X, cov)
    Y = da.from_array(X.to_numpy(), chunks=(90, 30))
    model = featharm.ComBat(**params)
    with pytest.warns(MissingValueWarning, match="3 row"):
        out = model.fit_transform(Y, cov)
    assert isinstance(out, da.Array)
    assert model.excluded_rows_ == list(cov.index[[5, 77, 301]])
    assert max(stored_errors(model, want).values()) <= TOL
    got = out.compute()
    assert np.isnan(got[[5, 77, 301]]).all()
    assert output_error(pd.DataFrame(got, index=X.index, columns=X.columns), want_out, want._arr["sigma"]) <= TOL


def test_new_sites_estimated_from_their_statistics():
    X, cov = volumes(600, 40, 5, seed=8)
    seen = cov["site"] != "site04"
    model = quiet(featharm.ComBat(batch="site", formula="age + sex").fit, X[seen], cov[seen])
    want = quiet(model.transform, X, cov, new_sites="estimate")
    Y = da.from_array(X.to_numpy(), chunks=(128, 40))
    got = quiet(model.transform, Y, cov, new_sites="estimate").compute()
    assert output_error(pd.DataFrame(got, index=X.index, columns=X.columns), want, model._arr["sigma"]) <= TOL


def test_other_families_say_why_and_what_fits_in_memory():
    X, cov = volumes(200, 10, 3, seed=9)
    Y = da.from_array(X.to_numpy(), chunks=(50, 10))
    for model in (featharm.CovBat(batch="site"), featharm.ComBatLS(batch="site")):
        with pytest.raises(InputError, match=r"cannot take an out-of-core.*200 rows × 10 features.*in memory"):
            model.fit(Y, cov)


@pytest.mark.parametrize("nan_fraction", [0.0, 0.05], ids=["complete", "nan_cells"])
@pytest.mark.parametrize("options", [{}, {"method": "GCV", "ref_batch": "site01"}, {"shared_smoothing": True}],
                         ids=["reml", "gcv_ref", "shared"])
def test_combat_gam_out_of_core_equals_in_memory(nan_fraction, options):
    X, cov = volumes(600, 60, 5, seed=12, nan_fraction=nan_fraction)
    X = X + np.outer(np.sin((cov["age"].to_numpy() - 20) / 12), X.std().to_numpy() * 0.5)  # a curved age effect
    params = dict(batch="site", formula="sex", smooth=["age"], **options)
    model = quiet(featharm.ComBatGAM(**params).fit, X, cov)
    want = quiet(model.transform, X, cov)
    Y = da.from_array(X.to_numpy(), chunks=(uneven(600, (150, 70, 230)), uneven(60, (25, 35))))
    dmodel = quiet(featharm.ComBatGAM(**params).fit, Y, cov)
    errors = stored_errors(dmodel, model)
    assert max(errors.values()) <= TOL, errors
    got = quiet(dmodel.transform, Y, cov)
    assert isinstance(got, da.Array) and got.chunks == Y.chunks
    got = pd.DataFrame(got.compute(), index=X.index, columns=X.columns)
    assert output_error(got, want, model._arr["sigma"]) <= TOL


def test_combat_gam_new_sites_out_of_core():
    X, cov = volumes(600, 40, 5, seed=13)
    seen = cov["site"] != "site03"
    model = quiet(featharm.ComBatGAM(batch="site", formula="sex", smooth=["age"]).fit, X[seen], cov[seen])
    inside = (cov["age"] >= cov.loc[seen, "age"].min()) & (cov["age"] <= cov.loc[seen, "age"].max())
    X, cov = X[inside], cov[inside]
    want = quiet(model.transform, X, cov, new_sites="estimate")
    Y = da.from_array(X.to_numpy(), chunks=(128, 40))
    got = quiet(model.transform, Y, cov, new_sites="estimate").compute()
    assert output_error(pd.DataFrame(got, index=X.index, columns=X.columns), want, model._arr["sigma"]) <= TOL


def test_mismatched_covariates_and_bad_cells_are_named(tmp_path):
    X, cov = volumes(200, 10, 3, seed=10)
    Y = da.from_array(X.to_numpy(), chunks=(50, 10))
    with pytest.raises(AlignmentError, match="200 rows but the covariates have 199"):
        featharm.ComBat(batch="site").fit(Y, cov.iloc[1:])
    with pytest.raises(InputError, match="DataFrame"):
        featharm.ComBat(batch="site").fit(Y, cov["site"])
    write_store(tmp_path / "s.zarr", X)
    other = cov.rename(index={cov.index[3]: "someone-else"})
    with pytest.raises(AlignmentError, match="sub-00003"):
        featharm.ComBat(batch="site").fit(read_store(tmp_path / "s.zarr"), other)
    bad = X.to_numpy().copy()
    bad[123, 4] = np.inf
    with pytest.raises(MissingValueError, match="feature 4 has an infinite value in row 123"):
        quiet(featharm.ComBat(batch="site").fit, da.from_array(bad, chunks=(50, 5)), cov)
    model = quiet(featharm.ComBat(batch="site").fit, Y, cov)
    with pytest.raises(AlignmentError, match="has 9 features but ComBat was fitted with 10"):
        model.transform(Y[:, 1:], cov)


# ---------------------------------------------------------------------------------------- stores
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_store_round_trip(tmp_path, dtype):
    X, _ = volumes(130, 25, 3, seed=11, nan_fraction=0.1)
    X = X.astype(dtype)
    X.index = pd.Index(np.arange(1000, 1130))  # integer ids stay integers
    path = write_store(tmp_path / "a.zarr", X, chunks=(40, 10), meta={"made by": "test"})
    st = read_store(path)
    assert st.ids.equals(X.index) and list(st.features) == list(X.columns)
    assert st.dtype == dtype and st.data.chunksize == (40, 10) and st.meta == {"made by": "test"}
    back = st.to_frame()
    assert np.array_equal(back.to_numpy(), X.to_numpy(), equal_nan=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr"]  # no temporary left
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        write_store(path, X)
    write_store(path, st.with_data(st.data * 2), overwrite=True)  # from a lazy store, read while written
    assert np.allclose(read_store(path).to_frame().to_numpy(), 2 * X.to_numpy(), equal_nan=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def _array(group, name, shape):
    """An array in a Zarr group (zarr 3: create_array; zarr 2: create_dataset)."""
    make = getattr(group, "create_array", None) or group.create_dataset
    return make(name, shape=shape, dtype="f8")


def test_store_errors_name_the_store_and_the_fix(tmp_path):
    bare = zarr.open_group(str(tmp_path / "bare.zarr"), mode="w")
    _array(bare, "data", (4, 3))
    with pytest.raises(InputError, match=r"bare.zarr has no subject ids.*write_store"):
        read_store(tmp_path / "bare.zarr")
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(InputError, match="holds no array 'data'"):
        read_store(tmp_path / "empty.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="is not a Zarr store"):
        read_store(tmp_path / "plain")
    with pytest.raises(InputError, match="no such store"):
        read_store(tmp_path / "nothing.zarr")
    g = zarr.open_group(str(tmp_path / "short.zarr"), mode="w")
    _array(g, "data", (4, 3))
    g.attrs["featharm"] = {"ids": ["a", "b"], "features": ["x", "y", "z"]}
    with pytest.raises(InputError, match=r"4 × 3 but the store lists 2 ids"):
        read_store(tmp_path / "short.zarr")
    with pytest.raises(InputError, match="needs the subject ids"):
        write_store(tmp_path / "x.zarr", np.zeros((3, 2)))


def test_progress_bar_follows_the_tasks(monkeypatch):
    calls = []

    class Recorder:
        def __init__(self, total, desc, *a, **k):
            calls.append(["start", total, desc])

        def update(self, k=1):
            calls.append(k)

        def __exit__(self, *exc):
            calls.append("end")

    monkeypatch.setattr(_dask, "Progress", Recorder)
    x = da.ones((10, 10), chunks=5).sum()
    assert _dask.compute(x, desc="testing") == (100.0,)
    assert calls[0][0] == "start" and calls[0][2] == "testing" and calls[-1] == "end"
    assert sum(c for c in calls if isinstance(c, int)) == calls[0][1]  # every task counted once


# ---------------------------------------------------------------------------------------- command line
def test_cli_store_to_store(tmp_path, capsys):
    from featharm.cli import main

    X, cov = make_volumes(5, 4, 0.02, p=30)
    X32 = X.astype(np.float32)
    write_store(tmp_path / "in.zarr", X32, chunks=(64, 16))
    cov.to_csv(tmp_path / "cov.csv")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main(["harmonize", "in.zarr", "--covariates", "cov.csv", "--id", "id", "--batch", "site", "--formula",
                   "age + sex", "--out", "out.zarr", "--save-model", "m.fhm", "--quiet"])
        assert rc == 0 and capsys.readouterr().out == ""
        rc = main(["apply", "m.fhm", "in.zarr", "--covariates", "cov.csv", "--id", "id", "--out", "again.zarr"])
        assert rc == 0 and "applied ComBat" in capsys.readouterr().out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["again.zarr", "cov.csv", "in.zarr", "m.fhm", "out.zarr"]
        # an error: OUT must be a store; nothing written
        rc = main(["harmonize", "in.zarr", "--covariates", "cov.csv", "--id", "id", "--batch", "site",
                   "--out", "out.csv"])
        assert rc == 2 and "give it a .zarr name" in capsys.readouterr().err
        rc = main(["harmonize", "in.zarr", "--batch", "site", "--out", "o2.zarr"])
        assert rc == 2 and "--covariates FILE and --id COL" in capsys.readouterr().err
        rc = main(["harmonize", "in.zarr", "--covariates", "cov.csv", "--id", "id", "--batch", "site", "--method",
                   "covbat", "--out", "o3.zarr"])
        assert rc == 2 and "CovBat cannot take an out-of-core" in capsys.readouterr().err
        assert not any(p.name.startswith(".") or p.name.startswith("o") and p.name != "out.zarr"
                       for p in tmp_path.iterdir())
    finally:
        os.chdir(cwd)
    out = read_store(tmp_path / "out.zarr")
    assert out.dtype == np.float32 and out.ids.equals(pd.Index(X.index.astype(str)) if out.ids.dtype == object
                                                      else X.index)
    want = quiet(featharm.ComBat(batch="site", formula="age + sex").fit_transform, X32, cov)
    got = out.to_frame()
    assert np.all(np.abs(got.to_numpy() - want.to_numpy()) <= np.spacing(np.abs(want.to_numpy())), where=~np.isnan(
        want.to_numpy()))
    assert np.array_equal(read_store(tmp_path / "again.zarr").to_frame().to_numpy(), got.to_numpy(), equal_nan=True)
    model = featharm.load_model(tmp_path / "m.fhm")
    assert list(model.feature_names_in_) == list(X.columns)
