"""Damaged and hostile model files, through the command line: each one is refused (the harness contract).

Every hostile file is built from a really fitted model of each family (copied, then its manifest or an
array member rewritten), and given to ``featharm apply MODEL DATA`` (a few also to ``featharm report
--model`` and ``featharm diagnose --model``). The refusal must name the file and the damaged part. The
control tests check that the copying itself keeps a model loadable, so no refusal here is an accident of
the rewriting.
"""

from __future__ import annotations

import os
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import featharm
from featharm.cli import main

from .conftest import expect_refusal, fitted_model
from .hostile import (
    deflate_bomb,
    edit_state,
    inflated_size,
    manifest,
    members,
    npy,
    npy_header,
    raw_zip,
    rewrite,
)


# --------------------------------------------------------------------------------------------- helpers
def _outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return out


def refuse(capsys, tmp_path, bad: Path, data: Path, needles=(), command="apply"):
    """``featharm COMMAND`` with the model ``bad`` is refused, naming the file and the ``needles``."""
    out = _outputs(tmp_path)
    if command == "apply":
        target = out / "h.csv"
        argv = ["apply", bad, data, "--out", target, "--quiet"]
    elif command == "report":
        target = out / "report.html"
        argv = ["report", data, "--model", bad, "--out", target, "--quiet"]
    else:
        target = out / "diag"
        argv = ["diagnose", data, "--batch", "site", "--model", bad, "--out", target, "--quiet",
                "--no-classification", "--n-permutations", "0"]
    inputs = [data] + ([bad] if bad.is_file() and not bad.is_fifo() else [])
    r = expect_refusal(capsys, argv, needles=[bad.name], inputs=inputs, outputs=[target])
    text = r.err.replace(str(bad), "").lower()  # the path holds the test's name: look past it
    for needle in needles:
        assert needle.lower() in text, f"{needle!r} not in {r.err!r}"
    return r


def _bad(tmp_path) -> Path:
    return tmp_path / "bad.fhm"


def _swap(src, dst, member_key, data):
    """Replace an array member; when it is a readable .npy file, the manifest is updated to agree with it
    (so the file is consistent and only the intended check can refuse it)."""
    import io

    edit = None
    try:
        fp = io.BytesIO(data)
        version = np.lib.format.read_magic(fp)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _, dtype = read[version](fp)  # the header only
    except Exception:
        pass
    else:
        def edit(m):
            m["arrays"][member_key] = {"shape": list(shape), "dtype": str(dtype)}
            return m
    return rewrite(src, dst, edit, replace={f"arrays/{member_key}.npy": data})


def _array(src, key) -> np.ndarray:
    import io

    return np.load(io.BytesIO(members(src)[f"arrays/{key}.npy"]), allow_pickle=False)


# --------------------------------------------------------------------------------------------- controls
def test_copied_model_still_applies(capsys, family_model, tmp_path):
    """The rewriting and the hand-written zip keep a model loadable: refusals below are not accidents."""
    family, model, data = family_model
    out = _outputs(tmp_path)
    for i, copy in enumerate([rewrite(model, tmp_path / "copy.fhm", lambda m: m),
                              raw_zip(tmp_path / "raw.fhm", list(members(model).items()))]):
        assert main(["apply", str(copy), str(data), "--out", str(out / f"h{i}.csv"), "--quiet"]) == 0, family
        assert (out / f"h{i}.csv").stat().st_size > 0


# --------------------------------------------------------------------------------------------- not a model
def test_not_a_zip(capsys, tmp_path, family_model):
    _, _, data = family_model
    bad = _bad(tmp_path)
    bad.write_text("subject,site\nsub-1,A\n")
    refuse(capsys, tmp_path, bad, data, ["not a featharm model file"])


def test_empty_file(capsys, tmp_path, family_model):
    _, _, data = family_model
    bad = _bad(tmp_path)
    bad.write_bytes(b"")
    refuse(capsys, tmp_path, bad, data, ["empty"])


