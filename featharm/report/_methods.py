"""A methods paragraph for a paper, from a fitted harmonizer (in the spirit of fMRIPrep's boilerplate).

:func:`methods_text` writes what a reader needs to reproduce the harmonization: featharm's version, the
model family and every option, the covariate formula, the numbers of sites, subjects and features, and the
references. The family's wording and references come from :data:`FAMILY_METHODS`, a table keyed by the
model's class name: a new family adds one entry (:func:`register_family`); a family without an entry gets
a generic sentence, the ComBat references and a note saying so. The model is read through its public
attributes only (:mod:`featharm.report._protocol`), never imported.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import pandas as pd

__all__ = ["methods_text", "methods_references", "FAMILY_METHODS", "REFERENCES", "register_family"]

#: The references a methods paragraph may cite, by key: (in-text citation, full reference).
REFERENCES: dict[str, tuple[str, str]] = {
    "johnson2007": ("Johnson et al., 2007",
                    "Johnson WE, Li C, Rabinovic A (2007). Adjusting batch effects in microarray expression data "
                    "using empirical Bayes methods. Biostatistics 8(1):118-127. doi:10.1093/biostatistics/kxj037"),
    "fortin2017": ("Fortin et al., 2017",
                   "Fortin JP, Parker D, Tunç B, et al. (2017). Harmonization of multi-site diffusion tensor imaging "
                   "data. NeuroImage 161:149-170. doi:10.1016/j.neuroimage.2017.08.047"),
    "fortin2018": ("Fortin et al., 2018",
                   "Fortin JP, Cullen N, Sheline YI, et al. (2018). Harmonization of cortical thickness "
                   "measurements across scanners and sites. NeuroImage 167:104-120. "
                   "doi:10.1016/j.neuroimage.2017.11.024"),
    "zhang2018": ("Zhang et al., 2018",
                  "Zhang Y, Jenkins DF, Manimaran S, Johnson WE (2018). Alternative empirical Bayes models for "
                  "adjusting for batch effects in genomic studies. BMC Bioinformatics 19:262"),
    "pomponio2020": ("Pomponio et al., 2020",
                     "Pomponio R, Erus G, Habes M, et al. (2020). Harmonization of large MRI datasets for the "
                     "analysis of brain imaging patterns throughout the lifespan. NeuroImage 208:116450. "
                     "doi:10.1016/j.neuroimage.2019.116450"),
    "beer2020": ("Beer et al., 2020",
                 "Beer JC, Tustison NJ, Cook PA, et al. (2020). Longitudinal ComBat: A method for harmonizing "
                 "longitudinal multi-scanner imaging data. NeuroImage 220:117129. "
                 "doi:10.1016/j.neuroimage.2020.117129"),
    "chen2022": ("Chen et al., 2022",
                 "Chen AA, Beer JC, Tustison NJ, et al. (2022). Mitigating site effects in covariance for machine "
                 "learning in neuroimaging data. Human Brain Mapping 43(4):1179-1195. doi:10.1002/hbm.25688"),
    "gardner2025": ("Gardner et al., 2025",
                    "Gardner M, Shinohara RT, Bethlehem RAI, et al. (2025). ComBatLS: A location- and "
                    "scale-preserving method for multi-site image harmonization. Human Brain Mapping. "
                    "doi:10.1002/hbm.70197"),
    "horng2022": ("Horng et al., 2022",
                  "Horng H, Singh A, Yousefi B, et al. (2022). Generalized ComBat harmonization methods for "
                  "radiomic features with multi-modal distributions and multiple batch effects. Scientific "
                  "Reports 12:4493"),
    "yamashita2019": ("Yamashita et al., 2019",
                      "Yamashita A, Yahata N, Itahashi T, et al. (2019). Harmonization of resting-state functional "
                      "MRI data across multiple imaging sites via the separation of site differences into "
                      "sampling bias and measurement bias. PLoS Biology 17(4):e3000042. "
                      "doi:10.1371/journal.pbio.3000042"),
}

_COMBAT = ("johnson2007", "fortin2017", "fortin2018")


@dataclass(frozen=True)
class FamilyText:
    """How a methods paragraph names a family: ``title`` (the method's name in the text), ``model`` (one
    sentence on the model; ``{param}`` fields are filled from ``get_params()``, ``{formula}`` with the
    covariates) and the keys of its ``references`` (in :data:`REFERENCES`), the family's own paper last."""

    title: str
    model: str
    references: tuple[str, ...]


_LOCATION_SCALE = ("Each feature was modelled as y = α + Xβ + γ_site + δ_site·ε, with the covariates {formula} "
                   "preserved and additive (γ) and multiplicative (δ) site effects removed.")

