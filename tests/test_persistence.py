"""Model files: exact round trips, a zip of JSON + .npy with no pickle, small, versioned, atomic."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.exceptions import ModelFileError, NotFittedError
from featharm.persistence import SCHEMA_VERSION, read_manifest


@pytest.fixture(scope="module")
def sim():
    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=8, random_state=0)
    cov = s.covariates.copy()
    cov["grp"] = np.random.default_rng(1).integers(0, 3, len(cov))
    cov["site_num"] = cov["site"].map({"site01": 30, "site02": 10, "site03": 20})
    return s.X, cov


VARIANTS = {
    "parametric": dict(formula="age + sex"),
    "nonparametric": dict(formula="age + sex", parametric=False),
    "mean_only": dict(formula="age + sex", mean_only=True),
    "mean_only_n": dict(formula="age + sex", mean_only=True, mean_only_form="n"),
    "no_eb": dict(formula="age + sex", eb=False),
    "ref_batch": dict(formula="age + sex", ref_batch="site02"),
    "categorical_and_stateful": dict(formula="center(age) + C(grp) + sex"),
    "spline_ref_batch": dict(formula="bs(age, df=4) * sex", ref_batch="site01"),
    "numeric_batch_ref": dict(batch="site_num", formula="age", ref_batch=10),
    "no_formula": dict(),
    "compat": dict(formula="age + sex", compat="neuroCombat"),
}


def _learned(model) -> dict:
    return {k: v for k, v in vars(model).items() if k.endswith("_") and not k.startswith("_")}


def _assert_same_learned(a, b):
    la, lb = _learned(a), _learned(b)
    assert sorted(la) == sorted(lb)
    for k, u in la.items():
        v = lb[k]
        assert type(u) is type(v), k
        if isinstance(u, pd.DataFrame):
            pd.testing.assert_frame_equal(u, v, check_exact=True, obj=k)
        elif isinstance(u, pd.Series):
            pd.testing.assert_series_equal(u, v, check_exact=True, obj=k)
        elif isinstance(u, np.ndarray):
            assert u.dtype == v.dtype, k
            np.testing.assert_array_equal(u, v, err_msg=k)
            assert [type(x) for x in u] == [type(x) for x in v], k
        elif isinstance(u, fh.CovariateDesign):
            assert u.to_dict() == v.to_dict()
        else:
            assert u == v, k


@pytest.mark.parametrize("name", list(VARIANTS))
def test_round_trip_is_exact(sim, tmp_path, name):
    X, cov = sim
    model = fh.ComBat(**VARIANTS[name]).fit(X, cov)
    path = tmp_path / "model.fhm"
    model.save(path)
    loaded = fh.load_model(path)
    assert type(loaded) is fh.ComBat
    assert loaded.get_params() == model.get_params()
    _assert_same_learned(model, loaded)
    a, b = model.transform(X, cov), loaded.transform(X, cov)
    assert a.to_numpy().tobytes() == b.to_numpy().tobytes()  # bit for bit
    assert a.index.equals(b.index) and a.columns.equals(b.columns)
    # new rows (a subset, shuffled) too
    rows = X.index[::-7]
    assert model.transform(X.loc[rows], cov.loc[rows]).equals(loaded.transform(X.loc[rows], cov.loc[rows]))
    # and a loaded model saves to an identical manifest (apart from the time stamp)
    path2 = tmp_path / "again.fhm"
    loaded.save(path2)
    m1, m2 = read_manifest(path), read_manifest(path2)
    assert "created" not in m1 and "created" not in m2  # no wall-clock time (reproducible bytes)
    assert m1 == m2


def test_save_model_function_and_method_agree(sim, tmp_path):
    X, cov = sim
    model = fh.ComBat(formula="age + sex").fit(X, cov)
    model.save(tmp_path / "a.fhm")
    fh.save_model(model, tmp_path / "b.fhm")
    with zipfile.ZipFile(tmp_path / "a.fhm") as za, zipfile.ZipFile(tmp_path / "b.fhm") as zb:
        assert sorted(za.namelist()) == sorted(zb.namelist())
        for n in za.namelist():
            if n != "manifest.json":
                assert za.read(n) == zb.read(n)


def test_file_is_a_zip_of_json_and_npy_without_pickle(sim, tmp_path):
    X, cov = sim
    model = fh.ComBat(formula="center(age) + C(grp) + sex", ref_batch="site03").fit(X, cov)
    path = tmp_path / "model.fhm"
    model.save(path)
    assert zipfile.is_zipfile(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert "manifest.json" in names
        others = [n for n in names if n != "manifest.json"]
        assert others and all(n.startswith("arrays/") and n.endswith(".npy") for n in others)
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == "featharm-model"
        assert manifest["schema_version"] == SCHEMA_VERSION
        assert manifest["model"] == "ComBat"
        assert manifest["featharm_version"] == fh.__version__
        assert manifest["params"]["formula"] == "center(age) + C(grp) + sex"
        assert sorted(manifest["arrays"]) == sorted(n[len("arrays/"):-len(".npy")] for n in others)
        for n in others:
            arr = np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
            assert arr.dtype != object
            assert list(arr.shape) == manifest["arrays"][n[len("arrays/"):-len(".npy")]]["shape"]
        raw = b"".join(zf.read(n) for n in names)
    assert b"\x80\x04\x95" not in raw and b"cnumpy" not in raw  # no pickle stream anywhere
    # nothing about the subjects is stored: no ids, no data values
    text = json.dumps(manifest)
    assert "sub-00000" not in text and "sub-00149" not in text


def test_file_size_does_not_grow_with_n(tmp_path):
    sizes = {}
    for n in (200, 2000):
        s = fh.datasets.make_multisite(n_subjects=n, n_sites=4, n_features=25, random_state=2)
        model = fh.ComBat(formula="age + sex").fit(s.X, s.covariates)
        path = tmp_path / f"m{n}.fhm"
        model.save(path)
        sizes[n] = path.stat().st_size
    assert sizes[2000] <= 1.25 * sizes[200], sizes
    assert sizes[200] <= 1.25 * sizes[2000], sizes
    # and it is O(batches x features): far smaller than the data
    assert sizes[2000] < 2000 * 25 * 8 / 10


def test_file_size_grows_with_features(tmp_path):
    sizes = {}
    for p in (20, 400):
        s = fh.datasets.make_multisite(n_subjects=200, n_sites=4, n_features=p, random_state=2)
        path = tmp_path / f"p{p}.fhm"
        fh.ComBat(formula="age + sex").fit(s.X, s.covariates).save(path)
        sizes[p] = path.stat().st_size
    assert sizes[400] > 3 * sizes[20]


# ------------------------------------------------------------------------------------------ bad files
def _rewrite(src, dst, edit=None, drop=(), replace=None):
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for name in zi.namelist():
            if name in drop:
                continue
            data = zi.read(name)
            if name == "manifest.json" and edit is not None:
                data = json.dumps(edit(json.loads(data))).encode()
            if replace and name in replace:
                data = replace[name]
            zo.writestr(name, data)


@pytest.fixture
def saved(sim, tmp_path):
    X, cov = sim
    path = tmp_path / "good.fhm"
    fh.ComBat(formula="age + sex").fit(X, cov).save(path)
    return path


def test_newer_schema_is_refused(saved, tmp_path):
    bad = tmp_path / "future.fhm"

    def edit(m):
        m["schema_version"] = SCHEMA_VERSION + 1
        m["featharm_version"] = "99.0"
        return m

    _rewrite(saved, bad, edit)
    with pytest.raises(ModelFileError) as ei:
        fh.load_model(bad)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert str(SCHEMA_VERSION + 1) in msg and "newer" in msg and "99.0" in msg and "Upgrade" in msg


@pytest.mark.parametrize("version", [None, "1", 1.5])
def test_bad_schema_version_is_refused(saved, tmp_path, version):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, lambda m: {**m, "schema_version": version})
    with pytest.raises(ModelFileError, match="schema"):
        fh.load_model(bad)


def test_non_zip_file(tmp_path):
    bad = tmp_path / "model.fhm"
    bad.write_text("this is not a model\n")
    with pytest.raises(ModelFileError, match="not a featharm model file"):
        fh.load_model(bad)
    empty = tmp_path / "empty.fhm"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError):
        fh.load_model(empty)


def test_zip_without_manifest(tmp_path):
    bad = tmp_path / "other.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelFileError, match="manifest.json"):
        fh.load_model(bad)


def test_manifest_not_json(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, replace={"manifest.json": b"{not json"})
    with pytest.raises(ModelFileError):
        fh.load_model(bad)


def test_other_format(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, lambda m: {**m, "format": "something-else"})
    with pytest.raises(ModelFileError, match="something-else"):
        fh.load_model(bad)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.fhm"
    with pytest.raises(ModelFileError) as ei:
        fh.load_model(path)
    assert "nope.fhm" in str(ei.value) and "does not exist" in str(ei.value)


def test_unknown_model_class(saved, tmp_path):
    bad = tmp_path / "alien.fhm"
    _rewrite(saved, bad, lambda m: {**m, "model": "AlienHarmonizer"})
    with pytest.raises(ModelFileError) as ei:
        fh.load_model(bad)
    assert "AlienHarmonizer" in str(ei.value) and "ComBat" in str(ei.value)


def test_unknown_parameter(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, lambda m: {**m, "params": {**m["params"], "warp_speed": 9}})
    with pytest.raises(ModelFileError, match="warp_speed"):
        fh.load_model(bad)


def test_missing_array(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, drop=("arrays/gamma_star.npy",))
    with pytest.raises(ModelFileError, match="gamma_star"):
        fh.load_model(bad)


def test_array_with_wrong_shape(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    _rewrite(saved, bad, replace={"arrays/alpha.npy": buf.getvalue()})
    with pytest.raises(ModelFileError, match="alpha"):
        fh.load_model(bad)


def test_pickled_array_is_never_loaded(saved, tmp_path):
    bad = tmp_path / "evil.fhm"
    buf = io.BytesIO()
    np.save(buf, np.array([{"boom": 1}] * 8, dtype=object), allow_pickle=True)
    _rewrite(saved, bad, replace={"arrays/alpha.npy": buf.getvalue()})
    with pytest.raises(ModelFileError, match="pickle"):
        fh.load_model(bad)


@pytest.mark.parametrize("edit", [
    lambda m: {k: v for k, v in m.items() if k != "state"},
    lambda m: {**m, "state": {k: v for k, v in m["state"].items() if k != "design"}},
    lambda m: [m],
], ids=["no-state", "no-design", "list"])
def test_damaged_manifest(saved, tmp_path, edit):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, edit)
    with pytest.raises(ModelFileError):
        fh.load_model(bad)


def test_saving_an_unfitted_model(tmp_path):
    path = tmp_path / "model.fhm"
    with pytest.raises(NotFittedError) as ei:
        fh.ComBat().save(path)
    assert isinstance(ei.value, AttributeError) and "fit" in str(ei.value)
    with pytest.raises(NotFittedError):
        fh.save_model(fh.ComBat(), path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ atomic writes
def test_write_is_atomic_and_replaces(sim, tmp_path):
    X, cov = sim
    folder = tmp_path / "models"
    path = folder / "model.fhm"  # the folder is created
    m1 = fh.ComBat(formula="age + sex").fit(X, cov)
    m1.save(path)
    assert sorted(p.name for p in folder.iterdir()) == ["model.fhm"]  # no temporary left
    # saving another model over it replaces it
    m2 = fh.ComBat(formula="age", ref_batch="site01").fit(X, cov)
    m2.save(path)
    assert sorted(p.name for p in folder.iterdir()) == ["model.fhm"]
    loaded = fh.load_model(path)
    assert loaded.ref_batch == "site01" and loaded.formula == "age"
    assert loaded.transform(X, cov).equals(m2.transform(X, cov))
    # the file is readable like any file the user writes (not mkstemp's 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_failed_save_leaves_no_temporary(sim, tmp_path):
    X, cov = sim
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(OSError):
        fh.ComBat().fit(X, cov).save(target)  # a folder cannot be replaced by a file
    assert list(tmp_path.iterdir()) == [target] and list(target.iterdir()) == []


def test_string_and_pathlike_paths(sim, tmp_path):
    X, cov = sim
    model = fh.ComBat(formula="age").fit(X, cov)
    model.save(str(tmp_path / "s.fhm"))
    model.save(tmp_path / "p.fhm")
    a = fh.load_model(str(tmp_path / "p.fhm")).transform(X, cov)
    b = fh.load_model(tmp_path / "s.fhm").transform(X, cov)
    assert a.equals(b)


# ------------------------------------------------------------------------------------------ reproducible bytes
def _family_fits(sim):
    X, cov = sim
    L = fh.datasets.make_longitudinal(n_subjects=30, n_sites=3, n_features=5, random_state=3)
    return {
        "ComBat": (lambda: fh.ComBat(formula="age + sex", ref_batch="site02"), X, cov),
        "ComBatGAM": (lambda: fh.ComBatGAM(formula="sex", smooth=["age"], df=6), X, cov),
        "LongComBat": (lambda: fh.LongComBat(formula="age + sex + time", time="time", random_slope=True),
                       L.X, L.covariates),
        "CovBat": (lambda: fh.CovBat(formula="age + sex", n_components=3), X, cov),
        "ComBatLS": (lambda: fh.ComBatLS(formula="age + sex", scale_formula="age"), X, cov),
    }


@pytest.mark.parametrize("family", ["ComBat", "ComBatGAM", "LongComBat", "CovBat", "ComBatLS"])
def test_same_fit_gives_identical_bytes(sim, tmp_path, monkeypatch, family):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    make, X, cov = _family_fits(sim)[family]
    make().fit(X, cov).save(tmp_path / "a.fhm")
    make().fit(X, cov).save(tmp_path / "b.fhm")  # a second, independent fit
    a = (tmp_path / "a.fhm").read_bytes()
    assert a == (tmp_path / "b.fhm").read_bytes()
    # a loaded model saves the same bytes again (arrays in C order, keys sorted)
    fh.load_model(tmp_path / "a.fhm").save(tmp_path / "c.fhm")
    assert a == (tmp_path / "c.fhm").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.fhm") as zf:
        infos = zf.infolist()
        assert "created" not in json.loads(zf.read("manifest.json"))  # no wall-clock time
    names = [i.filename for i in infos]
    assert names[0] == "manifest.json" and names[1:] == sorted(names[1:])
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {(i.create_system, i.external_attr >> 16, i.compress_type) for i in infos} == {(3, 0o644, zipfile.ZIP_DEFLATED)}


def test_source_date_epoch_is_the_recorded_time(sim, tmp_path, monkeypatch):
    X, cov = sim
    model = fh.ComBat(formula="age").fit(X, cov)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    model.save(tmp_path / "a.fhm")
    model.save(tmp_path / "b.fhm")
    assert (tmp_path / "a.fhm").read_bytes() == (tmp_path / "b.fhm").read_bytes()
    assert read_manifest(tmp_path / "a.fhm")["created"] == "2023-11-14T22:13:20+00:00"
    with zipfile.ZipFile(tmp_path / "a.fhm") as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}
    # before 1980 (the zip epoch): the manifest keeps the time, the members are clamped to 1980
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    model.save(tmp_path / "old.fhm")
    assert read_manifest(tmp_path / "old.fhm")["created"] == "1970-01-01T00:00:00+00:00"
    with zipfile.ZipFile(tmp_path / "old.fhm") as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert fh.load_model(tmp_path / "old.fhm").transform(X, cov).equals(model.transform(X, cov))


@pytest.mark.parametrize("value", ["yesterday", "1.5e9", "-1", "12345678901234"])
def test_malformed_source_date_epoch(sim, tmp_path, monkeypatch, value):
    X, cov = sim
    model = fh.ComBat().fit(X, cov)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(fh.exceptions.InputError, match="SOURCE_DATE_EPOCH"):
        model.save(tmp_path / "m.fhm")
    assert list(tmp_path.iterdir()) == []