def test_directory(capsys, tmp_path, family_model):
    _, _, data = family_model
    bad = _bad(tmp_path)
    bad.mkdir()
    refuse(capsys, tmp_path, bad, data, ["is a directory"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(capsys, tmp_path, family_model):
    _, _, data = family_model
    bad = _bad(tmp_path)
    os.mkfifo(bad)  # opening it for reading would wait for a writer forever
    refuse(capsys, tmp_path, bad, data, ["not a regular file"])


def test_truncated_zip(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = _bad(tmp_path)
    raw = model.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    refuse(capsys, tmp_path, bad, data, ["not a featharm model file"])


def test_zip_without_manifest(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), drop=("manifest.json",))
    refuse(capsys, tmp_path, bad, data, ["manifest.json"])


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b'{"format": "featharm-model", "x": 1e999999999999'],
                         ids=["syntax", "not-utf8", "unterminated"])
def test_manifest_not_json(capsys, tmp_path, family_model, raw):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: raw)
    refuse(capsys, tmp_path, bad, data, ["manifest.json", "not JSON"])


def test_other_format(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: {**m, "format": "something-else"})
    refuse(capsys, tmp_path, bad, data, ["something-else"])


# --------------------------------------------------------------------------------------------- bounded cost
def test_zip_bomb_is_refused_fast_and_small(capsys, tmp_path, family_model):
    """A 3 GB member of compressed zeros in a 3 MB file: refused from its declared size, nothing inflated."""
    _, model, data = family_model
    bomb = deflate_bomb(3 * 10**9)
    assert inflated_size(bomb, 64 * 2**20) == 64 * 2**20  # it really inflates (first 64 MiB checked)
    entries = [(n, {"data": bomb, "size": 3 * 10**9} if n == "arrays/gamma_star.npy" else b)
               for n, b in members(model).items()]
    bad = raw_zip(_bad(tmp_path), entries)
    assert bad.stat().st_size < 4 * 10**6
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        refuse(capsys, tmp_path, bad, data, ["gamma_star", "3.0 GB", "zip bomb"])
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5.0
    assert peak < 100 * 2**20, peak  # the bomb is 3 GB; the file 3 MB


def test_member_larger_than_its_axes_allow(capsys, tmp_path, family_model):
    """200 MB of zeros for a batch x feature array (within the expansion bound): refused before reading."""
    _, model, data = family_model
    entries = [(n, {"data": deflate_bomb(200 * 2**20), "size": 200 * 2**20} if n == "arrays/gamma_star.npy" else b)
               for n, b in members(model).items()]
    bad = raw_zip(_bad(tmp_path), entries)
    tracemalloc.start()
    try:
        refuse(capsys, tmp_path, bad, data, ["gamma_star", f"declares {200 * 2**20:,} bytes", "batch x feature"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak


def test_member_inflating_past_its_declared_size(capsys, tmp_path, family_model):
    """A member that declares the right size but inflates to 3 GB: reading stops at the declared size."""
    _, model, data = family_model
    size = len(members(model)["arrays/gamma_star.npy"])
    entries = [(n, {"data": deflate_bomb(3 * 10**9), "size": size} if n == "arrays/gamma_star.npy" else b)
               for n, b in members(model).items()]
    bad = raw_zip(_bad(tmp_path), entries)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        refuse(capsys, tmp_path, bad, data, ["gamma_star"])
        elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5.0 and peak < 100 * 2**20, (elapsed, peak)


@pytest.mark.parametrize("data_bytes", [48, 8192])
def test_header_promising_a_trillion_elements(capsys, tmp_path, family_model, data_bytes):
    """A member whose .npy header declares 10^12 float64 (8 TB) over 48 bytes (the size alpha has, so the
    header itself is what is refused) or 8 kB (too large for the feature axis already): refused at once."""
    _, model, data = family_model
    member = npy_header((10**12,)) + bytes(data_bytes)
    bad = _swap(model, _bad(tmp_path), "alpha", member)
    needles = ["alpha", "1000000000000", "feature"] if data_bytes == 48 else ["alpha", "declares", "(feature, 6)"]
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        refuse(capsys, tmp_path, bad, data, needles)
        elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5.0 and peak < 50 * 2**20, (elapsed, peak)


def test_deeply_nested_manifest(capsys, tmp_path, family_model):
    _, model, data = family_model
    deep = b'{"format": "featharm-model", "schema_version": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    bad = rewrite(model, _bad(tmp_path), lambda m: deep)
    refuse(capsys, tmp_path, bad, data, ["manifest.json", "100001 levels deep"])


def test_oversized_manifest(capsys, tmp_path, family_model):
    _, model, data = family_model
    huge = b'{"format": "featharm-model", "pad": "' + b"x" * (65 * 2**20) + b'"}'
    bad = rewrite(model, _bad(tmp_path), lambda m: huge)
    refuse(capsys, tmp_path, bad, data, ["manifest.json", "declares", "at most"])


def test_too_many_members(capsys, tmp_path, family_model):
    _, model, data = family_model
    from featharm.persistence import MAX_MEMBERS

    bad = rewrite(model, _bad(tmp_path), add={f"junk/{i}.txt": b"x" for i in range(MAX_MEMBERS + 36)})
    refuse(capsys, tmp_path, bad, data, ["members", f"at most {MAX_MEMBERS}"])


def test_repeated_member(capsys, tmp_path, family_model):
    _, model, data = family_model
    entries = list(members(model).items())
    entries.append(("arrays/gamma_star.npy", npy(np.zeros((2, 2)))))  # a second copy that would win
    bad = raw_zip(_bad(tmp_path), entries)
    refuse(capsys, tmp_path, bad, data, ["gamma_star", "twice"])


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, 99])
def test_unsupported_compression(capsys, tmp_path, family_model, method):
    _, model, data = family_model
    entries = [(n, {"data": b, "size": len(b), "method": method} if n == "arrays/gamma_star.npy" else b)
               for n, b in members(model).items()]
    bad = raw_zip(_bad(tmp_path), entries)
    refuse(capsys, tmp_path, bad, data, ["gamma_star", f"compression method {method}"])


