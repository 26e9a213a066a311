"""FreeSurfer readers: stats files (FS 5.3 / 6.0 / 7.4 layouts), group tables, SUBJECTS_DIR collection.

Fixtures are the project's own: ``tests/data/freesurfer/fs*/`` (every stats file kind per version, written by
``featharm.datasets._freesurfer_synth`` in the exact FreeSurfer layouts, see ``make_fixtures.py``), hand-written
group tables in ``tests/data/freesurfer/tables/``, and SUBJECTS_DIR trees written into ``tmp_path``. Expected values
are taken from the file text itself (an independent split of the lines), never typed in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featharm.datasets._freesurfer_synth import file_kinds, write_subject
from featharm.exceptions import (
    AlignmentError,
    DuplicateIndexError,
    FreeSurferWarning,
    InputError,
    MissingStatsError,
    StatsFileError,
)
from featharm.io import (
    collect_subjects,
    normalize_structure_names,
    parse_fsid,
    read_enigma_table,
    read_fs_table,
    read_fs_tables,
    read_stats,
    scan_subjects_dir,
)

DATA = Path(__file__).parents[1] / "data" / "freesurfer"
SUBJ = {"5.3": DATA / "fs5.3" / "bert53", "6.0": DATA / "fs6.0" / "bert60", "7.4": DATA / "fs7.4" / "bert74"}
ALL_FILES = [(v, f) for v in SUBJ for f in file_kinds(v)]


def _text_table(path):
    """Independent reading of a stats file's table: the rows after '# ColHeaders', split on whitespace."""
    lines = Path(path).read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("# ColHeaders"))
    cols = lines[i].split()[2:]
    rows = [line.split() for line in lines[i + 1:] if line.strip()]
    return cols, rows


def _text_measures(path):
    return [line for line in Path(path).read_text().splitlines() if line.startswith("# Measure ")]


# ------------------------------------------------------------------------------------------ stats files
@pytest.mark.parametrize("version,fname", ALL_FILES)
def test_every_file_kind_every_version_read_exactly(version, fname):
    path = SUBJ[version] / "stats" / fname
    s = read_stats(path)
    assert len(s.measures) == len(_text_measures(path))
    if fname == "brainvol.stats":
        assert s.kind == "brainvol" and s.table.empty
        return
    cols, rows = _text_table(path)
    assert list(s.table.columns) == [c for c in cols if c != "StructName"]
    assert list(s.table.index) == [r[cols.index("StructName")] for r in rows]
    for j, c in enumerate(cols):  # every cell equals the decimal text as written
        if c == "StructName":
            continue
        expected = np.array([float(r[j]) for r in rows])
        np.testing.assert_array_equal(s.table[c].to_numpy(dtype=float), expected)
    expected_kind = {"aseg.stats": "aseg", "wmparc.stats": "wmparc"}.get(fname, "surface")
    assert s.kind == expected_kind
    if expected_kind == "surface":
        assert s.hemi == fname[:2] and s.parcellation == fname[3:-len(".stats")]
        assert s.units["SurfArea"] == "mm^2" and s.units["GrayVol"] == "mm^3" and s.units["ThickAvg"] == "mm"
    else:
        assert s.units["Volume_mm3"] == "mm^3"


@pytest.mark.parametrize("version,expected", [("5.3", "5.3"), ("6.0", "6.0"), ("7.4", "7.4.1")])
def test_version_detected(version, expected):
    assert read_stats(SUBJ[version] / "stats" / "aseg.stats").version == expected
    assert read_stats(SUBJ[version] / "stats" / "lh.aparc.stats").version == expected


def test_value_traced_back_to_its_line():
    path = SUBJ["7.4"] / "stats" / "aseg.stats"
    lines = path.read_text().splitlines()
    lineno, line = next((k, ln) for k, ln in enumerate(lines, 1) if " Left-Hippocampus " in ln)
    written = line.split()[3]  # Volume_mm3 column, as written
    s = read_stats(path)
    assert s.table.at["Left-Hippocampus", "Volume_mm3"] == float(written)
    assert f"{s.table.at['Left-Hippocampus', 'Volume_mm3']:.1f}" == written
    assert lineno > 60  # the row sits below the 60-odd header lines


def test_measure_lines_named_like_asegstats2table():
    s = read_stats(SUBJ["7.4"] / "stats" / "aseg.stats")
    m = s.measures
    # eTIV keeps its long name, the others their short name
    assert "EstimatedTotalIntraCranialVol" in m.index and "eTIV" not in m.index
    assert m.at["EstimatedTotalIntraCranialVol", "short_name"] == "eTIV"
    assert {"BrainSegVol", "lhCortexVol", "CerebralWhiteMatterVol", "BrainSegVol-to-eTIV"} <= set(m.index)
    etiv_line = next(ln for ln in _text_measures(s.path) if "eTIV," in ln and "Estimated" in ln)
    assert m.at["EstimatedTotalIntraCranialVol", "value"] == float(etiv_line.split(",")[-2])
    assert m.at["EstimatedTotalIntraCranialVol", "units"] == "mm^3"
    assert m.at["BrainSegVol-to-eTIV", "units"] == "unitless"
    assert s.measure("eTIV") == s.measure("EstimatedTotalIntraCranialVol")


