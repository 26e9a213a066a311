"""Whole SUBJECTS_DIRs: :func:`scan_subjects_dir` tells what each directory is, :func:`collect_subjects`
reads the stats files of every run into one table, :func:`list_measures` tells what it can read there."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...exceptions import DuplicateIndexError, FreeSurferWarning, InputError, MissingStatsError, StatsFileError, warn
from .._common import fmt_list
from ._names import STRUCTURE_RENAMES
from ._sources import _parse_measures, _values_from_parsed
from .ids import parse_fsid
from .stats_file import _major, _parse, _version_from_cvs


#: Directory names under SUBJECTS_DIR that are templates, not subjects (fnmatch patterns).
DEFAULT_TEMPLATES = ("fsaverage*", "cvs_avg35*", "V1_average", "mni305", "lh.EC_average", "rh.EC_average")


def scan_subjects_dir(subjects_dir, templates=DEFAULT_TEMPLATES, id_pattern: str | None = None) -> pd.DataFrame:
    """List the directories of a SUBJECTS_DIR and tell what each one is.

    Parameters
    ----------
    subjects_dir : str or path-like
    templates : sequence of str
        fnmatch patterns of template directories to skip (default ``fsaverage*``, ``cvs_avg35*``, ...).
    id_pattern : str, optional
        See :func:`parse_fsid`.

    Returns
    -------
    pandas.DataFrame
        One row per directory, indexed by its name (``fsid``), with columns ``fs_kind`` (``"cross"``,
        ``"long"`` for ``TP.long.BASE`` runs, ``"base"`` for within-subject templates, ``"template"``,
        ``"other"`` for directories that are not FreeSurfer subjects), ``subject``, ``timepoint`` and ``path``.
    """
    import fnmatch

    root = Path(subjects_dir)
    if not root.is_dir():
        raise InputError(f"SUBJECTS_DIR {str(root)!r} does not exist or is not a directory.")
    entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir()),
                     key=lambda e: e.name)
    bases = {e.name.split(".long.", 1)[1] for e in entries if ".long." in e.name}
    rows = []
    for e in entries:
        name, p = e.name, Path(e.path)
        info = parse_fsid(name, id_pattern) if ".long." in name else {"subject": name, "timepoint": None}
        if any(fnmatch.fnmatchcase(name, t) for t in templates):
            kind = "template"
        elif ".long." in name:
            kind = "long"
        elif name in bases or (p / "base-tps").exists():
            kind = "base"
        elif not any((p / d).is_dir() for d in ("stats", "mri", "surf", "scripts", "label")):
            kind = "other"
        else:
            kind = "cross"
            info = parse_fsid(name, id_pattern)
        rows.append({"fsid": name, "fs_kind": kind, "subject": info["subject"], "timepoint": info["timepoint"],
                     "path": str(p)})
    return pd.DataFrame(rows, columns=["fsid", "fs_kind", "subject", "timepoint", "path"]).set_index("fsid")


def collect_subjects(subjects_dir, measures=("aseg", "aparc"), *, hemis=("lh", "rh"), runs: str = "all",
                     on_missing: str = "raise", normalize_names: bool = False, subjects=None,
                     templates=DEFAULT_TEMPLATES, id_pattern: str | None = None,
                     index: str = "fsid") -> pd.DataFrame:
    """Collect FreeSurfer measures of every subject in one or more SUBJECTS_DIRs into one table.

    Parameters
    ----------
    subjects_dir : path-like or list of path-like
        SUBJECTS_DIR(s); their subject ids must not repeat.
    measures : sequence of str, default ("aseg", "aparc")
        What to collect, as file kind and measure:

        * ``"aseg"``: aseg volumes (mm^3), one column per structure named as asegstats2table does
          (``Left-Hippocampus``), plus the aseg ``# Measure`` globals (``BrainSegVol``, ``lhCortexVol``,
          ``EstimatedTotalIntraCranialVol`` ...; mm^3, ratios and hole counts unitless).
          ``"aseg.mean"``/``"aseg.std"``/``"aseg.nvoxels"``: intensity mean/sd (MR units) or voxel counts,
          columns ``<structure>_<meas>``.
        * ``"wmparc"``: wmparc volumes (mm^3), columns ``wm-lh-bankssts`` ...
        * ``"brainvol"``: the ``brainvol.stats`` globals (FreeSurfer >= 6) not already given by ``"aseg"``.
        * ``"<parc>.<meas>"`` for parc ``aparc``, ``aparc.a2009s``, ``aparc.DKTatlas``, ``aparc.pial``,
          ``BA_exvivo`` ... and meas ``thickness`` (mm), ``area`` (mm^2), ``volume`` (mm^3), ``thicknessstd``,
          ``meancurv``, ``gauscurv``, ``foldind``, ``curvind``: both hemispheres, columns as aparcstats2table
          names them (``lh_bankssts_thickness``), plus ``lh_MeanThickness_thickness`` (thickness) and
          ``lh_WhiteSurfArea_area`` (area). A bare ``"<parc>"`` means thickness, area and volume.
    hemis : tuple, default ("lh", "rh")
    runs : {"all", "cross", "long"}, default "all"
        Which runs to collect: cross-sectional, longitudinal (``TP.long.BASE``) or both. Base (within-subject
        template) directories, templates such as ``fsaverage``, and directories that are not FreeSurfer
        subjects are never collected; they are listed in ``df.attrs["featharm"]["skipped"]``.
    on_missing : {"raise", "warn", "drop"}, default "raise"
        What to do with subjects lacking a stats file, or lacking structures other subjects have:
        raise :class:`~featharm.exceptions.MissingStatsError` naming them; keep them with NaN in the missing
        cells (``"warn"``); or leave them out (``"drop"``). Both of the latter warn with the list.
    normalize_names : bool, default False
        Give structures renamed between FreeSurfer versions their 7.x name (:data:`STRUCTURE_RENAMES`);
        renames are listed in ``df.attrs["featharm"]["renamed"]``.
    subjects : sequence of str, optional
        Collect only these ids (each must exist).
    templates : sequence of str
        fnmatch patterns of template directories to skip.
    id_pattern : str, optional
        Regular expression with named groups ``subject`` (and ``timepoint``) to parse ids (see
        :func:`parse_fsid`).
    index : {"fsid", "subject"}, default "fsid"
        Index the rows by FreeSurfer id, or by ``subject`` (a (``subject``, ``timepoint``) MultiIndex when
        any run has a time point; ``fsid`` then becomes a column). ``"subject"`` requires those to be unique.

    Returns
    -------
    pandas.DataFrame
        One row per run, indexed by the FreeSurfer id (index name ``fsid``, sorted), with columns ``subject``,
        ``timepoint`` (None for cross-sectional runs unless the id is ``sub-X_ses-Y``), ``fs_kind``
        (``"cross"``/``"long"``), then the measures as float64, exactly as written in the files.
        ``df.attrs["featharm"]`` holds ``versions`` (id -> FreeSurfer version), ``missing``, ``skipped`` and
        ``renamed``.

    Raises
    ------
    MissingStatsError
        Missing files or structures with ``on_missing="raise"``.
    StatsFileError
        A malformed, truncated or empty stats file (file and line named).
    DuplicateIndexError
        The same id in two SUBJECTS_DIRs.
    """
    hemis = _check_options(on_missing, index, runs, hemis)
    sources = _parse_measures(measures, hemis)
    dirs = [subjects_dir] if isinstance(subjects_dir, (str, os.PathLike)) else list(subjects_dir)
    chosen, skipped = _choose_runs(dirs, runs, subjects, templates, id_pattern)
    got = _read_runs(chosen, sources, normalize_names)
    _check_files_found(chosen, got, sources)
    values = _value_matrix(got)
    feats = pd.DataFrame(values, index=pd.Index(chosen.index, name="fsid"), columns=list(got.file_of_col))
    _warn_mixed_versions(got.versions)
    feats, missing = _handle_missing(feats, values, chosen.index, got, on_missing)
    out = _assemble(chosen, feats)
    out.attrs["featharm"] = {
        "subjects_dir": [str(d) for d in dirs], "measures": [s.token for s in sources],
        "versions": got.versions, "missing": missing, "skipped": skipped, "renamed": got.renamed,
    }
    if index == "subject":
        out = _index_by_subject(out)
    return out


# ---------------------------------------------------------------- collect_subjects, step by step
def _check_options(on_missing, index, runs, hemis) -> tuple:
    """Refuse unknown option values; returns ``hemis`` as a tuple."""
    if on_missing not in ("raise", "warn", "drop"):
        raise InputError(f"on_missing must be one of ['raise', 'warn', 'drop'], not {on_missing!r}.")
    if index not in ("fsid", "subject"):
        raise InputError(f"index must be 'fsid' or 'subject', not {index!r}.")
    if runs not in ("all", "cross", "long"):
        raise InputError(f"runs must be one of ['all', 'cross', 'long'], not {runs!r}.")
    hemis = tuple(hemis)
    bad = [h for h in hemis if h not in ("lh", "rh")]
    if bad or not hemis:
        raise InputError(f"hemis must be 'lh' and/or 'rh', not {list(hemis)!r}.")
    return hemis


def _choose_runs(dirs, runs, subjects, templates, id_pattern) -> tuple[pd.DataFrame, dict]:
    """Scan the SUBJECTS_DIRs and keep the runs to collect.

    Returns the chosen rows of the scan (index ``fsid``, columns ``fs_kind``, ``subject``, ``timepoint``,
    ``path``, ``subjects_dir``) and the directories skipped, by reason.
    """
    scans = []
    for d in dirs:
        sc = scan_subjects_dir(d, templates=templates, id_pattern=id_pattern)
        sc["subjects_dir"] = str(d)
        scans.append(sc)
    scan = pd.concat(scans) if len(scans) > 1 else scans[0]
    if scan.index.has_duplicates:
        dup = scan.index[scan.index.duplicated()][0]
        raise DuplicateIndexError(
            f"subject {dup!r} is in more than one SUBJECTS_DIR ({fmt_list(scan.loc[[dup], 'path'])}); ids must "
            "be unique: rename one or collect the directories separately."
        )
    wanted = {"all": ("cross", "long"), "cross": ("cross",), "long": ("long",)}[runs]
    skipped = {k: list(scan.index[scan["fs_kind"] == k]) for k in ("base", "template", "other")}
    skipped["excluded_runs"] = list(scan.index[scan["fs_kind"].isin({"cross", "long"} - set(wanted))])
    chosen = scan[scan["fs_kind"].isin(wanted)]
    if subjects is not None:
        subjects = [str(s) for s in subjects]
        unknown = [s for s in subjects if s not in scan.index]
        if unknown:
            raise InputError(f"subjects not found in {fmt_list(dirs, 3)}: {fmt_list(unknown)}.")
        not_runs = [f"{s} ({scan.at[s, 'fs_kind']})" for s in subjects if s not in chosen.index]
        if not_runs:
            raise InputError(f"not collected with runs={runs!r}: {fmt_list(not_runs)}; bases, templates and "
                             "non-subject folders are never collected.")
        chosen = chosen.loc[subjects]
    if len(chosen) == 0:
        raise InputError(
            f"no {' or '.join(wanted)} FreeSurfer subjects found in {fmt_list(dirs, 3)} (skipped: "
            f"{ {k: len(v) for k, v in skipped.items() if v} })."
        )
    return chosen, skipped


@dataclass
class _Read:
    """What :func:`_read_runs` read from the stats files of the chosen runs."""

    records: list = field(default_factory=list)        # per run, in order: column -> value
    versions: dict = field(default_factory=dict)       # fsid -> FreeSurfer version (of its first file read)
    missing_files: dict = field(default_factory=dict)  # fsid -> ["stats/<file>", ...] not found
    renamed: dict = field(default_factory=dict)        # old -> new names applied (normalize_names)
    file_of_col: dict = field(default_factory=dict)    # column -> "stats/<file>" that first gave it, in column order


def _read_runs(chosen: pd.DataFrame, sources, normalize_names: bool) -> _Read:
    """Read every chosen run's stats files, run by run."""
    got = _Read()
    for fsid, row in zip(chosen.index, chosen.itertuples(index=False)):
        got.records.append(_read_run(fsid, Path(row.path) / "stats", sources, normalize_names, got))
    return got


