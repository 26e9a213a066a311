"""Site-effect diagnostics for raw and harmonized data (``docs/methods.md`` §6), as tidy DataFrames.

Public API (names and columns are stable; see each docstring for the exact columns):

* :func:`test_site_effects` — per-feature location and scale tests of site, one row per feature × test,
  with raw, BH-FDR and Bonferroni p-values;
* :func:`site_effect_sizes` — per-site standardized shifts and log variance ratios;
* :func:`site_residuals` — the additive and full residuals (ComBatFamQC convention, §6.1);
* :func:`permanova`, :func:`pc_covariance_tests`, :func:`site_classification` — multivariate checks;
* :func:`biology_preservation` — covariate effect sizes before/after harmonization and their summary;
* :func:`covariate_balance` — which covariates differ by site (warns when one is confounded with site);
* :func:`diagnose` — all of the above in one call (what ``featharm diagnose`` writes).
"""

from __future__ import annotations

from .balance import BALANCE_COLUMNS, covariate_balance
from .multivariate import (CLASSIFICATION_COLUMNS, MULTIVARIATE_COLUMNS, pc_covariance_tests, permanova,
                           site_classification)
from .preservation import PRESERVATION_COLUMNS, PRESERVATION_SUMMARY_COLUMNS, Preservation, biology_preservation
from .residuals import Residuals, site_residuals
from .suite import TABLES, diagnose
from .univariate import COLUMNS, DEFAULT_TESTS, TESTS, site_effect_sizes, test_site_effects

__all__ = [
    "test_site_effects",
    "site_effect_sizes",
    "site_residuals",
    "Residuals",
    "permanova",
    "pc_covariance_tests",
    "site_classification",
    "biology_preservation",
    "Preservation",
    "covariate_balance",
    "diagnose",
    "TESTS",
    "DEFAULT_TESTS",
    "COLUMNS",
    "MULTIVARIATE_COLUMNS",
    "CLASSIFICATION_COLUMNS",
    "PRESERVATION_COLUMNS",
    "PRESERVATION_SUMMARY_COLUMNS",
    "BALANCE_COLUMNS",
    "TABLES",
]