@pytest.mark.parametrize("version", ["5.3", "6.0"])
def test_cortexvol_line_without_comma(version):
    """FS 5.3/6.0 aparc files write 'Cortex, CortexVol Total cortical gray matter volume, v, mm^3'."""
    path = SUBJ[version] / "stats" / "lh.aparc.stats"
    line = next(ln for ln in _text_measures(path) if "CortexVol" in ln)
    assert "CortexVol Total" in line
    s = read_stats(path)
    assert s.measures.at["CortexVol", "description"] == "Total cortical gray matter volume"
    assert s.measures.at["CortexVol", "value"] == float(line.split(",")[-2])
    assert s.measures.at["MeanThickness", "units"] == "mm"


def test_fs53_names_and_normalization():
    s = read_stats(SUBJ["5.3"] / "stats" / "aseg.stats")
    assert "Left-Thalamus-Proper" in s.table.index and "lhCorticalWhiteMatterVol" in s.measures.index
    n = read_stats(SUBJ["5.3"] / "stats" / "aseg.stats", normalize_names=True)
    assert "Left-Thalamus" in n.table.index and "Left-Thalamus-Proper" not in n.table.index
    assert n.table.at["Left-Thalamus", "Volume_mm3"] == s.table.at["Left-Thalamus-Proper", "Volume_mm3"]
    assert n.renamed["Left-Thalamus-Proper"] == "Left-Thalamus"
    assert n.renamed["lhCorticalWhiteMatterVol"] == "lhCerebralWhiteMatterVol"
    assert read_stats(SUBJ["7.4"] / "stats" / "aseg.stats", normalize_names=True).renamed == {}


def test_normalize_refuses_to_merge_old_and_new():
    df = pd.DataFrame({"Left-Thalamus-Proper": [1.0], "Left-Thalamus": [2.0]})
    with pytest.raises(InputError, match="Left-Thalamus-Proper"):
        normalize_structure_names(df)
    out, rep = normalize_structure_names(["Left-Thalamus-Proper", "CSF"])
    assert out == ["Left-Thalamus", "CSF"] and rep == {"Left-Thalamus-Proper": "Left-Thalamus"}


def test_brainvol_twelve_decimals_exact():
    path = SUBJ["7.4"] / "stats" / "brainvol.stats"
    s = read_stats(path)
    line = next(ln for ln in _text_measures(path) if "BrainSegVol," in ln)
    assert len(line.split(",")[-2].strip().split(".")[1]) == 12
    assert s.measures.at["BrainSegVol", "value"] == float(line.split(",")[-2])


# ---- malformed files: the message names the file and the line
def _copy(tmp_path, version="7.4", fname="aseg.stats"):
    dst = tmp_path / fname
    shutil.copy(SUBJ[version] / "stats" / fname, dst)
    return dst


def test_empty_file(tmp_path):
    p = tmp_path / "aseg.stats"
    p.write_text("")
    with pytest.raises(StatsFileError, match="aseg.stats' is empty"):
        read_stats(p)


def test_missing_file(tmp_path):
    with pytest.raises(StatsFileError, match="does not exist"):
        read_stats(tmp_path / "lh.aparc.stats")


def test_truncated_mid_row(tmp_path):
    p = _copy(tmp_path, fname="lh.aparc.stats")
    text = p.read_text()
    p.write_text(text[: len(text) - 30])  # cut inside the last row
    nlines = len(p.read_text().splitlines())
    with pytest.raises(StatsFileError, match=rf"lh\.aparc\.stats:{nlines}: .* fields .*truncated"):
        read_stats(p)


def test_truncated_inside_last_value_warns(tmp_path):
    p = _copy(tmp_path, fname="lh.aparc.stats")
    text = p.read_text()
    p.write_text(text[:-3])  # "... 9.2\n" -> "... 9": the field count is still right
    nlines = len(text.splitlines())
    with pytest.warns(FreeSurferWarning, match=rf"lh\.aparc\.stats:{nlines}: the file does not end with a newline"):
        read_stats(p)


def test_truncated_at_row_boundary_caught_by_nrows(tmp_path):
    p = _copy(tmp_path)
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(StatsFileError, match=r"NRows 45.*40 rows.*truncated"):
        read_stats(p)


def test_truncated_after_colheaders(tmp_path):
    p = _copy(tmp_path, fname="lh.aparc.stats")
    lines = p.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("# ColHeaders"))
    p.write_text("\n".join(lines[: i + 1]) + "\n")
    with pytest.raises(StatsFileError, match=rf"line {i + 1} .*no rows.*truncated"):
        read_stats(p)


def test_truncated_in_header(tmp_path):
    p = tmp_path / "aseg.stats"
    p.write_text("# Title Segmentation Statistics \n# \n# generating_program mri_segstats\n")
    with pytest.raises(StatsFileError, match="neither a '# ColHeaders' table nor '# Measure' lines"):
        read_stats(p)


def test_bad_number_names_line_and_column(tmp_path):
    p = _copy(tmp_path, fname="rh.aparc.stats")
    lines = p.read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith("insula"))
    toks = lines[k].split()
    toks[4] = "2.4x7"
    lines[k] = " ".join(toks)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(StatsFileError, match=rf"rh\.aparc\.stats:{k + 1}: column 'ThickAvg' holds '2.4x7'"):
        read_stats(p)