#: Wording and references per model family, keyed by the class name of the model.
FAMILY_METHODS: dict[str, FamilyText] = {
    "ComBat": FamilyText("ComBat", _LOCATION_SCALE, _COMBAT),
    "ComBatGAM": FamilyText(
        "ComBat-GAM",
        "Each feature was modelled as y = α + f(smooth covariates) + Xβ + γ_site + δ_site·ε, with the smooth terms "
        "{smooth} fitted as penalized regression splines (df = {df}, smoothing chosen by {method}) and the "
        "covariates {formula} preserved; additive (γ) and multiplicative (δ) site effects were removed.",
        _COMBAT + ("pomponio2020",)),
    "LongComBat": FamilyText(
        "longitudinal ComBat",
        "Each feature was modelled with a linear mixed model with a random intercept per subject (subject "
        "column '{subject}'; random slope: {random_slope}), the covariates {formula} preserved and additive "
        "and multiplicative site effects removed.",
        _COMBAT + ("beer2020",)),
    "CovBat": FamilyText(
        "CovBat",
        _LOCATION_SCALE + " The site effects in the covariance of the residuals were then removed by a ComBat "
        "step on their principal-component scores (components explaining {percent_var} of the variance; "
        "n_components = {n_components}).",
        _COMBAT + ("chen2022",)),
    "ComBatLS": FamilyText(
        "ComBatLS",
        "Each feature was modelled as y ~ N(μ(x) + γ_site, δ²_site·σ²(x)), with the covariates {formula} in the "
        "mean and {scale_formula} in the log standard deviation preserved; additive (γ) and multiplicative (δ) "
        "site effects were removed.",
        _COMBAT + ("gardner2025",)),
    "NestedComBat": FamilyText(
        "Nested ComBat",
        "ComBat was applied once per batch variable, in turn, each time with the covariates {formula} preserved.",
        _COMBAT + ("horng2022",)),
    "LongComBatGAM": FamilyText(
        "longitudinal ComBat-GAM",
        "Each feature was modelled with a mixed model with a random intercept per subject and smooth covariate "
        "effects (penalized regression splines), the covariates {formula} preserved and additive and "
        "multiplicative site effects removed.",
        _COMBAT + ("pomponio2020", "beer2020")),
    "TravelingSubjects": FamilyText(
        "traveling-subject harmonization",
        "Measurement bias per site was estimated from the subjects scanned at several sites and removed.",
        ("yamashita2019",)),
}


def register_family(name: str, title: str, model: str, references) -> None:
    """Add (or replace) the methods wording of a model family, keyed by its class name. ``references`` are
    keys of :data:`REFERENCES` (add new ones there first)."""
    refs = tuple(references)
    unknown = [r for r in refs if r not in REFERENCES]
    if unknown:
        from ..exceptions import InputError

        raise InputError(f"register_family: unknown reference key(s) {unknown}; known: {sorted(REFERENCES)}. "
                         "Add the reference to featharm.report.REFERENCES first.")
    FAMILY_METHODS[str(name)] = FamilyText(str(title), str(model), refs)


class _Params(dict):
    def __missing__(self, key):
        return "unspecified"


def _fill(template: str, params: dict) -> str:
    """Fill ``{name}`` fields of our own templates (no attribute access or indexing is allowed in them)."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    if any(not f.isidentifier() for f in fields):
        raise ValueError(f"methods template fields must be plain names: {fields}")
    return template.format_map(_Params(params))


def _value(v) -> str:
    if isinstance(v, pd.DataFrame):
        return f"a table of {v.shape[0]} rows"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def _formula(model) -> str:
    f = getattr(model, "formula", None)
    if f is None:
        f = getattr(getattr(model, "design_", None), "formula", None)
    return f"'{f}'" if f else "(none: grand mean only)"


def _counts(model, X, covariates, n_subjects):
    sites = list(getattr(model, "batches_", []))
    feats = getattr(model, "n_features_in_", None)
    if feats is None and getattr(model, "feature_names_in_", None) is not None:
        feats = len(model.feature_names_in_)
    if X is not None:
        feats = X.shape[1]
    sizes = getattr(model, "batch_sizes_", None)
    if n_subjects is None and X is not None:
        n_subjects = len(X)
    if n_subjects is None and sizes is not None:
        n_subjects = int(pd.Series(sizes).sum())
    size_range = None
    if covariates is not None and getattr(model, "batch", None) in getattr(covariates, "columns", ()):
        c = covariates[model.batch].value_counts()
        size_range = (int(c.min()), int(c.max()))
    elif sizes is not None and len(sizes):
        s = pd.Series(sizes)
        size_range = (int(s.min()), int(s.max()))
    return len(sites), n_subjects, feats, size_range


def _subjects(n) -> str:
    if n is None:
        return "an unrecorded number of subjects"
    return n if isinstance(n, str) else f"{n} subjects"


def _groups_words(model) -> str | None:
    """'thickness (34 features), volume (14 features)' for a model with priors per measure group, else None
    (one pool)."""
    groups = getattr(model, "feature_groups_", None)
    if groups is None or not len(groups):
        return None
    counts = pd.Series(groups).value_counts(sort=False)
    if len(counts) < 2:
        return None
    return ", ".join(f"{g} ({n} features)" for g, n in counts.items())


def _eb_words(params: dict, model=None) -> str:
    if "eb" not in params:
        return ""
    groups = _groups_words(model) if model is not None else None
    pool = f"one pair of priors per site and measure: {groups}" if groups else "pooled over features"
    if not params.get("eb"):
        out = "The site effects were estimated per site without empirical-Bayes shrinkage"
    elif params.get("parametric", True):
        out = ("The site effects were estimated with parametric empirical Bayes (per site, a normal prior on the "
               f"additive and an inverse-gamma prior on the multiplicative effects, {pool})")
    else:
        out = ("The site effects were estimated with non-parametric empirical Bayes (Monte-Carlo integration over "
               + (f"the other features of the same measure: {groups})" if groups else "the other features' estimates)"))
    if params.get("mean_only"):
        out += "; only the additive effects were removed (mean_only)"
    if params.get("ref_batch") is not None:
        out += f"; site '{params['ref_batch']}' was the reference batch (its data left unchanged)"
    return out + "."


def _reference_keys(model, params: dict) -> list[str]:
    fam = FAMILY_METHODS.get(type(model).__name__)
    keys = list(fam.references if fam else _COMBAT)
    if (params.get("ref_batch") is not None or params.get("mean_only")) and "zhang2018" not in keys:
        keys.append("zhang2018")  # the reference-batch and mean-only variants
    return keys


def methods_references(model) -> list[str]:
    """The full references of the model's methods paragraph, in citation order."""
    return [REFERENCES[k][1] for k in _reference_keys(model, model.get_params(deep=False))]


