"""Vertex-wise surfaces: collect-surfaces -> harmonize (out of core) -> export-surfaces, on small synthetic surfaces
written with nibabel (no downloads)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from featharm.cli import main
from featharm.exceptions import InputError
from featharm.io import read_store
from featharm.io.surfaces import collect_surfaces

N_LH, N_RH = 150, 140


def load(path):
    """An MGH image read from its bytes (nibabel's loader leaves MGH files open: a ResourceWarning)."""
    with open(path, "rb") as fh:
        return nib.MGHImage.from_bytes(fh.read())


def _mgh(path, values, affine):
    os.makedirs(path.parent, exist_ok=True)
    nib.save(nib.MGHImage(values.astype(np.float32).reshape(-1, 1, 1), affine), str(path))


def make_subjects_dir(root, n=30, seed=0, gifti_subject="sub-003"):
    """``n`` subjects of 3 sites with thickness on a 150 + 140 vertex target, fwhm 10; one subject's rh as GIFTI;
    an ``fsaverage`` folder (skipped). Returns the covariates."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    (root / "fsaverage" / "surf").mkdir(parents=True)
    rows = []
    base = rng.uniform(2.0, 3.0, N_LH + N_RH)
    for k in range(n):
        sid = f"sub-{k:03d}"
        site = ["A", "B", "C"][k % 3]
        age = 20 + 3 * k
        v = base - 0.005 * (age - 50) + {"A": 0.0, "B": 0.15, "C": -0.1}[site] + rng.normal(0, 0.1, base.size)
        surf = root / sid / "surf"
        _mgh(surf / "lh.thickness.fwhm10.fsaverage.mgh", v[:N_LH], affine)
        if sid == gifti_subject:
            os.makedirs(surf, exist_ok=True)
            img = nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(v[N_LH:].astype(np.float32))])
            nib.save(img, str(surf / "rh.thickness.fwhm10.fsaverage.shape.gii"))
        else:
            _mgh(surf / "rh.thickness.fwhm10.fsaverage.mgh", v[N_LH:], affine)
        rows.append({"subject": sid, "site": site, "age": age})
    return pd.DataFrame(rows)


def test_collect_harmonize_export(tmp_path, capsys):
    sd = tmp_path / "subjects"
    cov = make_subjects_dir(sd)
    cov.to_csv(tmp_path / "cov.csv", index=False)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["collect-surfaces", "subjects", "--measure", "thickness", "--fwhm", "10", "--out", "thick.zarr",
                     "--quiet"]) == 0
        store = read_store("thick.zarr")
        assert store.shape == (30, N_LH + N_RH) and store.dtype == np.float32
        assert list(store.ids) == list(cov["subject"])
        assert list(store.features[:2]) == ["lh.0", "lh.1"] and store.features[N_LH] == "rh.0"
        want = load(sd / "sub-005" / "surf" / "rh.thickness.fwhm10.fsaverage.mgh").get_fdata().ravel()
        assert np.array_equal(store.to_frame().loc["sub-005"].to_numpy()[N_LH:], want.astype(np.float32))
        assert main(["harmonize", "thick.zarr", "--covariates", "cov.csv", "--id", "subject", "--batch", "site",
                     "--formula", "age", "--out", "harm.zarr", "--quiet"]) == 0
        harm = read_store("harm.zarr")
        assert harm.meta["surfaces"]["lh"] == N_LH
        assert main(["export-surfaces", "harm.zarr", "--like", "subjects", "--out", "exported"]) == 0
        assert "wrote 60 surface files" in capsys.readouterr().out
    finally:
        os.chdir(cwd)
    out = load(tmp_path / "exported" / "sub-007" / "surf" / "lh.thickness.fwhm10.fsaverage.mgh")
    src = load(sd / "sub-007" / "surf" / "lh.thickness.fwhm10.fsaverage.mgh")
    assert out.shape == src.shape and np.array_equal(out.affine, src.affine)
    h = harm.to_frame()
    assert np.array_equal(out.get_fdata().ravel().astype(np.float32), h.loc["sub-007"].to_numpy()[:N_LH])
    # the site effect is gone: site means of the harmonized thickness agree far better than the raw ones
    raw = store.to_frame()
    site = cov.set_index("subject")["site"]
    spread = lambda t: np.ptp(t.groupby(site.to_numpy()).mean().mean(axis=1).to_numpy())  # noqa: E731
    assert spread(h) < 0.2 * spread(raw)


def test_missing_and_wrong_surfaces_are_named(tmp_path):
    sd = tmp_path / "subjects"
    make_subjects_dir(sd, n=6)
    os.remove(sd / "sub-004" / "surf" / "lh.thickness.fwhm10.fsaverage.mgh")
    with pytest.raises(InputError, match=r"1 surface file\(s\) are missing.*sub-004 \(lh.thickness.fwhm10.fsaverage"):
        collect_surfaces(sd, "thickness", "fsaverage", 10)
    _mgh(sd / "sub-004" / "surf" / "lh.thickness.fwhm10.fsaverage.mgh", np.zeros(N_LH - 1), np.eye(4))
    with pytest.raises(InputError, match=r"wrong vertex count.*lh 150.*sub-004 lh: 149 vertices"):
        collect_surfaces(sd, "thickness", "fsaverage", 10)
    with pytest.raises(InputError, match="surface file"):
        collect_surfaces(sd, "area", "fsaverage", 10)
