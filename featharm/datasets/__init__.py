"""Bundled and simulated data sets."""

from ._ixi import IXI_FEATURES_PATTERN, ixi_feature_columns, load_ixi
from ._simulate import make_multisite

__all__ = ["load_ixi", "ixi_feature_columns", "IXI_FEATURES_PATTERN", "make_multisite"]