def test_bad_measure_line(tmp_path):
    p = _copy(tmp_path)
    lines = p.read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith("# Measure EstimatedTotalIntraCranialVol"))
    lines[k] = lines[k].replace(lines[k].split(",")[-2], " 1.5e+06abc")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(StatsFileError, match=rf"aseg\.stats:{k + 1}: the value '1.5e\+06abc' of measure 'eTIV'"):
        read_stats(p)
    lines[k] = "# Measure EstimatedTotalIntraCranialVol, 1500000"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(StatsFileError, match=rf"aseg\.stats:{k + 1}: malformed '# Measure' line"):
        read_stats(p)
    lines[k] = "# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, 1500000, 1"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(StatsFileError, match=rf"aseg\.stats:{k + 1}: '# Measure' line without units"):
        read_stats(p)


def test_not_a_stats_file(tmp_path):
    p = tmp_path / "aseg.stats"
    p.write_text("subject,volume\nA,1\n")
    with pytest.raises(StatsFileError, match=r"aseg\.stats:1: a data line before any '# ColHeaders'"):
        read_stats(p)


def test_hemisphere_mismatch(tmp_path, sd):
    p = _copy(tmp_path, fname="rh.aparc.stats")
    p.rename(tmp_path / "lh.aparc.stats")
    with pytest.raises(StatsFileError, match="file name says lh but its header says 'hemi rh'"):
        read_stats(tmp_path / "lh.aparc.stats")
    st = sd / "sub-02" / "stats"
    (st / "lh.aparc.stats").write_text((st / "rh.aparc.stats").read_text())
    with pytest.raises(StatsFileError, match=r"sub-02/stats/lh\.aparc\.stats: the file name says lh"):
        collect_subjects(sd, ["aparc.thickness"])


def test_duplicate_structure(tmp_path):
    p = _copy(tmp_path, fname="lh.aparc.stats")
    text = p.read_text()
    last = text.splitlines()[-1]
    p.write_text(text + last + "\n")
    with pytest.raises(StatsFileError, match="'insula' appears more than once"):
        read_stats(p)


def test_missing_known_structures_warn(tmp_path):
    p = _copy(tmp_path, version="6.0", fname="lh.aparc.DKTatlas.stats")
    lines = p.read_text().splitlines()
    p.write_text("\n".join(ln for ln in lines if not ln.startswith(("cuneus ", "lingual "))) + "\n")
    with pytest.warns(FreeSurferWarning, match=r"lacks 2 of its 31 structures \(cuneus, lingual\)"):
        s = read_stats(p)
    assert len(s.table) == 29


# ------------------------------------------------------------------------------------------ group tables
def test_tab_aseg_table_longitudinal_ids():
    path = DATA / "tables" / "aseg_fs7_long.tsv"
    df = read_fs_table(path)
    assert df.attrs["featharm"]["tool"] == "asegstats2table" and df.attrs["featharm"]["measure"] == "volume"
    assert df.attrs["featharm"]["delimiter"] == "\t"
    assert df.index.name == "fsid" and df.index[0] == "P01_t1.long.P01_base"
    assert list(df["subject"]) == ["P01_base", "P01_base", "P02_base"]
    assert list(df["timepoint"]) == ["P01_t1", "P01_t2", "P02_t1"]
    assert set(df["fs_kind"]) == {"long"}
    row = path.read_text().splitlines()[2].split("\t")  # traced: line 3 of the file
    header = path.read_text().splitlines()[0].split("\t")
    assert df.at[row[0], "Left-Hippocampus"] == float(row[header.index("Left-Hippocampus")])
    assert df.at[row[0], "EstimatedTotalIntraCranialVol"] == float(row[-1])


def test_comma_aparc_table_keeps_leading_zero_ids():
    df = read_fs_table(DATA / "tables" / "lh.aparc.thickness_fs5.csv")
    info = df.attrs["featharm"]
    assert (info["tool"], info["hemi"], info["parcellation"], info["measure"], info["delimiter"]) == \
        ("aparcstats2table", "lh", "aparc", "thickness", ",")
    assert list(df.index) == ["0050642", "0050646", "0050648"]
    assert df.at["0050646", "lh_MeanThickness_thickness"] == 2.11715
    assert df["lh_entorhinal_thickness"].dtype == np.float64


def test_a2009s_table_bids_ids():
    df = read_fs_table(DATA / "tables" / "rh.aparc.a2009s.area.tsv")
    assert df.attrs["featharm"]["parcellation"] == "aparc.a2009s"
    assert list(df["subject"]) == ["sub-01", "sub-01"] and list(df["timepoint"]) == ["ses-01", "ses-02"]


