"""The formats users have, told by their header and joined into one table: FreeSurfer asegstats2table /
aparcstats2table tables, ENIGMA CSVs, ABCD release 5.x tabulated tables.

Every file is small and synthetic, written here in the real layout with real column names (the writers are
shared with ``tests/cli/test_cli_formats.py``): no real data are read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featharm.exceptions import (
    AlignmentError,
    ColumnNotFoundError,
    DuplicateIndexError,
    InputError,
    NonNumericFeatureError,
)
from featharm.io import read_enigma_table, read_fs_table
from featharm.io.formats import (
    read_abcd,
    read_abcd_table,
    read_feature_tables,
    sniff_format,
)

DK = ["bankssts", "caudalanteriorcingulate", "cuneus", "entorhinal", "insula"]
ASEG = ["Left-Lateral-Ventricle", "Left-Thalamus", "Left-Hippocampus", "Right-Hippocampus", "CSF"]
ASEG_GLOBAL = ["BrainSegVol", "BrainSegVolNotVent", "lhCortexVol", "TotalGrayVol", "SupraTentorialVol", "MaskVol",
               "lhSurfaceHoles", "rhSurfaceHoles", "SurfaceHoles", "EstimatedTotalIntraCranialVol"]


def fsids(n):
    return [f"sub-{i:03d}" for i in range(n)]


# --------------------------------------------------------------------------------------------- writers
def write_aparc_table(path, hemi="lh", meas="thickness", ids=None, seed=0, sep="\t", fs7=True):
    """An aparcstats2table table: first cell '<hemi>.aparc.<meas>', ids, '<hemi>_<region>_<meas>' columns,
    the hemisphere's total (MeanThickness / WhiteSurfArea) and, for FreeSurfer 7, BrainSegVolNotVent and eTIV."""
    ids = ids or fsids(30)
    rng = np.random.default_rng(seed)
    center = {"thickness": 2.5, "area": 1500.0, "volume": 5000.0}[meas]
    df = pd.DataFrame({f"{hemi}.aparc.{meas}": ids})
    for r in DK:
        df[f"{hemi}_{r}_{meas}"] = (center * rng.lognormal(0, 0.1, len(ids))).round(3 if meas == "thickness" else 0)
    if meas == "thickness":
        df[f"{hemi}_MeanThickness_thickness"] = rng.normal(2.45, 0.1, len(ids)).round(5)
    if meas == "area":
        df[f"{hemi}_WhiteSurfArea_area"] = rng.normal(85000, 5000, len(ids)).round(1)
    if fs7:
        head = np.random.default_rng(999)  # the same in every table of a subject, as FreeSurfer writes them
        df["BrainSegVolNotVent"] = head.normal(1.1e6, 8e4, len(ids)).round(1)
        df["eTIV"] = head.normal(1.5e6, 1e5, len(ids)).round(6)
    df.to_csv(path, sep=sep, index=False)
    return df


def write_aseg_table(path, ids=None, seed=1, sep="\t"):
    """An asegstats2table table: first cell 'Measure:volume', structures, then the '# Measure' globals."""
    ids = ids or fsids(30)
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"Measure:volume": ids})
    for s in ASEG:
        df[s] = rng.normal(4000, 400, len(ids)).round(1)
    for g in ASEG_GLOBAL:
        df[g] = rng.integers(5, 80, len(ids)) if "Holes" in g else rng.normal(1e6, 1e5, len(ids)).round(6)
    df["BrainSegVolNotVent"] = np.random.default_rng(999).normal(1.1e6, 8e4, len(ids)).round(1)  # as in aparc's
    df.to_csv(path, sep=sep, index=False)
    return df


