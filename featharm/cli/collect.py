"""``featharm collect``: SUBJECTS_DIR(s) -> one feature table that ``featharm harmonize`` reads directly."""

from __future__ import annotations

import argparse
from pathlib import Path


#: What ``featharm collect`` reads without ``--measures``: aseg volumes (with the aseg global measures) and
#: aparc (Desikan-Killiany) thickness, area and volume.
DEFAULT_MEASURES = ("aseg", "aparc")


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser(
        "collect", help="collect FreeSurfer stats of a SUBJECTS_DIR into one table",
        description="Read the stats files of every subject in SUBJECTS_DIR (cross-sectional and TP.long.BASE "
                    "runs; bases and templates such as fsaverage skipped) and write one row per run with columns "
                    "named as asegstats2table/aparcstats2table name them. Units: volumes mm^3, areas mm^2, "
                    "thickness mm, exactly as written by FreeSurfer. Optionally join a covariate table, so the "
                    "output goes straight into 'featharm harmonize OUT --id fsid --batch SITE ...'.")
    c.add_argument("subjects_dir", nargs="+", metavar="SUBJECTS_DIR", help="FreeSurfer SUBJECTS_DIR(s)")
    c.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES), metavar="MEASURE",
                   help="aseg, aseg.mean, wmparc, brainvol, or PARC.MEAS such as aparc.thickness, aparc.area, "
                        "aparc.volume, aparc.a2009s.thickness, aparc.DKTatlas.area, BA_exvivo.thickness; a bare "
                        "PARC (aparc) means thickness, area and volume (default: aseg aparc, i.e. aseg volumes "
                        "and aparc thickness, area and volume); 'list' prints what SUBJECTS_DIR holds and "
                        "writes nothing")
    c.add_argument("--out", metavar="TABLE", help="output table (.csv, .tsv or .parquet); required unless "
                                                 "--measures list")
    c.add_argument("--hemis", nargs="+", default=["lh", "rh"], choices=["lh", "rh"], help="hemispheres (default both)")
    c.add_argument("--runs", default="all", choices=["all", "cross", "long"],
                   help="cross-sectional runs, longitudinal TP.long.BASE runs, or both (default)")
    c.add_argument("--on-missing", default="raise", choices=["raise", "warn", "drop"],
                   help="subjects missing a stats file or structures: stop (default), keep with empty cells, or "
                        "leave out; always listed")
    c.add_argument("--normalize-names", action="store_true",
                   help="use FreeSurfer 7 names for structures renamed between versions "
                        "(Left-Thalamus-Proper -> Left-Thalamus, ...), and list the renames")
    c.add_argument("--id-pattern", metavar="REGEX",
                   help="regular expression with groups (?P<subject>...) and (?P<timepoint>...) to parse ids")
    c.add_argument("--covariates", metavar="FILE", help="covariate table (CSV/TSV/Parquet/Excel) to join")
    c.add_argument("--covariates-id", metavar="COL",
                   help="id column of --covariates (default: its first column)")
    c.add_argument("--join-on", default="fsid", metavar="COL",
                   help="column of the collected table matched to --covariates-id: fsid (default), subject")
    c.add_argument("--bids", metavar="DIR",
                   help="BIDS dataset: join participants.tsv on subject, or sub-*/sub-*_sessions.tsv on subject "
                        "and timepoint (ids sub-X_ses-Y)")
    c.add_argument("--strip-bids", action="store_true", help="match ids without their sub-/ses- prefixes")
    c.add_argument("--missing-covariates", default="raise", choices=["raise", "drop", "keep"],
                   help="runs without covariates: stop (default), leave out, or keep with empty covariates")
    c.add_argument("--quiet", action="store_true", help="no summary")
    c.set_defaults(func=cmd_collect)
    return c


def cmd_collect(args) -> int:
    from .._staging import Output
    from ..exceptions import InputError
    from ..io.tables import table_bytes
    from ._common import stage

    if args.measures == ["list"]:
        return _list(args)
    if "list" in args.measures:
        raise InputError("--measures list prints what SUBJECTS_DIR holds; give it alone (no other measures).")
    if not args.out:
        raise InputError("featharm collect needs --out TABLE (or --measures list to see what it can read).")
    if args.covariates and args.bids:
        raise InputError("give --covariates or --bids, not both.")
    inputs = [("SUBJECTS_DIR", d) for d in args.subjects_dir] + [("--covariates", args.covariates)]
    if args.bids:
        bids = Path(args.bids)
        inputs += [("--bids", p) for p in [bids / "participants.tsv", *bids.glob("sub-*/sub-*_sessions.tsv")]]
    with stage(args, [Output("table", "--out", args.out)], inputs) as staged:  # written at the end, or not
        df, info, join, notes = _collect(args)
        out = df.reset_index()
        staged.write("table", table_bytes(out, args.out, index=False))
    if not args.quiet:
        _summary(args, df, out, info, join, notes)
    return 0