def test_fs5_table_normalized_on_request():
    raw = read_fs_table(DATA / "tables" / "aseg_fs5.csv", parse_ids=False)
    assert "Left-Thalamus-Proper" in raw.columns and list(raw.columns)[0] == "Left-Thalamus-Proper"
    norm = read_fs_table(DATA / "tables" / "aseg_fs5.csv", parse_ids=False, normalize_names=True)
    assert norm.attrs["featharm"]["renamed"] == {
        "Left-Thalamus-Proper": "Left-Thalamus", "Right-Thalamus-Proper": "Right-Thalamus",
        "lhCorticalWhiteMatterVol": "lhCerebralWhiteMatterVol", "IntraCranialVol": "EstimatedTotalIntraCranialVol"}
    np.testing.assert_array_equal(norm["Left-Thalamus"], raw["Left-Thalamus-Proper"])


def test_enigma_tables():
    t = read_enigma_table(DATA / "tables" / "CorticalMeasuresENIGMA_ThickAvg.csv")
    assert t.index.name == "fsid" and "L_bankssts_thickavg" in t.columns
    r = read_enigma_table(DATA / "tables" / "CorticalMeasuresENIGMA_ThickAvg.csv", rename=True)
    assert ["lh_bankssts_thickness", "rh_bankssts_thickness", "lh_insula_thickness", "rh_insula_thickness",
            "lh_MeanThickness_thickness", "rh_MeanThickness_thickness", "lh_WhiteSurfArea_area",
            "rh_WhiteSurfArea_area", "EstimatedTotalIntraCranialVol"] == list(r.columns)
    np.testing.assert_array_equal(r.to_numpy(), t.to_numpy())
    v = read_fs_table(DATA / "tables" / "LandRvolumes.csv")  # dispatches on 'SubjID'
    assert v.attrs["featharm"]["tool"] == "ENIGMA" and v.at["sub-02", "Rhippo"] == 3918.4
    v = read_enigma_table(DATA / "tables" / "LandRvolumes.csv", rename=True)
    assert "Left-Hippocampus" in v.columns and "Right-Lateral-Ventricle" in v.columns


def test_fs7_aparc_tables_combined():
    """FS 7 aparcstats2table adds BrainSegVolNotVent and eTIV to every table: kept once when combining."""
    lh, rh, aseg = (DATA / "tables" / n for n in ("lh.aparc.thickness_fs7_long.txt", "rh.aparc.thickness_fs7_long.txt",
                                                 "aseg_fs7_long.tsv"))
    with pytest.warns(FreeSurferWarning, match=r"1 cell\(s\) are 0 \(rh_insula_thickness; ids P02_t1\.long\.P02_base\)"):
        both = read_fs_tables([aseg, lh, rh])
    assert list(both.columns[:3]) == ["subject", "timepoint", "fs_kind"]
    assert list(both.columns).count("eTIV") == 1 and "rh_insula_thickness" in both.columns
    assert both.at["P01_t2.long.P01_base", "lh_insula_thickness"] == 2.939
    assert both.at["P01_t2.long.P01_base", "Left-Hippocampus"] == 4097.1
    assert [t["hemi"] for t in both.attrs["featharm"]["tables"]] == [None, "lh", "rh"]


def test_combining_tables_with_different_subjects(tmp_path):
    lh = DATA / "tables" / "lh.aparc.thickness_fs7_long.txt"
    short = tmp_path / "rh.txt"
    lines = (DATA / "tables" / "rh.aparc.thickness_fs7_long.txt").read_text().splitlines()
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(AlignmentError, match=r"1 only in the first \(P02_t1\.long\.P02_base\), 0 only in the second"):
        read_fs_tables([lh, short])
    changed = tmp_path / "rh2.txt"
    changed.write_text("\n".join(lines[:-1] + [lines[-1].replace("990127.0", "990128.0")]) + "\n")
    with pytest.warns(FreeSurferWarning, match="are 0"):
        with pytest.raises(InputError, match="BrainSegVolNotVent.*different values"):
            read_fs_tables([lh, changed])


def test_mixed_versions_in_one_table():
    path = DATA / "tables" / "aseg_mixed_versions.tsv"
    with pytest.warns(FreeSurferWarning, match="both old and new FreeSurfer names .*Left-Thalamus-Proper / Left-Thalamus"):
        raw = read_fs_table(path)
    assert {"Left-Thalamus-Proper", "Left-Thalamus"} <= set(raw.columns)
    with pytest.warns(FreeSurferWarning, match="both old and new"):
        merged = read_fs_table(path, normalize_names=True)
    assert "Left-Thalamus-Proper" not in merged.columns
    assert list(merged["Left-Thalamus"]) == [7394.0, 7101.3]
    assert merged.attrs["featharm"]["renamed"] == {"Left-Thalamus-Proper": "Left-Thalamus"}


