"""Write synthetic FreeSurfer ``stats/`` files in the exact layouts of FreeSurfer 5.3, 6.0 and 7.4.

Used by the test-suite fixtures and by ``benchmarks/bench_collect.py``. The values are random but plausible
(volumes mm^3, areas mm^2, thickness mm); the headers, ``# Measure`` lines, ``# TableCol`` blocks and the
fixed-width rows follow what ``mri_segstats``, ``mris_anatomical_stats`` and ``mri_brainvol_stats`` write,
including version quirks: FreeSurfer 5.3 writes ``lhCorticalWhiteMatter`` and no ``brainvol.stats``; 5.3/6.0
aparc files lack the comma after ``CortexVol``; 7.x names ``Left-Thalamus`` (``Left-Thalamus-Proper``
before) and adds ``BrainVolStatsFixed`` lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VERSIONS = ("5.3", "6.0", "7.4")

ASEG = [
    (4, "Left-Lateral-Ventricle"), (5, "Left-Inf-Lat-Vent"), (7, "Left-Cerebellum-White-Matter"),
    (8, "Left-Cerebellum-Cortex"), (10, "Left-Thalamus"), (11, "Left-Caudate"), (12, "Left-Putamen"),
    (13, "Left-Pallidum"), (14, "3rd-Ventricle"), (15, "4th-Ventricle"), (16, "Brain-Stem"),
    (17, "Left-Hippocampus"), (18, "Left-Amygdala"), (24, "CSF"), (26, "Left-Accumbens-area"),
    (28, "Left-VentralDC"), (30, "Left-vessel"), (31, "Left-choroid-plexus"), (43, "Right-Lateral-Ventricle"),
    (44, "Right-Inf-Lat-Vent"), (46, "Right-Cerebellum-White-Matter"), (47, "Right-Cerebellum-Cortex"),
    (49, "Right-Thalamus"), (50, "Right-Caudate"), (51, "Right-Putamen"), (52, "Right-Pallidum"),
    (53, "Right-Hippocampus"), (54, "Right-Amygdala"), (58, "Right-Accumbens-area"), (60, "Right-VentralDC"),
    (62, "Right-vessel"), (63, "Right-choroid-plexus"), (72, "5th-Ventricle"), (77, "WM-hypointensities"),
    (78, "Left-WM-hypointensities"), (79, "Right-WM-hypointensities"), (80, "non-WM-hypointensities"),
    (81, "Left-non-WM-hypointensities"), (82, "Right-non-WM-hypointensities"), (85, "Optic-Chiasm"),
    (251, "CC_Posterior"), (252, "CC_Mid_Posterior"), (253, "CC_Central"), (254, "CC_Mid_Anterior"),
    (255, "CC_Anterior"),
]
DK = (
    "bankssts caudalanteriorcingulate caudalmiddlefrontal cuneus entorhinal fusiform inferiorparietal "
    "inferiortemporal isthmuscingulate lateraloccipital lateralorbitofrontal lingual medialorbitofrontal "
    "middletemporal parahippocampal paracentral parsopercularis parsorbitalis parstriangularis pericalcarine "
    "postcentral posteriorcingulate precentral precuneus rostralanteriorcingulate rostralmiddlefrontal "
    "superiorfrontal superiorparietal superiortemporal supramarginal frontalpole temporalpole transversetemporal "
    "insula"
).split()
DKT = [s for s in DK if s not in ("bankssts", "frontalpole", "temporalpole")]
A2009S = (
    "G_and_S_frontomargin G_and_S_occipital_inf G_and_S_paracentral G_and_S_subcentral G_and_S_transv_frontopol "
    "G_and_S_cingul-Ant G_and_S_cingul-Mid-Ant G_and_S_cingul-Mid-Post G_cingul-Post-dorsal G_cingul-Post-ventral "
    "G_cuneus G_front_inf-Opercular G_front_inf-Orbital G_front_inf-Triangul G_front_middle G_front_sup "
    "G_Ins_lg_and_S_cent_ins G_insular_short G_occipital_middle G_occipital_sup G_oc-temp_lat-fusifor "
    "G_oc-temp_med-Lingual G_oc-temp_med-Parahip G_orbital G_pariet_inf-Angular G_pariet_inf-Supramar "
    "G_parietal_sup G_postcentral G_precentral G_precuneus G_rectus G_subcallosal G_temp_sup-G_T_transv "
    "G_temp_sup-Lateral G_temp_sup-Plan_polar G_temp_sup-Plan_tempo G_temporal_inf G_temporal_middle "
    "Lat_Fis-ant-Horizont Lat_Fis-ant-Vertical Lat_Fis-post Pole_occipital Pole_temporal S_calcarine S_central "
    "S_cingul-Marginalis S_circular_insula_ant S_circular_insula_inf S_circular_insula_sup S_collat_transv_ant "
    "S_collat_transv_post S_front_inf S_front_middle S_front_sup S_interm_prim-Jensen S_intrapariet_and_P_trans "
    "S_oc_middle_and_Lunatus S_oc_sup_and_transversal S_occipital_ant S_oc-temp_lat S_oc-temp_med_and_Lingual "
    "S_orbital_lateral S_orbital_med-olfact S_orbital-H_Shaped S_parieto_occipital S_pericallosal S_postcentral "
    "S_precentral-inf-part S_precentral-sup-part S_suborbital S_subparietal S_temporal_inf S_temporal_sup "
    "S_temporal_transverse"
).split()
BA_EXVIVO = ("BA1_exvivo BA2_exvivo BA3a_exvivo BA3b_exvivo BA4a_exvivo BA4p_exvivo BA6_exvivo BA44_exvivo "
             "BA45_exvivo V1_exvivo V2_exvivo MT_exvivo perirhinal_exvivo entorhinal_exvivo").split()
BA_53 = "BA1 BA2 BA3a BA3b BA4a BA4p BA6 BA44 BA45 V1 V2 MT perirhinal".split()

_CVS = {
    "5.3": {"segstats": "$Id: mri_segstats.c,v 1.75.2.9 2013/02/16 00:09:33 greve Exp $",
            "anat": "$Id: mris_anatomical_stats.c,v 1.69.2.1 2013/04/08 20:04:39 greve Exp $",
            "mrisurf": "$Id: mrisurf.c,v 1.693.2.4 2013/05/12 22:28:01 nicks Exp $"},
    "6.0": {"segstats": "$Id: mri_segstats.c,v 1.121 2016/05/31 17:27:11 greve Exp $",
            "anat": "$Id: mris_anatomical_stats.c,v 1.79 2016/03/14 15:15:34 greve Exp $",
            "mrisurf": "$Id: mrisurf.c,v 1.781.2.6 2016/12/27 16:47:14 zkaufman Exp $"},
    "7.4": {"segstats": "7.4.1", "anat": "7.4.1", "mrisurf": "7.4.1"},
}

_TABLECOL_SEG = [
    ("Index", "Index", "NA"), ("SegId", "Segmentation Id", "NA"), ("NVoxels", "Number of Voxels", "unitless"),
    ("Volume_mm3", "Volume", "mm^3"), ("StructName", "Structure Name", "NA"),
    ("normMean", "Intensity normMean", "MR"), ("normStdDev", "Intensity normStdDev", "MR"),
    ("normMin", "Intensity normMin", "MR"), ("normMax", "Intensity normMax", "MR"),
    ("normRange", "Intensity normRange", "MR"),
]
_TABLECOL_SURF = [
    ("StructName", "Structure Name", "NA"), ("NumVert", "Number of Vertices", "unitless"),
    ("SurfArea", "Surface Area", "mm^2"), ("GrayVol", "Gray Matter Volume", "mm^3"),
    ("ThickAvg", "Average Thickness", "mm"), ("ThickStd", "Thickness StdDev", "mm"),
    ("MeanCurv", "Integrated Rectified Mean Curvature", "mm^-1"),
    ("GausCurv", "Integrated Rectified Gaussian Curvature", "mm^-2"),
    ("FoldInd", "Folding Index", "unitless"), ("CurvInd", "Intrinsic Curvature Index", "unitless"),
]


def _tablecols(spec) -> list[str]:
    out = []
    for i, (h, f, u) in enumerate(spec, 1):
        out += [f"# TableCol {i:2d} ColHeader {h}", f"# TableCol {i:2d} FieldName {f}", f"# TableCol {i:2d} Units     {u}"]
    return out


def _globals(rng, version: str) -> dict:
    """Consistent global volumes (mm^3) for one subject."""
    lhc, rhc = rng.normal(240000, 20000), rng.normal(241000, 20000)
    lhw, rhw = rng.normal(215000, 20000), rng.normal(216000, 20000)
    sub = rng.normal(56000, 4000)
    etiv = rng.normal(1500000, 120000)
    vent = rng.normal(20000, 6000)
    cortex, wm = lhc + rhc, lhw + rhw
    supra = cortex + wm + sub * 0.8 + vent
    bseg = supra + rng.normal(150000, 8000)
    return {"lhc": lhc, "rhc": rhc, "cortex": cortex, "lhw": lhw, "rhw": rhw, "wm": wm, "sub": sub,
            "gray": cortex + sub + rng.normal(100000, 5000), "supra": supra, "supra_nv": supra - vent,
            "bseg": bseg, "bseg_nv": bseg - vent, "bseg_nvs": bseg - vent - rng.uniform(0, 800),
            "mask": bseg * 1.4, "etiv": etiv, "vent": vent, "lhholes": int(rng.integers(0, 60)),
            "rhholes": int(rng.integers(0, 60))}


def _aseg_measures(g: dict, version: str) -> list[str]:
    f = "{:.6f}"
    holes = g["lhholes"] + g["rhholes"]
    m = []
    if version != "5.3":
        m.append("# BrainVolStatsFixed see surfer.nmr.mgh.harvard.edu/fswiki/BrainVolStatsFixed")
    m += [
        f"# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, {f.format(g['bseg'])}, mm^3",
        f"# Measure BrainSegNotVent, BrainSegVolNotVent, Brain Segmentation Volume Without Ventricles, "
        f"{f.format(g['bseg_nv'])}, mm^3",
    ]
    if version == "5.3":
        m.append(f"# Measure BrainSegNotVentSurf, BrainSegVolNotVentSurf, Brain Segmentation Volume Without "
                 f"Ventricles from Surf, {f.format(g['bseg_nvs'])}, mm^3")
    else:
        m.append(f"# Measure VentricleChoroidVol, VentricleChoroidVol, Volume of ventricles and choroid plexus, "
                 f"{f.format(g['vent'])}, mm^3")
    wmname = "Cortical" if version == "5.3" else "Cerebral"
    m += [
        f"# Measure lhCortex, lhCortexVol, Left hemisphere cortical gray matter volume, {f.format(g['lhc'])}, mm^3",
        f"# Measure rhCortex, rhCortexVol, Right hemisphere cortical gray matter volume, {f.format(g['rhc'])}, mm^3",
        f"# Measure Cortex, CortexVol, Total cortical gray matter volume, {f.format(g['cortex'])}, mm^3",
        f"# Measure lh{wmname}WhiteMatter, lh{wmname}WhiteMatterVol, Left hemisphere {wmname.lower()} white "
        f"matter volume, {f.format(g['lhw'])}, mm^3",
        f"# Measure rh{wmname}WhiteMatter, rh{wmname}WhiteMatterVol, Right hemisphere {wmname.lower()} white "
        f"matter volume, {f.format(g['rhw'])}, mm^3",
        f"# Measure {wmname}WhiteMatter, {wmname}WhiteMatterVol, Total {wmname.lower()} white matter volume, "
        f"{f.format(g['wm'])}, mm^3",
        f"# Measure SubCortGray, SubCortGrayVol, Subcortical gray matter volume, {f.format(g['sub'])}, mm^3",
        f"# Measure TotalGray, TotalGrayVol, Total gray matter volume, {f.format(g['gray'])}, mm^3",
        f"# Measure SupraTentorial, SupraTentorialVol, Supratentorial volume, {f.format(g['supra'])}, mm^3",
        f"# Measure SupraTentorialNotVent, SupraTentorialVolNotVent, Supratentorial volume, "
        f"{f.format(g['supra_nv'])}, mm^3",
    ]
    if version == "5.3":
        m.append(f"# Measure SupraTentorialNotVentVox, SupraTentorialVolNotVentVox, Supratentorial volume voxel "
                 f"count, {f.format(round(g['supra_nv']))}, mm^3")
    m += [
        f"# Measure Mask, MaskVol, Mask Volume, {f.format(g['mask'])}, mm^3",
        f"# Measure BrainSegVol-to-eTIV, BrainSegVol-to-eTIV, Ratio of BrainSegVol to eTIV, "
        f"{g['bseg'] / g['etiv']:.6f}, unitless",
        f"# Measure MaskVol-to-eTIV, MaskVol-to-eTIV, Ratio of MaskVol to eTIV, {g['mask'] / g['etiv']:.6f}, unitless",
        f"# Measure lhSurfaceHoles, lhSurfaceHoles, Number of defect holes in lh surfaces prior to fixing, "
        f"{g['lhholes']}, unitless",
        f"# Measure rhSurfaceHoles, rhSurfaceHoles, Number of defect holes in rh surfaces prior to fixing, "
        f"{g['rhholes']}, unitless",
        f"# Measure SurfaceHoles, SurfaceHoles, Total number of defect holes in surfaces prior to fixing, "
        f"{holes}, unitless",
        f"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
        f"{f.format(g['etiv'])}, mm^3",
    ]
    return m


def _seg_header(subject: str, version: str, seg: str, sd: str) -> list[str]:
    lut = "ASegStatsLUT.txt" if seg == "aseg" else "WMParcStatsLUT.txt"
    home = f"/usr/local/freesurfer/{'7.4.1' if version == '7.4' else version}"
    if seg == "aseg":
        cmd = (f"mri_segstats {'--seed 1234 ' if version == '7.4' else ''}--seg mri/aseg.mgz --sum stats/aseg.stats "
               "--pv mri/norm.mgz --empty --brainmask mri/brainmask.mgz --brain-vol-from-seg --excludeid 0 "
               "--excl-ctxgmwm --supratent --subcortgray --in mri/norm.mgz --in-intensity-name norm "
               "--in-intensity-units MR --etiv --surf-wm-vol --surf-ctx-vol --totalgray --euler "
               f"--ctab {home}/{lut} --subject {subject} ")
    else:
        cmd = (f"mri_segstats {'--seed 1234 ' if version == '7.4' else ''}--seg mri/wmparc.mgz --sum "
               "stats/wmparc.stats --pv mri/norm.mgz --excludeid 0 --brainmask mri/brainmask.mgz --in mri/norm.mgz "
               f"--in-intensity-name norm --in-intensity-units MR --subject {subject} --surf-wm-vol "
               f"--ctab {home}/{lut} --etiv ")
    return [
        "# Title Segmentation Statistics ", "# ", "# generating_program mri_segstats",
        f"# cvs_version {_CVS[version]['segstats']}", f"# cmdline {cmd}", "# sysname  Linux",
        "# hostname synth-host", "# machine  x86_64", "# user     featharm", "# anatomy_type volume", "# ",
        f"# SUBJECTS_DIR {sd}", f"# subjectname {subject}",
    ]


def _seg_trailer(seg: str, version: str, vox: float, nrows: int, exclude: str) -> list[str]:
    lut = "ASegStatsLUT.txt" if seg == "aseg" else "WMParcStatsLUT.txt"
    home = f"/usr/local/freesurfer/{'7.4.1' if version == '7.4' else version}"
    out = [
        f"# SegVolFile mri/{seg}.mgz ", "# SegVolFileTimeStamp  2024/01/01 10:00:00 ", f"# ColorTable {home}/{lut} ",
        "# ColorTableTimeStamp 2023/06/13 23:39:07 ", "# InVolFile  mri/norm.mgz ",
        "# InVolFileTimeStamp  2024/01/01 09:00:00 ", "# InVolFrame 0 ", "# PVVolFile  mri/norm.mgz ",
        "# PVVolFileTimeStamp  2024/01/01 09:00:00 ",
    ]
    if seg == "aseg":
        out.append("# Excluding Cortical Gray and White Matter")
    out.append(f"# ExcludeSegId {exclude} ")
    if seg == "wmparc":
        out.append("# Only reporting non-empty segmentations")
    out.append(f"# VoxelVolume_mm3 {vox:g} ")
    out += _tablecols(_TABLECOL_SEG)
    out += [f"# NRows {nrows} ", "# NTableCols 10 ",
            "# ColHeaders  Index SegId NVoxels Volume_mm3 StructName normMean normStdDev normMin normMax normRange  "]
    return out


def _seg_rows(rng, structs, vox: float, typical: dict) -> tuple[list[str], dict]:
    rows, vols = [], {}
    for i, (sid, name) in enumerate(structs, 1):
        base = typical.get(name, 1500.0)
        nvox = 0 if base == 0 else int(max(1, rng.normal(base, base * 0.12)) / vox)
        vol = nvox * vox
        mean = 0.0 if nvox == 0 else rng.uniform(30, 105)
        sd = 0.0 if nvox == 0 else rng.uniform(3, 15)
        lo = 0.0 if nvox == 0 else float(int(mean - 3 * sd))
        hi = 0.0 if nvox == 0 else float(int(mean + 3 * sd))
        rows.append(f"{i:3d} {sid:3d} {nvox:9d} {vol:10.1f}  {name:<30s} {mean:10.4f} {sd:10.4f} "
                    f"{lo:10.4f} {hi:10.4f} {hi - lo:10.4f} ")
        vols[name] = float(f"{vol:.1f}")
    return rows, vols


_TYPICAL_ASEG = {
    "Left-Lateral-Ventricle": 9000, "Right-Lateral-Ventricle": 8500, "Left-Cerebellum-Cortex": 55000,
    "Right-Cerebellum-Cortex": 55000, "Left-Cerebellum-White-Matter": 14000, "Right-Cerebellum-White-Matter": 14000,
    "Left-Thalamus": 7500, "Right-Thalamus": 7300, "Left-Caudate": 3500, "Right-Caudate": 3600,
    "Left-Putamen": 5000, "Right-Putamen": 5000, "Left-Pallidum": 1900, "Right-Pallidum": 1900,
    "Left-Hippocampus": 4200, "Right-Hippocampus": 4300, "Left-Amygdala": 1600, "Right-Amygdala": 1700,
    "Brain-Stem": 21000, "Left-VentralDC": 4000, "Right-VentralDC": 4000, "CSF": 1100, "WM-hypointensities": 1500,
    "5th-Ventricle": 0, "Left-WM-hypointensities": 0, "Right-WM-hypointensities": 0, "non-WM-hypointensities": 0,
    "Left-non-WM-hypointensities": 0, "Right-non-WM-hypointensities": 0, "Left-vessel": 40, "Right-vessel": 40,
    "Optic-Chiasm": 150, "Left-Inf-Lat-Vent": 300, "Right-Inf-Lat-Vent": 300, "3rd-Ventricle": 1000,
    "4th-Ventricle": 1500, "Left-Accumbens-area": 600, "Right-Accumbens-area": 600,
}


def write_aseg(path, subject: str, version: str, rng, g: dict | None = None, sd: str = "/data/subjects") -> dict:
    """Write ``aseg.stats``; returns {structure: volume as written} plus the globals under ``"_globals"``."""
    g = g or _globals(rng, version)
    vox = 1.0 if version == "5.3" else 0.343 if version == "7.4" else 1.0
    structs = [(sid, name + ("-Proper" if name.endswith("Thalamus") and version != "7.4" else ""))
               for sid, name in ASEG]
    typical = {**_TYPICAL_ASEG, "Left-Thalamus-Proper": 7500, "Right-Thalamus-Proper": 7300}
    rows, vols = _seg_rows(rng, structs, vox, typical)
    lines = _seg_header(subject, version, "aseg", sd) + _aseg_measures(g, version)
    lines += _seg_trailer("aseg", version, vox, len(rows), "0 2 3 41 42") + rows
    _write(path, lines)
    vols["_globals"] = g
    return vols


def write_wmparc(path, subject: str, version: str, rng, g: dict, sd: str = "/data/subjects") -> dict:
    structs = [(3001 + i, f"wm-lh-{s}") for i, s in enumerate(DK)] + [(4001 + i, f"wm-rh-{s}") for i, s in enumerate(DK)]
    structs += [(5001, "Left-UnsegmentedWhiteMatter"), (5002, "Right-UnsegmentedWhiteMatter")]
    vox = 0.343 if version == "7.4" else 1.0
    typical = {n: (28000 if "Unsegmented" in n else 4000) for _, n in structs}
    rows, vols = _seg_rows(rng, structs, vox, typical)
    wm = "Cortical" if version == "5.3" else "Cerebral"
    f = "{:.6f}"
    lines = _seg_header(subject, version, "wmparc", sd)
    if version != "5.3":
        lines += ["# BrainVolStatsFixed see surfer.nmr.mgh.harvard.edu/fswiki/BrainVolStatsFixed",
                  f"# Measure VentricleChoroidVol, VentricleChoroidVol, Volume of ventricles and choroid plexus, "
                  f"{f.format(g['vent'])}, mm^3"]
    lines += [
        f"# Measure lh{wm}WhiteMatter, lh{wm}WhiteMatterVol, Left hemisphere {wm.lower()} white matter volume, "
        f"{f.format(g['lhw'])}, mm^3",
        f"# Measure rh{wm}WhiteMatter, rh{wm}WhiteMatterVol, Right hemisphere {wm.lower()} white matter volume, "
        f"{f.format(g['rhw'])}, mm^3",
        f"# Measure {wm}WhiteMatter, {wm}WhiteMatterVol, Total {wm.lower()} white matter volume, "
        f"{f.format(g['wm'])}, mm^3",
        f"# Measure Mask, MaskVol, Mask Volume, {f.format(g['mask'])}, mm^3",
        f"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
        f"{f.format(g['etiv'])}, mm^3",
    ]
    lines += _seg_trailer("wmparc", version, vox, len(rows), "0") + rows
    _write(path, lines)
    return vols


def write_brainvol(path, g: dict) -> dict:
    """``brainvol.stats`` (FreeSurfer >= 6): only ``# Measure`` lines, 12 decimals."""
    f = "{:.12f}"
    spec = [
        ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", g["bseg"]),
        ("BrainSegNotVent", "BrainSegVolNotVent", "Brain Segmentation Volume Without Ventricles", g["bseg_nv"]),
        ("SupraTentorial", "SupraTentorialVol", "Supratentorial volume", g["supra"]),
        ("SupraTentorialNotVent", "SupraTentorialVolNotVent", "Supratentorial volume", g["supra_nv"]),
        ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", g["sub"]),
        ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", g["lhc"]),
        ("rhCortex", "rhCortexVol", "Right hemisphere cortical gray matter volume", g["rhc"]),
        ("Cortex", "CortexVol", "Total cortical gray matter volume", g["cortex"]),
        ("TotalGray", "TotalGrayVol", "Total gray matter volume", g["gray"]),
        ("lhCerebralWhiteMatter", "lhCerebralWhiteMatterVol", "Left hemisphere cerebral white matter volume", g["lhw"]),
        ("rhCerebralWhiteMatter", "rhCerebralWhiteMatterVol", "Right hemisphere cerebral white matter volume", g["rhw"]),
        ("CerebralWhiteMatter", "CerebralWhiteMatterVol", "Total cerebral white matter volume", g["wm"]),
        ("Mask", "MaskVol", "Mask Volume", g["mask"]),
        ("SupraTentorialNotVentVox", "SupraTentorialVolNotVentVox", "Supratentorial volume voxel count",
         float(round(g["supra_nv"]))),
        ("BrainSegNotVentSurf", "BrainSegVolNotVentSurf", "Brain Segmentation Volume Without Ventricles from Surf",
         g["bseg_nvs"]),
        ("VentricleChoroidVol", "VentricleChoroidVol", "Volume of ventricles and choroid plexus", g["vent"]),
    ]
    lines = [f"# Measure {a}, {b}, {c}, {f.format(v)}, mm^3" for a, b, c, v in spec]
    _write(path, lines)
    return {b: float(f.format(v)) for _a, b, _c, v in spec}


