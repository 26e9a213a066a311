"""CLI: ``featharm harmonize --priors group|pool --feature-groups FILE``, the groups in the summary line and in
``featharm info`` (issue 15, "measures are kept apart")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main

THICK = [f"lh_r{j}_thickness" for j in range(5)]
AREA = [f"lh_r{j}_area" for j in range(4)]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(11)
    n = 90
    site = np.repeat(["A", "B", "C"], n // 3)
    codes = np.repeat(np.arange(3), n // 3)
    df = pd.DataFrame({"subject_id": [f"s{i:03d}" for i in range(n)], "site": site,
                       "age": rng.uniform(20, 80, n).round(1)})
    for c in THICK:
        df[c] = (2.5 + 0.05 * rng.normal(size=3)[codes] + 0.1 * rng.normal(size=n)).round(5)
    for c in AREA:
        df[c] = (1500 + 150 * rng.normal(size=3)[codes] + 120 * rng.normal(size=n)).round(3)
    df["eTIV"] = rng.normal(1.5e6, 1e5, n).round(1)  # a global column: left out, as before
    path = tmp_path / "fs.csv"
    df.to_csv(path, index=False)
    return path


def _run(capsys, data, out, *extra):
    code = main(["harmonize", str(data), "--batch", "site", "--formula", "age", "--id", "subject_id",
                 "--out", str(out), *extra])
    return code, capsys.readouterr()


def _api(data, priors):
    df = fh.io.read_table(data, index_col="subject_id")
    return fh.ComBat(batch="site", formula="age", priors=priors).fit_transform(df[THICK + AREA], df)


def test_default_is_priors_per_measure_group(tmp_path, capsys, data):
    out, model = tmp_path / "h.csv", tmp_path / "m.fhm"
    code, cap = _run(capsys, data, out, "--save-model", str(model))
    assert code == 0, cap.err
    assert "empirical-Bayes priors per measure group: thickness (5), area (4)" in cap.out
    np.testing.assert_allclose(pd.read_csv(out)[THICK + AREA].to_numpy(), _api(data, "group").to_numpy(),
                               rtol=1e-12)
    assert main(["info", str(model)]) == 0
    info = capsys.readouterr().out
    assert "priors" in info and "per site and measure group: thickness (5), area (4)" in info


def test_priors_pool(tmp_path, capsys, data):
    out = tmp_path / "h.csv"
    code, cap = _run(capsys, data, out, "--priors", "pool")
    assert code == 0, cap.err
    assert "one empirical-Bayes prior across all features" in cap.out
    got = pd.read_csv(out)[THICK + AREA].to_numpy()
    np.testing.assert_allclose(got, _api(data, "pool").to_numpy(), rtol=1e-12)
    assert not np.allclose(got, _api(data, "group").to_numpy(), rtol=1e-9)


def test_feature_groups_file(tmp_path, capsys, data):
    groups = tmp_path / "groups.tsv"
    mapping = {**{c: "left" for c in THICK[:3] + AREA[:2]}, **{c: "right" for c in THICK[3:] + AREA[2:]}}
    groups.write_text("feature\tgroup\n" + "".join(f"{k}\t{v}\n" for k, v in mapping.items()))
    out, model = tmp_path / "h.csv", tmp_path / "m.fhm"
    code, cap = _run(capsys, data, out, "--feature-groups", str(groups), "--save-model", str(model))
    assert code == 0, cap.err
    assert "empirical-Bayes priors per measure group: left (5), right (4)" in cap.out
    np.testing.assert_allclose(pd.read_csv(out)[THICK + AREA].to_numpy(), _api(data, mapping).to_numpy(),
                               rtol=1e-12)
    assert fh.load_model(model).feature_groups_.to_dict() == mapping


@pytest.mark.parametrize("text, extra, words", [
    ("feature,group\nlh_r0_thickness,a\n", (), "gives no group to 8 feature(s)"),
    ("feature,group\n" + "".join(f"{c},a\n" for c in THICK + AREA) + "eTIV,b\n", (),
     "not features of this table: eTIV"),
    ("feature,group\n" + "".join(f"{c},a\n" for c in THICK + AREA) + "lh_r0_area,b\n", (), "is on lines"),
    ("feature,group\n" + "".join(f"{c},a\n" for c in THICK + AREA), ("--priors", "pool"), "does not go with"),
])
def test_feature_groups_errors(tmp_path, capsys, data, text, extra, words):
    groups = tmp_path / "groups.csv"
    groups.write_text(text)
    out = tmp_path / "h.csv"
    code, cap = _run(capsys, data, out, "--feature-groups", str(groups), *extra)
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("featharm: error:")]
    assert code == 2 and len(errors) == 1 and words in errors[0], cap.err
    assert not out.exists()


@pytest.mark.filterwarnings("always::featharm.exceptions.FeatureGroupWarning")  # shown as the CLI shows it
def test_small_group_is_warned_on_one_line(tmp_path, capsys, data):
    df = pd.read_csv(data)
    df.drop(columns=AREA[2:]).to_csv(data, index=False)  # 5 thickness, 2 area
    out = tmp_path / "h.csv"
    code, cap = _run(capsys, data, out)
    assert code == 0
    warned = [ln for ln in cap.err.splitlines() if "FeatureGroupWarning" in ln]
    assert len(warned) == 1 and "'area' (2)" in warned[0], cap.err
    assert "empirical-Bayes priors per measure group: thickness (5), area (2)" in cap.out


def test_report_shows_the_groups(tmp_path, capsys, data):
    groups = tmp_path / "groups.csv"
    groups.write_text("feature,group\n" + "".join(f"{c},{'t' if c in THICK else 'a'}\n" for c in THICK + AREA))
    html = tmp_path / "r.html"
    code, cap = _run(capsys, data, tmp_path / "h.csv", "--feature-groups", str(groups), "--report", str(html))
    assert code == 0, cap.err
    text = html.read_text()
    assert "mapping of 9 features to 2 groups" in text and "measure group" in text


def test_feature_store_with_a_groups_file(tmp_path, capsys, data):
    pytest.importorskip("zarr")
    from featharm.io import read_store, write_store

    df = pd.read_csv(data).set_index("subject_id")
    write_store(tmp_path / "in.zarr", df[THICK + AREA])
    df[["site", "age"]].reset_index().to_csv(tmp_path / "cov.csv", index=False)
    groups = tmp_path / "groups.csv"
    mapping = {c: ("t" if c in THICK[:3] else "u") for c in THICK + AREA}
    groups.write_text("feature,group\n" + "".join(f"{k},{v}\n" for k, v in mapping.items()))
    code = main(["harmonize", str(tmp_path / "in.zarr"), "--covariates", str(tmp_path / "cov.csv"), "--id",
                 "subject_id", "--batch", "site", "--formula", "age", "--feature-groups", str(groups),
                 "--out", str(tmp_path / "out.zarr")])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "empirical-Bayes priors per measure group: t (3), u (6)" in cap.out
    got = read_store(tmp_path / "out.zarr").to_frame().to_numpy()
    np.testing.assert_allclose(got, _api(data, mapping).to_numpy(), rtol=1e-10)
