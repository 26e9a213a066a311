"""Bundled and simulated data sets."""

from ._ixi import ixi_feature_columns, ixi_path, load_ixi
from ._simulate import make_multisite
from ._simulate_long import make_lifespan, make_longitudinal
from ._simulate_travel import make_traveling

__all__ = ["load_ixi", "ixi_feature_columns", "ixi_path", "make_multisite", "make_longitudinal", "make_lifespan",
           "make_traveling"]
