"""Site-effect diagnostics for raw and harmonized data (``docs/methods.md`` §6), as tidy DataFrames.

Public API (names and columns are stable; see each docstring for the exact columns):

* :func:`diagnose` — everything below in one call, returned as a :class:`DiagnosticsResult` (named tables,
  ``summary()``, ``to_dir()``; what ``featharm diagnose`` writes and the HTML report shows);
* :func:`test_site_effects` — per-feature location and scale tests of site, one row per feature × test,
  with raw, BH-FDR and Bonferroni p-values;
* :func:`site_effect_sizes` — per-site standardized shifts and log variance ratios;
* :func:`site_residuals` — the additive and full residuals (ComBatFamQC convention, §6.1);
* :func:`permanova`, :func:`pc_covariance_tests`, :func:`site_classification`, :func:`site_mixing`
  (silhouette, kBET, iLISI) — multivariate checks;
* :func:`biology_preservation` — covariate effect sizes before/after harmonization and their summary;
* :func:`covariate_balance` — which covariates differ by site (warns when one is confounded with site);
* :func:`traveling_subject_reliability` — on traveling-subject data (the same people at several sites): the
  within-subject between-site SD, ICC and between-site / repeat variance, before and after harmonization.

Feature tables with missing (NaN) cells are accepted (``docs/methods.md`` §6.9): per-feature tests on each
feature's observed rows, multivariate checks on the rows without a missing feature, ``n`` in every table.

The lists of columns and tests are in the submodules (``featharm.diagnostics.univariate.COLUMNS``,
``TESTS``, ``DEFAULT_TESTS``; ``multivariate.MULTIVARIATE_COLUMNS``, ``CLASSIFICATION_COLUMNS``;
``preservation.PRESERVATION_COLUMNS``, ``PRESERVATION_SUMMARY_COLUMNS``; ``balance.BALANCE_COLUMNS``) and the
table names in ``DiagnosticsResult.TABLES``.

This package never imports the harmonization models: :func:`site_classification` and :func:`diagnose`
take a harmonizer as any object with ``get_params`` (cloned with ``sklearn.base.clone``), ``fit_transform``
and ``transform``.
"""

from __future__ import annotations

from ._results import DiagnosticsResult
from .balance import covariate_balance
from .mixing import site_mixing
from .multivariate import pc_covariance_tests, permanova, site_classification
from .preservation import Preservation, biology_preservation
from .residuals import Residuals, site_residuals
from .suite import diagnose
from .univariate import site_effect_sizes, test_site_effects
from .traveling import TravelingSubjectReliability, traveling_subject_reliability

__all__ = [
    "diagnose",
    "DiagnosticsResult",
    "test_site_effects",
    "site_effect_sizes",
    "site_residuals",
    "Residuals",
    "permanova",
    "pc_covariance_tests",
    "site_classification",
    "site_mixing",
    "biology_preservation",
    "Preservation",
    "covariate_balance",
    "traveling_subject_reliability",
    "TravelingSubjectReliability",
]


def __dir__():
    return list(__all__)
