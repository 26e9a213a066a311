"""featharm: statistical harmonization of multi-site MRI regional features.

>>> import featharm as fh
>>> hm = fh.ComBat(batch="site", formula="age + sex")          # doctest: +SKIP
>>> Xh = hm.fit_transform(X, covariates)                        # doctest: +SKIP
>>> hm.save("combat.fhm"); fh.load_model("combat.fhm").transform(Xnew, cov_new)  # doctest: +SKIP
"""

from . import datasets, diagnostics, exceptions, io, mixed, plots, report
from ._version import __version__
from .design import CovariateDesign
from .models import BaseHarmonizer, ComBat, ComBatGAM, LongComBat, CovBat, ComBatLS
from .persistence import load_model, save_model

__all__ = [
    "__version__",
    "ComBat",
    "ComBatGAM",
    "LongComBat",
    "CovBat",
    "ComBatLS",
    "BaseHarmonizer",
    "CovariateDesign",
    "load_model",
    "save_model",
    "datasets",
    "diagnostics",
    "exceptions",
    "io",
    "plots",
    "report",
    "mixed",
]