def write_enigma(folder, ids=None, seed=2, na=True):
    """ENIGMA-protocol CorticalMeasuresENIGMA_ThickAvg.csv and LandRvolumes.csv (ICV in both)."""
    ids = ids or [f"subj{i:02d}" for i in range(30)]
    rng = np.random.default_rng(seed)
    icv = rng.normal(1.5e6, 1e5, len(ids)).round(1)
    cort = pd.DataFrame({"SubjID": ids})
    for h in "LR":
        for r in DK:
            cort[f"{h}_{r}_thickavg"] = rng.normal(2.5, 0.2, len(ids)).round(3)
    cort["LThickness"], cort["RThickness"] = rng.normal(2.4, 0.1, (2, len(ids))).round(5)
    cort["LSurfArea"], cort["RSurfArea"] = rng.normal(85000, 5000, (2, len(ids))).round(0)
    cort["ICV"] = icv
    sub = pd.DataFrame({"SubjID": ids})
    for c in ["LLatVent", "RLatVent", "Lthal", "Rthal", "Lhippo", "Rhippo", "Lamyg", "Ramyg"]:
        sub[c] = rng.normal(4000, 400, len(ids)).round(1)
    sub["ICV"] = icv
    cort = cort.astype(object)
    if na:
        cort.loc[3, "L_entorhinal_thickavg"] = "NA"  # a region that failed QC, as ENIGMA marks it
    cort.to_csv(folder / "CorticalMeasuresENIGMA_ThickAvg.csv", index=False)
    sub.to_csv(folder / "LandRvolumes.csv", index=False)
    return folder / "CorticalMeasuresENIGMA_ThickAvg.csv", folder / "LandRvolumes.csv"


ABCD_EVENTS = ["baseline_year_1_arm_1", "2_year_follow_up_y_arm_1"]
ABCD_THK = [f"smri_thick_cdk_{r}{h}" for h in ("lh", "rh") for r in ("bankssts", "cdacate", "cuneus", "ehinal", "insula")
            ] + ["smri_thick_cdk_meanlh", "smri_thick_cdk_mean"]
ABCD_AREA = [f"smri_area_cdk_{r}{h}" for h in ("lh", "rh") for r in ("bankssts", "cdacate", "cuneus")] + \
    ["smri_area_cdk_totallh", "smri_area_cdk_total"]
ABCD_ASEG = ["smri_vol_scs_hpuslh", "smri_vol_scs_hpusrh", "smri_vol_scs_tplh", "smri_vol_scs_amygdalalh",
             "smri_vol_scs_wholeb", "smri_vol_scs_intracranialv", "smri_vol_scs_suprateialv",
             "smri_vol_scs_subcorticalgv"]
SCANNERS = {"GE": ["HASH03db707f", "HASHe4f6957a"], "SIEMENS": ["HASH1314a204", "HASH3935c89e", "HASH96a0c182"],
            "Philips Medical Systems": ["HASH69f406fa"]}


def abcd_keys(n_subjects=40, events=ABCD_EVENTS):
    return [(f"NDAR_INV{i:08X}", e) for i in range(n_subjects) for e in events]


