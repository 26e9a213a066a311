"""Model files: exact round trips, a zip of JSON + .npy with no pickle, small, versioned, atomic."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

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


def _refused(path, *words) -> str:
    """``load_model(path)`` raises ModelFileError whose message, past the path (which holds the test's
    name), has every one of ``words``; returns the message."""
    with pytest.raises(ModelFileError) as ei:
        fh.load_model(path)
    msg = str(ei.value)
    assert str(path) in msg, msg
    rest = msg.replace(str(path), "")
    for w in words:
        assert w in rest, f"{w!r} not in {msg!r}"
    assert "\n" not in msg
    return msg


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
    _refused(bad, "schema_version", "integer")


def test_non_zip_file(tmp_path):
    bad = tmp_path / "model.fhm"
    bad.write_text("this is not a model\n")
    _refused(bad, "not a featharm model file")
    empty = tmp_path / "empty.fhm"
    empty.write_bytes(b"")
    _refused(empty, "not a featharm model file", "empty")


def test_zip_without_manifest(tmp_path):
    bad = tmp_path / "other.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelFileError, match="manifest.json"):
        fh.load_model(bad)


def test_manifest_not_json(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, replace={"manifest.json": b"{not json"})
    _refused(bad, "manifest.json is not JSON")


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
    _refused(bad, "warp_speed", "does not take")


def test_missing_array(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, drop=("arrays/gamma_star.npy",))
    _refused(bad, "'gamma_star' is missing")


def test_array_with_wrong_shape(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    _rewrite(saved, bad, replace={"arrays/alpha.npy": buf.getvalue()})
    _refused(bad, "array 'alpha' has shape (3,)", "expected float64 (feature, 8)")


def test_pickled_array_is_never_loaded(saved, tmp_path):
    bad = tmp_path / "evil.fhm"
    buf = io.BytesIO()
    np.save(buf, np.array([{"boom": 1}] * 8, dtype=object), allow_pickle=True)
    _rewrite(saved, bad, replace={"arrays/alpha.npy": buf.getvalue()})
    _refused(bad, "array 'alpha' has dtype object", "pickle", "expected float64 (feature, 8)")


@pytest.mark.parametrize("edit,words", [
    (lambda m: {k: v for k, v in m.items() if k != "state"}, ["lacks ['state']"]),
    (lambda m: {**m, "state": {k: v for k, v in m["state"].items() if k != "design"}}, ["state lacks ['design']"]),
    (lambda m: [m], ["not a featharm model file"]),
], ids=["no-state", "no-design", "list"])
def test_damaged_manifest(saved, tmp_path, edit, words):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, edit)
    _refused(bad, *words)


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


# ------------------------------------------------------------------------------------------ old files
V1 = Path(__file__).parents[1] / "data" / "models_v1"


@pytest.mark.filterwarnings("ignore::featharm.exceptions.SmallBatchWarning")
@pytest.mark.parametrize("family", ["combat", "gam", "longitudinal", "covbat", "combatls"])
def test_schema_1_files_of_the_previous_writer_still_load(sim, family):
    """tests/data/models_v1: written by featharm before reproducible saves (commit 1714787, schema 1, with a
    'created' time stamp and unsorted keys), from the fits of ``_family_fits``. They load and apply as a
    fresh fit of the same data does."""
    name = {"combat": "ComBat", "gam": "ComBatGAM", "longitudinal": "LongComBat", "covbat": "CovBat",
            "combatls": "ComBatLS"}[family]
    assert "created" in read_manifest(V1 / f"{family}.fhm")
    loaded = fh.load_model(V1 / f"{family}.fhm")
    make, X, cov = _family_fits(sim)[name]
    fresh = make()
    assert type(loaded) is type(fresh) and loaded.get_params() == fresh.get_params()
    if family != "longitudinal":  # the V1 files were fitted on a 60-subject simulation
        s = fh.datasets.make_multisite(n_subjects=60, n_sites=3, n_features=5, random_state=3)
        X, cov = s.X, s.covariates
    fresh.fit(X, cov)
    np.testing.assert_allclose(loaded.transform(X, cov).to_numpy(), fresh.transform(X, cov).to_numpy(),
                               rtol=1e-9, atol=1e-9)


def test_fortran_order_and_big_endian_arrays_load(saved, tmp_path):
    """Arrays numpy wrote in Fortran order or big-endian (valid .npy files) load with the same values."""
    ref = fh.load_model(saved)
    with zipfile.ZipFile(saved) as zf:
        beta = np.load(io.BytesIO(zf.read("arrays/batch_coef.npy")))
        g = np.load(io.BytesIO(zf.read("arrays/gamma_star.npy")))
    buf_f, buf_b = io.BytesIO(), io.BytesIO()
    np.save(buf_f, np.asfortranarray(beta))
    np.save(buf_b, g.astype(">f8"))
    bad = tmp_path / "odd.fhm"

    def edit(m):
        m["arrays"]["gamma_star"]["dtype"] = ">f8"
        return m

    _rewrite(saved, bad, edit, replace={"arrays/batch_coef.npy": buf_f.getvalue(),
                                        "arrays/gamma_star.npy": buf_b.getvalue()})
    loaded = fh.load_model(bad)
    pd.testing.assert_frame_equal(loaded.batch_coef_, ref.batch_coef_, check_exact=True)
    pd.testing.assert_frame_equal(loaded.gamma_star_, ref.gamma_star_, check_exact=True)
    assert loaded.gamma_star_.to_numpy().dtype == np.dtype("=f8")


@pytest.mark.slow
def test_vertex_wise_model_loads(tmp_path):
    """327,684 features (fsaverage, both hemispheres) with 50-character names: a 19 MB manifest is fine."""
    p, n = 327_684, 20
    names = [f"lh.thickness.fsaverage.vertex_{i:06d}_smoothed_fwhm10" for i in range(p)]
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(n, p)), columns=names)
    cov = pd.DataFrame({"site": ["a"] * 10 + ["b"] * 10})
    model = fh.ComBat(eb=False).fit(X, cov)
    model.save(tmp_path / "vertex.fhm")
    with zipfile.ZipFile(tmp_path / "vertex.fhm") as zf:
        assert zf.getinfo("manifest.json").file_size > 15 * 2**20
    loaded = fh.load_model(tmp_path / "vertex.fhm")
    assert list(loaded.feature_names_in_[[0, -1]]) == [names[0], names[-1]]
    np.testing.assert_array_equal(loaded.gamma_star_.to_numpy(), model.gamma_star_.to_numpy())


# ------------------------------------------------------------------------------------------ hostile files
from bad_inputs.hostile import deflate_bomb, members, npy, npy_header, raw_zip  # noqa: E402


def _npy(a) -> bytes:
    return npy(a)


def _set_array(saved, bad, key, a):
    """``saved`` with array ``key`` replaced by ``a`` (manifest updated to agree)."""

    def edit(m):
        m["arrays"][key] = {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)}
        return m

    _rewrite(saved, bad, edit, replace={f"arrays/{key}.npy": npy(np.asarray(a))})
    return bad


def _damage(key, fn):
    def build(saved, bad):
        with zipfile.ZipFile(saved) as zf:
            a = np.load(io.BytesIO(zf.read(f"arrays/{key}.npy")))
        return _set_array(saved, bad, key, fn(a.copy()))
    return build


def _first(value):
    def fn(a):
        a.flat[0] = value
        return a
    return fn


def _manifest(fn):
    def build(saved, bad):
        _rewrite(saved, bad, fn)
        return bad
    return build


def _state(**kw):
    def fn(m):
        m["state"].update(kw)
        return m
    return _manifest(fn)


HOSTILE = {
    # dtypes
    "dtype-text": (_damage("gamma_star", lambda a: np.full(a.shape, "abcde")),
                   ["array 'gamma_star' has dtype <U5", "expected float64 (batch x feature, 3 x 8)"]),
    "dtype-int8": (_damage("gamma_star", lambda a: a.astype(np.int8)), ["dtype int8", "expected float64"]),
    "dtype-complex": (_damage("delta_star", lambda a: a.astype(complex)), ["dtype complex128"]),
    "dtype-structured": (_damage("sigma", lambda a: np.zeros(a.shape, [("x", "<f8")])), ["'sigma' has dtype"]),
    "dtype-constant-not-bool": (_damage("constant", lambda a: a.astype(float)), ["expected bool (feature, 8)"]),
    # shapes and the design
    "shape-transposed": (_damage("gamma_star", lambda a: a.T.copy()), ["has shape (8, 3)", "3 x 8"]),
    "design-columns-mismatch": (_state(design={"formula": "age", "variables": ["age"], "levels": {},
                                               "columns": ["age"], "ranges": {}, "float32": False}),
                                ["array 'beta' has shape (2, 8)", "(design column x feature, 1 x 8)"]),
    "design-levels-list": (_manifest(lambda m: (m["state"]["design"].update(levels=[]), m)[1]),
                           ["state.design.levels is a list"]),
    "design-levels-mixed": (_manifest(lambda m: (m["state"]["design"]["levels"].update(sex=[1.5, "M"]), m)[1]),
                            ["state.design.levels['sex'][1] is a str ('M')"]),
    "design-empty-formula": (_manifest(lambda m: (m["state"]["design"].update(formula=" "), m)[1]),
                             ["state.design.columns lists 2 column(s) for an empty formula"]),
    # values
    "nan-gamma-star": (_damage("gamma_star", _first(np.nan)), ["'gamma_star' holds nan at (batch 'site01', feature",
                                                               "expected finite numbers"]),
    "inf-delta-star": (_damage("delta_star", _first(np.inf)), ["'delta_star' holds inf", "> 0"]),
    "zero-delta-star": (_damage("delta_star", _first(0.0)), ["'delta_star' holds 0.0", "> 0"]),
    "negative-delta-hat": (_damage("delta_hat", _first(-1.0)), ["'delta_hat' holds -1.0", ">= 0 (or NaN)"]),
    "zero-sigma": (_damage("sigma", _first(0.0)), ["'sigma' holds 0.0 at (feature", "> 0"]),
    "nan-sigma": (_damage("sigma", _first(np.nan)), ["'sigma' holds nan"]),
    "fractional-count": (_damage("batch_sizes", _first(49.5)), ["'batch_sizes' holds 49.5", "whole numbers"]),
    # names
    "duplicate-batches": (_state(batches=["site01", "site01", "site03"]), ["state.batches repeats 'site01'"]),
    "duplicate-features": (_manifest(lambda m: (m["state"]["feature_names"].__setitem__(1, m["state"]["feature_names"][0]), m)[1]),
                           ["state.feature_names repeats"]),
    "batches-not-a-list": (_state(batches="site01"), ["state.batches is a str"]),
    # entries
    "schema-bool": (_manifest(lambda m: {**m, "schema_version": True}), ["schema_version is true"]),
    "schema-text": (_manifest(lambda m: {**m, "schema_version": "1"}), ["schema_version is a str ('1')"]),
    "schema-float": (_manifest(lambda m: {**m, "schema_version": 1.0}), ["schema_version is a float"]),
    "schema-zero": (_manifest(lambda m: {**m, "schema_version": 0}), ["schema_version is 0"]),
    "fit-warnings-string": (_state(fit_warnings=["watch out"]), ["state.fit_warnings[0] is a str"]),
    "fit-warnings-extra-key": (_state(fit_warnings=[{"category": "A", "message": "b", "x": 1}]),
                               ["state.fit_warnings[0] has unexpected entries ['x']"]),
    "ref-index-without-ref-batch": (_state(ref_index=0), ["state.ref_index is an int (0)", "ref_batch"]),
    "ref-index-out-of-range": (_manifest(lambda m: {**m, "params": {**m["params"], "ref_batch": "site01"},
                                                   "state": {**m["state"], "ref_index": 3}}),
                               ["state.ref_index is an int (3)", "from 0 to 2"]),
    "ref-index-text": (_manifest(lambda m: {**m, "params": {**m["params"], "ref_batch": "site01"},
                                           "state": {**m["state"], "ref_index": "0"}}), ["state.ref_index is a str"]),
    "ref-index-other-batch": (_manifest(lambda m: {**m, "params": {**m["params"], "ref_batch": "site01"},
                                                  "state": {**m["state"], "ref_index": 2}}),
                              ["points at batch 'site03'"]),
    "param-wrong-type": (_manifest(lambda m: {**m, "params": {**m["params"], "max_iter": "many"}}),
                         ["stored parameters are invalid", "'max_iter'"]),
    "state-extra-entry": (_state(payload="x"), ["state has unexpected entries ['payload']"]),
    "manifest-extra-entry": (_manifest(lambda m: {**m, "hook": "x"}), ["unexpected entries ['hook']"]),
    "created-not-text": (_manifest(lambda m: {**m, "created": 5}), ["created is an int"]),
    "array-meta-malformed": (_manifest(lambda m: (m["arrays"].__setitem__("alpha", [8]), m)[1]),
                             ["manifest entry of array 'alpha'"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_model_file(saved, tmp_path, case):
    build, words = HOSTILE[case]
    bad = build(saved, tmp_path / "bad.fhm")
    _refused(bad, *words)


def test_header_of_a_trillion_elements_is_refused_before_any_data(saved, tmp_path):
    bad = tmp_path / "bad.fhm"
    _rewrite(saved, bad, replace={"arrays/alpha.npy": npy_header((10**12,)) + bytes(64)})
    _refused(bad, "array 'alpha' has shape (1000000000000,)", "expected float64 (feature, 8)")


def test_member_sizes_are_checked_before_reading(saved, tmp_path):
    entries = [(n, {"data": deflate_bomb(64 * 2**20), "size": 64 * 2**20} if n == "arrays/alpha.npy" else b)
               for n, b in members(saved).items()]
    bad = raw_zip(tmp_path / "bad.fhm", entries)
    _refused(bad, f"array 'alpha' (arrays/alpha.npy) declares {64 * 2**20:,} bytes uncompressed",
             "expected at most 4,160 for float64 (feature, 8)")
    # and the total against the file size (a zip bomb)
    entries = [(n, {"data": deflate_bomb(2 * 10**9), "size": 2 * 10**9} if n == "arrays/alpha.npy" else b)
               for n, b in members(saved).items()]
    bomb = raw_zip(tmp_path / "bomb.fhm", entries)
    _refused(bomb, "'arrays/alpha.npy' alone 2.0 GB", "at most 100 times the file size")


def test_container_limits(saved, tmp_path):
    many = tmp_path / "many.fhm"
    _rewrite(saved, many, replace=None)
    from featharm.persistence import MAX_MEMBERS

    with zipfile.ZipFile(many, "a") as zf:
        for i in range(MAX_MEMBERS):
            zf.writestr(f"x/{i}", b"")
    _refused(many, f"holds {MAX_MEMBERS + 16} members", f"at most {MAX_MEMBERS}")
    extra = tmp_path / "extra.fhm"
    _rewrite(saved, extra)
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr("README.txt", b"hello")
    _refused(extra, "unexpected member 'README.txt' (not read)")
    entries = [(n, {"data": b, "size": len(b), "method": zipfile.ZIP_LZMA} if n == "arrays/alpha.npy" else b)
               for n, b in members(saved).items()]
    _refused(raw_zip(tmp_path / "lzma.fhm", entries), "member 'arrays/alpha.npy' uses zip compression method 14")


def test_manifest_limits(saved, tmp_path):
    deep = tmp_path / "deep.fhm"
    _rewrite(saved, deep, replace={"manifest.json": b"[" * 100_000 + b"]" * 100_000})
    _refused(deep, "manifest.json nests 100000 levels deep", "at most 64")
    huge = tmp_path / "huge.fhm"
    _rewrite(saved, huge, replace={"manifest.json": b'{"x": "' + b" " * (64 * 2**20) + b'"}'})
    _refused(huge, "manifest.json declares", "expected at most")


def test_json_depth_counts_brackets_outside_strings_only():
    from featharm.persistence import _json_depth

    assert _json_depth(b'{"a": [1, {"b": []}]}') == 4
    assert _json_depth(b'{"a": "[[[[{{{{", "b": "\\"[[[", "c": "\\\\"}') == 1
    assert _json_depth(b"[]" * 1000) == 1
    assert _json_depth(b"") == 0


def test_json_depth_is_linear_on_adversarial_escapes():
    import time

    from featharm.persistence import _json_depth

    text = b'["' + b'\\"[' * 2**20 + b'", [[]]]'  # a 3 MiB string of escaped quotes and brackets
    t0 = time.perf_counter()
    assert _json_depth(text) == 3
    assert time.perf_counter() - t0 < 5.0
    assert len(json.loads(text)[0]) == 2 * 2**20  # it is JSON, and the string is what was counted past


def test_gam_basis_is_checked(sim, tmp_path):
    X, cov = sim
    path = tmp_path / "gam.fhm"
    fh.ComBatGAM(smooth="age", df=6).fit(X, cov).save(path)
    knots = read_manifest(path)["state"]["smooth_bases"][0]["knots"]

    def basis(**kw):
        def fn(m):
            m["state"]["smooth_bases"][0].update(kw)
            return m
        return fn

    for i, (edit, words) in enumerate([
        (basis(knots=knots[::-1]), ["smooth_bases[0].knots are not finite and non-decreasing"]),
        (basis(knots=[*knots[:-1], float("inf")]), ["smooth_bases[0].knots are not finite"]),
        (basis(degree=True), ["smooth_bases[0].degree is true"]),
        (basis(data_range=[80, 20]), ["smooth_bases[0].data_range"]),
        (basis(name="bmi"), ["are for the terms ['bmi']", "['age']"]),
    ]):
        bad = tmp_path / f"bad{i}.fhm"
        _rewrite(path, bad, edit)
        _refused(bad, *words)


def test_longitudinal_state_is_checked(tmp_path):
    L = fh.datasets.make_longitudinal(n_subjects=30, n_sites=3, n_features=5, random_state=3)
    path = tmp_path / "long.fhm"
    fh.LongComBat(formula="age").fit(L.X, L.covariates).save(path)
    bad = tmp_path / "bad.fhm"
    _rewrite(path, bad, lambda m: (m["state"]["subjects"].__setitem__(1, m["state"]["subjects"][0]), m)[1])
    _refused(bad, "state.subjects repeats")
    with zipfile.ZipFile(path) as zf:
        G = np.load(io.BytesIO(zf.read("arrays/ranef_cov.npy")))
    G[2, 0, 0] = -1.0
    _set_array(path, bad, "ranef_cov", G)
    _refused(bad, "array 'ranef_cov' is not a covariance matrix for feature 'roi002'")


def test_covbat_components_are_checked(sim, tmp_path):
    X, cov = sim
    path = tmp_path / "covbat.fhm"
    fh.CovBat(n_components=3).fit(X, cov).save(path)
    bad = tmp_path / "bad.fhm"
    _set_array(path, bad, "explained_variance_ratio", np.array([0.5, 0.3]))
    _refused(bad, "'pca_loadings' has 3 components but only 2 principal components")
    _set_array(path, bad, "score_sigma", np.ones(4))
    _refused(bad, "array 'score_sigma' has shape (4,)", "(component, 3)")


def test_combatls_scale_design_is_checked(sim, tmp_path):
    X, cov = sim
    path = tmp_path / "ls.fhm"
    fh.ComBatLS(formula="age", scale_formula="age + sex").fit(X, cov).save(path)
    bad = tmp_path / "bad.fhm"
    _rewrite(path, bad, lambda m: (m["state"]["scale_design"].update(columns=["age"]), m)[1])
    _refused(bad, "array 'scale_coef' has shape (3, 8)", "(scale column x feature, 2 x 8)")
    _rewrite(path, bad, lambda m: (m["state"]["scale_design"].update(columns="age"), m)[1])
    _refused(bad, "state.scale_design.columns is a str")


def test_json_depth_agrees_with_the_parser_on_random_json():
    """The bracket count matches the nesting json.loads sees, for strings full of quotes, backslashes and
    brackets, with chunks as small as one byte (the state carried across chunks)."""
    import random

    from featharm.persistence import _json_depth

    rng = random.Random(0)
    chars = ['"', "\\", "[", "]", "{", "}", "a", " ", "é"]

    def text():
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, 10)))

    def value(d):
        r = rng.random()
        if d > 5 or r < 0.3:
            return rng.choice([text(), 1, None, 2.5, True])
        if r < 0.65:
            return [value(d + 1) for _ in range(rng.randint(0, 3))]
        return {text(): value(d + 1) for _ in range(rng.randint(0, 3))}

    def depth(o):
        if isinstance(o, (list, dict)):
            return 1 + max((depth(x) for x in (o.values() if isinstance(o, dict) else o)), default=0)
        return 0

    for _ in range(400):
        o = value(0)
        raw = json.dumps(o, ensure_ascii=rng.random() < 0.5).encode()
        for chunk in (1, 2, 5, 4 * 2**20):
            assert _json_depth(raw, chunk) == depth(o), (raw, chunk)
