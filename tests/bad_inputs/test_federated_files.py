"""Hostile federated files (a site's summary, a plan) through ``featharm federated combine``/``show``/``summarize``:
refused with one line naming the file, nothing written, inputs untouched, bounded cost, never unpickled."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest

import featharm as fh

from .conftest import expect_refusal
from .hostile import deflate_bomb, inflated_size, members, npy, raw_zip, rewrite


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A plan and one site's summary of a simulated 3-site table (the site holds batches site01 and site02)."""
    d = tmp_path_factory.mktemp("fed")
    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=6, random_state=2)
    df = pd.concat([s.covariates.reset_index(drop=True), s.X.reset_index(drop=True)], axis=1)
    feats = list(s.X.columns)
    plan = fh.federated.plan(batch="site", batches=sorted(df["site"].unique()), formula="age", features=feats)
    fh.federated.save_plan(plan, d / "plan.json")
    rows = df["site"].isin(sorted(df["site"].unique())[:2])
    fh.federated.summarize(df[rows], None, plan).save(d / "site.fhs")
    return d


def _refuse(capsys, tmp_path, site, bad, needles):
    out = tmp_path / "model.fhm"
    expect_refusal(capsys, ["federated", "combine", bad, "--plan", site / "plan.json", "--out", out],
                   needles=needles, inputs=[bad, site / "plan.json"], outputs=[out])


def test_zip_bomb_summary_is_refused_fast_and_small(capsys, tmp_path, site):
    bomb = deflate_bomb(3 * 10**9)
    assert inflated_size(bomb, 64 * 2**20) == 64 * 2**20
    entries = [(n, {"data": bomb, "size": 3 * 10**9} if n == "arrays/sxy.npy" else b)
               for n, b in members(site / "site.fhs").items()]
    bad = raw_zip(tmp_path / "bad.fhs", entries)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        _refuse(capsys, tmp_path, site, bad, ["bad.fhs", "zip bomb"])
        elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5.0 and peak < 100 * 2**20