def test_encrypted_member(capsys, tmp_path, family_model):
    _, model, data = family_model
    entries = [(n, {"data": b, "size": len(b), "method": 0, "flags": 1} if n == "arrays/gamma_star.npy" else b)
               for n, b in members(model).items()]
    bad = raw_zip(_bad(tmp_path), entries)
    refuse(capsys, tmp_path, bad, data, ["gamma_star", "encrypted"])


@pytest.mark.parametrize("name", ["arrays/evil.npy", "../outside.txt", "manifest.json.bak"])
def test_unexpected_member(capsys, tmp_path, family_model, name):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), add={name: npy(np.zeros(3))})
    refuse(capsys, tmp_path, bad, data, [name, "unexpected member", "not read"])


# --------------------------------------------------------------------------------------------- manifest
@pytest.mark.parametrize("version", ["1", True, 1.5, None, 0, -3], ids=repr)
def test_schema_version_not_a_schema(capsys, tmp_path, family_model, version):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: {**m, "schema_version": version})
    refuse(capsys, tmp_path, bad, data, ["schema_version"])


def test_newer_schema(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: {**m, "schema_version": 99, "featharm_version": "9.9"})
    refuse(capsys, tmp_path, bad, data, ["schema 99", "newer", "9.9", "Upgrade"])


def test_unknown_model_type(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: {**m, "model": "AlienHarmonizer"})
    refuse(capsys, tmp_path, bad, data, ["AlienHarmonizer", "unknown type"])


def test_unexpected_parameter(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: {**m, "params": {**m["params"], "warp_speed": 9}})
    refuse(capsys, tmp_path, bad, data, ["warp_speed"])


@pytest.mark.parametrize("param,value", [("eb", "yes"), ("batch", ["site"]), ("formula", 42)])
def test_parameter_of_the_wrong_type(capsys, tmp_path, family_model, param, value):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: {**m, "params": {**m["params"], param: value}})
    refuse(capsys, tmp_path, bad, data, [f"'{param}'", "parameters"])


def test_unexpected_manifest_entry(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: {**m, "payload": "rm -rf"})
    refuse(capsys, tmp_path, bad, data, ["payload", "unexpected"])


@pytest.mark.parametrize("entry", ["arrays", "state", "params"])
def test_missing_manifest_entry(capsys, tmp_path, family_model, entry):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: {k: v for k, v in m.items() if k != entry})
    refuse(capsys, tmp_path, bad, data, [entry, "lacks"])


# --------------------------------------------------------------------------------------------- state
@pytest.mark.parametrize("entry", ["design", "batches", "feature_names"])
def test_missing_state_entry(capsys, tmp_path, family_model, entry):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), edit_state(**{entry: None}))
    refuse(capsys, tmp_path, bad, data, ["state", entry])