def methods_text(model, X=None, covariates=None, *, n_subjects=None, references: bool = True) -> str:
    """A methods paragraph describing a fitted harmonization, ready to paste into a paper.

    Parameters
    ----------
    model : fitted harmonizer
        Read through its attributes (``batch``, ``batches_``, ``batch_sizes_``, ``n_features_in_``,
        ``formula``/``design_``) and ``get_params()``; any family works, the wording of those in
        :data:`FAMILY_METHODS` is specific.
    X, covariates : DataFrame, optional
        The data harmonized (for the numbers of subjects and features and the site sizes); default the
        numbers the model recorded at fit.
    n_subjects : int, optional
        Number of distinct subjects, when it differs from the rows (longitudinal data).
    references : bool, default True
        Append the full references.

    Returns
    -------
    str
        Plain text: one paragraph, then ``References`` (one per line).

    Examples
    --------
    >>> import featharm as fh
    >>> sim = fh.datasets.make_multisite(n_subjects=90, n_sites=3, n_features=4, random_state=0)
    >>> hm = fh.ComBat(batch="site", formula="age + sex").fit(sim.X, sim.covariates)
    >>> print(fh.report.methods_text(hm).splitlines()[0][:60])
    Site effects were removed with ComBat (Johnson et al., 2007;
    """
    from .._version import __version__
    from ..exceptions import NotFittedError

    if not hasattr(model, "batches_"):
        raise NotFittedError(f"methods_text needs a fitted model; this {type(model).__name__} is not fitted. "
                             "Call fit first.")
    name = type(model).__name__
    fam = FAMILY_METHODS.get(name)
    params = model.get_params(deep=False)
    n_sites, n_subj, n_feat, size_range = _counts(model, X, covariates, n_subjects)
    keys = _reference_keys(model, params)
    cites = "; ".join(REFERENCES[k][0] for k in keys)
    title = fam.title if fam else name
    fill = {k: _value(v) for k, v in params.items()}
    fill["formula"] = _formula(model)
    smooth = params.get("smooth")
    fill["smooth"] = ", ".join(f"s({s})" for s in ([smooth] if isinstance(smooth, str) else list(smooth or [])))
    fill["smooth"] = fill["smooth"] or "none"
    sizes = f" ({size_range[0]} to {size_range[1]} per site)" if size_range else ""
    subject = getattr(model, "subject", None)
    if n_subjects is None and covariates is not None and isinstance(subject, str) and subject in covariates.columns:
        n_distinct = int(covariates[subject].nunique())
        if n_distinct != n_subj:
            sizes = f" of {n_distinct} subjects{sizes.replace(' per site', ' scans per site')}"
            n_subj = f"{n_subj} scans"
    batch = getattr(model, "batch", "site")
    parts = [f"Site effects were removed with {title} ({cites}), as implemented in featharm {__version__} "
             f"(model {name}).",
             f"The data comprised {_subjects(n_subj)}{sizes} from {n_sites} sites (batch variable '{batch}') and "
             f"{n_feat} features, harmonized feature by feature.",
             _fill(fam.model, fill) if fam else
             f"The covariates {fill['formula']} were preserved and site effects removed.",
             _eb_words(params, model)]
    # the options that decide the numbers (not the thread count or a covariate lookup table)
    options = ", ".join(f"{k} = {_value(v)}" for k, v in params.items() if k not in ("n_jobs", "covariates"))
    parts.append(f"All options of {name}: {options}.")
    if fam is None:
        parts.append(f"(featharm has no specific methods wording for {name}; the ComBat references are given. "
                     "Add the family with featharm.report.register_family.)")
    text = " ".join(p for p in parts if p)
    if references:
        text += "\n\nReferences\n" + "\n".join(REFERENCES[k][1] for k in keys)
    return text
