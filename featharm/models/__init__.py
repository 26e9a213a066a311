"""Harmonization models: one module per family, on the arrays-only core (:mod:`featharm._core`) and the
life cycle of ``_base``. Importing this package registers every family with :mod:`featharm.persistence`,
so :func:`load_model` here can read a file of any of them."""

from ..persistence import load_model, save_model
from ._base import BaseHarmonizer
from .combat import ComBat
from .gam import ComBatGAM
from .longitudinal import LongComBat
from .covbat import CovBat
from .combatls import ComBatLS
from .traveling import TravelingSubjects
from .longgam import LongComBatGAM

__all__ = ["BaseHarmonizer", "ComBat", "ComBatGAM", "LongComBat", "CovBat", "ComBatLS", "load_model",
           "save_model", "TravelingSubjects", "LongComBatGAM"]
