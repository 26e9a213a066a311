"""One FreeSurfer ``*.stats`` file: :func:`read_stats` and the line parser shared with SUBJECTS_DIR collection.

The layouts read are those of FreeSurfer 5.x, 6.0 and 7.x (FastSurfer writes the same): a header of ``#``
lines (``# Measure name, short name, description, value, units`` lines, ``# TableCol`` units, ``# NRows``),
then ``# ColHeaders`` and whitespace-separated rows. Values are read exactly as written (the decimal text is
parsed to the nearest double, as :func:`float` does; nothing is rescaled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...exceptions import FreeSurferWarning, InputError, StatsFileError, warn
from ._names import KNOWN_PARCELLATIONS, _kind_from_name, _measure_column, normalize_structure_names


_INT_RE = re.compile(r"^[+-]?\d+$")


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


def _check_hemi(path, hemi, header) -> None:
    said = header.get("hemi")
    if hemi and said and said != hemi:
        raise StatsFileError(
            f"{path}: the file name says {hemi} but its header says 'hemi {said}': the file was renamed or copied "
            "from the other hemisphere."
        )


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