def test_unexpected_state_entry(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), edit_state(evil=[1, 2]))
    refuse(capsys, tmp_path, bad, data, ["state", "evil"])


@pytest.mark.parametrize("change,needles", [
    (lambda b: "site01", ["state.batches", "a list"]),
    (lambda b: [b[0], b[0], *b[2:]], ["state.batches", "repeats"]),
    (lambda b: [b[0], 2, *b[2:]], ["state.batches[1]"]),
    (lambda b: [], ["state.batches", "empty"]),
], ids=["not-a-list", "duplicated", "mixed-types", "empty"])
def test_malformed_batches(capsys, tmp_path, family_model, change, needles):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: edit_state(batches=change(m["state"]["batches"]))(m))
    refuse(capsys, tmp_path, bad, data, needles)


@pytest.mark.parametrize("change,needles", [
    (lambda f: [f[1], *f[1:]], ["state.feature_names", "repeats"]),
    (lambda f: [7, *f[1:]], ["state.feature_names[0]", "strings"]),
    (lambda f: {"a": 1}, ["state.feature_names", "a list"]),
], ids=["duplicated", "number", "object"])
def test_malformed_feature_names(capsys, tmp_path, family_model, change, needles):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), lambda m: edit_state(feature_names=change(m["state"]["feature_names"]))(m))
    refuse(capsys, tmp_path, bad, data, needles)


@pytest.mark.parametrize("value,needles", [
    (["a warning as a string"], ["fit_warnings[0]", "JSON object"]),
    ("a string", ["fit_warnings", "a list"]),
    ([{"category": "X", "message": 3}], ["fit_warnings[0].message", "a string"]),
], ids=["string-entry", "string", "number-message"])
def test_malformed_fit_warnings(capsys, tmp_path, family_model, value, needles):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), edit_state(fit_warnings=value))
    refuse(capsys, tmp_path, bad, data, needles)


@pytest.mark.parametrize("ref", [7, -1, "0", True, 0.0], ids=repr)
def test_ref_index_out_of_range_or_not_an_int(capsys, tmp_path, family_model, ref):
    family, model, data = family_model

    def edit(m):
        if "ref_batch" in m["params"]:  # a reference model whose reference index is broken
            m["params"]["ref_batch"] = m["state"]["batches"][0]
        m["state"]["ref_index"] = ref
        return m

    bad = rewrite(model, _bad(tmp_path), edit)
    refuse(capsys, tmp_path, bad, data, ["state.ref_index"])


def test_design_column_count_does_not_match_beta(capsys, tmp_path, family_model):
    _, model, data = family_model

    def edit(m):
        m["state"]["design"]["columns"] = m["state"]["design"]["columns"][:-1]
        return m

    bad = rewrite(model, _bad(tmp_path), edit)
    refuse(capsys, tmp_path, bad, data, ["beta", "design column x feature"])


@pytest.mark.parametrize("key,value,needles", [
    ("columns", "age", ["state.design.columns", "a list"]),
    ("columns", "dup", ["state.design.columns", "repeats"]),
    ("levels", ["F", "M"], ["state.design.levels", "JSON object"]),
    ("levels", {"sex": "FM"}, ["state.design.levels['sex']"]),
    ("variables", [1], ["state.design.variables[0]"]),
    ("formula", None, ["state.design.formula", "a string"]),
    ("formula", "", ["state.design.columns", "for an empty formula"]),
    ("levels", {"sex": ["F", 1.5]}, ["state.design.levels['sex'][1]", "all strings or all finite numbers"]),
    ("levels", {"sex": ["F", "F"]}, ["state.design.levels['sex']", "repeats 'F'"]),
], ids=["columns-string", "columns-duplicated", "levels-list", "level-string", "variable-number", "formula-null",
        "formula-empty", "levels-mixed", "levels-duplicated"])
def test_malformed_design(capsys, tmp_path, family_model, key, value, needles):
    _, model, data = family_model

    def edit(m):
        d = m["state"]["design"]
        d[key] = [d["columns"][0], d["columns"][0]] if value == "dup" else value
        return m

    bad = rewrite(model, _bad(tmp_path), edit)
    refuse(capsys, tmp_path, bad, data, needles)


