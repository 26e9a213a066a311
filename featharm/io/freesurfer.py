"""Read FreeSurfer outputs: per-subject ``*.stats`` files, group tables and whole SUBJECTS_DIRs.

Units are FreeSurfer's own, read exactly as written (the decimal text is parsed to the nearest double, as
:func:`float` does; nothing is rescaled):

* volumes (aseg ``Volume_mm3``, aparc ``GrayVol``, ``# Measure`` volumes such as eTIV): mm^3
* surface areas (aparc ``SurfArea``, ``WhiteSurfArea``): mm^2
* cortical thickness (``ThickAvg``, ``ThickStd``, ``MeanThickness``): mm
* intensities (aseg ``normMean`` ...): MR units; curvatures: mm^-1 / mm^-2; indices and ratios: unitless

The layouts read are those of FreeSurfer 5.x, 6.0 and 7.x (FastSurfer writes the same): a header of ``#``
lines (``# Measure name, short name, description, value, units`` lines, ``# TableCol`` units, ``# NRows``),
then ``# ColHeaders`` and whitespace-separated rows.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import DuplicateIndexError, FreeSurferWarning, InputError, MissingStatsError, StatsFileError, warn

__all__ = [
    "StatsFile",
    "read_stats",
    "read_fs_table",
    "read_fs_tables",
    "read_enigma_table",
    "normalize_structure_names",
    "STRUCTURE_RENAMES",
    "APARC_MEASURES",
    "parse_fsid",
    "scan_subjects_dir",
    "collect_subjects",
]

# ------------------------------------------------------------------------------------------ constants
#: aparcstats2table ``--meas`` name -> column of ``?h.<parc>.stats`` (units in brackets).
APARC_MEASURES = {
    "thickness": "ThickAvg",      # mm
    "area": "SurfArea",           # mm^2
    "volume": "GrayVol",          # mm^3
    "thicknessstd": "ThickStd",   # mm
    "meancurv": "MeanCurv",       # mm^-1
    "gauscurv": "GausCurv",       # mm^-2
    "foldind": "FoldInd",         # unitless
    "curvind": "CurvInd",         # unitless
}
#: asegstats2table ``--meas`` name -> column of ``aseg.stats`` / ``wmparc.stats``.
SEG_MEASURES = {"volume": "Volume_mm3", "mean": "normMean", "std": "normStdDev", "nvoxels": "NVoxels"}

#: Names FreeSurfer changed between versions: old (5.x/6.0) -> new (7.x). Applied only on request
#: (``normalize_names=True``). The thalamus label lost its "-Proper" suffix in 7.0 (same label, id 10/49);
#: "CorticalWhiteMatter" global measures became "CerebralWhiteMatter" in 6.0 (renamed because they always
#: covered all cerebral white matter); FreeSurfer 5.1 wrote its eTIV as "IntraCranialVol"/"ICV".
STRUCTURE_RENAMES = {
    "Left-Thalamus-Proper": "Left-Thalamus",
    "Right-Thalamus-Proper": "Right-Thalamus",
    "lhCorticalWhiteMatterVol": "lhCerebralWhiteMatterVol",
    "rhCorticalWhiteMatterVol": "rhCerebralWhiteMatterVol",
    "CorticalWhiteMatterVol": "CerebralWhiteMatterVol",
    "IntraCranialVol": "EstimatedTotalIntraCranialVol",
}

#: Parcellations whose full structure list is fixed, used to flag files with missing rows.
KNOWN_PARCELLATIONS = {
    "aparc": (
        "bankssts caudalanteriorcingulate caudalmiddlefrontal cuneus entorhinal fusiform inferiorparietal "
        "inferiortemporal isthmuscingulate lateraloccipital lateralorbitofrontal lingual medialorbitofrontal "
        "middletemporal parahippocampal paracentral parsopercularis parsorbitalis parstriangularis pericalcarine "
        "postcentral posteriorcingulate precentral precuneus rostralanteriorcingulate rostralmiddlefrontal "
        "superiorfrontal superiorparietal superiortemporal supramarginal frontalpole temporalpole "
        "transversetemporal insula"
    ).split(),
}
KNOWN_PARCELLATIONS["aparc.pial"] = KNOWN_PARCELLATIONS["aparc"]
KNOWN_PARCELLATIONS["aparc.DKTatlas"] = [
    s for s in KNOWN_PARCELLATIONS["aparc"] if s not in ("bankssts", "frontalpole", "temporalpole")
]

#: Directory names under SUBJECTS_DIR that are templates, not subjects (fnmatch patterns).
DEFAULT_TEMPLATES = ("fsaverage*", "cvs_avg35*", "V1_average", "mni305", "lh.EC_average", "rh.EC_average")

_INT_RE = re.compile(r"^[+-]?\d+$")


# ------------------------------------------------------------------------------------------ one file
@dataclass
class StatsFile:
    """The content of one FreeSurfer ``*.stats`` file.

    Attributes
    ----------
    path : pathlib.Path
        The file read.
    kind : str
        ``"aseg"``, ``"wmparc"``, ``"brainvol"``, ``"surface"`` (a cortical parcellation such as
        ``?h.aparc.stats``) or ``"segmentation"`` (another ``mri_segstats`` output).
    hemi : str or None
        ``"lh"``/``"rh"`` for surface files.
    parcellation : str or None
        ``"aparc"``, ``"aparc.a2009s"``, ``"aparc.DKTatlas"``, ``"aparc.pial"``, ``"BA_exvivo"``, ... for surface
        files (from the file name, else from the ``AnnotationFile`` header line).
    header : dict
        Other ``# key value`` header lines (``subjectname``, ``cvs_version``, ``generating_program``, ...).
    measures : pandas.DataFrame
        One row per ``# Measure`` line, indexed by its name as asegstats2table/aparcstats2table name the
        column (the short name, e.g. ``BrainSegVol``; ``MeanThickness``; for eTIV the long name
        ``EstimatedTotalIntraCranialVol``). Columns ``structure``, ``short_name``, ``description``, ``value``
        (float, as written), ``units`` (``mm^3``, ``mm^2``, ``mm``, ``unitless``) and ``line`` (1-based).
    table : pandas.DataFrame
        The ``# ColHeaders`` table indexed by ``StructName`` (empty for ``brainvol.stats``). Integer columns
        (``Index``, ``SegId``, ``NVoxels``, ``NumVert``, ...) are int64, the others float64, as written.
    units : dict
        Column -> units from the ``# TableCol N Units`` lines (surface files: ``SurfArea`` mm^2, ``GrayVol``
        mm^3, ``ThickAvg`` mm).
    version : str or None
        FreeSurfer version: ``cvs_version`` when it is a release number (``7.4.1``), else a guess from the
        program revision date of older ``$Id ...$`` lines (``5.1``, ``5.3``, ``6.0``).
    renamed : dict
        Old -> new names applied by ``normalize_names=True`` (empty otherwise).
    """

    path: Path
    kind: str
    hemi: str | None
    parcellation: str | None
    header: dict
    measures: pd.DataFrame
    table: pd.DataFrame
    units: dict
    version: str | None
    renamed: dict = field(default_factory=dict)

    def measure(self, name: str) -> float:
        """Value of one ``# Measure`` (by column name, short name or structure name)."""
        m = self.measures
        if name in m.index:
            return float(m.at[name, "value"])
        for col in ("short_name", "structure"):
            hit = m.index[m[col] == name]
            if len(hit) == 1:
                return float(m.at[hit[0], "value"])
        raise InputError(f"{str(self.path)!r} has no measure {name!r}; measures present: {list(m.index)}.")