def test_foreign_column_in_aparc_table(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("lh.aparc.thickness,lh_bankssts_thickness,rh_bankssts_thickness\na,2.5,2.4\n")
    with pytest.warns(FreeSurferWarning, match="rh_bankssts_thickness do not belong to a lh thickness table"):
        read_fs_table(p)


@pytest.mark.parametrize("content,match", [
    ("", "is empty"),
    ("subject\tLeft-Hippocampus\nA\t1.0\n", r":1: first header cell 'subject'"),
    ("Measure:volume\tLeft-Hippocampus\n", "no rows"),
    ("Measure:volume\tLeft-Hippocampus\nA\t1.0\nA\t2.0\n", r"'A' appears on lines \[2, 3\]"),
    ("Measure:volume\tLeft-Hippocampus\tCSF\nA\t1.0\t2\nB\t1.0\tabc\n", r"\.tsv:3: column 'CSF' holds 'abc'"),
    ("Measure:volume\tLeft-Hippocampus\tCSF\nA\t1.0\t2\nB\t1.0\t\n", r"\.tsv:3: column 'CSF' is empty for 'B'"),
    ("Measure:volume\tLeft-Hippocampus\nA\t1.0\nB\t1.0\t5\t6\n", r"\.tsv:3: rows do not have as many cells"),
    ("Measure:volume\tCSF\tCSF\nA\t1.0\t2.0\n", r"\.tsv:1: column 'CSF' appears twice"),
])
def test_bad_group_tables(tmp_path, content, match):
    p = tmp_path / "t.tsv"
    p.write_text(content)
    with pytest.raises((StatsFileError, DuplicateIndexError), match=match):
        read_fs_table(p)


# ------------------------------------------------------------------------------------------ ids
@pytest.mark.parametrize("fsid,subject,timepoint,kind", [
    ("bert", "bert", None, "cross"),
    ("01_GE.long.GE", "GE", "01_GE", "long"),
    ("13900_01.long.13900_base", "13900_base", "13900_01", "long"),
    ("sub-04_ses-02.long.sub-04", "sub-04", "ses-02", "long"),
    ("sub-07_ses-bl", "sub-07", "ses-bl", "cross"),
])
def test_parse_fsid(fsid, subject, timepoint, kind):
    assert parse_fsid(fsid) == {"subject": subject, "timepoint": timepoint, "fs_kind": kind}


def test_parse_fsid_pattern():
    out = parse_fsid("13900_02.long.13900_base", id_pattern=r"(?P<subject>\d+)_(?P<timepoint>\d+)")
    assert out == {"subject": "13900", "timepoint": "02", "fs_kind": "long"}
    with pytest.raises(InputError, match="does not match id_pattern"):
        parse_fsid("bert", id_pattern=r"(?P<subject>\d+)")


# ------------------------------------------------------------------------------------------ SUBJECTS_DIR
SMALL = ["aseg.stats", "lh.aparc.stats", "rh.aparc.stats"]


def _tree(root: Path, files=SMALL, cross_tp=False):
    """Cross-sectional 7.4 subjects, a longitudinal subject (2 time points + base), a template, a non-subject
    folder; with ``cross_tp`` also the cross-sectional run of the first time point (as recon-all -long needs)."""
    write_subject(root / "sub-01", "7.4", seed=1, files=files)
    write_subject(root / "sub-02", "7.4", seed=2, files=files)
    write_subject(root / "sub-03_ses-01.long.sub-03", "7.4", seed=31, files=files)
    write_subject(root / "sub-03_ses-02.long.sub-03", "7.4", seed=32, files=files)
    if cross_tp:
        write_subject(root / "sub-03_ses-01", "7.4", seed=33, files=files)
    (root / "sub-03" / "mri").mkdir(parents=True)
    (root / "sub-03" / "base-tps").write_text("sub-03_ses-01\nsub-03_ses-02\n")
    (root / "fsaverage" / "surf").mkdir(parents=True)
    (root / "fsaverage" / "label").mkdir()
    (root / "notes").mkdir()
    return root


@pytest.fixture
def sd(tmp_path):
    return _tree(tmp_path / "subjects")


@pytest.fixture
def sd_both(tmp_path):
    return _tree(tmp_path / "subjects", cross_tp=True)


BOTH_RUNS = "1 time point.* both a cross-sectional and a longitudinal run.*sub-03_ses-01 & sub-03_ses-01.long.sub-03"


def test_scan_tells_kinds_apart(sd_both):
    scan = scan_subjects_dir(sd_both)
    assert scan["fs_kind"].to_dict() == {
        "fsaverage": "template", "notes": "other", "sub-01": "cross", "sub-02": "cross", "sub-03": "base",
        "sub-03_ses-01": "cross", "sub-03_ses-01.long.sub-03": "long", "sub-03_ses-02.long.sub-03": "long"}


def test_collect_tree(sd_both):
    with pytest.warns(FreeSurferWarning, match=BOTH_RUNS):
        df = collect_subjects(sd_both, ["aseg", "aparc.thickness", "aparc.area"])
    assert list(df.index) == ["sub-01", "sub-02", "sub-03_ses-01", "sub-03_ses-01.long.sub-03",
                              "sub-03_ses-02.long.sub-03"]
    assert df.index.name == "fsid"
    assert list(df.columns[:3]) == ["subject", "timepoint", "fs_kind"]
    assert list(df["subject"]) == ["sub-01", "sub-02", "sub-03", "sub-03", "sub-03"]
    assert df["timepoint"].isna().tolist() == [True, True, False, False, False]
    assert list(df["timepoint"].iloc[2:]) == ["ses-01", "ses-01", "ses-02"]
    assert list(df["fs_kind"]) == ["cross", "cross", "cross", "long", "long"]
    skipped = df.attrs["featharm"]["skipped"]
    assert skipped["base"] == ["sub-03"] and skipped["template"] == ["fsaverage"] and skipped["other"] == ["notes"]
    # names as asegstats2table / aparcstats2table write them
    for col in ["Left-Hippocampus", "Left-Thalamus", "EstimatedTotalIntraCranialVol", "BrainSegVol-to-eTIV",
                "lh_bankssts_thickness", "rh_insula_thickness", "lh_MeanThickness_thickness", "lh_bankssts_area",
                "rh_WhiteSurfArea_area"]:
        assert col in df.columns, col
    assert not df.drop(columns=["subject", "timepoint", "fs_kind"]).isna().any().any()
    assert (df.dtypes.iloc[3:] == np.float64).all()


def test_collected_value_traced_to_file(sd):
    df = collect_subjects(sd, ["aseg", "aparc"])
    f = sd / "sub-03_ses-02.long.sub-03" / "stats" / "rh.aparc.stats"
    cols, rows = _text_table(f)
    row = next(r for r in rows if r[0] == "precuneus")
    assert df.at["sub-03_ses-02.long.sub-03", "rh_precuneus_thickness"] == float(row[cols.index("ThickAvg")])
    assert df.at["sub-03_ses-02.long.sub-03", "rh_precuneus_area"] == float(row[cols.index("SurfArea")])
    assert df.at["sub-03_ses-02.long.sub-03", "rh_precuneus_volume"] == float(row[cols.index("GrayVol")])
    mt = next(ln for ln in _text_measures(f) if "MeanThickness" in ln)
    assert df.at["sub-03_ses-02.long.sub-03", "rh_MeanThickness_thickness"] == float(mt.split(",")[-2])
    a = sd / "sub-01" / "stats" / "aseg.stats"
    cols, rows = _text_table(a)
    row = next(r for r in rows if r[4] == "Right-Amygdala")
    assert df.at["sub-01", "Right-Amygdala"] == float(row[3])


def test_collect_runs(sd_both):
    sd = sd_both
    assert list(collect_subjects(sd, ["aseg"], runs="long")["fs_kind"]) == ["long", "long"]
    cross = collect_subjects(sd, ["aseg"], runs="cross")
    assert list(cross.index) == ["sub-01", "sub-02", "sub-03_ses-01"]
    assert cross.attrs["featharm"]["skipped"]["excluded_runs"] == ["sub-03_ses-01.long.sub-03",
                                                                   "sub-03_ses-02.long.sub-03"]
    assert list(collect_subjects(sd, ["aseg"], subjects=["sub-02"]).index) == ["sub-02"]
    with pytest.raises(InputError, match=r"sub-03 \(base\), fsaverage \(template\)"):
        collect_subjects(sd, ["aseg"], subjects=["sub-02", "sub-03", "fsaverage"])
    with pytest.raises(InputError, match="subjects not found .*: nobody"):
        collect_subjects(sd, ["aseg"], subjects=["nobody"])
    with pytest.raises(InputError, match="runs must be one of"):
        collect_subjects(sd, ["aseg"], runs="both")


def test_index_by_subject(sd_both):
    sd = sd_both
    with pytest.warns(FreeSurferWarning, match=BOTH_RUNS):
        with pytest.raises(DuplicateIndexError, match=r"sub-03_ses-01, sub-03_ses-01\.long\.sub-03 share a subject and"):
            collect_subjects(sd, ["aseg"], index="subject")
    df = collect_subjects(sd, ["aseg"], runs="long", index="subject")
    assert df.index.names == ["subject", "timepoint"]
    assert list(df.index) == [("sub-03", "ses-01"), ("sub-03", "ses-02")]
    assert list(df["fsid"]) == ["sub-03_ses-01.long.sub-03", "sub-03_ses-02.long.sub-03"]
    cross = collect_subjects(sd, ["aseg"], runs="cross", subjects=["sub-01", "sub-02"], index="subject")
    assert cross.index.name == "subject" and list(cross.index) == ["sub-01", "sub-02"]
    assert cross.attrs["featharm"]["measures"] == ["aseg"]


def test_same_subject_and_timepoint_twice_warns(sd):
    write_subject(sd / "sub-03_ses-01.long.sub-03b", "7.4", seed=5, files=SMALL)
    write_subject(sd / "sub-03_ses-02_rerun", "7.4", seed=6, files=SMALL)
    with pytest.warns(FreeSurferWarning, match=r"sub-03_ses-01\.long\.sub-03 & sub-03_ses-01\.long\.sub-03b"):
        collect_subjects(sd, ["aseg"], runs="long")


def test_missing_file_reported_not_dropped(sd):
    (sd / "sub-02" / "stats" / "rh.aparc.stats").unlink()
    with pytest.raises(MissingStatsError, match=r"1 of 4 subjects lack stats files: sub-02 \(stats/rh\.aparc\.stats\)"):
        collect_subjects(sd, ["aseg", "aparc.thickness"])
    with pytest.warns(FreeSurferWarning, match=r"kept 1 subject.*sub-02 \(stats/rh\.aparc\.stats\)"):
        kept = collect_subjects(sd, ["aseg", "aparc.thickness"], on_missing="warn")
    assert "sub-02" in kept.index
    rh = [c for c in kept.columns if c.startswith("rh_")]
    assert kept.loc["sub-02", rh].isna().all() and not kept.loc["sub-02", "Left-Hippocampus":].drop(rh).isna().any()
    assert kept.attrs["featharm"]["missing"] == [{"fsid": "sub-02", "files": ["stats/rh.aparc.stats"], "columns": []}]
    with pytest.warns(FreeSurferWarning, match="left out 1 subject"):
        dropped = collect_subjects(sd, ["aseg", "aparc.thickness"], on_missing="drop")
    assert "sub-02" not in dropped.index and len(dropped) == 3


def test_subject_without_stats_dir_reported(sd):
    (sd / "sub-09" / "mri").mkdir(parents=True)  # recon-all started, never finished
    with pytest.raises(MissingStatsError, match=r"sub-09 \(stats/aseg\.stats\)"):
        collect_subjects(sd, ["aseg"])


def test_missing_structure_reported(sd):
    f = sd / "sub-01" / "stats" / "lh.aparc.stats"
    f.write_text("\n".join(ln for ln in f.read_text().splitlines() if not ln.startswith("frontalpole ")) + "\n")
    with pytest.raises(MissingStatsError, match=r"sub-01 \(lh_frontalpole_thickness; from stats/lh\.aparc\.stats\)"):
        collect_subjects(sd, ["aparc.thickness"])


def test_mixed_versions_warn_and_names_normalized(sd):
    write_subject(sd / "old-01", "6.0", seed=7, files=SMALL)
    with pytest.warns(FreeSurferWarning, match="different FreeSurfer versions"):
        with pytest.raises(MissingStatsError, match="normalize_names=True"):
            collect_subjects(sd, ["aseg"])
    with pytest.warns(FreeSurferWarning, match=r"6\.x: 1 e\.g\. old-01; 7\.x: 4"):
        df = collect_subjects(sd, ["aseg"], normalize_names=True)
    assert "Left-Thalamus-Proper" not in df.columns
    assert df.attrs["featharm"]["renamed"] == {"Left-Thalamus-Proper": "Left-Thalamus",
                                               "Right-Thalamus-Proper": "Right-Thalamus"}
    cols, rows = _text_table(sd / "old-01" / "stats" / "aseg.stats")
    row = next(r for r in rows if r[4] == "Left-Thalamus-Proper")
    assert df.at["old-01", "Left-Thalamus"] == float(row[3])
    assert df.attrs["featharm"]["versions"]["old-01"] == "6.0"


def test_fs53_lh_cortical_white_matter(tmp_path):
    write_subject(tmp_path / "a", "5.3", seed=1, files=SMALL)
    write_subject(tmp_path / "b", "7.4", seed=2, files=SMALL)
    with pytest.warns(FreeSurferWarning, match="different FreeSurfer versions"):
        # the global measures themselves differ between 5.3 and 7.x: reported, not silently filled
        with pytest.raises(MissingStatsError, match=r"a \(VentricleChoroidVol; .*b \(BrainSegVolNotVentSurf"):
            collect_subjects(tmp_path, ["aseg"], normalize_names=True)
    with pytest.warns(FreeSurferWarning) as rec:
        df = collect_subjects(tmp_path, ["aseg"], normalize_names=True, on_missing="warn")
    assert any("kept 2 subject(s) with NaN" in str(w.message) for w in rec)
    assert "lhCorticalWhiteMatterVol" not in df.columns and not df["lhCerebralWhiteMatterVol"].isna().any()
    assert np.isnan(df.at["a", "VentricleChoroidVol"]) and np.isnan(df.at["b", "BrainSegVolNotVentSurf"])


def test_malformed_file_in_tree_named(sd):
    f = sd / "sub-02" / "stats" / "aseg.stats"
    f.write_text(f.read_text()[:-40])
    with pytest.raises(StatsFileError, match=r"sub-02/stats/aseg\.stats:\d+"):
        collect_subjects(sd, ["aseg"])


def test_duplicate_structure_in_tree(sd):
    f = sd / "sub-02" / "stats" / "aseg.stats"
    lines = f.read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if " CSF " in ln)
    lines[k + 1] = lines[k]  # CSF twice (NRows still right)
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(StatsFileError, match=rf"sub-02/stats/aseg\.stats:{k + 2}: structure 'CSF' appears more than once"):
        collect_subjects(sd, ["aseg"])