def _read_run(fsid, stats_dir: Path, sources, normalize_names: bool, got: _Read) -> dict:
    """The values of one run (column -> value); missing files, versions, renames and columns go into ``got``."""
    rec: dict = {}
    cache: dict = {}
    for src in sources:
        for fi, fname in enumerate(src.files):
            fpath = stats_dir / fname
            if fname not in cache:
                try:
                    cache[fname] = _parse(fpath)
                except StatsFileError:
                    if not fpath.exists():
                        cache[fname] = None
                    else:
                        raise
            parsed = cache[fname]
            if parsed is None:
                lst = got.missing_files.setdefault(fsid, [])
                if f"stats/{fname}" not in lst:
                    lst.append(f"stats/{fname}")
                continue
            if fsid not in got.versions:
                got.versions[fsid] = _version_from_cvs(parsed[0].get("cvs_version"))
            part: dict = {}
            _values_from_parsed(parsed, src, src.hemis[fi] if src.hemis else None, normalize_names,
                                got.renamed, fpath, part)
            for c, v in part.items():
                if c in rec:
                    if src.kind == "globals":
                        continue  # aseg (asked for too) already gave this measure
                    if src.kind == "surface" and c.endswith(("_MeanThickness_thickness", "_WhiteSurfArea_area",
                                                               "_PialSurfArea_area")):
                        continue
                    prev = got.file_of_col.get(c)
                    raise InputError(
                        f"column {c!r} comes from both {prev} and stats/{fname} (measures "
                        f"{[s.token for s in sources]}); collect these parcellations separately."
                    )
                rec[c] = v
                if c not in got.file_of_col:
                    got.file_of_col[c] = f"stats/{fname}"
    return rec