def _version_from_cvs(cvs: str | None) -> str | None:
    if not cvs:
        return None
    cvs = cvs.strip()
    m = re.match(r"^v?(\d+\.\d+(?:\.\d+)?)", cvs)
    if m:
        return m.group(1)
    m = re.search(r"\b(\d{4})/\d{2}/\d{2}\b", cvs)  # "$Id: mri_segstats.c,v 1.75 2011/03/02 ... $"
    if m:
        year = int(m.group(1))
        if year <= 2011:
            return "5.1" if year >= 2010 else "<5.1"
        if year <= 2014:
            return "5.3"
        if year <= 2019:
            return "6.0"
    return None


def _major(version: str | None) -> str | None:
    if version is None:
        return None
    if version.startswith("<"):
        return version
    parts = version.split(".")
    return ".".join(parts[:2]) if parts[0] in ("5",) else parts[0] + ".x"


def _kind_from_name(path: Path) -> tuple[str | None, str | None, str | None]:
    name = path.name
    if name.endswith(".stats"):
        stem = name[: -len(".stats")]
    else:
        stem = name
    if stem in ("aseg", "wmparc", "brainvol"):
        return stem, None, None
    m = re.match(r"^(lh|rh)\.(.+)$", stem)
    if m:
        return "surface", m.group(1), m.group(2)
    return None, None, None


def _check_hemi(path, hemi, header) -> None:
    said = header.get("hemi")
    if hemi and said and said != hemi:
        raise StatsFileError(
            f"{path}: the file name says {hemi} but its header says 'hemi {said}': the file was renamed or copied "
            "from the other hemisphere."
        )


def _measure_column(structure: str, short: str) -> str:
    """The column asegstats2table/aparcstats2table give a ``# Measure`` line."""
    if short in ("eTIV", "ICV"):  # both tools keep the long name for intracranial volume
        return structure
    return short


def _parse(path: Path, text: str | None = None):
    """Parse a stats file into plain Python structures (fast path shared by read_stats and collection)."""
    if text is None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise StatsFileError(f"stats file {str(path)!r} does not exist.") from None
        except IsADirectoryError:
            raise StatsFileError(f"{str(path)!r} is a directory, not a stats file.") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    if not text.strip():
        raise StatsFileError(f"stats file {str(path)!r} is empty.")
    lines = text.splitlines()
    header: dict = {}
    measures: list = []  # (column, structure, short, description, value, units, lineno)
    units: dict = {}
    colnames = None
    col_line = 0
    nrows = ntablecols = None
    nrows_line = 0
    rows: list = []
    row_lines: list = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line[0] == "#":
            if colnames is not None:  # FreeSurfer writes no '#' lines inside the table
                raise StatsFileError(f"{path}:{i}: a '#' line inside the table (table starts at line {col_line}).")
            body = line[1:].strip()
            if body.startswith("Measure "):
                parts = [p.strip() for p in body[len("Measure "):].split(",")]
                if len(parts) < 4:
                    raise StatsFileError(
                        f"{path}:{i}: malformed '# Measure' line (expected 'name, short name, description, "
                        f"value, units'): {line.strip()!r}."
                    )
                structure, value_txt, unit = parts[0], parts[-2], parts[-1]
                if len(parts) == 4:  # FS 5.3/6.0 "Cortex, CortexVol Total cortical gray matter volume, ..."
                    short, _, desc = parts[1].partition(" ")
                else:
                    short, desc = parts[1], ", ".join(parts[2:-2])
                try:
                    value = float(value_txt)
                except ValueError:
                    raise StatsFileError(
                        f"{path}:{i}: the value {value_txt!r} of measure {short!r} is not a number."
                    ) from None
                if not unit or unit[0].isdigit() or unit[0] in "+-.":
                    raise StatsFileError(f"{path}:{i}: '# Measure' line without units (truncated?): {line.strip()!r}.")
                measures.append((_measure_column(structure, short), structure, short, desc.strip(), value,
                                 unit, i))
            elif body.startswith("ColHeaders"):
                colnames = body.split()[1:]
                col_line = i
                if not colnames:
                    raise StatsFileError(f"{path}:{i}: '# ColHeaders' line names no columns.")
            elif body.startswith("TableCol"):
                toks = body.split(None, 3)
                if len(toks) == 4 and toks[2] in ("ColHeader", "Units"):
                    units.setdefault(toks[1], {})[toks[2]] = toks[3].strip()
            elif body.startswith("NRows"):
                try:
                    nrows, nrows_line = int(body.split()[1]), i
                except (IndexError, ValueError):
                    raise StatsFileError(f"{path}:{i}: malformed '# NRows' line: {line.strip()!r}.") from None
            elif body.startswith("NTableCols"):
                try:
                    ntablecols = int(body.split()[1])
                except (IndexError, ValueError):
                    raise StatsFileError(f"{path}:{i}: malformed '# NTableCols' line: {line.strip()!r}.") from None
            else:
                key, _, val = body.partition(" ")
                if key and key not in header:
                    header[key] = val.strip()
            continue
        if colnames is None:
            raise StatsFileError(
                f"{path}:{i}: a data line before any '# ColHeaders' line: {line.strip()[:60]!r}. "
                "Is this a FreeSurfer stats file?"
            )
        toks = line.split()
        if len(toks) != len(colnames):
            raise StatsFileError(
                f"{path}:{i}: {len(toks)} fields where the '# ColHeaders' line ({col_line}) names {len(colnames)}"
                f" ({' '.join(colnames)}): the row is truncated or malformed."
            )
        rows.append(toks)
        row_lines.append(i)
    if colnames is None and not measures:
        raise StatsFileError(
            f"{path} has neither a '# ColHeaders' table nor '# Measure' lines: not a FreeSurfer stats file, "
            "or truncated before its header ended."
        )
    if colnames is not None:
        if not rows:
            raise StatsFileError(
                f"{path}: the table announced on line {col_line} ('# ColHeaders') has no rows: the file is "
                "truncated."
            )
        if ntablecols is not None and ntablecols != len(colnames):
            raise StatsFileError(
                f"{path}:{col_line}: '# ColHeaders' names {len(colnames)} columns but '# NTableCols' says "
                f"{ntablecols}."
            )
        if nrows is not None and nrows != len(rows):
            raise StatsFileError(
                f"{path}: '# NRows {nrows}' (line {nrows_line}) but the table has {len(rows)} rows (last at line "
                f"{row_lines[-1]}): the file is truncated or was edited."
            )
    if not text.endswith(("\n", "\r")):
        warn(f"{path}:{len(lines)}: the file does not end with a newline as FreeSurfer's files do: it may be "
             "truncated inside its last line; check that line's last value.", FreeSurferWarning)
    col_units = {}
    for spec in units.values():
        if "ColHeader" in spec and "Units" in spec:
            col_units[spec["ColHeader"]] = spec["Units"]
    return header, measures, col_units, colnames, rows, row_lines


