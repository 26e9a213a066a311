"""A simulated table shaped like the 1000 Functional Connectomes FreeSurfer table (many small sites).

The real table (23 sites, 1078 subjects, 150 Destrieux thickness and 37 aseg volumes ...) may not be
shipped, so tests, benchmarks and the report screenshots use this stand-in: the ComBat-style simulation of
:func:`~featharm.datasets.make_multisite` (known site effects), with FreeSurfer column names
(``lh_G&S_frontomargin_thickness`` ..., ``Left-Hippocampus`` ..., ``EstimatedTotalIntraCranialVol``), volume
scales for the volumes, city-like site names of varying length, unbalanced sites down to 3 subjects,
ages that differ by site and sex coded 0/1.
"""

from __future__ import annotations

import numpy as np

from ._freesurfer_synth import A2009S, ASEG
from ._simulate import Simulation, make_multisite

_GLOBALS = ("BrainSegVol BrainSegVolNotVent BrainSegVolNotVentSurf lhCortexVol rhCortexVol CortexVol "
            "lhCerebralWhiteMatterVol rhCerebralWhiteMatterVol CerebralWhiteMatterVol SubCortGrayVol TotalGrayVol "
            "SupraTentorialVol SupraTentorialVolNotVent SupraTentorialVolNotVentVox MaskVol BrainSegVol-to-eTIV "
            "MaskVol-to-eTIV lhSurfaceHoles rhSurfaceHoles SurfaceHoles EstimatedTotalIntraCranialVol "
            "lh_MeanThickness_thickness rh_MeanThickness_thickness lh_WhiteSurfArea_area rh_WhiteSurfArea_area "
            "lh_MeanThickness_area rh_MeanThickness_area").split()
_CITIES = ("AnnArbor Atlanta Baltimore Bangor Beijing_Zang Berlin_Margulies Cambridge_Buckner Cleveland ICBM Leiden "
           "Leipzig Milwaukee Munchen Newark NewHaven NewYork_a NewYork_b Orangeburg Oulu Oxford PaloAlto Queensland "
           "SaintLouis Taipei Wuhan").split()


def freesurfer_names(n_features: int) -> list[str]:
    """``n_features`` FreeSurfer table column names: Destrieux thickness (both hemispheres), aseg volumes,
    global measures, then Destrieux areas (numbered beyond those)."""
    a2009 = [r.replace("_and_", "&") for r in A2009S]
    names = [f"{h}_{r}_thickness" for h in ("lh", "rh") for r in a2009] + [n for _, n in ASEG] + list(_GLOBALS)
    names += [f"{h}_{r}_area" for h in ("lh", "rh") for r in a2009]
    names += [f"extra{i:04d}" for i in range(max(0, n_features - len(names)))]
    return names[:n_features]


def site_names(n_sites: int) -> list[str]:
    """City-like site names (``AnnArbor_a``, ``Cambridge_Buckner_b`` ...), unique and sorted."""
    out = [f"{c}_{chr(97 + k)}" for k in range(26) for c in _CITIES]
    return sorted(out[:n_sites])


def make_fcon1000_like(n_sites: int = 23, n_subjects: int = 1078, n_features: int = 218, *,
                       small_sites: bool = True, random_state=0) -> Simulation:
    """A many-site table like the fcon1000 one: :func:`make_multisite` (site mean ages spread over 35 years,
    unbalanced sites) with
    FreeSurfer column names, aseg/global columns on a volume scale (x 1000), sex coded 0/1 and, with
    ``small_sites``, the two smallest sites cut to 3 and 8 subjects. ``truth``, ``gamma`` and ``delta``
    carry the same names (``gamma``/``delta`` on the standardized scale, unchanged by the volume scaling)."""
    # site mean ages spread over 35 years whatever the number of sites (about 1.5 years apart at 23 sites)
    shift = 35.0 / max(n_sites - 1, 1)
    sim = make_multisite(n_subjects=n_subjects, n_sites=n_sites, n_features=n_features, site_age_shift=shift,
                         age_effect=-0.008, random_state=random_state)
    names = freesurfer_names(n_features)
    sites = site_names(n_sites)
    scale = np.array([1000.0 if not n.endswith("_thickness") else 1.0 for n in names])
    site_map = dict(zip(sorted(sim.gamma.index), sites))
    cov = sim.covariates.assign(site=sim.covariates["site"].map(site_map),
                                sex=(sim.covariates["sex"] == "M").astype(int),
                                age=(sim.covariates["age"] - 12.0).clip(8, 85))
    X = sim.X.set_axis(names, axis=1) * scale
    truth = sim.truth.set_axis(names, axis=1) * scale
    keep = np.ones(len(cov), dtype=bool)
    if small_sites and n_sites >= 4:
        counts = cov["site"].value_counts(sort=True, ascending=True)
        for site, size in zip(counts.index[:2], (3, 8)):
            rows = np.flatnonzero(cov["site"].to_numpy() == site)
            keep[rows[size:]] = False
    gamma = sim.gamma.set_axis(names, axis=1).rename(index=site_map)
    delta = sim.delta.set_axis(names, axis=1).rename(index=site_map)
    return Simulation(X=X.loc[keep], covariates=cov.loc[keep], truth=truth.loc[keep], gamma=gamma, delta=delta,
                      beta=sim.beta.set_axis(names, axis=1))