def _check_files_found(chosen: pd.DataFrame, got: _Read, sources) -> None:
    """A file no run has means a wrong measure, not missing subjects."""
    if len(chosen) > 1 or not got.file_of_col:
        everyone = set.intersection(*(set(got.missing_files.get(f, ())) for f in chosen.index))
        if everyone:
            found = sorted({p.name[3:-6] for d in chosen["path"][:20] for p in (Path(d) / "stats").glob("?h.*.stats")})
            raise MissingStatsError(
                f"none of the {len(chosen)} subjects has {fmt_list(sorted(everyone), 4)}: check the measures "
                f"{[s.token for s in sources]} (parcellations found: {found or 'none'}; other files: aseg, wmparc, "
                "brainvol)."
            )


def _value_matrix(got: _Read) -> np.ndarray:
    """Runs x columns, float64, NaN where a run has no value."""
    cols = list(got.file_of_col)
    values = np.full((len(got.records), len(cols)), np.nan)
    pos = {c: i for i, c in enumerate(cols)}
    for r, rec in enumerate(got.records):
        if rec:
            idx = np.fromiter((pos[c] for c in rec), dtype=np.intp, count=len(rec))
            values[r, idx] = np.fromiter(rec.values(), dtype=np.float64, count=len(rec))
    return values


