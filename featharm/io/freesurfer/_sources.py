"""What a ``measures`` token of :func:`~featharm.io.freesurfer.collect_subjects` reads (files under
``stats/``, table column, column naming), and the values it gives from one parsed stats file, named as
asegstats2table/aparcstats2table name them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...exceptions import InputError, StatsFileError
from ._names import APARC_MEASURES, SEG_MEASURES, STRUCTURE_RENAMES
from .stats_file import _check_hemi


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