def _table_frame(path, colnames, rows, row_lines) -> pd.DataFrame:
    if colnames is None:
        return pd.DataFrame(index=pd.Index([], name="StructName"))
    if "StructName" not in colnames:
        raise StatsFileError(f"{path}: the '# ColHeaders' line has no 'StructName' column: {colnames}.")
    arr = np.array(rows, dtype=object)
    data = {}
    for j, c in enumerate(colnames):
        col = arr[:, j]
        if c == "StructName":
            continue
        if all(_INT_RE.match(v) for v in col):
            data[c] = col.astype(np.int64)
            continue
        try:
            data[c] = col.astype(np.float64)
        except ValueError:
            for k, v in enumerate(col):
                try:
                    float(v)
                except ValueError:
                    raise StatsFileError(
                        f"{path}:{row_lines[k]}: column {c!r} holds {v!r}, not a number."
                    ) from None
            raise  # pragma: no cover
    names = arr[:, colnames.index("StructName")].astype(str)
    idx = pd.Index(names, name="StructName")
    if idx.has_duplicates:
        dup = idx[idx.duplicated()][0]
        where = [row_lines[k] for k in np.flatnonzero(names == dup)]
        raise StatsFileError(f"{path}: structure {dup!r} appears more than once (lines {where}).")
    return pd.DataFrame(data, index=idx, columns=[c for c in colnames if c != "StructName"])


def read_stats(path, normalize_names: bool = False) -> StatsFile:
    """Read one FreeSurfer ``*.stats`` file (aseg, aparc variants, brainvol, wmparc, BA_exvivo, ...).

    Parameters
    ----------
    path : str or path-like
        E.g. ``SUBJECTS_DIR/sub-01/stats/lh.aparc.stats``.
    normalize_names : bool, default False
        Rename structures and measures FreeSurfer renamed between versions to their 7.x names
        (:data:`STRUCTURE_RENAMES`, e.g. ``Left-Thalamus-Proper`` -> ``Left-Thalamus``); what was renamed is in
        ``StatsFile.renamed``.

    Returns
    -------
    StatsFile
        ``measures`` (the ``# Measure`` lines) and ``table`` (the ``# ColHeaders`` table), values exactly as
        written, in FreeSurfer's units (mm^3 volumes, mm^2 areas, mm thickness).

    Raises
    ------
    StatsFileError
        Empty, truncated or malformed file; the message names the file and the line.
    """
    path = Path(path)
    header, measures, units, colnames, rows, row_lines = _parse(path)
    kind, hemi, parc = _kind_from_name(path)
    if kind is None:
        program = header.get("generating_program", "")
        segvol = header.get("SegVolFile", "")
        if header.get("anatomy_type") == "surface" or program == "mris_anatomical_stats":
            kind = "surface"
        elif re.search(r"(^|/)(aseg|wmparc)\.mgz$", segvol):
            kind = re.search(r"(aseg|wmparc)\.mgz$", segvol).group(1)
        elif not header and colnames is None:
            kind = "brainvol"  # brainvol.stats holds nothing but '# Measure' lines
        else:
            kind = "segmentation"
    if kind == "surface":
        _check_hemi(path, hemi, header)
        hemi = hemi or header.get("hemi")
        if parc is None and header.get("AnnotationFile"):
            m = re.search(r"[lr]h\.(.+)\.annot$", header["AnnotationFile"])
            parc = m.group(1) if m else None
    meas = pd.DataFrame(
        [m[1:] for m in measures],
        index=pd.Index([m[0] for m in measures], name="name"),
        columns=["structure", "short_name", "description", "value", "units", "line"],
    )
    if meas.index.has_duplicates:  # aparc files repeat "Cortex" as structure, never the column name
        dup = meas.index[meas.index.duplicated()][0]
        raise StatsFileError(f"{path}: measure {dup!r} appears more than once (lines {list(meas.loc[dup, 'line'])}).")
    meas["value"] = meas["value"].astype(np.float64)
    table = _table_frame(path, colnames, rows, row_lines)
    renamed: dict = {}
    if normalize_names:
        table, r1 = normalize_structure_names(table, axis="index")
        meas, r2 = normalize_structure_names(meas, axis="index")
        renamed = {**r1, **r2}
    if kind == "surface" and parc in KNOWN_PARCELLATIONS and len(table):
        missing = [s for s in KNOWN_PARCELLATIONS[parc] if s not in table.index]
        if missing:
            warn(f"{path}: the {parc} table lacks {len(missing)} of its {len(KNOWN_PARCELLATIONS[parc])} "
                 f"structures ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): truncated, or "
                 "regions with no vertices.", FreeSurferWarning)
    return StatsFile(path=path, kind=kind, hemi=hemi, parcellation=parc, header=header, measures=meas,
                     table=table, units=units, version=_version_from_cvs(header.get("cvs_version")),
                     renamed=renamed)