def write_abcd(folder, n_subjects=40, seed=3, events=ABCD_EVENTS):
    """mri_y_smr_thk_dsk.csv, mri_y_smr_area_dsk.csv, mri_y_smr_vol_aseg.csv, mri_y_adm_info.csv and
    abcd_y_lt.csv (the longitudinal tracking table lists non-imaging events too) as ABCD 5.x writes them."""
    rng = np.random.default_rng(seed)
    keys = abcd_keys(n_subjects, events)
    base = pd.DataFrame(keys, columns=["src_subject_id", "eventname"])
    serials = [s for v in SCANNERS.values() for s in v]
    maker = {s: m for m, v in SCANNERS.items() for s in v}
    scanner = {sid: serials[k % len(serials)] for k, sid in enumerate(dict.fromkeys(base["src_subject_id"]))}

    def measures(cols, center, sd):
        df = base.copy()
        for c in cols:
            df[c] = rng.normal(center, sd, len(df)).round(4)
        return df

    thk = measures(ABCD_THK, 2.8, 0.2)
    thk.loc[5, "smri_thick_cdk_cuneuslh"] = np.nan  # ABCD leaves a failed value empty
    thk.to_csv(folder / "mri_y_smr_thk_dsk.csv", index=False)
    measures(ABCD_AREA, 1200.0, 150.0).sample(frac=1, random_state=1).to_csv(folder / "mri_y_smr_area_dsk.csv",
                                                                              index=False)
    measures(ABCD_ASEG, 4000.0, 500.0).to_csv(folder / "mri_y_smr_vol_aseg.csv", index=False)
    adm = base.copy()
    adm["mri_info_manufacturer"] = [maker[scanner[s]] for s in adm["src_subject_id"]]
    adm["mri_info_manufacturersmn"] = ["DISCOVERY MR750" if m == "GE" else "Prisma_fit" if m == "SIEMENS" else
                                       "Achieva dStream" for m in adm["mri_info_manufacturer"]]
    adm["mri_info_deviceserialnumber"] = [scanner[s] for s in adm["src_subject_id"]]
    adm["mri_info_softwareversion"] = "27\\LX\\MR Software release:DV26.0_R02_1810.b"
    adm.to_csv(folder / "mri_y_adm_info.csv", index=False)
    lt = pd.DataFrame(abcd_keys(n_subjects, events + ["6_month_follow_up_arm_1"]),
                      columns=["src_subject_id", "eventname"])
    lt["site_id_l"] = [f"site{(int(s[-2:], 16) % 5) + 1:02d}" for s in lt["src_subject_id"]]
    lt["interview_age"] = rng.integers(108, 160, len(lt))  # months
    lt["rel_family_id"] = rng.integers(0, 11000, len(lt))
    lt.sample(frac=1, random_state=2).to_csv(folder / "abcd_y_lt.csv", index=False)
    return {n: folder / f"{n}.csv" for n in ("mri_y_smr_thk_dsk", "mri_y_smr_area_dsk", "mri_y_smr_vol_aseg",
                                              "mri_y_adm_info", "abcd_y_lt")}


# --------------------------------------------------------------------------------------------- sniffing
def test_sniff_format(tmp_path):
    write_aparc_table(tmp_path / "lh.aparc.thickness.txt")
    write_aseg_table(tmp_path / "aseg_stats", sep=",")  # no extension: told by its header
    cort, sub = write_enigma(tmp_path)
    files = write_abcd(tmp_path, n_subjects=3)
    pd.DataFrame({"SubjID": ["a", "b"], "site": ["x", "y"], "L_cuneus_thickavg": [2.1, 2.2]}).to_csv(
        tmp_path / "mine.csv", index=False)
    assert sniff_format(tmp_path / "lh.aparc.thickness.txt") == "freesurfer"
    assert sniff_format(tmp_path / "aseg_stats") == "freesurfer"
    assert sniff_format(cort) == sniff_format(sub) == "enigma"
    assert {sniff_format(p) for p in files.values()} == {"abcd"}
    assert sniff_format(tmp_path / "mine.csv") == "table"  # SubjID with a site column: a user's own table
    (tmp_path / "empty.csv").write_text("")
    assert sniff_format(tmp_path / "empty.csv") == "table"


def test_sniff_reads_a_bounded_header(tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "wb") as fh:  # 6 MB without a line break
        fh.write(b"Measure:volume," + b"x" * (6 * 2**20))
    assert sniff_format(path) == "freesurfer"  # decided from the first 4 MB


# --------------------------------------------------------------------------------------------- FreeSurfer
def test_freesurfer_tables_joined(tmp_path):
    lh = write_aparc_table(tmp_path / "lh.thickness.txt", "lh", seed=10)
    rh = write_aparc_table(tmp_path / "rh.thickness.txt", "rh", seed=11)
    aseg = write_aseg_table(tmp_path / "aseg.txt")
    t = read_feature_tables([tmp_path / "lh.thickness.txt", tmp_path / "rh.thickness.txt", tmp_path / "aseg.txt"])
    assert t.formats == ["freesurfer"] * 3 and t.id_columns == ["fsid"]
    assert list(t.frame.columns[:3]) == ["fsid", "lh_bankssts_thickness", "lh_caudalanteriorcingulate_thickness"]
    assert list(t.frame["fsid"]) == list(lh["lh.aparc.thickness"]) == list(t.frame.index)
    assert list(t.frame.columns).count("eTIV") == 1  # in both aparc tables with the same values: kept once
    assert t.frame.at["sub-007", "rh_insula_thickness"] == rh.at[7, "rh_insula_thickness"]
    assert t.frame.at["sub-007", "Left-Hippocampus"] == aseg.at[7, "Left-Hippocampus"]
    assert set(t.measures) == set(t.frame.columns) - {"fsid"}
    # the same values as the FreeSurfer reader
    ref = read_fs_table(tmp_path / "aseg.txt", parse_ids=False)
    assert np.array_equal(t.frame[ref.columns].to_numpy(), ref.to_numpy())


