"""``featharm harmonize/apply/diagnose DATA ...`` with the formats users have, passed directly: FreeSurfer
asegstats2table/aparcstats2table tables, ENIGMA CSVs and ABCD 5.x tables, one or several (joined on their ids).

The files are small and synthetic, in the real layouts (writers in ``tests/io/test_io_formats.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_io_formats import (
    ABCD_AREA,
    ABCD_ASEG,
    ABCD_THK,
    DK,
    fsids,
    write_abcd,
    write_aparc_table,
    write_aseg_table,
    write_enigma,
)

import featharm as fh
from featharm.cli import main
from featharm.io import read_fs_tables
from featharm.io.formats import read_abcd

# Small tables mixing measures (2 thickness, 2 volumes ...): with the default priors per measure group their
# groups take the pooled prior with a FeatureGroupWarning, which these tests do not check
# (tests/models/test_feature_groups.py and tests/cli/test_cli_priors.py do).
pytestmark = pytest.mark.filterwarnings("ignore::featharm.exceptions.FeatureGroupWarning")



def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.fixture
def fs(tmp_path):
    """lh and rh aparc thickness tables and the aseg table of 30 subjects (tab-separated .txt, as the tools
    write them), and a covariate table whose id column is 'subject'."""
    write_aparc_table(tmp_path / "lh.aparc.thickness.txt", "lh", seed=10)
    write_aparc_table(tmp_path / "rh.aparc.thickness.txt", "rh", seed=11)
    write_aseg_table(tmp_path / "aseg_stats.txt")
    rng = np.random.default_rng(5)
    pd.DataFrame({"subject": fsids(30), "site": np.repeat(["siteA", "siteB", "siteC"], 10),
                  "age": rng.uniform(20, 80, 30).round(1)}).to_csv(tmp_path / "cov.csv", index=False)
    return tmp_path


def test_harmonize_freesurfer_tables_directly(fs, capsys):
    tables = [fs / "lh.aparc.thickness.txt", fs / "rh.aparc.thickness.txt", fs / "aseg_stats.txt"]
    out = fs / "h.csv"
    code, cap = _run(capsys, "harmonize", *tables, "--covariates", fs / "cov.csv", "--id", "subject",
                     "--batch", "site", "--formula", "age", "--out", out, "--save-model", fs / "m.fhm")
    assert code == 0, cap.err
    h = pd.read_csv(out)
    assert h.columns[0] == "subject" and list(h["subject"]) == fsids(30)  # ids under the name --id gave
    # the QC and global columns are left out (and written back as they were), regional measures harmonized
    raw = read_fs_tables(tables, parse_ids=False)
    left = ["eTIV", "BrainSegVolNotVent", "BrainSegVol", "SupraTentorialVol", "MaskVol", "lhSurfaceHoles",
            "rhSurfaceHoles", "SurfaceHoles", "EstimatedTotalIntraCranialVol"]
    note = next(ln for ln in cap.err.splitlines() if "left out" in ln)
    assert f"left out {len(left)} QC and global column(s)" in note and all(c in note for c in left[:5])
    feats = [c for c in raw.columns if c not in left]
    assert f"harmonized {len(feats)} features of 30 subjects from 3 batches" in cap.out
    assert np.array_equal(h[left].to_numpy(), raw[left].to_numpy())
    cov = pd.read_csv(fs / "cov.csv").set_index("subject")
    expected = fh.ComBat(batch="site", formula="age").fit_transform(raw[feats], cov.loc[raw.index])
    assert np.allclose(h[feats].to_numpy(), expected.to_numpy(), rtol=1e-12)
    # apply takes the same tables
    code, cap = _run(capsys, "apply", fs / "m.fhm", *tables, "--covariates", fs / "cov.csv", "--id", "subject",
                     "--out", fs / "a.csv", "--quiet")
    assert code == 0, cap.err
    assert np.allclose(pd.read_csv(fs / "a.csv")[feats].to_numpy(), h[feats].to_numpy(), rtol=1e-12)


def test_one_aparc_table_with_its_own_id_column(fs, capsys):
    """Without --id the ids are 'fsid' (the covariate file names its column so too)."""
    pd.read_csv(fs / "cov.csv").rename(columns={"subject": "fsid"}).to_csv(fs / "cov2.csv", index=False)
    out = fs / "h.tsv"
    code, cap = _run(capsys, "harmonize", fs / "lh.aparc.thickness.txt", "--covariates", fs / "cov2.csv",
                     "--batch", "site", "--out", out, "--quiet")
    assert code == 0, cap.err
    h = pd.read_csv(out, sep="\t")
    assert list(h.columns) == ["fsid"] + [f"lh_{r}_thickness" for r in DK] + \
        ["lh_MeanThickness_thickness", "BrainSegVolNotVent", "eTIV"]
    code, cap = _run(capsys, "harmonize", fs / "lh.aparc.thickness.txt", "--covariates", fs / "cov.csv",
                     "--batch", "site", "--out", out)
    assert code == 2 and "has no id column 'fsid'" in cap.err and "--id COL" in cap.err


def test_enigma_cortical_and_subcortical(tmp_path, capsys):
    cort, sub = write_enigma(tmp_path)
    pd.DataFrame({"SubjID": [f"subj{i:02d}" for i in range(30)], "Site": np.tile(["Oslo", "Sydney"], 15),
                  "Age": np.linspace(20, 70, 30)}).to_csv(tmp_path / "covariates.csv", index=False)
    out = tmp_path / "h.csv"
    code, cap = _run(capsys, "harmonize", cort, sub, "--covariates", tmp_path / "covariates.csv", "--id", "SubjID",
                     "--batch", "Site", "--formula", "Age", "--out", out)
    assert code == 0, cap.err
    h = pd.read_csv(out)
    assert "left out 1 global column(s) from the features: ICV" in cap.err
    assert list(h.columns).count("ICV") == 1 and h.columns[0] == "SubjID"
    assert np.isnan(h.at[3, "L_entorhinal_thickavg"])  # the ENIGMA "NA" stays empty
    raw = pd.read_csv(cort, na_values=["NA"])
    assert not np.allclose(h["LThickness"], raw["LThickness"])  # a measure: harmonized
    assert "harmonized 22 features of 30 subjects" in cap.out  # 10 + 4 cortical, 8 subcortical


def test_abcd_tables_with_scanner_from_adm_info(tmp_path, capsys):
    f = write_abcd(tmp_path)
    data = [f["mri_y_smr_thk_dsk"], f["mri_y_smr_area_dsk"], f["mri_y_smr_vol_aseg"], f["mri_y_adm_info"],
            f["abcd_y_lt"]]
    out = tmp_path / "harmonized.csv"
    code, cap = _run(capsys, "harmonize", *data, "--batch", "mri_info_deviceserialnumber",
                     "--formula", "interview_age", "--out", out, "--abcd-event", "all")
    assert code == 0, cap.err
    left = ["smri_vol_scs_wholeb", "smri_vol_scs_intracranialv", "smri_vol_scs_suprateialv"]
    note = next(ln for ln in cap.err.splitlines() if "left out" in ln)
    assert all(c in note for c in left) and "rel_family_id" not in note
    feats = [c for c in ABCD_THK + ABCD_AREA + ABCD_ASEG if c not in left]
    assert f"harmonized {len(feats)} features of 80 subjects from 6 batches" in cap.out  # covariates are not features
    h = pd.read_csv(out)
    assert list(h.columns[:2]) == ["src_subject_id", "eventname"]
    assert {"mri_info_manufacturer", "site_id_l", "interview_age"} <= set(h.columns)
    df = read_abcd(data)
    expected = fh.ComBat(batch="mri_info_deviceserialnumber", formula="interview_age").fit_transform(df[feats], df)
    assert np.allclose(h[feats].to_numpy(), expected.to_numpy(), rtol=1e-12, equal_nan=True)
    assert np.isnan(h.at[5, "smri_thick_cdk_cuneuslh"])  # empty in the ABCD file: stays empty


def test_abcd_site_as_batch_and_diagnose(tmp_path, capsys):
    f = write_abcd(tmp_path, n_subjects=30, events=["baseline_year_1_arm_1"])
    code, cap = _run(capsys, "diagnose", f["mri_y_smr_area_dsk"], f["abcd_y_lt"], "--batch", "site_id_l",
                     "--formula", "interview_age", "--no-classification", "--n-permutations", "0",
                     "--out", tmp_path / "d")
    assert code == 0, cap.err
    assert f"diagnosed {len(ABCD_AREA)} features of 30 rows" in cap.out
    assert set(pd.read_csv(tmp_path / "d" / "site_effects.csv")["feature"]) == set(ABCD_AREA)
    code, cap = _run(capsys, "diagnose", f["mri_y_smr_thk_dsk"], f["abcd_y_lt"], "--batch", "site_id_l",
                     "--no-classification", "--n-permutations", "0", "--out", tmp_path / "d2")
    assert code == 2 and "'NDAR_INV00000005/baseline_year_1_arm_1'" in cap.err  # rows named by subject/event


def test_abcd_covariates_file_joined_on_both_keys(tmp_path, capsys):
    f = write_abcd(tmp_path, n_subjects=30)
    lt = pd.read_csv(f["abcd_y_lt"])
    code, cap = _run(capsys, "harmonize", f["mri_y_smr_thk_dsk"], "--covariates", f["abcd_y_lt"], "--batch",
                     "site_id_l", "--out", tmp_path / "h.csv", "--quiet", "--abcd-event", "all")
    assert code == 0, cap.err
    assert "site_id_l" not in pd.read_csv(tmp_path / "h.csv").columns  # OUT is DATA: covariates stay in their file
    lt.drop(columns="eventname").to_csv(tmp_path / "noevent.csv", index=False)
    code, cap = _run(capsys, "harmonize", f["mri_y_smr_thk_dsk"], "--covariates", tmp_path / "noevent.csv",
                     "--batch", "site_id_l", "--out", tmp_path / "h2.csv", "--abcd-event", "all")
    assert code == 2 and "has no eventname column" in cap.err
    code, cap = _run(capsys, "harmonize", f["mri_y_smr_thk_dsk"], "--covariates", f["abcd_y_lt"], "--id",
                     "src_subject_id", "--batch", "site_id_l", "--out", tmp_path / "h3.csv", "--abcd-event", "all")
    assert code == 2 and "several events per subject" in cap.err


@pytest.mark.parametrize("case", ["plain-without-id", "abcd-mixed", "other-subjects"])
def test_refusals_name_the_files(fs, capsys, case):
    lh = fs / "lh.aparc.thickness.txt"
    if case == "plain-without-id":
        argv, words = [lh, fs / "cov.csv"], "needs --id COL"
    elif case == "abcd-mixed":
        f = write_abcd(fs, n_subjects=4)
        argv, words = [f["mri_y_smr_thk_dsk"], lh], "lh.aparc.thickness.txt is not an ABCD table"
    else:
        write_aparc_table(fs / "rh.txt", "rh", ids=fsids(29) + ["sub-777"])
        argv, words = [lh, fs / "rh.txt"], "list different subjects"
    code, cap = _run(capsys, "harmonize", *argv, "--batch", "site", "--out", fs / "out.csv")
    assert code == 2 and words in cap.err, cap.err
    assert not (fs / "out.csv").exists()


# ---------------------------------------------------------------------------------------- ABCD events
def test_abcd_several_events_are_refused_and_listed(tmp_path, capsys):
    f = write_abcd(tmp_path, n_subjects=30)
    data = [f["mri_y_smr_thk_dsk"], f["mri_y_adm_info"]]
    out = tmp_path / "h.csv"
    code, cap = _run(capsys, "harmonize", *data, "--batch", "mri_info_deviceserialnumber", "--out", out)
    err = [ln for ln in cap.err.splitlines() if ln.startswith("featharm: error:")]
    assert code == 2 and len(err) == 1 and not out.exists(), cap.err
    assert "2 events: 2_year_follow_up_y_arm_1 (30 rows), baseline_year_1_arm_1 (30 rows)" in err[0]
    assert "--abcd-event" in err[0] and "--method longitudinal" in err[0]


@pytest.mark.filterwarnings("ignore::featharm.exceptions.SmallBatchWarning")  # 5 subjects per scanner
def test_abcd_event_keeps_one_event(tmp_path, capsys):
    f = write_abcd(tmp_path, n_subjects=30)
    data = [f["mri_y_smr_thk_dsk"], f["mri_y_adm_info"], f["abcd_y_lt"]]
    out = tmp_path / "h.csv"
    code, cap = _run(capsys, "harmonize", *data, "--batch", "mri_info_deviceserialnumber", "--formula",
                     "interview_age", "--abcd-event", "baseline_year_1_arm_1", "--out", out)
    assert code == 0, cap.err
    h = pd.read_csv(out)
    assert len(h) == 30 and set(h["eventname"]) == {"baseline_year_1_arm_1"}
    df = read_abcd(data, events=["baseline_year_1_arm_1"])
    feats = [c for c in ABCD_THK if c in h.columns and c != "eventname"]
    expected = fh.ComBat(batch="mri_info_deviceserialnumber", formula="interview_age").fit_transform(df[feats], df)
    assert np.allclose(h[feats].to_numpy(), expected.to_numpy(), rtol=1e-12, equal_nan=True)
    # one event per subject: --id names the rows, and the harmonized table is joined on it
    code, cap = _run(capsys, "harmonize", *data, "--batch", "mri_info_deviceserialnumber", "--id", "src_subject_id",
                     "--abcd-event", "baseline_year_1_arm_1", "--out", tmp_path / "h2.csv", "--quiet")
    assert code == 0, cap.err


@pytest.mark.filterwarnings("ignore::featharm.exceptions.SmallBatchWarning")
@pytest.mark.filterwarnings("ignore::featharm.exceptions.SingularFitWarning")  # the simulated scans: no subject effect
def test_abcd_event_all_and_longitudinal(tmp_path, capsys):
    f = write_abcd(tmp_path, n_subjects=30)
    data = [f["mri_y_smr_thk_dsk"], f["mri_y_adm_info"], f["abcd_y_lt"]]
    code, cap = _run(capsys, "harmonize", *data, "--batch", "mri_info_deviceserialnumber", "--abcd-event", "all",
                     "--out", tmp_path / "a.csv", "--quiet")
    assert code == 0 and len(pd.read_csv(tmp_path / "a.csv")) == 60, cap.err
    code, cap = _run(capsys, "harmonize", *data, "--batch", "mri_info_deviceserialnumber", "--method",
                     "longitudinal", "--subject", "src_subject_id", "--formula", "interview_age",
                     "--out", tmp_path / "l.csv", "--save-model", tmp_path / "l.fhm", "--quiet")
    assert code == 0 and len(pd.read_csv(tmp_path / "l.csv")) == 60, cap.err
    # a longitudinal model applies to every event; a cross-sectional one needs --abcd-event
    code, cap = _run(capsys, "apply", tmp_path / "l.fhm", *data, "--out", tmp_path / "la.csv", "--quiet")
    assert code == 0, cap.err
    _run(capsys, "harmonize", *data, "--batch", "mri_info_deviceserialnumber", "--abcd-event", "baseline_year_1_arm_1",
         "--out", tmp_path / "b.csv", "--save-model", tmp_path / "b.fhm", "--quiet")
    code, cap = _run(capsys, "apply", tmp_path / "b.fhm", *data, "--out", tmp_path / "ba.csv")
    assert code == 2 and "--abcd-event" in cap.err
    code, cap = _run(capsys, "apply", tmp_path / "b.fhm", *data, "--abcd-event", "2_year_follow_up_y_arm_1",
                     "--out", tmp_path / "ba.csv", "--quiet")
    assert code == 0 and set(pd.read_csv(tmp_path / "ba.csv")["eventname"]) == {"2_year_follow_up_y_arm_1"}, cap.err


def test_abcd_event_errors(tmp_path, capsys):
    f = write_abcd(tmp_path, n_subjects=30)
    code, cap = _run(capsys, "harmonize", f["mri_y_smr_thk_dsk"], f["mri_y_adm_info"], "--batch",
                     "mri_info_deviceserialnumber", "--abcd-event", "4_year_follow_up_y_arm_1", "--out", tmp_path / "h.csv")
    assert code == 2 and "no rows at that event" in cap.err and "baseline_year_1_arm_1" in cap.err
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"id": ["a", "b"], "site": ["x", "y"], "f": [1.0, 2.0]}).to_csv(plain, index=False)
    code, cap = _run(capsys, "harmonize", plain, "--batch", "site", "--id", "id", "--abcd-event", "all",
                     "--out", tmp_path / "p.csv")
    assert code == 2 and "is not one" in cap.err
