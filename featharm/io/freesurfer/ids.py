"""FreeSurfer subject ids: ``TP.long.BASE`` longitudinal runs, BIDS-like ``sub-X_ses-Y`` ids, ``id_pattern``."""

from __future__ import annotations

import re

import pandas as pd

from ...exceptions import InputError


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
