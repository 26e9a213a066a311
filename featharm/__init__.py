"""featharm: statistical harmonization of multi-site MRI regional features.

>>> import featharm as fh
>>> hm = fh.ComBat(batch="site", formula="age + sex")          # doctest: +SKIP
>>> Xh = hm.fit_transform(X, covariates)                        # doctest: +SKIP
>>> hm.save("combat.fhm"); fh.load_model("combat.fhm").transform(Xnew, cov_new)  # doctest: +SKIP
"""

from . import exceptions
from ._version import __version__
from .design import CovariateDesign
from .models import BaseHarmonizer, ComBat, ComBatGAM, LongComBat, CovBat, ComBatLS
from .persistence import load_model, save_model

# Subpackages imported on first use (``fh.diagnostics``, ``from featharm import plots``), so that
# ``import featharm`` loads only the models (numpy, pandas, scipy, scikit-learn's base): matplotlib,
# seaborn, jinja2 and statsmodels load when a function that needs them runs.
_LAZY_SUBMODULES = ("datasets", "diagnostics", "io", "mixed", "plots", "report")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # also binds it on the package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))

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
