"""featharm: statistical harmonization of multi-site MRI regional features.

>>> import featharm as fh
>>> hm = fh.ComBat(batch="site", formula="age + sex")          # doctest: +SKIP
>>> Xh = hm.fit_transform(X, covariates)                        # doctest: +SKIP
>>> hm.save("combat.fhm"); fh.load_model("combat.fhm").transform(Xnew, cov_new)  # doctest: +SKIP
"""

from . import exceptions
from ._version import __version__

# Everything else loads on first use (``fh.ComBat``, ``fh.diagnostics``, ``from featharm import plots``):
# ``import featharm`` and ``featharm --help`` load numpy and pandas only; scikit-learn and scipy come with
# the models, matplotlib, seaborn, jinja2 and statsmodels with the functions that need them.
_LAZY_SUBMODULES = ("datasets", "diagnostics", "federated", "io", "mixed", "plots", "report")
_LAZY_NAMES = {
    "ComBat": "models", "ComBatGAM": "models", "LongComBat": "models", "CovBat": "models",
    "ComBatLS": "models", "BaseHarmonizer": "models", "CovariateDesign": "design",
    # through the models package, which registers every family before a file is read
    "load_model": "models", "save_model": "models",
    "set_scheduler": "_dask", "get_scheduler": "_dask",
    "TravelingSubjects": "models",
    "LongComBatGAM": "models",
}

__all__ = [
    "__version__",
    "ComBat",
    "ComBatGAM",
    "LongComBat",
    "CovBat",
    "ComBatLS",
    "TravelingSubjects",
    "BaseHarmonizer",
    "CovariateDesign",
    "load_model",
    "save_model",
    "set_scheduler",
    "get_scheduler",
    "datasets",
    "diagnostics",
    "exceptions",
    "federated",
    "io",
    "plots",
    "report",
    "mixed",
    "LongComBatGAM",
]


def __getattr__(name):
    import importlib

    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # also binds it on the package
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