def test_duplicate_subjects_across_dirs(tmp_path, sd):
    other = tmp_path / "more"
    write_subject(other / "sub-01", "7.4", seed=9, files=SMALL)
    write_subject(other / "sub-10", "7.4", seed=10, files=SMALL)
    with pytest.raises(DuplicateIndexError, match="'sub-01' is in more than one SUBJECTS_DIR"):
        collect_subjects([sd, other], ["aseg"])
    (other / "sub-01").rename(other / "sub-11")
    assert len(collect_subjects([sd, other], ["aseg"])) == 6


def test_all_file_kinds_collected(tmp_path):
    write_subject(tmp_path / "s1", "7.4", seed=1)
    write_subject(tmp_path / "s2", "7.4", seed=2)
    df = collect_subjects(tmp_path, ["aseg", "aseg.mean", "brainvol", "wmparc", "aparc.a2009s.thickness",
                                     "aparc.DKTatlas.curvind", "aparc.pial.area", "BA_exvivo.volume"])
    assert "Left-Hippocampus_mean" in df.columns and "wm-lh-insula" in df.columns
    assert "lh_G_cuneus_thickness" in df.columns and "rh_insula_curvind" in df.columns
    assert "lh_PialSurfArea_area" in df.columns and "rh_V1_exvivo_volume" in df.columns
    assert "SupraTentorialVolNotVentVox" in df.columns  # from brainvol.stats only
    # BrainSegVol is in aseg.stats (6 decimals) and brainvol.stats (12): aseg's, as asegstats2table gives
    line = next(ln for ln in _text_measures(tmp_path / "s1" / "stats" / "aseg.stats") if "BrainSegVol," in ln)
    assert df.at["s1", "BrainSegVol"] == float(line.split(",")[-2])
    assert not df.iloc[:, 3:].isna().any().any()