def test_freesurfer_tables_of_other_subjects_refused(tmp_path):
    write_aparc_table(tmp_path / "lh.txt", "lh")
    write_aparc_table(tmp_path / "rh.txt", "rh", ids=fsids(29) + ["sub-999"])
    with pytest.raises(AlignmentError, match=r"1 only in the first \(sub-029\), 1 only in the second \(sub-999\)"):
        read_feature_tables([tmp_path / "lh.txt", tmp_path / "rh.txt"])


def test_same_column_other_values_refused(tmp_path):
    write_aparc_table(tmp_path / "lh.txt", "lh")
    df = write_aparc_table(tmp_path / "rh.txt", "rh")
    df.loc[2, "eTIV"] += 1
    df.to_csv(tmp_path / "rh.txt", sep="\t", index=False)
    with pytest.raises(InputError, match="eTIV.*other values"):
        read_feature_tables([tmp_path / "lh.txt", tmp_path / "rh.txt"])


def test_plain_tables_need_an_id(tmp_path):
    write_aparc_table(tmp_path / "lh.txt", "lh")
    pd.DataFrame({"subject": fsids(30), "x": 1.0}).to_csv(tmp_path / "mine.csv", index=False)
    with pytest.raises(InputError, match="needs --id COL.*mine.csv"):
        read_feature_tables([tmp_path / "lh.txt", tmp_path / "mine.csv"])
    t = read_feature_tables([tmp_path / "lh.txt", tmp_path / "mine.csv"], id_col="subject")
    assert t.id_columns == ["subject"] and "x" in t.frame.columns and t.frame.columns[0] == "subject"


# --------------------------------------------------------------------------------------------- ENIGMA
def test_enigma_cortical_and_subcortical_joined(tmp_path):
    cort, sub = write_enigma(tmp_path)
    t = read_feature_tables([cort, sub])
    assert t.formats == ["enigma", "enigma"] and t.id_columns == ["SubjID"]
    assert list(t.frame.columns).count("ICV") == 1
    assert {"L_bankssts_thickavg", "LThickness", "RSurfArea", "Lhippo", "Ramyg", "ICV"} <= set(t.measures)
    assert np.isnan(t.frame.at["subj03", "L_entorhinal_thickavg"])  # "NA": failed QC, a missing value
    assert t.frame.at["subj04", "Lhippo"] == pd.read_csv(sub).at[4, "Lhippo"]
    with pytest.raises(Exception, match="empty"):  # the strict reader keeps refusing it
        read_enigma_table(cort)