def _collect(args):
    """The collected table of ``featharm collect`` (with what the summary reports)."""
    from ..io.covariates import join_covariates, read_bids_participants, read_bids_sessions, read_covariates
    from ..io.freesurfer import collect_subjects

    df = collect_subjects(args.subjects_dir, args.measures, hemis=args.hemis, runs=args.runs,
                          on_missing=args.on_missing, normalize_names=args.normalize_names,
                          id_pattern=args.id_pattern)
    info = df.attrs["featharm"]
    notes = []
    join = None
    if args.covariates:
        cov = read_covariates(args.covariates)
        cid = args.covariates_id or str(cov.columns[0])
        cov = read_covariates(args.covariates, id_col=cid)
        on = {args.join_on: cid}
        df = join_covariates(df, cov, on=on, missing=args.missing_covariates, strip_bids=args.strip_bids)
        join = df.attrs["featharm_join"]
    elif args.bids:
        if list(Path(args.bids).glob("sub-*/sub-*_sessions.tsv")):
            cov, on = read_bids_sessions(args.bids), {"subject": "participant_id", "timepoint": "session_id"}
        else:
            cov, on = read_bids_participants(args.bids), {"subject": "participant_id"}
        cov = cov.reset_index(drop=True)
        df = join_covariates(df, cov, on=on, missing=args.missing_covariates, strip_bids=args.strip_bids)
        join = df.attrs["featharm_join"]
    # keep the written table free of id columns that would read back as empty or numeric "features"
    if df["timepoint"].isna().all():
        df = df.drop(columns="timepoint")
        notes.append("no run has a time point: no 'timepoint' column")
    if (df["subject"].astype(str) == df.index.astype(str)).all() and not (join and args.join_on == "subject"):
        df = df.drop(columns="subject")
        notes.append("subject = fsid for every run: no 'subject' column")
    return df, info, join, notes


def _summary(args, df, out, info, join, notes) -> None:
    nfeat = sum(1 for c in out.columns if c in set(df.columns) and str(out[c].dtype) == "float64")
    lines = [f"collected {len(df)} runs x {nfeat} numeric columns ({', '.join(info['measures'])}) -> {args.out}"]
    kinds = df["fs_kind"].value_counts().to_dict()
    lines.append("  runs: " + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())))
    sk = {k: v for k, v in info["skipped"].items() if v}
    if sk:
        lines.append("  skipped: " + "; ".join(f"{k}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
                                               for k, v in sk.items()))
    if info["renamed"]:
        lines.append("  renamed: " + ", ".join(f"{o} -> {n}" for o, n in info["renamed"].items()))
    if info["missing"]:
        lines.append(f"  runs with missing data ({args.on_missing}): "
                     + ", ".join(m["fsid"] for m in info["missing"][:10]))
    if join:
        lines.append(f"  covariates: {join['matched']} matched on {join['keys']}"
                     + (f"; {len(join['only_in_features'])} runs without covariates"
                        if join["only_in_features"] else "")
                     + (f"; {len(join['only_in_covariates'])} covariate rows without a run"
                        if join["only_in_covariates"] else ""))
    lines += [f"  note: {n}" for n in notes]
    lines.append(f"  next: featharm harmonize {args.out} --id fsid --batch SITE_COLUMN [--formula ...] "
                 "[--features PATTERN ...: needed if numeric covariates are not all in the formula]")
    print("\n".join(lines))


def _list(args) -> int:
    """``--measures list``: the stats files of the runs, how many runs have each, and the measures that read
    them (nothing is written)."""
    from ..io.freesurfer import list_measures

    found = list_measures(args.subjects_dir, hemis=args.hemis, runs=args.runs, id_pattern=args.id_pattern)
    n = int(found["of"].iloc[0]) if len(found) else 0
    skipped = {k: v for k, v in found.attrs["featharm"]["skipped"].items() if v}
    lines = [f"{' '.join(args.subjects_dir)}: {n} run(s)"
             + (" (skipped: " + "; ".join(f"{k}: {len(v)}" for k, v in skipped.items()) + ")" if skipped else "")]
    if not len(found):
        lines.append("  no stats/*.stats files found")
    width = max([len("stats file")] + [len(k) for k in found.index])
    counts = [f"{r}/{n}" for r in found["runs"]]
    cw = max([len("runs")] + [len(c) for c in counts])
    lines.append(f"  {'stats file':<{width}}  {'runs':>{cw}}  --measures")
    for (kind, row), count in zip(found.iterrows(), counts):
        lines.append(f"  {kind:<{width}}  {count:>{cw}}  {_tokens_text(kind, row['measures'].split())}")
    lines.append(f"default (no --measures): {' '.join(DEFAULT_MEASURES)}")
    print("\n".join(lines))
    return 0


def _tokens_text(kind: str, tokens: list) -> str:
    """The --measures that read a stats file kind, shortly: 'aparc (thickness, area, volume); also
    aparc.thicknessstd, .meancurv ...'."""
    if not tokens:
        return "(not read by featharm collect)"
    main = {"aseg": "volumes", "wmparc": "volumes", "brainvol": "global measures"}.get(kind)
    if main is None:
        bare = [t for t in tokens if t.rpartition(".")[2] in ("thickness", "area", "volume")]
        main = ", ".join(t.rpartition(".")[2] for t in bare)
    else:
        bare = [kind] if kind in tokens else []
    rest = [t for t in tokens if t not in bare and t != kind]
    text = f"{kind} ({main})" if bare else ""
    if rest:
        text += ("; also " if text else "") + rest[0] + "".join(", ." + t.rpartition(".")[2] for t in rest[1:])
    return text
