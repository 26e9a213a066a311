"""Vertex-wise surface measures (FreeSurfer ``mris_preproc``/``recon-all -qcache`` outputs) to and from feature
stores (``featharm.io.store``), with nibabel.

Each subject of a SUBJECTS_DIR has, per hemisphere, its measure resampled to a common target surface:
``SUBJ/surf/{lh,rh}.<measure>[.fwhm<F>].<target>.mgh`` (also ``.mgz``, or GIFTI ``.shape.gii`` /
``.func.gii`` with the same stem). :func:`collect_surfaces` reads them into one store (subjects × vertices,
float32, lh then rh; features ``lh.0``, ``lh.1``, ..., ``rh.0``, ...; ids the subjects' folder names),
reading one subject per task as the store is written. :func:`export_surfaces` writes a store's rows back as
one ``.mgh`` per subject and hemisphere with the geometry header of the subject's input file, so
FreeSurfer tools and nilearn read them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..exceptions import InputError

__all__ = ["surface_path", "list_surface_subjects", "collect_surfaces", "export_surfaces"]

HEMIS = ("lh", "rh")
SUFFIXES = (".mgh", ".mgz", ".shape.gii", ".func.gii")


def _nib():
    try:
        import nibabel
    except ImportError:  # pragma: no cover - nibabel comes with featharm[scale]
        raise ImportError("surfaces need nibabel: pip install 'featharm[scale]'.") from None
    return nibabel


def _stem(hemi: str, measure: str, target: str, fwhm) -> str:
    return f"{hemi}.{measure}" + (f".fwhm{fwhm:g}" if fwhm is not None else "") + f".{target}"


def surface_path(subject_dir, hemi: str, measure: str, target: str, fwhm=None) -> Path | None:
    """The file of a subject's hemisphere (the first of :data:`SUFFIXES` that exists), or None."""
    stem = _stem(hemi, measure, target, fwhm)
    for suffix in SUFFIXES:
        p = Path(subject_dir) / "surf" / (stem + suffix)
        if p.is_file():
            return p
    return None


def list_surface_subjects(subjects_dir, target: str) -> list[str]:
    """The subjects of a SUBJECTS_DIR: folders with a ``surf`` folder, except the target and other templates
    (``fsaverage*``), sorted."""
    root = Path(subjects_dir)
    if not root.is_dir():
        raise InputError(f"SUBJECTS_DIR {subjects_dir}: no such folder.")
    out = [d.name for d in sorted(root.iterdir()) if d.is_dir() and (d / "surf").is_dir()
           and d.name != target and not d.name.startswith("fsaverage")]
    if not out:
        raise InputError(f"SUBJECTS_DIR {subjects_dir} holds no subject folder with a surf/ folder.")
    return out


def _load(path: Path):
    """The image, read from its bytes (nibabel's own loader of MGH files leaves the file open)."""
    import gzip

    nib = _nib()
    with open(path, "rb") as fh:
        raw = fh.read()
    name = str(path)
    if name.endswith(".gii"):
        return nib.GiftiImage.from_bytes(raw)
    if name.endswith(".mgz"):
        raw = gzip.decompress(raw)
    try:
        return nib.MGHImage.from_bytes(raw)
    except Exception as exc:  # nibabel raises several kinds for a damaged header
        raise InputError(f"{path}: not a readable MGH file ({type(exc).__name__}: {exc}).") from None


def _read(path: Path) -> np.ndarray:
    img = _load(path)
    if str(path).endswith(".gii"):
        if not img.darrays:
            raise InputError(f"{path}: the GIFTI file holds no data array.")
        return np.asarray(img.darrays[0].data, dtype=np.float32).ravel()
    return np.asarray(img.dataobj, dtype=np.float32).ravel()


def _check(subjects_dir, subjects, measure, target, fwhm):
    """Every subject's files, and the vertex count of each hemisphere (errors name every subject at fault)."""
    files, missing = {}, []
    for s in subjects:
        for h in HEMIS:
            p = surface_path(Path(subjects_dir) / s, h, measure, target, fwhm)
            if p is None:
                missing.append(f"{s} ({_stem(h, measure, target, fwhm)}.mgh)")
            files[s, h] = p
    if missing:
        raise InputError(f"{len(missing)} surface file(s) are missing under {subjects_dir}: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} (looked for surf/<hemi>.<measure>[.fwhm<F>].<target> "
                         f"with {', '.join(SUFFIXES)}). Run recon-all -qcache (or mris_preproc) for them, or remove "
                         "those subjects.")
    sizes = {}
    wrong = []
    for h in HEMIS:
        counts = {}
        for s in subjects:
            p = files[s, h]
            img = _load(p)
            counts[s] = (int(sum(d.data.size for d in img.darrays[:1])) if str(p).endswith(".gii")
                         else int(np.prod(img.shape)))
        values, freq = np.unique(list(counts.values()), return_counts=True)
        sizes[h] = int(values[np.argmax(freq)])
        wrong += [f"{s} {h}: {c} vertices" for s, c in counts.items() if c != sizes[h]]
    if wrong:
        raise InputError(f"surface files with the wrong vertex count (the others have lh {sizes['lh']}, rh "
                         f"{sizes['rh']}): {', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}. Resample them to "
                         f"{target}, or remove those subjects.")
    return files, sizes