# --------------------------------------------------------------------------------------------- ABCD
def test_read_abcd_joins_measures_and_scanner_and_site(tmp_path):
    f = write_abcd(tmp_path)
    df = read_abcd([f["mri_y_smr_thk_dsk"], f["mri_y_smr_area_dsk"], f["mri_y_smr_vol_aseg"], f["mri_y_adm_info"],
                    f["abcd_y_lt"]])
    assert df.index.names == ["src_subject_id", "eventname"] and len(df) == 80  # lt's 6-month rows left out
    assert df.attrs["featharm"]["measures"] == ABCD_THK + ABCD_AREA + ABCD_ASEG
    thk = pd.read_csv(f["mri_y_smr_thk_dsk"])
    assert list(df.index) == list(zip(thk["src_subject_id"], thk["eventname"]))  # rows of the first table
    area = pd.read_csv(f["mri_y_smr_area_dsk"]).set_index(["src_subject_id", "eventname"])
    key = ("NDAR_INV0000000A", "2_year_follow_up_y_arm_1")
    assert df.loc[key, "smri_area_cdk_cuneusrh"] == area.loc[key, "smri_area_cdk_cuneusrh"]  # matched, not by position
    lt = pd.read_csv(f["abcd_y_lt"]).set_index(["src_subject_id", "eventname"])
    assert df.loc[key, "site_id_l"] == lt.loc[key, "site_id_l"] and df.loc[key, "interview_age"] == lt.loc[key,
                                                                                                           "interview_age"]
    assert set(df["mri_info_manufacturer"]) == set(SCANNERS)
    assert df["mri_info_deviceserialnumber"].nunique() == 6
    assert np.isnan(df.iloc[5][["smri_thick_cdk_cuneuslh"]].astype(float).iloc[0])
    base = read_abcd([f["mri_y_smr_thk_dsk"]], events=["baseline_year_1_arm_1"])
    assert len(base) == 40 and set(base.index.get_level_values(1)) == {"baseline_year_1_arm_1"}
    with pytest.raises(InputError, match="no rows at event.*4_year"):
        read_abcd([f["mri_y_smr_thk_dsk"]], events=["4_year_follow_up_y_arm_1"])


def test_abcd_refusals(tmp_path):
    f = write_abcd(tmp_path, n_subjects=6)
    with pytest.raises(InputError, match="has ABCD imaging measures"):
        read_abcd([f["mri_y_adm_info"], f["abcd_y_lt"]])
    thk = pd.read_csv(f["mri_y_smr_thk_dsk"])
    pd.concat([thk, thk.iloc[[3]]]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DuplicateIndexError, match=r"NDAR_INV00000001.*2_year_follow_up_y_arm_1.*lines \[5, 14\]"):
        read_abcd_table(tmp_path / "dup.csv")
    described = pd.concat([pd.DataFrame([{c: f"description of {c}" for c in thk.columns}]), thk])
    described.to_csv(tmp_path / "nda.csv", index=False)
    with pytest.raises(NonNumericFeatureError, match="line 2.*description row"):
        read_abcd_table(tmp_path / "nda.csv")
    thk.drop(columns="eventname").to_csv(tmp_path / "noevent.csv", index=False)
    with pytest.raises(ColumnNotFoundError, match="no eventname column"):
        read_abcd_table(tmp_path / "noevent.csv")
    thk.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(AlignmentError, match="1 only in the first"):
        read_abcd([f["mri_y_smr_area_dsk"], tmp_path / "short.csv"])
    write_aparc_table(tmp_path / "lh.txt")
    with pytest.raises(InputError, match="lh.txt is not an ABCD table"):
        read_feature_tables([f["mri_y_smr_thk_dsk"], tmp_path / "lh.txt"])


def test_abcd_feature_tables_for_the_command_line(tmp_path):
    f = write_abcd(tmp_path, n_subjects=5)
    t = read_feature_tables([f["mri_y_smr_thk_dsk"], f["mri_y_adm_info"]])
    assert t.id_columns == ["src_subject_id", "eventname"] and list(t.frame.columns[:2]) == t.id_columns
    assert t.frame.index[1] == "NDAR_INV00000000/2_year_follow_up_y_arm_1"
    assert t.measures == ABCD_THK and "mri_info_deviceserialnumber" in t.frame.columns


def test_freesurfer_table_with_a_covariate_column_says_how_to_fix(tmp_path):
    df = write_aparc_table(tmp_path / "lh.txt", "lh")
    df.insert(1, "site", "A")
    df.to_csv(tmp_path / "lh.txt", sep="\t", index=False)
    with pytest.raises(InputError, match=r"column 'site' holds 'A'.*'lh.aparc.thickness'.*--covariates FILE"):
        read_feature_tables([tmp_path / "lh.txt"])