def _warn_mixed_versions(versions: dict) -> None:
    majors: dict = {}
    for fsid, v in versions.items():
        majors.setdefault(_major(v) or "unknown", []).append(fsid)
    if len(majors) > 1:
        warn("the subjects were processed with different FreeSurfer versions ("
             + "; ".join(f"{k}: {len(v)} e.g. {fmt_list(v, 2)}" for k, v in sorted(majors.items()))
             + "): version is a batch effect; model it (e.g. as batch) or harmonize within version.",
             FreeSurferWarning)


def _handle_missing(feats: pd.DataFrame, values: np.ndarray, fsids: pd.Index, got: _Read,
                    on_missing: str) -> tuple[pd.DataFrame, list]:
    """Runs lacking a file or columns other runs have: raise, or warn and keep (NaN) or drop them.

    Returns the (possibly reduced) features and the list of runs with missing data.
    """
    missing_files, file_of_col = got.missing_files, got.file_of_col
    cols = list(file_of_col)
    # structures some subjects lack although their file exists
    missing_structs: dict = {}
    nan_rows = np.flatnonzero(np.isnan(values).any(axis=1))
    for r in nan_rows:
        fsid = fsids[r]
        lacking = [c for c in np.array(cols)[np.isnan(values[r])]
                   if not any(file_of_col[c] == mf for mf in missing_files.get(fsid, []))]
        if lacking:
            missing_structs[fsid] = lacking
    missing = []
    for fsid in fsids:
        if fsid in missing_files or fsid in missing_structs:
            missing.append({"fsid": fsid, "files": missing_files.get(fsid, []),
                            "columns": missing_structs.get(fsid, [])})
    if missing:
        parts = []
        if missing_files:
            parts.append(f"{len(missing_files)} of {len(fsids)} subjects lack stats files: "
                         + fmt_list([f"{k} ({', '.join(v)})" for k, v in missing_files.items()], 5))
        if missing_structs:
            old = {c for v in missing_structs.values() for c in v if c in STRUCTURE_RENAMES}
            hint = (" Some are names FreeSurfer changed between versions: pass normalize_names=True "
                    "(--normalize-names)." if old else "")
            parts.append(f"{len(missing_structs)} subjects lack columns other subjects have: "
                         + fmt_list([f"{k} ({fmt_list(v, 3)}; from {file_of_col[v[0]]})"
                                     for k, v in missing_structs.items()], 5) + "." + hint)
        msg = " ".join(parts)
        if on_missing == "raise":
            raise MissingStatsError(
                f"{msg} Pass on_missing='warn' (--on-missing warn) to keep them with NaN in the missing cells, or "
                "'drop' to leave them out; both list them."
            )
        if on_missing == "drop":
            feats = feats.drop(index=[m["fsid"] for m in missing])
            warn(f"left out {len(missing)} subject(s) with missing data: {msg}", FreeSurferWarning)
        else:
            warn(f"kept {len(missing)} subject(s) with NaN for missing data: {msg}", FreeSurferWarning)
    return feats, missing


