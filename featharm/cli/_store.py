"""``featharm harmonize`` and ``featharm apply`` on a feature store (Zarr; ``featharm.io.store``): out of core.

DATA is one ``STORE.zarr`` (subjects × features with its ids and feature names), the covariates come from
``--covariates FILE`` joined on ``--id COL`` (the column of FILE holding the store's ids), and OUT is another
store, written chunk by chunk into a temporary folder renamed at the end with the other outputs
(``featharm._staging``). The fit reads the store once and the harmonized store is computed as it is
written; ``--scheduler ADDRESS`` runs both on a Dask cluster.
"""

from __future__ import annotations

import contextlib
import fnmatch

from ._common import KB, data_paths

__all__ = ["store_input", "harmonize_store", "apply_store", "scheduler_option"]


def store_input(args) -> bool:
    """Whether DATA is a feature store (a Zarr folder); ``--scheduler`` with a table is an error."""
    from ..exceptions import InputError
    from ..io.store import is_store

    paths = data_paths(args)
    stores = [p for p in paths if is_store(p) or str(p).rstrip("/").endswith(".zarr")]
    if stores and len(paths) > 1:
        raise InputError(f"a feature store is harmonized on its own: give one STORE.zarr as DATA (got {len(paths)} "
                         "inputs).")
    if not stores and getattr(args, "scheduler", None):
        raise InputError("--scheduler runs out-of-core work (DATA a Zarr store) on a Dask cluster; DATA is a table "
                         "held in memory. Leave out --scheduler, or convert the table with featharm.io.write_store.")
    return bool(stores)


@contextlib.contextmanager
def scheduler_option(args):
    """The Dask scheduler of ``--scheduler`` for the block (default: Dask's threads)."""
    from .. import _dask

    addr = getattr(args, "scheduler", None)
    if not addr:
        yield
        return
    _dask.set_scheduler(addr)
    try:
        yield
    finally:
        _dask.set_scheduler(None)


def _check_options(args, command: str) -> None:
    from ..exceptions import InputError

    if not str(args.out).rstrip("/").endswith(".zarr"):
        raise InputError(f"--out {args.out}: DATA is a feature store, so OUT is one too; give it a .zarr name.")
    if not args.covariates or not args.id:
        raise InputError("a feature store holds no covariates: pass --covariates FILE and --id COL (the column of "
                         "FILE holding the store's subject ids).")
    for flag, attr in (("--report", "report"), ("--include", "include"), ("--abcd-event", "abcd_event")):
        if getattr(args, attr, None):
            raise InputError(f"{flag} does not apply to a feature store (DATA.zarr); leave it out.")
    if getattr(args, "missing", "allow") == "error":
        raise InputError("--missing error does not apply to a feature store: its empty cells are harmonized on the "
                         "observed rows and stay empty.")
    if args.float_format != "shortest":
        raise InputError("--float-format applies to text tables; a store keeps the numbers' dtype.")


def _open(args):
    """(store, covariates of its ids in its order)."""
    from ..exceptions import InputError
    from ..io import read_table
    from ..io.store import read_store
    from ._common import check_batch

    store = read_store(data_paths(args)[0])
    cov = read_table(args.covariates, index_col=args.id)
    ids = store.ids
    if ids.dtype != cov.index.dtype:  # a CSV's integer ids match a store's text ids
        cov = cov.set_axis(cov.index.astype(str))
        store.ids = ids = ids.astype(str)
    missing = ids.difference(cov.index, sort=False)
    if len(missing):
        raise InputError(f"{len(missing)} id(s) of the store {data_paths(args)[0]} are not in {args.covariates} "
                         f"(column {args.id!r}): {list(missing[:5])}{' ...' if len(missing) > 5 else ''}. Every "
                         "subject needs covariates.")
    if getattr(args, "batch", None):
        check_batch(cov, args.batch)
    return store, cov.loc[ids]


def _select(args, store):
    """The store with the features of ``--features`` (globs), if given."""
    from ..exceptions import ColumnNotFoundError

    pats = getattr(args, "features", None)
    if not pats:
        return store
    idx = [j for j, c in enumerate(store.features) if any(fnmatch.fnmatchcase(c, p) for p in pats)]
    if not idx:
        raise ColumnNotFoundError(f"no feature of the store matches --features {pats}.")
    return store.with_data(store.data[:, idx], features=store.features[idx])


def _outputs(args, store, model_path=None):
    from .._staging import Output

    nbytes = int(store.data.size * store.data.dtype.itemsize)
    outs = [Output("store", "--out", args.out, size=nbytes, directory=True)]
    if model_path:
        outs.append(Output("model", "--save-model", model_path, size=64 * KB))
    return outs


def _write(staged, args, harmonized) -> None:
    from ..io.store import write_store

    staged.write_directory("store", lambda tmp: write_store(args.out, harmonized, _staged_path=tmp))


def harmonize_store(args, model) -> int:
    from ..persistence import model_bytes
    from ._common import stage

    _check_options(args, "harmonize")
    store, cov = _open(args)
    store = _select(args, store)
    from ._common import priors_summary, set_feature_groups

    set_feature_groups(args, model, list(store.features))
    with scheduler_option(args), stage(args, _outputs(args, store, args.save_model)) as staged:
        model.fit(store, cov)
        _write(staged, args, model.transform(store, cov))
        if args.save_model:
            staged.write("model", model_bytes(model))
    if not args.quiet:
        n, p = store.shape
        left = len(getattr(model, "excluded_rows_", []))
        print(f"harmonized {p} features of {n} subjects from {len(model.batches_)} batches with "
              f"{type(model).__name__} (out of core) -> {args.out}"
              + (f"; model -> {args.save_model}" if args.save_model else "")
              + (f"; {left} row(s) left out for a missing batch or covariate, written empty" if left else "")
              + "; " + priors_summary(model))
    return 0


def apply_store(args, model) -> int:
    from ..exceptions import InputError
    from ._common import stage

    _check_options(args, "apply")
    if getattr(args, "extrapolate", None):
        raise InputError("--extrapolate applies to models with smooth terms; they do not run on a feature store.")
    store, cov = _open(args)
    kw = {}
    if args.new_sites == "estimate":
        kw = {"new_sites": "estimate", "min_new_site_size": args.min_new_site_size}
    with scheduler_option(args), stage(args, _outputs(args, store)) as staged:
        _write(staged, args, model.transform(store, cov, **kw))
    if not args.quiet:
        print(f"applied {type(model).__name__} to {store.shape[0]} subjects, {store.shape[1]} features (out of core) "
              f"-> {args.out}")
    return 0