# ------------------------------------------------------------------------------------------ names
def normalize_structure_names(obj, axis: str = "columns", renames: dict | None = None):
    """Rename structures FreeSurfer renamed between versions to their current (7.x) names.

    Parameters
    ----------
    obj : pandas.DataFrame, pandas.Index or list of str
        A table whose columns (``axis="columns"``) or index (``axis="index"``) hold structure names, or the
        names themselves. Both plain names (``Left-Thalamus-Proper``) and aparcstats2table-style names
        containing them are handled.
    axis : {"columns", "index"}
    renames : dict, optional
        Old -> new names; default :data:`STRUCTURE_RENAMES`.

    Returns
    -------
    renamed : same type as ``obj``
        A renamed copy (the input is not modified).
    report : dict
        Old -> new for every name that was changed (empty when nothing was).

    Raises
    ------
    InputError
        If both an old and its new name are present (renaming would merge two columns).
    """
    renames = STRUCTURE_RENAMES if renames is None else renames
    if isinstance(obj, pd.DataFrame):
        names = list(obj.columns if axis == "columns" else obj.index)
    else:
        names = list(obj)
    mapping = {n: renames[n] for n in names if isinstance(n, str) and n in renames}
    clash = [f"{o!r} and {n!r}" for o, n in mapping.items() if n in names]
    if clash:
        raise InputError(
            f"both the old and the new FreeSurfer name are present ({'; '.join(clash)}): the table mixes "
            "FreeSurfer versions; merge those columns yourself or collect with normalize_names=True."
        )
    if isinstance(obj, pd.DataFrame):
        out = obj.rename(columns=mapping) if axis == "columns" else obj.rename(index=mapping)
    elif isinstance(obj, pd.Index):
        out = obj.map(lambda n: mapping.get(n, n))
    else:
        out = [mapping.get(n, n) for n in names]
    return out, mapping


# ------------------------------------------------------------------------------------------ ids
_BIDS_RE = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_(ses-[A-Za-z0-9]+))?")


def parse_fsid(fsid: str, id_pattern: str | None = None) -> dict:
    """Split a FreeSurfer subject id into ``subject``, ``timepoint`` and ``fs_kind``.

    ``TP.long.BASE`` (longitudinal run) -> subject ``BASE``, timepoint ``TP``, kind ``"long"``; anything else is
    cross-sectional (subject = the id, no timepoint). BIDS-like ids ``sub-X_ses-Y`` give subject ``sub-X`` and
    timepoint ``ses-Y`` in both cases. ``id_pattern``, a regular expression with named groups ``subject``
    and optionally ``timepoint``, overrides this for the cross-sectional id or the ``TP`` part.
    """
    fsid = str(fsid)
    if ".long." in fsid:
        tp, base = fsid.split(".long.", 1)
        out = {"subject": base, "timepoint": tp, "fs_kind": "long"}
        name = tp
    else:
        out = {"subject": fsid, "timepoint": None, "fs_kind": "cross"}
        name = fsid
    if id_pattern is not None:
        m = re.match(id_pattern, name)
        if m is None:
            raise InputError(f"id {name!r} does not match id_pattern {id_pattern!r}.")
        gd = m.groupdict()
        if "subject" not in gd:
            raise InputError(f"id_pattern {id_pattern!r} needs a named group (?P<subject>...).")
        out["subject"] = gd["subject"]
        if gd.get("timepoint") is not None:
            out["timepoint"] = gd["timepoint"]
    else:
        m = _BIDS_RE.match(name)
        if m and m.group(2):
            out["subject"], out["timepoint"] = m.group(1), m.group(2)
    return out


def _id_columns(fsids, id_pattern=None) -> pd.DataFrame:
    parsed = [parse_fsid(f, id_pattern) for f in fsids]
    df = pd.DataFrame(parsed, index=pd.Index(list(fsids), name="fsid"),
                      columns=["subject", "timepoint", "fs_kind"])
    return df


# ------------------------------------------------------------------------------------------ group tables
_FIRST_CELL = re.compile(r"^(?:(?P<aseg>Measure):(?P<ameas>\w+)|(?P<hemi>lh|rh)\.(?P<parc>.+)\.(?P<meas>[A-Za-z]+))$")


def _sniff_delimiter(line: str) -> str:
    for d in ("\t", ",", ";"):
        if d in line:
            return d
    return " "


def _read_delimited(path: Path, what: str):
    if not path.exists():
        raise InputError(f"{what} {str(path)!r} does not exist.")
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    if not first.strip():
        raise StatsFileError(f"{what} {str(path)!r} is empty.")
    delim = _sniff_delimiter(first.rstrip("\r\n"))
    cells = [c.strip() for c in (first.split() if delim == " " else first.rstrip("\r\n").split(delim))]
    seen: set = set()
    for c in cells:
        if c in seen:
            raise StatsFileError(f"{path}:1: column {c!r} appears twice in the header.")
        seen.add(c)
    try:
        df = pd.read_csv(path, sep=delim if delim != " " else r"\s+", dtype=str, keep_default_na=False,
                         engine="python" if delim == " " else "c")
    except pd.errors.ParserError as exc:
        m = re.search(r"line (\d+)", str(exc))
        where = f":{m.group(1)}" if m else ""
        raise StatsFileError(
            f"{path}{where}: rows do not have as many cells as the header: {str(exc).strip()}"
        ) from None
    return df, delim


def _to_numeric_frame(df: pd.DataFrame, path: Path, first_line: int = 2) -> pd.DataFrame:
    out = {}
    for c in df.columns:
        col = df[c].to_numpy(dtype=object)
        vals = np.empty(len(col))
        for k, v in enumerate(col):
            v = v.strip() if isinstance(v, str) else v
            if v in ("", "NA", "NaN", "nan", "n/a"):
                raise StatsFileError(
                    f"{path}:{k + first_line}: column {c!r} is empty for {df.index[k]!r} (the group table has a "
                    "missing value)."
                )
            try:
                vals[k] = float(v)
            except (TypeError, ValueError):
                raise StatsFileError(f"{path}:{k + first_line}: column {c!r} holds {v!r}, not a number.") from None
        out[c] = vals
    return pd.DataFrame(out, index=df.index, columns=df.columns)


