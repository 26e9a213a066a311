"""``featharm collect-surfaces`` and ``featharm export-surfaces``: vertex-wise surfaces to and from a Zarr feature
store (``featharm.io.surfaces``), for ``featharm harmonize STORE.zarr ...`` in between."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("collect-surfaces", help="collect vertex-wise surfaces of a SUBJECTS_DIR into a Zarr store",
                       description="Read every subject's surf/{lh,rh}.MEASURE[.fwhmF].TARGET.mgh (or .mgz, "
                                   ".shape.gii, .func.gii) into one feature store: subjects x vertices, float32, lh "
                                   "then rh, ids from the subjects' folder names (templates such as fsaverage "
                                   "skipped). Harmonize it with 'featharm harmonize STORE.zarr --covariates ...'.")
    c.add_argument("subjects_dir", metavar="SUBJECTS_DIR", help="FreeSurfer SUBJECTS_DIR")
    c.add_argument("--measure", required=True, help="surface measure, e.g. thickness, area, volume")
    c.add_argument("--target", default="fsaverage", help="target surface the measure is resampled to (default "
                                                         "fsaverage)")
    c.add_argument("--fwhm", type=float, metavar="F", help="smoothing in the file names (fwhmF); default: none")
    c.add_argument("--out", required=True, metavar="STORE.zarr", help="output feature store")
    c.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    c.set_defaults(func=cmd_collect_surfaces)
    e = sub.add_parser("export-surfaces", help="write a surface store's rows as .mgh files",
                       description="Write each subject of a store made by collect-surfaces (e.g. harmonized) as "
                                   "OUT/SUBJECT/surf/{lh,rh}.MEASURE[.fwhmF].TARGET.mgh with the geometry header of "
                                   "the subject's input file under --like.")
    e.add_argument("store", metavar="STORE.zarr", help="feature store made by collect-surfaces (or harmonized)")
    e.add_argument("--like", required=True, metavar="SUBJECTS_DIR", help="the SUBJECTS_DIR the surfaces came from")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder (new, or empty)")
    e.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    e.set_defaults(func=cmd_export_surfaces)
    return c


def cmd_collect_surfaces(args) -> int:
    from .._staging import Output, staged_outputs
    from ..exceptions import InputError
    from ..io.store import write_store
    from ..io.surfaces import collect_surfaces

    if not str(args.out).rstrip("/").endswith(".zarr"):
        raise InputError(f"--out {args.out}: the surfaces are written to a Zarr feature store; give it a .zarr name.")
    fwhm = None if args.fwhm is None else (int(args.fwhm) if float(args.fwhm).is_integer() else args.fwhm)
    store = collect_surfaces(args.subjects_dir, args.measure, args.target, fwhm)
    size = int(store.data.size * 4)
    with staged_outputs([Output("store", "--out", args.out, size=size, directory=True)],
                        [("SUBJECTS_DIR", args.subjects_dir)]) as staged:
        staged.write_directory("store", lambda tmp: write_store(args.out, store, _staged_path=tmp))
    if not args.quiet:
        info = store.meta["surfaces"]
        print(f"collected {args.measure} of {store.shape[0]} subjects ({info['lh']} + {info['rh']} vertices) -> "
              f"{args.out}")
    return 0


def cmd_export_surfaces(args) -> int:
    from .._staging import Output, staged_outputs
    from ..io.store import read_store
    from ..io.surfaces import export_surfaces

    store = read_store(args.store)
    n = [0]
    with staged_outputs([Output("dir", "--out", args.out, size=int(store.data.size * 4), directory=True)],
                        [("STORE", args.store), ("--like", args.like)]) as staged:
        staged.write_directory("dir", lambda tmp: n.__setitem__(0, export_surfaces(store, args.like, tmp)))
    if not args.quiet:
        print(f"wrote {n[0]} surface files of {store.shape[0]} subjects -> {args.out}")
    return 0
