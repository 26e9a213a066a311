"""``featharm federated plan|summarize|show|combine|extend`` end to end, then ``featharm apply``: the bundled IXI data
split by scanner into three sites (Guys, HH, IOP), as in the README's worked example; errors write nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main
from featharm.datasets._ixi import ixi_feature_columns

SITES = ("Guys", "HH", "IOP")


@pytest.fixture(scope="module")
def ixi(tmp_path_factory):
    d = tmp_path_factory.mktemp("ixi")
    df = fh.datasets.load_ixi()
    assert sorted(df["site"].unique()) == list(SITES)
    feats = ixi_feature_columns(df)
    for s in SITES:  # each site holds its own rows only: features in one file, covariates in another
        rows = df[df["site"] == s]
        rows[["participant_id", *feats[::-1]]].to_csv(d / f"{s}.csv", index=False)
        rows[["participant_id", "site", "age", "sex"]].to_csv(d / f"{s}_cov.csv", index=False)
    (d / "features.txt").write_text("\n".join(feats) + "\n")
    return d, df, feats


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_protocol_end_to_end(ixi, tmp_path, capsys):
    d, df, feats = ixi
    plan = tmp_path / "plan.json"
    assert run("federated", "plan", "--batch", "site", "--batches", "Guys,HH,IOP", "--formula", "age + sex",
               "--levels", "sex=F,M", "--features-file", d / "features.txt", "--out", plan) == 0
    for s in SITES:
        assert run("federated", "summarize", d / f"{s}.csv", "--covariates", d / f"{s}_cov.csv", "--id",
                   "participant_id", "--plan", plan, "--out", tmp_path / f"{s}.fhs") == 0
    capsys.readouterr()
    assert run("federated", "show", tmp_path / "IOP.fhs") == 0
    shown = capsys.readouterr().out
    n_iop = int((df["site"] == "IOP").sum())
    assert f"batch 'IOP': sums over {n_iop} subjects" in shown
    assert f"sex[T.M]                 {int(((df.site == 'IOP') & (df.sex == 'M')).sum())} subjects" in shown
    model = tmp_path / "model.fhm"
    assert run("federated", "combine", tmp_path / "IOP.fhs", tmp_path / "Guys.fhs", tmp_path / "HH.fhs",
               "--plan", plan, "--out", model) == 0
    again = tmp_path / "again.fhm"
    assert run("federated", "combine", tmp_path / "HH.fhs", tmp_path / "IOP.fhs", tmp_path / "Guys.fhs",
               "--plan", plan, "--out", again, "--quiet") == 0
    assert model.read_bytes() == again.read_bytes()
    want = fh.ComBat(batch="site", formula="age + sex").fit(df[feats], df)
    for s in SITES:
        out = tmp_path / f"{s}_h.csv"
        assert run("apply", model, d / f"{s}.csv", "--covariates", d / f"{s}_cov.csv", "--id", "participant_id",
                   "--out", out, "--quiet") == 0
        got = pd.read_csv(out).set_index("participant_id")[feats]
        ref = want.transform(df.loc[df.site == s, feats], df[df.site == s])
        assert np.max(np.abs(got.to_numpy() - ref.to_numpy()) / want._arr["sigma"]) <= 1e-10


def test_late_site_with_extend(ixi, tmp_path):
    d, df, feats = ixi
    plan = tmp_path / "plan.json"
    assert run("federated", "plan", "--batch", "site", "--batches", "Guys,HH", "--formula", "age + sex",
               "--levels", "sex=F,M", "--features", *feats, "--ref-batch", "Guys", "--out", plan, "--quiet") == 0
    for s in SITES:
        assert run("federated", "summarize", d / f"{s}.csv", "--covariates", d / f"{s}_cov.csv", "--id",
                   "participant_id", "--plan", plan, "--out", tmp_path / f"{s}.fhs", "--quiet") == 0
    model, model2 = tmp_path / "m.fhm", tmp_path / "m2.fhm"
    assert run("federated", "combine", tmp_path / "Guys.fhs", tmp_path / "HH.fhs", "--plan", plan, "--out", model,
               "--quiet") == 0
    assert run("federated", "extend", model, tmp_path / "IOP.fhs", "--out", model2, "--quiet") == 0
    m2 = fh.load_model(model2)
    assert list(m2.batches_) == list(SITES)
    early = df[df.site != "IOP"]
    want = fh.ComBat(batch="site", formula="age + sex", ref_batch="Guys").fit(early[feats], early)
    iop = df[df.site == "IOP"]
    ref = want.transform(iop[feats], iop, new_sites="estimate", min_new_site_size=10)
    got = m2.transform(iop[feats], iop)
    assert np.max(np.abs(got.to_numpy() - ref.to_numpy()) / want._arr["sigma"]) <= 1e-10


def test_errors_write_nothing(ixi, tmp_path, capsys):
    d, _, feats = ixi
    plan, other = tmp_path / "plan.json", tmp_path / "other.json"
    base = ["federated", "plan", "--batch", "site", "--batches", "Guys,HH,IOP", "--formula", "age + sex",
            "--levels", "sex=F,M", "--features-file", d / "features.txt"]
    assert run(*base, "--out", plan, "--quiet") == 0
    assert run(*base, "--no-eb", "--out", other, "--quiet") == 0
    for s in SITES:
        assert run("federated", "summarize", d / f"{s}.csv", "--covariates", d / f"{s}_cov.csv", "--id",
                   "participant_id", "--plan", plan, "--out", tmp_path / f"{s}.fhs", "--quiet") == 0
    capsys.readouterr()
    out = tmp_path / "out.fhm"
    fhs = [tmp_path / f"{s}.fhs" for s in SITES]
    cases = [
        (["federated", "combine", *fhs, "--plan", other, "--out", out], "made with another plan"),
        (["federated", "combine", *fhs, fhs[1], "--plan", plan, "--out", out], "'HH' is in two summaries"),
        (["federated", "combine", *fhs[:2], "--plan", plan, "--out", out], "have no summary"),
        (["federated", "plan", "--batch", "site", "--batches", "A,B", "--formula", "age", "--features", "x", "y",
          "--method", "gam", "--smooth", "age", "--out", out], "not supported yet"),
        (["federated", "plan", "--batch", "site", "--batches", "A,B", "--formula", "center(age)", "--features",
          "x", "y", "--out", out], "fixed numbers"),
        (["federated", "summarize", d / "IOP.csv", "--covariates", d / "IOP_cov.csv", "--id", "participant_id",
          "--plan", tmp_path / "IOP.fhs", "--out", out], "not a featharm plan"),
        (["federated", "show", plan], "not a featharm summary file"),
    ]
    # a site lacking a planned feature
    bad = tmp_path / "lacking.csv"
    pd.read_csv(d / "IOP.csv").drop(columns=feats[3]).to_csv(bad, index=False)
    cases.append((["federated", "summarize", bad, "--covariates", d / "IOP_cov.csv", "--id", "participant_id",
                   "--plan", plan, "--out", out], f"lack 1 feature.*{feats[3]}"))
    # a batch too small for min_count 80 (IOP has 67 subjects)
    big = tmp_path / "big.json"
    assert run(*base, "--min-count", "80", "--out", big, "--quiet") == 0
    capsys.readouterr()
    cases.append((["federated", "summarize", d / "IOP.csv", "--covariates", d / "IOP_cov.csv", "--id",
                   "participant_id", "--plan", big, "--out", out], "batch 'IOP' of 'site' has 67 subject"))
    import re

    for argv, match in cases:
        assert run(*argv) != 0
        err = capsys.readouterr().err
        assert re.search(match, err), (argv, err)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