def test_overlapping_parcellations_refused(tmp_path):
    write_subject(tmp_path / "s1", "7.4", seed=1)
    with pytest.raises(InputError, match="comes from both stats/lh.aparc.stats and stats/lh.aparc.DKTatlas.stats"):
        collect_subjects(tmp_path, ["aparc.thickness", "aparc.DKTatlas.thickness"])


@pytest.mark.parametrize("bad", ["thickness", "aseg.area", "aparc thickness"])
def test_unknown_measure(sd, bad):
    with pytest.raises(InputError, match="unknown measure"):
        collect_subjects(sd, [bad])


def test_no_subjects(tmp_path):
    (tmp_path / "fsaverage" / "surf").mkdir(parents=True)
    with pytest.raises(InputError, match="no cross or long FreeSurfer subjects"):
        collect_subjects(tmp_path, ["aseg"])
    with pytest.raises(InputError, match="does not exist"):
        collect_subjects(tmp_path / "nope", ["aseg"])


def test_collected_equals_group_table_roundtrip(sd, tmp_path):
    """Write the collected lh thickness as aparcstats2table would, read it back: same names and numbers."""
    df = collect_subjects(sd, ["aparc.thickness"], runs="cross")
    lh = df[[c for c in df.columns if c.startswith("lh_")]]
    out = tmp_path / "lh.aparc.thickness.tsv"
    lh.rename_axis("lh.aparc.thickness").to_csv(out, sep="\t", float_format="%.17g")
    back = read_fs_table(out, parse_ids=False)
    pd.testing.assert_frame_equal(back, lh, check_names=False)