def read_fs_table(path, parse_ids: bool = True, normalize_names: bool = False,
                  id_pattern: str | None = None) -> pd.DataFrame:
    """Read a group table written by ``asegstats2table`` or ``aparcstats2table`` (or an ENIGMA CSV).

    The delimiter (tab, comma, semicolon or spaces) is taken from the header line. The first header cell
    says what the table holds: ``Measure:volume`` (asegstats2table) or ``<hemi>.<parc>.<meas>`` such as
    ``lh.aparc.thickness`` or ``rh.aparc.a2009s.area`` (aparcstats2table); a first cell ``SubjID`` is read as
    an ENIGMA table (:func:`read_enigma_table`).

    Parameters
    ----------
    path : str or path-like
    parse_ids : bool, default True
        Add ``subject``, ``timepoint`` and ``fs_kind`` columns parsed from the ids (``TP.long.BASE`` for
        longitudinal runs; see :func:`parse_fsid`).
    normalize_names : bool, default False
        Rename structures renamed between FreeSurfer versions (:func:`normalize_structure_names`); the
        renames are reported in ``df.attrs["featharm"]["renamed"]``.
    id_pattern : str, optional
        Regular expression with named groups ``subject`` (and ``timepoint``) to parse the ids.

    Returns
    -------
    pandas.DataFrame
        Indexed by the FreeSurfer id (index name ``fsid``), feature columns named as in the file, values as
        written (float64; mm^3, mm^2 or mm according to the measure). ``df.attrs["featharm"]`` records the
        source file, measure, hemisphere and parcellation.

    Raises
    ------
    StatsFileError
        Empty file, unknown first header cell, ragged rows, non-numeric or missing cells (file and line named).
    DuplicateIndexError
        An id appears twice.
    """
    path = Path(path)
    df, delim = _read_delimited(path, "group table")
    first = str(df.columns[0]).strip()
    if first == "SubjID":
        return read_enigma_table(path)
    m = _FIRST_CELL.match(first)
    if m is None:
        raise StatsFileError(
            f"{path}:1: first header cell {first!r} is neither 'Measure:<measure>' (asegstats2table) nor "
            "'<hemi>.<parc>.<measure>' such as 'lh.aparc.thickness' (aparcstats2table)."
        )
    if df.shape[1] < 2:
        raise StatsFileError(f"{path}:1: the header has a single cell; is the delimiter right?")
    if len(df) == 0:
        raise StatsFileError(f"{path}: the group table has a header but no rows: truncated?")
    if m.group("aseg"):
        info = {"tool": "asegstats2table", "measure": m.group("ameas"), "hemi": None, "parcellation": None}
    else:
        info = {"tool": "aparcstats2table", "measure": m.group("meas"), "hemi": m.group("hemi"),
                "parcellation": m.group("parc")}
    ids = df.iloc[:, 0].astype(str).str.strip()
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        lines = [int(k) + 2 for k in np.flatnonzero(ids.to_numpy() == dup)]
        raise DuplicateIndexError(f"{path}: id {dup!r} appears on lines {lines}; each subject must appear once.")
    body = df.iloc[:, 1:]
    body.index = pd.Index(ids.to_numpy(), name="fsid")
    body.columns = [str(c).strip() for c in body.columns]
    if pd.Index(body.columns).has_duplicates:
        dup = pd.Index(body.columns)[pd.Index(body.columns).duplicated()][0]
        raise StatsFileError(f"{path}:1: column {dup!r} appears twice in the header.")
    out = _to_numeric_frame(body, path)
    _check_group_table(out, info, path)
    renamed: dict = {}
    if normalize_names:
        out, renamed = _normalize_mixed_table(out, path)
    if parse_ids:
        out = pd.concat([_id_columns(out.index, id_pattern), out], axis=1)
    info.update({"source": str(path), "delimiter": delim, "renamed": renamed})
    out.attrs["featharm"] = info
    return out


_FS7_APARC_EXTRAS = {"BrainSegVolNotVent", "eTIV"}


def _check_group_table(df: pd.DataFrame, info: dict, path: Path) -> None:
    """Warn about what asegstats2table/aparcstats2table hide: zero-filled structures, foreign columns,
    old and new FreeSurfer names side by side (subjects from different versions)."""
    pairs = [(o, n) for o, n in STRUCTURE_RENAMES.items() if o in df.columns and n in df.columns]
    if pairs:
        warn(f"{path}: the table has both old and new FreeSurfer names ({'; '.join(f'{o} / {n}' for o, n in pairs)}"
             "): its subjects come from different FreeSurfer versions (a batch effect); normalize_names=True "
             "merges each pair when every row has one of the two filled and the other 0 or empty.",
             FreeSurferWarning)
    if info["tool"] != "aparcstats2table":
        return
    hemi, meas = info["hemi"], info["measure"]
    foreign = [c for c in df.columns
               if c not in _FS7_APARC_EXTRAS and not (c.startswith(f"{hemi}_") and c.endswith(f"_{meas}"))]
    if foreign:
        warn(f"{path}: column(s) {_fmt_list(foreign, 4)} do not belong to a {hemi} {meas} table (first header cell "
             f"{hemi}.{info['parcellation']}.{meas}): was the table edited or merged?", FreeSurferWarning)
    if meas in ("thickness", "area", "volume"):
        zero = (df == 0).to_numpy()
        if zero.any():
            cols = [c for c, z in zip(df.columns, zero.any(axis=0)) if z]
            rows = [r for r, z in zip(df.index, zero.any(axis=1)) if z]
            warn(f"{path}: {int(zero.sum())} cell(s) are 0 ({_fmt_list(cols, 3)}; ids {_fmt_list(rows, 3)}): "
                 f"aparcstats2table writes 0 for a structure missing from a subject's file; treat them as "
                 f"missing, not as a {meas} of 0.", FreeSurferWarning)