def _assemble(chosen: pd.DataFrame, feats: pd.DataFrame) -> pd.DataFrame:
    """The id columns of the runs kept, then their features; warns about runs that look repeated."""
    ids = chosen.loc[feats.index, ["subject", "timepoint", "fs_kind"]]
    _warn_repeated_runs(ids)
    out = pd.concat([ids, feats], axis=1)
    out.index.name = "fsid"
    return out


def _warn_repeated_runs(ids: pd.DataFrame) -> None:
    """Two runs of one subject and time point: a re-run, or a time point collected cross and long."""
    key = pd.Series([f"{a}\0{b}\0{c}" for a, b, c in zip(ids["subject"], ids["timepoint"], ids["fs_kind"])],
                    index=ids.index)
    if key.duplicated().any():
        dups = key[key.duplicated(keep=False)]
        groups = [list(g.index) for _k, g in dups.groupby(dups, sort=False)]
        warn("runs parse to the same subject and time point: "
             + "; ".join(" & ".join(g) for g in groups[:5]) + (" ..." if len(groups) > 5 else "")
             + ". Check for duplicated or re-run subjects (or pass id_pattern).", FreeSurferWarning)
    cross_ids = set(ids.index[ids["fs_kind"] == "cross"])
    both = [f for f in ids.index[ids["fs_kind"] == "long"] if f.split(".long.", 1)[0] in cross_ids]
    if both:
        warn(f"{len(both)} time point(s) have both a cross-sectional and a longitudinal run, and both were collected "
             f"(e.g. {fmt_list([f.split('.long.', 1)[0] + ' & ' + f for f in both], 2)}): the same scan counts twice; "
             "pass runs='cross' or runs='long' (--runs) to keep one.", FreeSurferWarning)


def _index_by_subject(df: pd.DataFrame) -> pd.DataFrame:
    """Index a collected table by subject (and time point), keeping ``fsid`` as a column."""
    df = df.reset_index()
    keys = ["subject", "timepoint"] if df["timepoint"].notna().any() else ["subject"]
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        raise DuplicateIndexError(
            f"index='subject': {fmt_list(list(df.loc[dup, 'fsid']), 6)} share a subject"
            f"{' and time point' if len(keys) == 2 else ''}; collect with runs='cross' or runs='long' (a time "
            "point often has both a cross-sectional and a longitudinal run), or keep index='fsid'."
        )
    out = df.set_index(keys)
    out.attrs = df.attrs
    return out


# ---------------------------------------------------------------- what a SUBJECTS_DIR holds
_HEAD_BYTES = 64 * 1024  # enough for the header of any stats file (read at most this much of one per kind)