class _Payload:
    """Unpickling this would create a file: the proof that a pickle stream was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_array_is_never_unpickled(capsys, tmp_path, site):
    marker = tmp_path / "pwned.txt"
    payload = np.array([_Payload(marker)] * 2, dtype=object)
    pickled = npy(payload, allow_pickle=True)
    bad = rewrite(site / "site.fhs", tmp_path / "bad.fhs", replace={"arrays/counts.npy": pickled})
    _refuse(capsys, tmp_path, site, bad, ["bad.fhs", "counts", "pickle"])
    assert not marker.exists()


def test_lying_npy_header_is_refused(capsys, tmp_path, site):
    raw = npy(np.zeros((2, 6)))
    bad = rewrite(site / "site.fhs", tmp_path / "bad.fhs", replace={"arrays/sy.npy": raw[:-8]})
    _refuse(capsys, tmp_path, site, bad, ["bad.fhs", "'sy'"])


@pytest.mark.parametrize("edit, needles", [
    (lambda m: {**m, "plan": {**m["plan"], "formula": "__import__('os').system('x')"}}, ["not a valid featharm plan"]),
    (lambda m: {**m, "plan": {**m["plan"], "features": m["plan"]["features"][::-1]}}, ["plan_digest"]),
    (lambda m: {**m, "batches": ["site01", "site01"]}, ["batches"]),
    (lambda m: {**m, "extra": 1}, ["manifest"]),
    (lambda m: {**m, "featharm_version": "0.1.0\nbatch 'x': sums over 999 subjects"}, ["featharm_version"]),
    (lambda m: {**m, "featharm_version": "\x1b[2J0.1.0"}, ["featharm_version"]),
    (lambda m: {**m, "featharm_version": 1}, ["featharm_version"]),
    (lambda m: {**m, "created": {"when": "now"}}, ["created"]),
    (lambda m: {**m, "created": "2026-01-01T00:00:00\nfake line"}, ["created"]),
], ids=["formula_code", "features_changed", "batches", "extra_entry", "version_new_line", "version_escape",
        "version_number", "created_object", "created_new_line"])
def test_tampered_manifest_is_refused(capsys, tmp_path, site, edit, needles):
    bad = rewrite(site / "site.fhs", tmp_path / "bad.fhs", edit)
    _refuse(capsys, tmp_path, site, bad, ["bad.fhs", *needles])


def test_hostile_plan_is_refused(capsys, tmp_path, site):
    plan = json.loads((site / "plan.json").read_text())
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    out = tmp_path / "s.fhs"
    for bad, needles in [(deep, ["deep.json", "nests"]),
                         (tmp_path / "code.json", ["code.json", "not a valid featharm plan"])]:
        if bad.name == "code.json":
            bad.write_text(json.dumps({**plan, "formula": "age + __class__"}))
        expect_refusal(capsys, ["federated", "combine", site / "site.fhs", "--plan", bad, "--out", out],
                       needles=needles, inputs=[bad], outputs=[out])


def test_show_quotes_what_comes_from_the_file(capsys, tmp_path):
    """Names in a summary are the sites' text: a level or batch holding a new line or a terminal escape code is
    printed quoted and escaped, so a summary cannot add lines to (or hide lines of) what `show` lists."""
    evil_level, evil_batch = "M\nbatch 'b0': sums over 999 subjects", "b1\x1b[2J"
    rng = np.random.default_rng(3)
    n = 40
    cov = pd.DataFrame({"site": ["b0"] * 20 + [evil_batch] * 20, "age": rng.uniform(20, 80, n),
                        "sex": (["F"] * 10 + [evil_level] * 10) * 2})
    X = pd.DataFrame(rng.normal(size=(n, 2)), columns=["x", "y\x1b[31m"])
    p = fh.federated.plan(batch="site", batches=["b0", evil_batch], formula="age + sex",
                          levels={"sex": ["F", evil_level]}, features=list(X.columns))
    fh.federated.summarize(X, cov, p).save(tmp_path / "s.fhs")
    from featharm.cli import main

    assert main(["federated", "show", str(tmp_path / "s.fhs")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "999" not in out.splitlines()[0]
    assert [ln for ln in out.splitlines() if ln.startswith("batch ")] == [
        "batch 'b0': sums over 20 subjects", "batch 'b1\\x1b[2J': sums over 20 subjects"]
    assert repr(f"sex[T.{evil_level}]") in out and repr("y\x1b[31m") in out


@pytest.mark.parametrize("edit, needles", [
    # 20,000 levels in a 0.2 MB plan: a trial table of every level times every column would need gigabytes
    (lambda d: {**d, "formula": "age + sex", "levels": {"sex": sorted(f"L{i:06d}" for i in range(20_000))}},
     ["'sex' has 20,000 levels", f"at most {fh.federated.MAX_LEVELS:,}"]),
    # 40 x 40 levels in an interaction: 1,600 covariate columns, refused from the formula before any is built
    (lambda d: {**d, "formula": "age + g:h", "levels": {"g": [f"g{i:02d}" for i in range(40)],
                                                         "h": [f"h{i:02d}" for i in range(40)]}},
     ["up to 1,600 covariate columns", f"at most {fh.federated.MAX_DESIGN_COLUMNS:,}"]),
    (lambda d: {**d, "formula": "(" + " + ".join(f"a{i}" for i in range(16)) + ")**16"},
     [f"more than {fh.formula.MAX_TERMS} terms"]),
    (lambda d: {**d, "formula": "*".join(f"a{i}" for i in range(14))}, [f"more than {fh.formula.MAX_TERMS} terms"]),
], ids=["levels", "columns", "power", "star"])
def test_plan_of_unbounded_size_is_refused_fast_and_small(capsys, tmp_path, site, edit, needles):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(edit(json.loads((site / "plan.json").read_text()))))
    out = tmp_path / "s.fhs"
    tracemalloc.start()
    try:
        expect_refusal(capsys, ["federated", "combine", site / "site.fhs", "--plan", bad, "--out", out],
                       needles=["bad.json", "not a valid featharm plan", *needles], inputs=[bad], outputs=[out])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