# --------------------------------------------------------------------------------------------- arrays
def test_missing_array(capsys, tmp_path, family_model):
    _, model, data = family_model

    def edit(m):
        del m["arrays"]["gamma_star"]
        return m

    bad = rewrite(model, _bad(tmp_path), edit, drop=("arrays/gamma_star.npy",))
    refuse(capsys, tmp_path, bad, data, ["gamma_star", "does not list"])


def test_listed_array_without_member(capsys, tmp_path, family_model):
    _, model, data = family_model
    bad = rewrite(model, _bad(tmp_path), drop=("arrays/delta_star.npy",))
    refuse(capsys, tmp_path, bad, data, ["delta_star", "missing"])


def test_unexpected_array(capsys, tmp_path, family_model):
    _, model, data = family_model

    def edit(m):
        m["arrays"]["backdoor"] = {"shape": [3], "dtype": "float64"}
        return m

    bad = rewrite(model, _bad(tmp_path), edit, add={"arrays/backdoor.npy": npy(np.zeros(3))})
    refuse(capsys, tmp_path, bad, data, ["backdoor", "unexpected array"])


WRONG_DTYPES = {
    "text": lambda s: np.full(s, "abcde"),
    "int8": lambda s: np.zeros(s, dtype=np.int8),
    "int64": lambda s: np.zeros(s, dtype=np.int64),
    "float32": lambda s: np.zeros(s, dtype=np.float32),
    "complex": lambda s: np.zeros(s, dtype=np.complex128),
    "bool": lambda s: np.zeros(s, dtype=bool),
    "structured": lambda s: np.zeros(s, dtype=[("a", "<f8")]),
    "float16": lambda s: np.zeros(s, dtype=np.float16),
    "datetime": lambda s: np.zeros(s, dtype="datetime64[s]"),
}


@pytest.mark.parametrize("kind", list(WRONG_DTYPES))
def test_array_of_the_wrong_dtype(capsys, tmp_path, family_model, kind):
    _, model, data = family_model
    shape = _array(model, "gamma_star").shape
    bad = _swap(model, _bad(tmp_path), "gamma_star", npy(WRONG_DTYPES[kind](shape)))
    refuse(capsys, tmp_path, bad, data, ["gamma_star", "dtype", "expected float64 (batch x feature"])


