"""``featharm collect``: SUBJECTS_DIR -> table that ``featharm harmonize`` reads directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featharm.cli import main
from featharm.datasets._freesurfer_synth import write_subject
from featharm.io import read_stats

FILES = ["aseg.stats", "lh.aparc.stats", "rh.aparc.stats"]


@pytest.fixture
def tree(tmp_path):
    sd = tmp_path / "subjects"
    rows = []
    for i in range(12):
        write_subject(sd / f"sub-{i:02d}", "7.4", seed=100 + i, files=FILES)
        rows.append({"participant_id": f"sub-{i:02d}", "site": "AB"[i % 2], "age": 20.0 + 3 * i})
    rows.append({"participant_id": "sub-99", "site": "A", "age": 70.0})  # no MRI
    (sd / "fsaverage" / "surf").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "participants.csv", index=False)
    return tmp_path


@pytest.mark.filterwarnings("default")  # the CLI prints warnings (small batches, empty aseg labels) as lines
def test_collect_then_harmonize(tree, capsys):
    out = tree / "features.csv"
    rc = main(["collect", str(tree / "subjects"), "--measures", "aseg", "aparc.thickness", "--out", str(out),
               "--covariates", str(tree / "participants.csv")])
    assert rc == 0
    msg = capsys.readouterr().out
    assert "collected 12 runs" in msg and "1 covariate rows without a run" in msg and "template: fsaverage" in msg
    df = pd.read_csv(out)
    assert list(df.columns[:2]) == ["fsid", "fs_kind"] and "site" in df.columns
    assert "subject" not in df.columns and "timepoint" not in df.columns  # would read back as numeric/empty
    # a value traced to its file
    s = read_stats(tree / "subjects" / "sub-05" / "stats" / "lh.aparc.stats")
    assert df.set_index("fsid").at["sub-05", "lh_insula_thickness"] == s.table.at["insula", "ThickAvg"]
    harmonized = tree / "harmonized.csv"
    rc = main(["harmonize", str(out), "--id", "fsid", "--batch", "site", "--formula", "age",
               "--out", str(harmonized), "--quiet"])
    assert rc == 0
    h = pd.read_csv(harmonized)
    assert list(h["fsid"]) == list(df["fsid"]) and h.shape == df.shape
    assert not np.allclose(h["lh_insula_thickness"], df["lh_insula_thickness"])


def test_collect_longitudinal_keeps_ids(tmp_path):
    sd = tmp_path / "sd"
    write_subject(sd / "P1_t1.long.P1", "7.4", seed=1, files=FILES)
    write_subject(sd / "P1_t2.long.P1", "7.4", seed=2, files=FILES)
    (sd / "P1" / "mri").mkdir(parents=True)
    out = tmp_path / "long.tsv"
    assert main(["collect", str(sd), "--measures", "aparc.area", "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out, sep="\t")
    assert list(df["fsid"]) == ["P1_t1.long.P1", "P1_t2.long.P1"]
    assert list(df["subject"]) == ["P1", "P1"] and list(df["timepoint"]) == ["P1_t1", "P1_t2"]


@pytest.mark.filterwarnings("default::featharm.exceptions.FreeSurferWarning")
def test_collect_user_errors_are_one_line(tree, capsys):
    (tree / "subjects" / "sub-03" / "stats" / "rh.aparc.stats").unlink()
    rc = main(["collect", str(tree / "subjects"), "--measures", "aparc", "--out", str(tree / "x.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("featharm: error: 1 of 12 subjects lack stats files: sub-03")
    assert not (tree / "x.csv").exists()
    rc = main(["collect", str(tree / "subjects"), "--measures", "aparc", "--out", str(tree / "x.csv"),
               "--on-missing", "warn", "--quiet"])
    assert rc == 0 and "FreeSurferWarning: kept 1 subject" in capsys.readouterr().err
    rc = main(["collect", str(tree / "subjects"), "--measures", "aseg", "--out", str(tree / "x.json")])
    assert rc == 2 and "cannot tell the format" in capsys.readouterr().err


def test_collect_with_bids_sessions(tmp_path, capsys):
    sd = tmp_path / "sd"
    for sub, ses, seed in (("01", "1", 1), ("01", "2", 2), ("02", "1", 3)):
        write_subject(sd / f"sub-{sub}_ses-{ses}", "7.4", seed=seed, files=FILES)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tsex\tsite\nsub-01\tF\tA\nsub-02\tM\tB\n")
    for sub, rows in (("sub-01", "ses-1\t30.5\nses-2\t32.0\n"), ("sub-02", "ses-1\t61.2\n")):
        (bids / sub).mkdir()
        (bids / sub / f"{sub}_sessions.tsv").write_text("session_id\tage\n" + rows)
    out = tmp_path / "f.csv"
    assert main(["collect", str(sd), "--measures", "aseg", "--out", str(out), "--bids", str(bids)]) == 0
    assert "3 matched on ['subject', 'timepoint']" in capsys.readouterr().out
    df = pd.read_csv(out).set_index("fsid")
    assert list(df["age"]) == [30.5, 32.0, 61.2] and list(df["site"]) == ["A", "A", "B"]
    assert list(df["subject"]) == ["sub-01", "sub-01", "sub-02"] and list(df["timepoint"]) == ["ses-1", "ses-2", "ses-1"]


# ---------------------------------------------------------------------------------------- default, list
def test_collect_without_measures_reads_aseg_and_aparc(tree, capsys):
    out = tree / "x.csv"
    assert main(["collect", str(tree / "subjects"), "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out).set_index("fsid")
    s = read_stats(tree / "subjects" / "sub-03" / "stats" / "rh.aparc.stats")
    for meas, col in (("thickness", "ThickAvg"), ("area", "SurfArea"), ("volume", "GrayVol")):
        assert df.at["sub-03", f"rh_insula_{meas}"] == s.table.at["insula", col]
    aseg = read_stats(tree / "subjects" / "sub-03" / "stats" / "aseg.stats")
    assert df.at["sub-03", "Left-Hippocampus"] == aseg.table.at["Left-Hippocampus", "Volume_mm3"]
    assert "EstimatedTotalIntraCranialVol" in df.columns  # the aseg globals come along (left out by harmonize)
    assert not any(c.endswith("_thicknessstd") for c in df.columns)


def test_measures_list_prints_what_subjects_dir_holds(tmp_path, capsys):
    sd = tmp_path / "sd"
    for i in range(3):
        write_subject(sd / f"s{i}", "7.4", seed=i, files=FILES + (["lh.aparc.a2009s.stats", "rh.aparc.a2009s.stats",
                                                                  "brainvol.stats"] if i == 0 else []))
    (sd / "s1" / "stats" / "lh.w-g.pct.stats").write_text(
        "# Title Segmentation Statistics\n# ColHeaders Index SegId NVertices Area_mm2 StructName Mean StdDev\n")
    (sd / "fsaverage" / "surf").mkdir(parents=True)
    assert main(["collect", str(sd), "--measures", "list"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    assert "3 run(s)" in out and "template: 1" in out
    assert rows["aseg"].split()[1] == "3/3" and "aseg (volumes); also aseg.mean" in rows["aseg"]
    assert rows["aparc"].split()[1] == "3/3" and "aparc (thickness, area, volume)" in rows["aparc"]
    assert rows["aparc.a2009s"].split()[1] == "1/3"
    assert rows["brainvol"].split()[1] == "1/3"
    assert "not read by featharm collect" in rows["w-g.pct"]
    assert "default (no --measures): aseg aparc" in out
    assert not list(tmp_path.glob("*.csv"))  # nothing written


@pytest.mark.parametrize("argv, words", [
    ([], "needs --out TABLE (or --measures list"),
    (["--measures", "list", "aseg", "--out", "x.csv"], "give it alone"),
])
def test_collect_refusals(tree, capsys, argv, words):
    assert main(["collect", str(tree / "subjects"), *argv]) == 2
    assert words in capsys.readouterr().err
