"""Plots for looking at site effects before and after harmonization (matplotlib).

Axes-level functions draw on ``ax`` (default: the current pyplot axes) and return it; figure-level
functions (``*_before_after``, ``*_distributions``, ``preservation_scatters``, ``eb_diagnostics``) build a
:class:`matplotlib.figure.Figure` outside pyplot and return it. Nothing calls ``plt.show()``. User
strings (feature, site and covariate names) are drawn literally (``$`` does not start mathtext).

The statistics drawn come from :mod:`featharm.diagnostics` (the residuals, the standardized site effect of
``site_effect_sizes``, the tests' p-values); functions taking a tidy table (``effect_size_heatmap``,
``pvalue_heatmap``, ``preservation_scatter`` ...) draw the tables of
:func:`featharm.diagnostics.diagnose`, which its result's ``plot_*`` methods pass them. Fitted models are
read through their public attributes only (``eb_diagnostics``); this package never imports the models.

>>> import featharm as fh
>>> from matplotlib.figure import Figure
>>> data = fh.datasets.load_ixi()
>>> ax = Figure().subplots()
>>> ax = fh.plots.site_distribution(data, data, feature="lh_insula_thickness", batch="site", ax=ax)
"""

from ._covariates import covariate_by_site, covariate_distributions
from ._effects import (
    effect_size_heatmap,
    effect_sizes_before_after,
    lins_ccc,
    missing_heatmap,
    pca_before_after,
    preservation_scatter,
    preservation_scatters,
    pvalue_heatmap,
    pvalues_before_after,
    residual_pca,
    site_effect_heatmap,
    site_effects_before_after,
)
from ._features import distributions_before_after, site_distribution, trajectories_before_after, trajectory
from ._model import eb_diagnostics, eb_prior

__all__ = [
    "site_distribution",
    "distributions_before_after",
    "trajectory",
    "trajectories_before_after",
    "residual_pca",
    "pca_before_after",
    "site_effect_heatmap",
    "site_effects_before_after",
    "effect_size_heatmap",
    "effect_sizes_before_after",
    "pvalue_heatmap",
    "pvalues_before_after",
    "preservation_scatter",
    "preservation_scatters",
    "lins_ccc",
    "missing_heatmap",
    "eb_prior",
    "eb_diagnostics",
    "covariate_by_site",
    "covariate_distributions",
]