# ------------------------------------------------------------------------------------------ real files
# The shared folder of real FreeSurfer outputs (../shared/data/freesurfer_formats, not part of the repository;
# see its SOURCE.md) is read in place when present: every file parses, every cell equals its text.
REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "freesurfer_formats"


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real FreeSurfer examples not available")
def test_real_freesurfer_files_read_exactly():
    checked = 0
    for path in sorted((REAL / "raw_stats").iterdir()):
        if path.name.endswith(".short"):
            with pytest.warns(FreeSurferWarning, match="lacks 28 of its 31 structures"):
                read_stats(path)
            continue
        s = read_stats(path)
        assert len(s.measures) == len(_text_measures(path)), path.name
        if s.table.empty:
            continue
        cols, rows = _text_table(path)
        for j, c in enumerate(cols):
            if c != "StructName":
                np.testing.assert_array_equal(s.table[c].to_numpy(dtype=float), [float(r[j]) for r in rows])
        checked += 1
    assert checked >= 20
    for path in sorted((REAL / "tables").iterdir()):
        t = read_fs_table(path, parse_ids=False)  # no warning either (filterwarnings = error)
        lines = path.read_text().splitlines()
        sep = "\t" if "\t" in lines[0] else ","
        last = lines[-1].split(sep)
        np.testing.assert_array_equal(t.iloc[-1].to_numpy(), [float(v) for v in last[1:]])


def test_list_measures(tmp_path):
    from featharm.io import list_measures

    root = tmp_path / "subjects"
    write_subject(root / "a", "7.4", seed=1, files=file_kinds("7.4"))
    write_subject(root / "b", "6.0", seed=2, files=SMALL)
    write_subject(root / "c", "7.4", seed=3, files=["lh.aparc.stats"])  # one hemisphere only
    (root / "fsaverage" / "surf").mkdir(parents=True)
    found = list_measures(root)
    assert found.loc["aseg", "runs"] == 2 and found.loc["aparc", "runs"] == 2 and set(found["of"]) == {3}
    assert found.loc["aparc", "files"] == "lh.aparc.stats rh.aparc.stats"
    assert found.loc["aparc.a2009s", "measures"].split()[:3] == ["aparc.a2009s.thickness", "aparc.a2009s.area",
                                                                 "aparc.a2009s.volume"]
    assert found.loc["aseg", "measures"].split()[0] == "aseg"
    assert found.attrs["featharm"]["skipped"]["template"] == ["fsaverage"]
    assert list(list_measures(root, hemis=["lh"]).loc[["aparc"], "runs"]) == [3]
    # every token it lists is one collect_subjects reads
    for token in found.loc["aparc.DKTatlas", "measures"].split():
        df = collect_subjects(root, [token], subjects=["a"])
        assert df.shape[1] > 3