def collect_surfaces(subjects_dir, measure: str, target: str = "fsaverage", fwhm=None, *, subjects=None):
    """A lazy :class:`~featharm.io.store.FeatureStore` of every subject's surfaces (see the module docstring);
    write it with :func:`~featharm.io.store.write_store`. The files are checked (present, vertex counts) now
    and read when the store is written."""
    import dask
    import dask.array as da

    from .store import FeatureStore, default_chunks

    subjects = list_surface_subjects(subjects_dir, target) if subjects is None else list(subjects)
    files, sizes = _check(subjects_dir, subjects, measure, target, fwhm)
    V = sizes["lh"] + sizes["rh"]

    def row(s):
        return np.concatenate([_read(files[s, "lh"]), _read(files[s, "rh"])])[None, :]

    read = dask.delayed(row, pure=True)
    rows = [da.from_delayed(read(s), shape=(1, V), dtype=np.float32) for s in subjects]
    data = da.concatenate(rows, axis=0).rechunk(default_chunks((len(subjects), V), 4))
    features = [f"lh.{k}" for k in range(sizes["lh"])] + [f"rh.{k}" for k in range(sizes["rh"])]
    meta = {"surfaces": {"measure": measure, "target": target, "fwhm": fwhm, "lh": sizes["lh"], "rh": sizes["rh"]}}
    return FeatureStore(data, subjects, features, None, meta)


def export_surfaces(store, like, out_dir, *, suffix: str = "") -> int:
    """Write each row of a surface store (made by :func:`collect_surfaces`, e.g. harmonized) as
    ``OUT/<id>/surf/<hemi>.<measure>[.fwhm<F>].<target><suffix>.mgh`` with the header (geometry) of the
    subject's file under ``like`` (its SUBJECTS_DIR). Returns the number of files written."""
    nib = _nib()
    info = store.meta.get("surfaces") if isinstance(store.meta, dict) else None
    if not info:
        raise InputError(f"{store.path or 'the store'} was not made by collect-surfaces (no 'surfaces' entry in its "
                         "metadata): its columns cannot be told apart into hemispheres.")
    measure, target, fwhm = info["measure"], info["target"], info.get("fwhm")
    n_lh, n_rh = int(info["lh"]), int(info["rh"])
    if store.shape[1] != n_lh + n_rh:
        raise InputError(f"the store has {store.shape[1]} columns but its metadata says lh {n_lh} + rh {n_rh}.")
    ids = [str(i) for i in store.ids]
    lacking = [i for i in ids if surface_path(Path(like) / i, "lh", measure, target, fwhm) is None]
    if lacking:
        raise InputError(f"--like {like} lacks the input surfaces of {len(lacking)} subject(s): {lacking[:5]}; their "
                         "geometry headers are needed.")
    from .._dask import compute

    written = 0
    rows = store.data.chunks[0]
    start = 0
    for size in rows:  # one chunk of rows in memory at a time
        block, = compute(store.data[start:start + size], desc="exporting surfaces")
        for k in range(size):
            sid = ids[start + k]
            for h, sl in (("lh", slice(0, n_lh)), ("rh", slice(n_lh, n_lh + n_rh))):
                src = surface_path(Path(like) / sid, h, measure, target, fwhm)
                ref = _load(src)
                values = np.asarray(block[k, sl], dtype=np.float32)
                if str(src).endswith(".gii"):
                    shape, affine, header = (values.size, 1, 1), np.eye(4), None
                else:
                    shape, affine, header = tuple(int(d) for d in ref.shape), ref.affine, ref.header.copy()
                    header.set_data_dtype(np.float32)
                img = nib.MGHImage(values.reshape(shape), affine, header)
                dest = Path(out_dir) / sid / "surf" / (_stem(h, measure, target, fwhm) + suffix + ".mgh")
                os.makedirs(dest.parent, exist_ok=True)
                nib.save(img, str(dest))
                written += 1
        start += size
    return written