def write_surface(path, subject: str, version: str, hemi: str, parc: str, rng, g: dict,
                  structures=None, surf: str = "white", sd: str = "/data/subjects") -> dict:
    """Write ``?h.<parc>.stats``; returns {structure: {column: value as written}} and ``"_measures"``."""
    if structures is None:
        structures = {"aparc": DK, "aparc.pial": DK, "aparc.DKTatlas": DKT, "aparc.a2009s": A2009S,
                      "BA_exvivo": BA_EXVIVO, "BA": BA_53}[parc]
    annot = parc[:-5] if parc.endswith(".pial") else parc
    numvert = int(rng.normal(140000, 12000))
    white = float(f"{rng.normal(90000, 8000):.1f}")
    meanthick = float(f"{rng.normal(2.45, 0.1):.5f}")
    ctab = "aparc.annot.ctab" if annot == "aparc" else f"{annot}.ctab" if annot.startswith("BA") \
        else f"aparc.annot.{annot.split('.', 1)[1]}.ctab" if "." in annot else f"{annot}.annot.ctab"
    cmd = (f"mris_anatomical_stats {'' if version == '5.3' else '-th3 '}-mgz -cortex ../label/{hemi}.cortex.label -f ../stats/{hemi}.{parc}.stats "
           f"-b -a ../label/{hemi}.{annot}.annot -c ../label/{ctab} {subject} {hemi} {surf} ")
    lines = [
        "# Table of FreeSurfer cortical parcellation anatomical statistics ", "# ",
        "# CreationTime 2024/01/01-10:00:00-GMT", "# generating_program mris_anatomical_stats",
        f"# cvs_version {_CVS[version]['anat']}", f"# mrisurf.c-cvs_version {_CVS[version]['mrisurf']}",
        f"# cmdline {cmd}", "# sysname  Linux", "# hostname synth-host", "# machine  x86_64", "# user     featharm",
        "# ", f"# SUBJECTS_DIR {sd}", "# anatomy_type surface", f"# subjectname {subject}", f"# hemi {hemi}",
        f"# AnnotationFile ../label/{hemi}.{annot}.annot", "# AnnotationFileTimeStamp 2024/01/01 09:30:00",
        f"# Measure Cortex, NumVert, Number of Vertices, {numvert}, unitless",
    ]
    measures = {"NumVert": float(numvert)}
    if surf == "pial":
        lines.append(f"# Measure Cortex, PialSurfArea, Pial Surface Total Area, {white * 1.2:g}, mm^2")
        measures["PialSurfArea"] = float(f"{white * 1.2:g}")
    else:
        lines.append(f"# Measure Cortex, WhiteSurfArea, White Surface Total Area, {white:g}, mm^2")
        measures["WhiteSurfArea"] = float(f"{white:g}")
    if not parc.startswith("BA"):
        lines.append(f"# Measure Cortex, MeanThickness, Mean Thickness, {meanthick:g}, mm")
        measures["MeanThickness"] = float(f"{meanthick:g}")
    if version == "7.4":
        lines.append("# BrainVolStatsFixed see surfer.nmr.mgh.harvard.edu/fswiki/BrainVolStatsFixed")
    if not (version == "5.3" and parc == "BA"):
        sep = "," if version == "7.4" else ""  # 5.3 and 6.0 lack this comma
        lines += [
            f"# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, {g['bseg']:.6f}, mm^3",
            f"# Measure BrainSegNotVent, BrainSegVolNotVent, Brain Segmentation Volume Without Ventricles, "
            f"{g['bseg_nv']:.6f}, mm^3",
            f"# Measure BrainSegNotVentSurf, BrainSegVolNotVentSurf, Brain Segmentation Volume Without Ventricles "
            f"from Surf, {g['bseg_nvs']:.6f}, mm^3",
            f"# Measure Cortex, CortexVol{sep} Total cortical gray matter volume, {g['cortex']:.6f}, mm^3",
            f"# Measure SupraTentorial, SupraTentorialVol, Supratentorial volume, {g['supra']:.6f}, mm^3",
            f"# Measure SupraTentorialNotVent, SupraTentorialVolNotVent, Supratentorial volume, "
            f"{g['supra_nv']:.6f}, mm^3",
            f"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
            f"{g['etiv']:.6f}, mm^3",
        ]
    lines.append("# NTableCols 10")
    lines += _tablecols(_TABLECOL_SURF)
    lines.append("# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd CurvInd")
    values = {}
    for s in structures:
        nv = int(rng.uniform(700, 13000))
        area = int(nv * rng.uniform(0.3, 0.75))
        thick = round(rng.normal(2.5, 0.3), 3)
        vol = int(area * thick * rng.uniform(0.9, 1.1))
        tsd = round(rng.uniform(0.35, 0.9), 3)
        mc, gc = round(rng.uniform(0.05, 0.18), 3), round(rng.uniform(0.01, 0.035), 3)
        fi, ci = int(rng.uniform(5, 140)), round(rng.uniform(0.5, 12.5), 1)
        lines.append(f"{s:<40s}{nv:5d}  {area:5d}  {vol:5d} {thick:6.3f} {tsd:5.3f} {mc:9.3f} {gc:9.3f} {fi:8d} {ci:7.1f}")
        values[s] = {"NumVert": nv, "SurfArea": float(area), "GrayVol": float(vol), "ThickAvg": thick,
                     "ThickStd": tsd, "MeanCurv": mc, "GausCurv": gc, "FoldInd": float(fi), "CurvInd": ci}
    _write(path, lines)
    values["_measures"] = measures
    return values


