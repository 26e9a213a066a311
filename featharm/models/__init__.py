"""Harmonization models: one module per family, all built on :mod:`featharm.eb` and ``_base``."""

from ._base import BaseHarmonizer
from .combat import ComBat
from .gam import ComBatGAM
from .longitudinal import LongComBat
from .covbat import CovBat
from .combatls import ComBatLS

__all__ = ["BaseHarmonizer", "ComBat", "ComBatGAM", "LongComBat", "CovBat", "ComBatLS"]