def _normalize_mixed_table(df: pd.DataFrame, path: Path):
    pairs = [(o, n) for o, n in STRUCTURE_RENAMES.items() if o in df.columns and n in df.columns]
    df = df.copy()
    for old, new in pairs:
        a, b = df[old].to_numpy(), df[new].to_numpy()
        a_off, b_off = (a == 0) | np.isnan(a), (b == 0) | np.isnan(b)
        both = ~a_off & ~b_off
        if both.any():
            ids = list(df.index[both][:5])
            raise InputError(
                f"{path}: {old!r} and {new!r} both hold values for {ids}: cannot merge them into {new!r}."
            )
        df[new] = np.where(b_off & ~a_off, a, b)
        df = df.drop(columns=old)
    merged = {o: n for o, n in pairs}
    df, renamed = normalize_structure_names(df)
    return df, {**merged, **renamed}


def read_fs_tables(paths, parse_ids: bool = True, normalize_names: bool = False,
                   id_pattern: str | None = None) -> pd.DataFrame:
    """Read several group tables (e.g. the aseg table and both hemispheres' aparc tables) into one.

    Parameters
    ----------
    paths : sequence of path-like
        Tables as read by :func:`read_fs_table`.
    parse_ids, normalize_names, id_pattern
        As in :func:`read_fs_table`.

    Returns
    -------
    pandas.DataFrame
        Columns of every table side by side, rows in the order of the first table. Columns repeated across
        tables with identical values (FreeSurfer 7 aparc tables all carry ``BrainSegVolNotVent`` and ``eTIV``)
        are kept once. ``df.attrs["featharm"]["tables"]`` lists each table's metadata.

    Raises
    ------
    AlignmentError
        The tables do not list the same ids (the message names the ids missing from each table).
    InputError
        Two tables have a column of the same name with different values.
    """
    from ..exceptions import AlignmentError

    paths = list(paths)
    if not paths:
        raise InputError("no group tables given.")
    tables = [read_fs_table(p, parse_ids=False, normalize_names=normalize_names) for p in paths]
    ids0 = tables[0].index
    for p, t in zip(paths[1:], tables[1:]):
        if set(t.index) != set(ids0):
            only_first = [i for i in ids0 if i not in set(t.index)]
            only_this = [i for i in t.index if i not in set(ids0)]
            raise AlignmentError(
                f"{paths[0]} and {p} list different subjects: {len(only_first)} only in the first "
                f"({_fmt_list(only_first, 5)}), {len(only_this)} only in the second ({_fmt_list(only_this, 5)})."
            )
    out = tables[0]
    for p, t in zip(paths[1:], tables[1:]):
        t = t.loc[ids0]
        dup = [c for c in t.columns if c in out.columns]
        differ = [c for c in dup if not np.array_equal(out[c].to_numpy(), t[c].to_numpy(), equal_nan=True)]
        if differ:
            raise InputError(f"column(s) {_fmt_list(differ, 4)} appear in {p} and an earlier table with different "
                             "values; read the tables separately.")
        out = pd.concat([out, t.drop(columns=dup)], axis=1)
    if parse_ids:
        out = pd.concat([_id_columns(out.index, id_pattern), out], axis=1)
    out.index.name = "fsid"
    out.attrs["featharm"] = {"tables": [t.attrs["featharm"] for t in tables]}
    return out


# ENIGMA names -> aparcstats2table / asegstats2table names
_ENIGMA_SUBCORT = {
    "LLatVent": "Left-Lateral-Ventricle", "RLatVent": "Right-Lateral-Ventricle",
    "Lthal": "Left-Thalamus", "Rthal": "Right-Thalamus", "Lcaud": "Left-Caudate", "Rcaud": "Right-Caudate",
    "Lput": "Left-Putamen", "Rput": "Right-Putamen", "Lpal": "Left-Pallidum", "Rpal": "Right-Pallidum",
    "Lhippo": "Left-Hippocampus", "Rhippo": "Right-Hippocampus", "Lamyg": "Left-Amygdala",
    "Ramyg": "Right-Amygdala", "Laccumb": "Left-Accumbens-area", "Raccumb": "Right-Accumbens-area",
    "ICV": "EstimatedTotalIntraCranialVol",
}
_ENIGMA_GLOBAL = {
    "LThickness": "lh_MeanThickness_thickness", "RThickness": "rh_MeanThickness_thickness",
    "LSurfArea": "lh_WhiteSurfArea_area", "RSurfArea": "rh_WhiteSurfArea_area",
}
_ENIGMA_SUFFIX = {"thickavg": "thickness", "surfavg": "area", "grayvol": "volume", "volavg": "volume"}


def _enigma_name(col: str) -> str:
    if col in _ENIGMA_SUBCORT:
        return _ENIGMA_SUBCORT[col]
    if col in _ENIGMA_GLOBAL:
        return _ENIGMA_GLOBAL[col]
    m = re.match(r"^([LR])_(.+)_([A-Za-z]+)$", col)
    if m and m.group(3).lower() in _ENIGMA_SUFFIX:
        return f"{'lh' if m.group(1) == 'L' else 'rh'}_{m.group(2)}_{_ENIGMA_SUFFIX[m.group(3).lower()]}"
    return col


def read_enigma_table(path, rename: bool = False) -> pd.DataFrame:
    """Read an ENIGMA-protocol CSV (``CorticalMeasuresENIGMA_ThickAvg.csv``, ``LandRvolumes.csv``, ...).

    The first column is ``SubjID``; every other column must be numeric (cortical ``*_thickavg`` in mm,
    ``*_surfavg`` in mm^2, subcortical volumes and ``ICV`` in mm^3).

    Parameters
    ----------
    path : str or path-like
    rename : bool, default False
        Rename columns to the aparcstats2table/asegstats2table names (``L_bankssts_thickavg`` ->
        ``lh_bankssts_thickness``, ``Lhippo`` -> ``Left-Hippocampus``, ``LThickness`` ->
        ``lh_MeanThickness_thickness``, ``ICV`` -> ``EstimatedTotalIntraCranialVol``); the map used is in
        ``df.attrs["featharm"]["renamed"]``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``SubjID`` (index name ``fsid``).
    """
    path = Path(path)
    df, delim = _read_delimited(path, "ENIGMA table")
    if str(df.columns[0]).strip() != "SubjID":
        raise StatsFileError(f"{path}:1: an ENIGMA table starts with a 'SubjID' column, not {df.columns[0]!r}.")
    ids = df.iloc[:, 0].astype(str).str.strip()
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        lines = [int(k) + 2 for k in np.flatnonzero(ids.to_numpy() == dup)]
        raise DuplicateIndexError(f"{path}: SubjID {dup!r} appears on lines {lines}.")
    body = df.iloc[:, 1:]
    body.index = pd.Index(ids.to_numpy(), name="fsid")
    out = _to_numeric_frame(body, path)
    renamed = {}
    if rename:
        renamed = {c: _enigma_name(c) for c in out.columns if _enigma_name(c) != c}
        out = out.rename(columns=renamed)
    out.attrs["featharm"] = {"tool": "ENIGMA", "source": str(path), "delimiter": delim, "renamed": renamed}
    return out