def file_kinds(version: str) -> list[str]:
    """The stats files ``recon-all`` writes in that version (the ones this module can write)."""
    kinds = ["aseg.stats", "wmparc.stats"]
    parcs = ["aparc", "aparc.a2009s"] + (["BA"] if version == "5.3" else
                                         ["aparc.DKTatlas", "aparc.pial", "BA_exvivo"])
    if version != "5.3":
        kinds.append("brainvol.stats")
    kinds += [f"{h}.{p}.stats" for p in parcs for h in ("lh", "rh")]
    return kinds


def write_subject(subject_dir, version: str = "7.4", seed: int = 0, files=None) -> dict:
    """Write a subject's ``stats/`` (and an empty ``mri/``) in the layout of ``version``.

    Parameters
    ----------
    subject_dir : path-like
        ``SUBJECTS_DIR/<id>``.
    version : {"5.3", "6.0", "7.4"}
    seed : int
        Seed of the local random generator (same seed, same files).
    files : list of str, optional
        Which files to write (default :func:`file_kinds` of the version), e.g. ``["aseg.stats",
        "lh.aparc.stats", "rh.aparc.stats"]``.

    Returns
    -------
    dict
        File name -> the values written (for tests that trace values back).
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")
    rng = np.random.default_rng(seed)
    subject_dir = Path(subject_dir)
    subject = subject_dir.name
    sd = str(subject_dir.parent)
    (subject_dir / "stats").mkdir(parents=True, exist_ok=True)
    (subject_dir / "mri").mkdir(exist_ok=True)
    g = _globals(rng, version)
    out = {}
    for fname in files or file_kinds(version):
        p = subject_dir / "stats" / fname
        if fname == "aseg.stats":
            out[fname] = write_aseg(p, subject, version, rng, g, sd)
        elif fname == "wmparc.stats":
            out[fname] = write_wmparc(p, subject, version, rng, g, sd)
        elif fname == "brainvol.stats":
            out[fname] = write_brainvol(p, g)
        else:
            hemi, parc = fname[:2], fname[3:-len(".stats")]
            surf = "pial" if parc.endswith(".pial") else "white"
            out[fname] = write_surface(p, subject, version, hemi, parc, rng, g, surf=surf, sd=sd)
    return out


def _write(path, lines) -> None:
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")