class _Payload:
    """Unpickling this would create a file: the proof that a pickle stream was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_array_is_never_unpickled(capsys, tmp_path, family_model):
    _, model, data = family_model
    marker = tmp_path / "pwned.txt"
    payload = np.array([_Payload(marker)] * 6, dtype=object)
    bad = _swap(model, _bad(tmp_path), "alpha", npy(payload, allow_pickle=True))
    refuse(capsys, tmp_path, bad, data, ["alpha", "dtype object", "pickle"])
    assert not marker.exists()


def test_boolean_array_of_the_wrong_dtype(capsys, tmp_path, family_model):
    _, model, data = family_model
    p = _array(model, "constant").shape
    bad = _swap(model, _bad(tmp_path), "constant", npy(np.zeros(p)))
    refuse(capsys, tmp_path, bad, data, ["constant", "dtype float64", "expected bool (feature"])


def test_boolean_array_with_bytes_other_than_0_and_1(capsys, tmp_path, family_model):
    _, model, data = family_model
    raw = bytearray(members(model)["arrays/constant.npy"])
    raw[-1] = 2  # numpy reads 2 as True, but ~2 is also True: a feature both constant and not
    bad = _swap(model, _bad(tmp_path), "constant", bytes(raw))
    refuse(capsys, tmp_path, bad, data, ["constant", "other than 0 and 1"])


@pytest.mark.parametrize("reshape", ["extra-row", "transposed", "flat", "scalar"])
def test_array_of_the_wrong_shape(capsys, tmp_path, family_model, reshape):
    _, model, data = family_model
    g = _array(model, "gamma_star")
    new = {"extra-row": np.vstack([g, g[:1]]), "transposed": g.T.copy(), "flat": g.ravel(),
           "scalar": np.float64(1.0)}[reshape]
    bad = _swap(model, _bad(tmp_path), "gamma_star", npy(new))
    refuse(capsys, tmp_path, bad, data, ["gamma_star", "shape", "batch x feature"])


def test_manifest_and_header_disagree(capsys, tmp_path, family_model):
    _, model, data = family_model

    def edit(m):
        m["arrays"]["gamma_star"]["shape"] = [9, 9]
        return m

    bad = rewrite(model, _bad(tmp_path), edit)
    refuse(capsys, tmp_path, bad, data, ["gamma_star", "manifest says"])


@pytest.mark.parametrize("damage", ["cut", "extra", "garbage", "npy-v3"])
def test_npy_member_damaged(capsys, tmp_path, family_model, damage):
    _, model, data = family_model
    good = members(model)["arrays/gamma_star.npy"]
    member = {"cut": good[:-8], "extra": good + bytes(8), "garbage": os.urandom(len(good)),
              "npy-v3": b"\x93NUMPY\x03\x00" + good[8:]}[damage]
    bad = _swap(model, _bad(tmp_path), "gamma_star", member)
    needle = "bytes of data" if damage in ("cut", "extra") else "no valid .npy header"
    refuse(capsys, tmp_path, bad, data, ["gamma_star", needle])


BAD_VALUES = [
    ("gamma_star", np.nan, "finite numbers"),
    ("gamma_star", np.inf, "finite numbers"),
    ("delta_star", 0.0, "> 0"),
    ("delta_star", -1.0, "> 0"),
    ("delta_star", np.nan, "> 0"),
    ("delta_hat", -0.5, ">= 0"),
    ("sigma", 0.0, "> 0"),
    ("sigma", -2.0, "> 0"),
    ("sigma", np.nan, "> 0"),
    ("alpha", -np.inf, "finite numbers"),
    ("beta", np.nan, "finite numbers"),
    ("batch_coef", np.inf, "finite numbers"),
    ("batch_sizes", 1.5, "whole numbers"),
    ("n_iter", np.nan, "whole numbers"),
    ("n_iter", -1.0, "whole numbers"),
]


@pytest.mark.parametrize("key,value,words", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_bad_estimates(capsys, tmp_path, family_model, key, value, words):
    _, model, data = family_model
    a = _array(model, key).copy()
    a.flat[0] = value
    bad = _swap(model, _bad(tmp_path), key, npy(a))
    r = refuse(capsys, tmp_path, bad, data, [key, words])
    if a.ndim == 2 and key != "beta":
        assert "batch 'site01'" in r.err and "feature 'roi000'" in r.err  # named by labels, not positions


def test_big_endian_float64_is_read(capsys, tmp_path, family_model):
    """Not every odd file is hostile: float64 stored big-endian is float64, and gives the same output."""
    family, model, data = family_model
    entries = {}
    for name, blob in members(model).items():
        if name.endswith(".npy"):
            import io

            a = np.load(io.BytesIO(blob))
            if a.dtype == np.float64:
                blob = npy(a.astype(">f8"))
        entries[name] = blob

    def edit(m):
        for meta in m["arrays"].values():
            meta["dtype"] = ">f8" if meta["dtype"] == "float64" else meta["dtype"]
        return m

    swapped = rewrite(model, tmp_path / "be.fhm", edit, replace={k: v for k, v in entries.items() if k != "manifest.json"})
    out = _outputs(tmp_path)
    assert main(["apply", str(model), str(data), "--out", str(out / "a.csv"), "--quiet"]) == 0
    assert main(["apply", str(swapped), str(data), "--out", str(out / "b.csv"), "--quiet"]) == 0
    assert (out / "a.csv").read_bytes() == (out / "b.csv").read_bytes()


# --------------------------------------------------------------------------------------------- report / diagnose
HOSTILE_FOR_OTHER_COMMANDS = {
    "nan-gamma-star": lambda model, bad: _swap(model, bad, "gamma_star",
                                               npy(np.full(_array(model, "gamma_star").shape, np.nan))),
    "deep-json": lambda model, bad: rewrite(model, bad, lambda m: b"[" * 100_000 + b"]" * 100_000),
    "text-dtype": lambda model, bad: _swap(model, bad, "delta_star",
                                           npy(np.full(_array(model, "delta_star").shape, "x"))),
}


@pytest.mark.parametrize("command", ["report", "diagnose"])
@pytest.mark.parametrize("case", list(HOSTILE_FOR_OTHER_COMMANDS))
def test_report_and_diagnose_refuse_hostile_models(capsys, tmp_path, family_model, command, case):
    _, model, data = family_model
    bad = HOSTILE_FOR_OTHER_COMMANDS[case](model, _bad(tmp_path))
    needles = {"nan-gamma-star": ["gamma_star", "nan"], "deep-json": ["levels deep"],
               "text-dtype": ["delta_star", "dtype"]}[case]
    refuse(capsys, tmp_path, bad, data, needles, command=command)


# --------------------------------------------------------------------------------------------- per family
@pytest.fixture(scope="module")
def models(_model_dir):
    return {f: fitted_model(f, _model_dir) for f in ("gam", "longitudinal", "covbat", "combatls")}


def _basis_edit(**changes):
    def edit(m):
        m["state"]["smooth_bases"][0].update(changes)
        return m

    return edit


FAMILY_CASES = {
    # ComBatGAM: the frozen spline bases
    "gam-knots-decreasing": ("gam", lambda m, b: rewrite(m, b, lambda x: _basis_edit(
        knots=x["state"]["smooth_bases"][0]["knots"][::-1])(x)), ["smooth_bases[0].knots", "non-decreasing"]),
    "gam-knots-nan": ("gam", lambda m, b: rewrite(m, b, lambda x: _basis_edit(
        knots=[float("nan"), *x["state"]["smooth_bases"][0]["knots"][1:]])(x)), ["smooth_bases[0].knots", "finite"]),
    "gam-knots-strings": ("gam", lambda m, b: rewrite(m, b, _basis_edit(knots="21,30,40")),
                          ["smooth_bases[0].knots"]),
    "gam-boundary-not-repeated": ("gam", lambda m, b: rewrite(m, b, lambda x: _basis_edit(
        knots=[20.0, *x["state"]["smooth_bases"][0]["knots"][1:]])(x)), ["boundary knots"]),
    "gam-too-many-basis-columns": ("gam", lambda m, b: rewrite(m, b, _basis_edit(
        knots=[0.0] * 4 + list(np.linspace(1, 99, 2000)) + [100.0] * 4)), ["smooth_bases[0].knots", "1000 columns"]),
    "gam-degree-text": ("gam", lambda m, b: rewrite(m, b, _basis_edit(degree="3")), ["smooth_bases[0].degree"]),
    "gam-other-term": ("gam", lambda m, b: rewrite(m, b, _basis_edit(name="height")),
                       ["smooth_bases", "height", "age"]),
    "gam-no-bases": ("gam", lambda m, b: rewrite(m, b, edit_state(smooth_bases=[])), ["state.smooth_bases"]),
    "gam-smooth-bounds-text": ("gam", lambda m, b: rewrite(m, b, lambda x: {
        **x, "params": {**x["params"], "smooth_bounds": {"age": {"__tuple__": ["0", "100"]}}}}),
        ["'smooth_bounds'", "finite numbers or None"]),
    "gam-spline-coef-rows": ("gam", lambda m, b: _swap(m, b, "spline_coef", npy(np.zeros((3, 6)))),
                             ["spline_coef", "spline column x feature"]),
    # LongComBat: subjects and random effects
    "long-subjects-duplicated": ("longitudinal", lambda m, b: rewrite(m, b, lambda x: edit_state(
        subjects=[x["state"]["subjects"][0]] * len(x["state"]["subjects"]))(x)), ["state.subjects", "repeats"]),
    "long-subjects-not-list": ("longitudinal", lambda m, b: rewrite(m, b, edit_state(subjects="s1")),
                               ["state.subjects"]),
    "long-fewer-subjects-than-blups": ("longitudinal", lambda m, b: rewrite(m, b, lambda x: edit_state(
        subjects=x["state"]["subjects"][:-1])(x)), ["blup", "subject x random effect x feature"]),
    "long-random-slope-flipped": ("longitudinal", lambda m, b: rewrite(m, b, lambda x: {
        **x, "params": {**x["params"], "random_slope": True, "time": "time"}}), ["blup", "random effect"]),
    "long-negative-variance": ("longitudinal", lambda m, b: _swap(m, b, "ranef_cov", npy(
        -np.abs(_array(m, "ranef_cov")) - 1.0)), ["ranef_cov", "covariance"]),
    "long-residual-var-zero": ("longitudinal", lambda m, b: _swap(m, b, "residual_var", npy(
        np.zeros(_array(m, "residual_var").shape))), ["residual_var", "> 0"]),
    "long-singular-not-a-flag": ("longitudinal", lambda m, b: _swap(m, b, "singular", npy(
        np.full(_array(m, "singular").shape, 0.5))), ["singular", "0 or 1"]),
    # CovBat: components
    "covbat-more-components-than-pcs": ("covbat", lambda m, b: _swap(m, b, "explained_variance_ratio", npy(
        _array(m, "explained_variance_ratio")[:-1])), ["pca_loadings", "principal components"]),
    "covbat-components-disagree": ("covbat", lambda m, b: _swap(m, b, "score_alpha", npy(np.zeros(2))),
                                   ["score_alpha", "component"]),
    "covbat-n-components-param": ("covbat", lambda m, b: rewrite(m, b, lambda x: {
        **x, "params": {**x["params"], "n_components": 2}}), ["pca_loadings", "n_components=2"]),
    "covbat-score-delta-zero": ("covbat", lambda m, b: _swap(m, b, "score_delta_star", npy(
        np.zeros(_array(m, "score_delta_star").shape))), ["score_delta_star", "> 0"]),
    "covbat-pca-scale-zero": ("covbat", lambda m, b: _swap(m, b, "pca_scale", npy(
        np.zeros(_array(m, "pca_scale").shape))), ["pca_scale", "> 0"]),
    # ComBatLS: the scale design
    "combatls-scale-design-column": ("combatls", lambda m, b: rewrite(m, b, lambda x: edit_state(
        scale_design={**x["state"]["scale_design"], "formula": "age", "variables": ["age"], "columns": ["age"]})(x)),
        ["scale_coef", "scale column"]),
    "combatls-scale-design-columns-without-formula": ("combatls", lambda m, b: rewrite(m, b, lambda x: edit_state(
        scale_design={**x["state"]["scale_design"], "columns": ["age"]})(x)),
        ["state.scale_design.columns", "empty formula"]),
    "combatls-scale-design-missing": ("combatls", lambda m, b: rewrite(m, b, edit_state(scale_design=None)),
                                      ["state", "scale_design"]),
    "combatls-fit-n-iter": ("combatls", lambda m, b: _swap(m, b, "fit_n_iter", npy(np.array([np.nan]))),
                            ["fit_n_iter", "whole numbers"]),
}


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_family_state_and_arrays(capsys, tmp_path, models, case):
    family, build, needles = FAMILY_CASES[case]
    model, data = models[family]
    bad = build(model, _bad(tmp_path))
    refuse(capsys, tmp_path, bad, data, needles)


def test_json_of_a_real_model_is_what_the_cases_edit(models):
    """The family cases edit entries that exist (a renamed entry would make them refuse by accident)."""
    assert manifest(models["gam"][0])["state"]["smooth_bases"][0]["name"] == "age"
    assert "subjects" in manifest(models["longitudinal"][0])["state"]
    assert manifest(models["covbat"][0])["arrays"]["pca_loadings"]["shape"][1] >= 3
    assert manifest(models["combatls"][0])["state"]["scale_design"]["columns"] == []


def test_info_cannot_be_made_to_print_lines_or_escape_codes(tmp_path, capsys):
    """A model file's version and time must have their plain forms (else the file is refused before anything is
    printed); names from the file are printed with their control characters escaped, one fact per line."""
    s = featharm.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=4, random_state=3)
    X = s.X.rename(columns={s.X.columns[0]: "roi\x1b[2J\nsites  fake"})
    good = tmp_path / "m.fhm"
    featharm.ComBat(batch="site").fit(X, s.covariates).save(good)
    assert main(["info", str(good), "--features"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "roi\\x1b[2J\\nsites  fake" in out
    assert not any(line.startswith("sites  fake") for line in out.splitlines())
    for key, value in (("featharm_version", "0.2\n  sites  3 (fake)"), ("featharm_version", "\x1b[31m0.2"),
                       ("created", "yesterday\n"), ("created", 5)):
        bad = rewrite(good, tmp_path / f"bad_{key}.fhm", lambda m, k=key, v=value: {**m, k: v})
        assert main(["info", str(bad)]) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and key in cap.err and len(cap.err.splitlines()) == 1