# ------------------------------------------------------------------------------------------ SUBJECTS_DIR
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


@dataclass
class _Source:
    token: str
    kind: str                  # "seg", "globals", "surface"
    files: tuple               # file names under stats/
    column: str | None = None  # table column to read
    meas: str | None = None    # measure name used in column names
    hemis: tuple = ()
    parc: str | None = None
    with_globals: bool = False


def _parse_measures(measures, hemis) -> list[_Source]:
    if isinstance(measures, str):
        measures = [measures]
    sources: list[_Source] = []
    for tok in measures:
        tok = str(tok).strip()
        head, _, last = tok.rpartition(".")
        if tok in ("aseg", "wmparc") or (head in ("aseg", "wmparc") and last in SEG_MEASURES):
            name, meas = (tok, "volume") if tok in ("aseg", "wmparc") else (head, last)
            sources.append(_Source(tok, "seg", (f"{name}.stats",), SEG_MEASURES[meas], meas,
                                   with_globals=(name == "aseg" and meas == "volume")))
        elif tok == "brainvol" or head in ("aseg", "wmparc", "brainvol"):
            if tok != "brainvol":
                raise InputError(f"unknown measure {tok!r}: {head} measures are {sorted(SEG_MEASURES)} "
                                 f"(e.g. '{head}' for volumes, '{head}.mean').")
            sources.append(_Source(tok, "globals", ("brainvol.stats",)))
        elif head and last in APARC_MEASURES:
            sources.append(_Source(tok, "surface", tuple(f"{h}.{head}.stats" for h in hemis),
                                   APARC_MEASURES[last], last, tuple(hemis), head))
        elif not re.match(r"^[A-Za-z0-9_.\-]+$", tok) or tok in APARC_MEASURES:
            raise InputError(
                f"unknown measure {tok!r}. Use 'aseg' (volumes and global measures), 'aseg.mean', 'wmparc', "
                f"'brainvol', or '<parcellation>.<measure>' such as 'aparc.thickness' with measure one of "
                f"{sorted(APARC_MEASURES)}; a bare parcellation ('aparc') means thickness, area and volume."
            )
        else:  # a bare parcellation name
            for meas in ("thickness", "area", "volume"):
                sources.append(_Source(f"{tok}.{meas}", "surface", tuple(f"{h}.{tok}.stats" for h in hemis),
                                       APARC_MEASURES[meas], meas, tuple(hemis), tok))
    if not sources:
        raise InputError("no measures asked for; e.g. measures=['aseg', 'aparc.thickness'].")
    return sources


_SURF_GLOBAL = {"thickness": ("MeanThickness",), "area": ("WhiteSurfArea", "PialSurfArea")}


def _values_from_parsed(parsed, src: _Source, hemi, rename, renamed, path, out: dict) -> None:
    header, measures, _units, colnames, rows, row_lines = parsed
    if src.kind == "surface":
        _check_hemi(path, hemi, header)
    if src.kind != "globals":
        if colnames is None:
            raise StatsFileError(f"{path} has no '# ColHeaders' table, so it has no {src.column!r} column.")
        if src.column not in colnames or "StructName" not in colnames:
            raise StatsFileError(
                f"{path}: the table has no {src.column!r} or 'StructName' column (columns: {colnames})."
            )
        j, k = colnames.index(src.column), colnames.index("StructName")
        if src.kind == "seg":
            prefix, suffix = "", ("" if src.meas == "volume" else f"_{src.meas}")
        else:
            prefix, suffix = f"{hemi}_", f"_{src.meas}"
        for r, ln in zip(rows, row_lines):
            name = r[k]
            if rename and name in STRUCTURE_RENAMES:
                renamed[name] = STRUCTURE_RENAMES[name]
                name = STRUCTURE_RENAMES[name]
            col = prefix + name + suffix
            if col in out:
                raise StatsFileError(f"{path}:{ln}: structure {r[k]!r} appears more than once in the table.")
            try:
                out[col] = float(r[j])
            except ValueError:
                raise StatsFileError(f"{path}:{ln}: column {src.column!r} holds {r[j]!r}, not a number.") from None
    if src.kind == "surface":  # aparcstats2table's whole-hemisphere extras
        for gname in _SURF_GLOBAL.get(src.meas, ()):
            for col, _s, _short, _d, value, _u, _ln in measures:
                if col == gname:
                    out.setdefault(f"{hemi}_{gname}_{src.meas}", value)
    elif src.kind == "globals" or src.with_globals:  # asegstats2table appends the '# Measure' globals
        for col, _s, _short, _d, value, _u, _ln in measures:
            if rename and col in STRUCTURE_RENAMES:
                renamed[col] = STRUCTURE_RENAMES[col]
                col = STRUCTURE_RENAMES[col]
            out[col] = value