def _columns_of(path: Path) -> list[str] | None:
    """The ``# ColHeaders`` of a stats file, from its first bytes only (None: no such line there)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in head.splitlines():
        if line.startswith("# ColHeaders"):
            return line.split()[2:]
    return None


def _tokens_for(name: str, example: Path) -> list[str]:
    """The ``measures`` tokens of :func:`collect_subjects` that read the stats file kind ``name`` (``aseg``,
    ``brainvol``, ``wmparc`` or a parcellation such as ``aparc.a2009s``); [] when collect cannot read it."""
    from ._names import APARC_MEASURES, SEG_MEASURES

    cols = _columns_of(example)
    if name == "brainvol":
        return ["brainvol"]
    if name in ("aseg", "wmparc"):
        have = [m for m, c in SEG_MEASURES.items() if cols and c in cols and "StructName" in cols]
        return [name if m == "volume" else f"{name}.{m}" for m in have]
    have = [m for m, c in APARC_MEASURES.items() if cols and c in cols and "StructName" in cols]
    return [f"{name}.{m}" for m in have]


def list_measures(subjects_dir, *, hemis=("lh", "rh"), runs: str = "all", templates=DEFAULT_TEMPLATES,
                  id_pattern: str | None = None) -> pd.DataFrame:
    """What :func:`collect_subjects` can read in one or more SUBJECTS_DIRs: every kind of stats file found,
    in how many of the runs, and the ``measures`` that read it.

    Only the names under each run's ``stats/`` are listed, and the first 64 KB of one file per kind read
    (its ``# ColHeaders`` tell which measures it has); a parcellation counts for a run when it has the
    file of every hemisphere in ``hemis``.

    Returns
    -------
    pandas.DataFrame
        One row per kind (index ``stats``: ``aseg``, ``brainvol``, ``wmparc``, or a parcellation such as
        ``aparc.a2009s`` for its ``?h.<parc>.stats`` files), sorted by name, with columns ``files`` (the
        file names), ``runs`` (how many runs have them), ``of`` (the number of runs) and ``measures``
        (the tokens of ``collect_subjects`` that read it, space-separated; empty when collect cannot read
        it, e.g. ``lh.w-g.pct.stats``). ``df.attrs["featharm"]`` holds ``skipped`` as in
        :func:`collect_subjects`.
    """
    hemis = _check_options("raise", "fsid", runs, hemis)
    dirs = [subjects_dir] if isinstance(subjects_dir, (str, os.PathLike)) else list(subjects_dir)
    chosen, skipped = _choose_runs(dirs, runs, None, templates, id_pattern)
    found: dict = {}  # kind -> {"files": set, "runs": count, "example": path}
    for path in chosen["path"]:
        stats = Path(path) / "stats"
        try:
            names = {e.name for e in os.scandir(stats) if e.name.endswith(".stats") and e.is_file()}
        except OSError:
            continue
        kinds: dict = {}
        for n in names:
            stem = n[: -len(".stats")]
            hemi, _, parc = stem.partition(".")
            if hemi in ("lh", "rh") and parc:
                kinds.setdefault(parc, set()).add(n)
            else:
                kinds.setdefault(stem, set()).add(n)
        for kind, files in kinds.items():
            hemi_files = {f"{h}.{kind}.stats" for h in hemis}
            is_surface = any(f.startswith(("lh.", "rh.")) for f in files)
            complete = hemi_files <= files if is_surface else True
            entry = found.setdefault(kind, {"files": set(), "runs": 0, "example": stats / sorted(files)[0]})
            entry["files"] |= files
            entry["runs"] += int(complete)
    rows = []
    for kind in sorted(found, key=lambda k: (k not in ("aseg", "brainvol", "wmparc"), k.lower())):
        e = found[kind]
        rows.append({"stats": kind, "files": " ".join(sorted(e["files"])), "runs": e["runs"], "of": len(chosen),
                     "measures": " ".join(_tokens_for(kind, e["example"]))})
    out = pd.DataFrame(rows, columns=["stats", "files", "runs", "of", "measures"]).set_index("stats")
    out.attrs["featharm"] = {"skipped": skipped, "subjects_dir": [str(d) for d in dirs]}
    return out
