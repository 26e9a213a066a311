"""What the report reads from a fitted harmonizer: a small protocol, so the report never imports the models.

featharm's models (``ComBat``, ``ComBatGAM``, ``LongComBat``, ``CovBat``, ``ComBatLS``) satisfy it; their
``report()`` method calls :func:`featharm.report.make_report` with ``model=self``. Any other object with
these attributes and methods can be reported on the same way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pandas as pd

__all__ = ["ReportableModel", "OPTIONAL_ATTRIBUTES", "model_formula", "model_groups"]


@runtime_checkable
class ReportableModel(Protocol):
    """A fitted harmonizer as :func:`~featharm.report.make_report` uses it.

    Required
    --------
    batch : str
        The batch (site) column (default of ``make_report``'s ``batch``).
    batches_ : array
        The batch levels seen at fit (its presence marks the model as fitted).
    feature_names_in_ : array of str
        The features, in order.
    design_ :
        The covariate design, with ``.columns`` (design column names) and ``.formula``.
    get_params(deep=False) -> dict
        The parameters (shown, and recorded in the provenance).
    transform(X, covariates) -> DataFrame
        The harmonized features (when ``X_harmonized`` is not given).

    The site classification refits a clone of the model in every training fold
    (``sklearn.base.clone``, ``fit_transform``, ``transform``). Optional attributes, used when present, are
    listed in :data:`OPTIONAL_ATTRIBUTES`.
    """

    batch: Any
    batches_: Any
    feature_names_in_: Any
    design_: Any

    def get_params(self, deep: bool = True) -> dict: ...

    def transform(self, X, covariates=None) -> pd.DataFrame: ...


#: Attributes the report uses when a model has them: the covariates of the diagnostics (``formula``,
#: ``smooth``), the classification's subject grouping (``subject``), the fit's warnings and the
#: empirical-Bayes estimates it shows.
OPTIONAL_ATTRIBUTES = ("formula", "smooth", "subject", "fit_warnings_", "priors_", "n_iter_", "batch_sizes_",
                       "gamma_hat_", "delta_hat_", "gamma_star_", "delta_star_", "constant_features_",
                       "bias_", "scale_")


def model_formula(model) -> str | None:
    """The model's covariates as a linear formula for the diagnostics: smooth terms ``s(x)`` (and a GAM's
    ``smooth`` columns) enter linearly. Parsed by featharm's formula grammar."""
    from ..formula import parse_formula

    design = getattr(model, "design_", None)
    f = getattr(model, "formula", None)
    f = f if f is not None else (getattr(design, "formula", None) if design is not None else None)
    parsed = parse_formula(f)
    terms = [parsed.without_smooth(), *parsed.smooth_terms()]
    smooth = getattr(model, "smooth", None)
    terms += [smooth] if isinstance(smooth, str) else list(smooth or [])
    terms = list(dict.fromkeys(t.strip() for t in terms if t and t.strip()))
    return " + ".join(terms) or None


def model_groups(model, covariates: pd.DataFrame) -> str | None:
    """The subject column of a longitudinal model (the classification keeps each subject in one fold)."""
    groups = getattr(model, "subject", None) if model is not None else None
    return groups if isinstance(groups, str) and groups in covariates.columns else None