def _fmt_list(items, n=5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


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
    sources = _parse_measures(measures, hemis)
    dirs = [subjects_dir] if isinstance(subjects_dir, (str, os.PathLike)) else list(subjects_dir)
    scans = []
    for d in dirs:
        sc = scan_subjects_dir(d, templates=templates, id_pattern=id_pattern)
        sc["subjects_dir"] = str(d)
        scans.append(sc)
    scan = pd.concat(scans) if len(scans) > 1 else scans[0]
    if scan.index.has_duplicates:
        dup = scan.index[scan.index.duplicated()][0]
        raise DuplicateIndexError(
            f"subject {dup!r} is in more than one SUBJECTS_DIR ({_fmt_list(scan.loc[[dup], 'path'])}); ids must "
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
            raise InputError(f"subjects not found in {_fmt_list(dirs, 3)}: {_fmt_list(unknown)}.")
        not_runs = [f"{s} ({scan.at[s, 'fs_kind']})" for s in subjects if s not in chosen.index]
        if not_runs:
            raise InputError(f"not collected with runs={runs!r}: {_fmt_list(not_runs)}; bases, templates and "
                             "non-subject folders are never collected.")
        chosen = chosen.loc[subjects]
    if len(chosen) == 0:
        raise InputError(
            f"no {' or '.join(wanted)} FreeSurfer subjects found in {_fmt_list(dirs, 3)} (skipped: "
            f"{ {k: len(v) for k, v in skipped.items() if v} })."
        )

    records, versions, missing_files, renamed = [], {}, {}, {}
    colorder: dict = {}
    file_of_col: dict = {}
    for fsid, row in zip(chosen.index, chosen.itertuples(index=False)):
        stats_dir = Path(row.path) / "stats"
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
                    lst = missing_files.setdefault(fsid, [])
                    if f"stats/{fname}" not in lst:
                        lst.append(f"stats/{fname}")
                    continue
                if fsid not in versions:
                    versions[fsid] = _version_from_cvs(parsed[0].get("cvs_version"))
                part: dict = {}
                _values_from_parsed(parsed, src, src.hemis[fi] if src.hemis else None, normalize_names,
                                    renamed, fpath, part)
                for c, v in part.items():
                    if c in rec:
                        if src.kind == "globals":
                            continue  # aseg (asked for too) already gave this measure
                        if src.kind == "surface" and c.endswith(("_MeanThickness_thickness", "_WhiteSurfArea_area",
                                                                   "_PialSurfArea_area")):
                            continue
                        prev = file_of_col.get(c)
                        raise InputError(
                            f"column {c!r} comes from both {prev} and stats/{fname} (measures "
                            f"{[s.token for s in sources]}); collect these parcellations separately."
                        )
                    rec[c] = v
                    if c not in colorder:
                        colorder[c] = None
                        file_of_col[c] = f"stats/{fname}"
        records.append(rec)

    if len(chosen) > 1 or not colorder:
        everyone = set.intersection(*(set(missing_files.get(f, ())) for f in chosen.index))
        if everyone:
            found = sorted({p.name[3:-6] for d in chosen["path"][:20] for p in (Path(d) / "stats").glob("?h.*.stats")})
            raise MissingStatsError(
                f"none of the {len(chosen)} subjects has {_fmt_list(sorted(everyone), 4)}: check the measures "
                f"{[s.token for s in sources]} (parcellations found: {found or 'none'}; other files: aseg, wmparc, "
                "brainvol)."
            )
    cols = list(colorder)
    values = np.full((len(records), len(cols)), np.nan)
    pos = {c: i for i, c in enumerate(cols)}
    for r, rec in enumerate(records):
        if rec:
            idx = np.fromiter((pos[c] for c in rec), dtype=np.intp, count=len(rec))
            values[r, idx] = np.fromiter(rec.values(), dtype=np.float64, count=len(rec))
    feats = pd.DataFrame(values, index=pd.Index(chosen.index, name="fsid"), columns=cols)

    majors: dict = {}
    for fsid, v in versions.items():
        majors.setdefault(_major(v) or "unknown", []).append(fsid)
    if len(majors) > 1:
        warn("the subjects were processed with different FreeSurfer versions ("
             + "; ".join(f"{k}: {len(v)} e.g. {_fmt_list(v, 2)}" for k, v in sorted(majors.items()))
             + "): version is a batch effect; model it (e.g. as batch) or harmonize within version.",
             FreeSurferWarning)
    # structures some subjects lack although their file exists
    missing_structs: dict = {}
    nan_rows = np.flatnonzero(np.isnan(values).any(axis=1))
    for r in nan_rows:
        fsid = chosen.index[r]
        lacking = [c for c in np.array(cols)[np.isnan(values[r])]
                   if not any(file_of_col[c] == mf for mf in missing_files.get(fsid, []))]
        if lacking:
            missing_structs[fsid] = lacking
    missing = []
    for fsid in chosen.index:
        if fsid in missing_files or fsid in missing_structs:
            missing.append({"fsid": fsid, "files": missing_files.get(fsid, []),
                            "columns": missing_structs.get(fsid, [])})
    if missing:
        parts = []
        if missing_files:
            parts.append(f"{len(missing_files)} of {len(chosen)} subjects lack stats files: "
                         + _fmt_list([f"{k} ({', '.join(v)})" for k, v in missing_files.items()], 5))
        if missing_structs:
            old = {c for v in missing_structs.values() for c in v if c in STRUCTURE_RENAMES}
            hint = (" Some are names FreeSurfer changed between versions: pass normalize_names=True "
                    "(--normalize-names)." if old else "")
            parts.append(f"{len(missing_structs)} subjects lack columns other subjects have: "
                         + _fmt_list([f"{k} ({_fmt_list(v, 3)}; from {file_of_col[v[0]]})"
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

    ids = chosen.loc[feats.index, ["subject", "timepoint", "fs_kind"]]
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
             f"(e.g. {_fmt_list([f.split('.long.', 1)[0] + ' & ' + f for f in both], 2)}): the same scan counts twice; "
             "pass runs='cross' or runs='long' (--runs) to keep one.", FreeSurferWarning)
    out = pd.concat([ids, feats], axis=1)
    out.index.name = "fsid"
    out.attrs["featharm"] = {
        "subjects_dir": [str(d) for d in dirs], "measures": [s.token for s in sources],
        "versions": versions, "missing": missing, "skipped": skipped, "renamed": renamed,
    }
    if index == "subject":
        out = _index_by_subject(out)
    return out


def _index_by_subject(df: pd.DataFrame) -> pd.DataFrame:
    """Index a collected table by subject (and time point), keeping ``fsid`` as a column."""
    df = df.reset_index()
    keys = ["subject", "timepoint"] if df["timepoint"].notna().any() else ["subject"]
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        raise DuplicateIndexError(
            f"index='subject': {_fmt_list(list(df.loc[dup, 'fsid']), 6)} share a subject"
            f"{' and time point' if len(keys) == 2 else ''}; collect with runs='cross' or runs='long' (a time "
            "point often has both a cross-sectional and a longitudinal run), or keep index='fsid'."
        )
    out = df.set_index(keys)
    out.attrs = df.attrs
    return out
