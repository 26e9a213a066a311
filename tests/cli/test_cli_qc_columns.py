"""Known QC and global columns (Euler number, surface holes, head size, whole-brain volumes) are not picked
as features by the commands that pick the features themselves; one line says what was left out and how to
include it. The Python API is unchanged: it harmonizes the X it is given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main
from featharm.io import not_a_feature

# Small tables mixing measures (2 thickness, 2 volumes ...): with the default priors per measure group their
# groups take the pooled prior with a FeatureGroupWarning, which these tests do not check
# (tests/models/test_feature_groups.py and tests/cli/test_cli_priors.py do).
pytestmark = pytest.mark.filterwarnings("ignore::featharm.exceptions.FeatureGroupWarning")


# Real FreeSurfer / ENIGMA / ABCD column names: QC, global, and regional measures that stay features.
QC = ["avg_en", "lhSurfaceHoles", "rhSurfaceHoles", "SurfaceHoles", "euler_number", "lh_euler"]
GLOBAL = ["EstimatedTotalIntraCranialVol", "eTIV", "BrainSegVol", "BrainSegVolNotVent", "BrainSegVolNotVentSurf",
          "MaskVol", "SupraTentorialVol", "SupraTentorialVolNotVent", "SupraTentorialVolNotVentVox",
          "BrainSegVol-to-eTIV", "MaskVol-to-eTIV", "IntraCranialVol", "ICV", "smri_vol_scs_intracranialv",
          "smri_vol_scs_wholeb", "smri_vol_scs_suprateialv"]
REGIONAL = ["lh_bankssts_thickness", "rh_insula_area", "Left-Hippocampus", "Right-Lateral-Ventricle",
            "lh_MeanThickness_thickness", "lh_WhiteSurfArea_area", "TotalGrayVol", "CortexVol",
            "CerebralWhiteMatterVol", "SubCortGrayVol", "L_bankssts_thickavg", "Lhippo",
            "smri_thick_cdk_banksstslh", "smri_vol_scs_hpuslh", "lh_G&S_frontomargin_thickness"]


@pytest.mark.parametrize("name", QC)
def test_qc_names(name):
    assert not_a_feature(name) == "QC"


@pytest.mark.parametrize("name", GLOBAL)
def test_global_names(name):
    assert not_a_feature(name) == "global"
    assert not_a_feature(name.upper()) == "global"  # case does not matter


@pytest.mark.parametrize("name", REGIONAL)
def test_regional_measures_stay_features(name):
    assert not_a_feature(name) is None


FEATS = ["lh_bankssts_thickness", "lh_cuneus_thickness", "Left-Hippocampus", "Right-Hippocampus"]
LEFT = ["eTIV", "BrainSegVolNotVent", "lhSurfaceHoles", "rhSurfaceHoles", "avg_en"]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(3)
    n = 60
    df = pd.DataFrame({"subject_id": [f"s{i:03d}" for i in range(n)],
                       "site": np.repeat(["A", "B", "C"], n // 3),
                       "age": rng.uniform(20, 80, n).round(1)})
    for c in FEATS:
        df[c] = rng.normal(3 if "thickness" in c else 4000, 0.2 if "thickness" in c else 300, n).round(4)
    df["eTIV"] = rng.normal(1.5e6, 1e5, n).round(1)
    df["BrainSegVolNotVent"] = rng.normal(1.1e6, 8e4, n).round(1)
    df["lhSurfaceHoles"] = rng.integers(5, 60, n)
    df["rhSurfaceHoles"] = rng.integers(5, 60, n)
    df["avg_en"] = -2 * ((df["lhSurfaceHoles"] + df["rhSurfaceHoles"]) / 2) + 2
    path = tmp_path / "fs.csv"
    df.to_csv(path, index=False)
    return path


def _harmonize(capsys, data, out, *extra):
    code = main(["harmonize", str(data), "--batch", "site", "--formula", "age", "--id", "subject_id",
                 "--out", str(out), *extra])
    return code, capsys.readouterr()


def test_harmonize_leaves_qc_and_global_columns_out_and_says_so(tmp_path, capsys, data):
    out = tmp_path / "h.csv"
    code, cap = _harmonize(capsys, data, out)
    assert code == 0, cap.err
    assert f"harmonized {len(FEATS)} features" in cap.out
    notes = [ln for ln in cap.err.splitlines() if ln.startswith("featharm: note: left out")]
    assert len(notes) == 1, cap.err
    for c in LEFT:
        assert c in notes[0]
    assert "--include" in notes[0] and "--features" in notes[0]
    raw, res = pd.read_csv(data, dtype=str), pd.read_csv(out, dtype=str)
    assert res[LEFT].equals(raw[LEFT])  # written back exactly as they were
    assert not res[FEATS].equals(raw[FEATS])
    # the same features as the Python API given them explicitly
    df = fh.io.read_table(data, index_col="subject_id")
    expected = fh.ComBat(batch="site", formula="age").fit_transform(df[FEATS], df)
    assert np.allclose(pd.read_csv(out)[FEATS].to_numpy(), expected.to_numpy())


def test_include_harmonizes_them_too(tmp_path, capsys, data):
    out = tmp_path / "h.csv"
    code, cap = _harmonize(capsys, data, out, "--include", "eTIV", "*SurfaceHoles")
    assert code == 0, cap.err
    assert f"harmonized {len(FEATS) + 3} features" in cap.out
    note = next(ln for ln in cap.err.splitlines() if "left out" in ln)
    assert "BrainSegVolNotVent" in note and "avg_en" in note and "eTIV" not in note


def test_features_name_them_without_a_note(tmp_path, capsys, data):
    out = tmp_path / "h.csv"
    code, cap = _harmonize(capsys, data, out, "--features", "*_thickness", "eTIV")
    assert code == 0, cap.err
    assert "harmonized 3 features" in cap.out and "left out" not in cap.err


def test_quiet_prints_no_note(tmp_path, capsys, data):
    code, cap = _harmonize(capsys, data, tmp_path / "h.csv", "--quiet")
    assert code == 0 and cap.err.count("left out") == 0


@pytest.mark.parametrize("extra, words", [
    (["--include", "eTIV", "--features", "*_thickness"], "with --features, add those patterns to --features"),
    (["--include", "no_such_column"], "--include ['no_such_column']: no column of DATA matches"),
])
def test_include_refusals(tmp_path, capsys, data, extra, words):
    code, cap = _harmonize(capsys, data, tmp_path / "h.csv", *extra)
    assert code == 2 and words in cap.err, cap.err
    assert not (tmp_path / "h.csv").exists()


def test_only_qc_columns_is_an_error_saying_how(tmp_path, capsys):
    df = pd.DataFrame({"site": list("AABBCC") * 3, "eTIV": np.arange(18) * 1e4 + 1.4e6,
                       "avg_en": -np.arange(18) % 7 - 10.0})
    path = tmp_path / "qc.csv"
    df.to_csv(path, index=False)
    code = main(["harmonize", str(path), "--batch", "site", "--out", str(tmp_path / "h.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "only numeric columns are QC or global" in err and "--include" in err


def test_diagnose_and_report_leave_them_out_too(tmp_path, capsys, data):
    code = main(["diagnose", str(data), "--batch", "site", "--id", "subject_id", "--formula", "age",
                 "--no-classification", "--n-permutations", "0", "--out", str(tmp_path / "d")])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert f"diagnosed {len(FEATS)} features" in cap.out and "left out 5" in cap.err
    site = pd.read_csv(tmp_path / "d" / "site_effects.csv")
    assert set(site["feature"]) == set(FEATS)
    code = main(["report", str(data), "--batch", "site", "--id", "subject_id", "--formula", "age", "--include", "eTIV",
                 "--out", str(tmp_path / "r.html")])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert f"report on {len(FEATS) + 1} features" in cap.out and "left out 4" in cap.err
