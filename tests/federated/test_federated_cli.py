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
          "--method", "gam", "--smooth", "age", "--out", out], "'age' has no range"),
        (["federated", "plan", "--batch", "site", "--batches", "A,B", "--formula", "age", "--features", "x", "y",
          "--smooth", "age", "--smooth-range", "age=5,90", "--out", out], "--smooth applies to ComBat-GAM"),
        (["federated", "plan", "--batch", "site", "--batches", "A,B", "--features", "x", "y", "--method", "gam",
          "--smooth", "age", "--smooth-range", "age=5", "--out", out], "write VAR=LO,HI"),
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


# ============================================================================================ ComBat-GAM
GAM = ["--method", "gam", "--smooth", "age", "--smooth-range", "age=19,87", "--df", "6"]


def test_gam_protocol_end_to_end(ixi, tmp_path, capsys):
    """plan (--method gam) -> three sites summarize -> combine -> apply at each site; then a plan without IOP ->
    combine -> extend with IOP's summary: equal to ComBatGAM fitted in memory with the plan's basis."""
    d, df, feats = ixi
    plan = tmp_path / "plan.json"
    assert run("federated", "plan", "--batch", "site", "--batches", "Guys,HH,IOP", "--formula", "age + sex",
               "--levels", "sex=F,M", "--features-file", d / "features.txt", *GAM, "--smooth-method", "GCV",
               "--out", plan) == 0
    assert "s(age) over [19, 87] (5 spline columns)" in capsys.readouterr().out
    for s in SITES:
        assert run("federated", "summarize", d / f"{s}.csv", "--covariates", d / f"{s}_cov.csv", "--id",
                   "participant_id", "--plan", plan, "--out", tmp_path / f"{s}.fhs", "--quiet") == 0
    assert run("federated", "show", tmp_path / "HH.fhs") == 0
    shown = capsys.readouterr().out
    assert "smooth term(s) age over [19, 87]: 5 spline column(s)" in shown and "s(age) column sums" in shown
    model = tmp_path / "model.fhm"
    assert run("federated", "combine", tmp_path / "IOP.fhs", tmp_path / "Guys.fhs", tmp_path / "HH.fhs",
               "--plan", plan, "--out", model, "--quiet") == 0
    again = tmp_path / "again.fhm"
    assert run("federated", "combine", tmp_path / "HH.fhs", tmp_path / "Guys.fhs", tmp_path / "IOP.fhs",
               "--plan", plan, "--out", again, "--quiet") == 0
    assert model.read_bytes() == again.read_bytes()
    params = dict(batch="site", formula="sex", smooth=["age"], df=6, method="GCV", knots="uniform",
                  smooth_bounds={"age": (19, 87)})
    want = fh.ComBatGAM(**params).fit(df[feats], df)
    assert isinstance(fh.load_model(model), fh.ComBatGAM)
    for s in SITES:
        out = tmp_path / f"{s}_h.csv"
        assert run("apply", model, d / f"{s}.csv", "--covariates", d / f"{s}_cov.csv", "--id", "participant_id",
                   "--out", out, "--quiet") == 0
        got = pd.read_csv(out).set_index("participant_id")[feats]
        ref = want.transform(df.loc[df.site == s, feats], df[df.site == s])
        assert np.max(np.abs(got.to_numpy() - ref.to_numpy()) / want._arr["sigma"]) <= 1e-10
    # a late site: IOP is not in the second plan; its summary is added to the combined model with extend
    early_plan = tmp_path / "early.json"
    assert run("federated", "plan", "--batch", "site", "--batches", "Guys,HH", "--formula", "age + sex",
               "--levels", "sex=F,M", "--features-file", d / "features.txt", *GAM, "--smooth-method", "GCV",
               "--out", early_plan, "--quiet") == 0
    for s in SITES:
        assert run("federated", "summarize", d / f"{s}.csv", "--covariates", d / f"{s}_cov.csv", "--id",
                   "participant_id", "--plan", early_plan, "--out", tmp_path / f"e_{s}.fhs", "--quiet") == 0
    m1, m2 = tmp_path / "m1.fhm", tmp_path / "m2.fhm"
    assert run("federated", "combine", tmp_path / "e_Guys.fhs", tmp_path / "e_HH.fhs", "--plan", early_plan,
               "--out", m1, "--quiet") == 0
    assert run("federated", "extend", m1, tmp_path / "e_IOP.fhs", "--out", m2, "--quiet") == 0
    assert list(fh.load_model(m2).batches_) == list(SITES)
    early = df[df.site != "IOP"]
    want = fh.ComBatGAM(**params).fit(early[feats], early)
    iop = df[df.site == "IOP"]
    ref = want.transform(iop[feats], iop, new_sites="estimate", min_new_site_size=10)
    out = tmp_path / "IOP_late.csv"
    assert run("apply", m2, d / "IOP.csv", "--covariates", d / "IOP_cov.csv", "--id", "participant_id",
               "--out", out, "--quiet") == 0
    got = pd.read_csv(out).set_index("participant_id")[feats]
    assert np.max(np.abs(got.to_numpy() - ref.to_numpy()) / want._arr["sigma"]) <= 1e-10


def test_gam_errors_write_nothing(ixi, tmp_path, capsys):
    d, df, _ = ixi
    base = ["federated", "plan", "--batch", "site", "--batches", "Guys,HH,IOP", "--formula", "age + sex",
            "--levels", "sex=F,M", "--features-file", d / "features.txt", "--method", "gam", "--smooth", "age"]
    narrow, fine = tmp_path / "narrow.json", tmp_path / "df10.json"
    assert run(*base, "--smooth-range", "age=19,80", "--out", narrow, "--quiet") == 0
    assert run(*base, "--smooth-range", "age=19,87", "--out", fine, "--quiet") == 0
    capsys.readouterr()
    out = tmp_path / "out.fhs"
    oldest = df[df.site == "IOP"]["age"].max()
    cases = [
        (narrow, rf"'age' has \d+ value\(s\) outside the plan's range \[19, 80\] in batch\(es\) 'IOP' of 'site' "
                 rf"\(e\.g\. {oldest:g} in batch 'IOP'"),
        # df 10: only 8 of IOP's subjects are where its next-to-last spline column is not zero (2 for the last)
        (fine, r"batch 'IOP' has 8 subject\(s\) with age in \(67\.5714, 87\), where the spline column "
               r"s\(age\)\[7\] is not zero; fewer than the plan's min_count of 10"),
    ]
    import re

    for plan, match in cases:
        assert run("federated", "summarize", d / "IOP.csv", "--covariates", d / "IOP_cov.csv", "--id",
                   "participant_id", "--plan", plan, "--out", out) != 0
        err = capsys.readouterr().err
        assert re.search(match, err), err
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
