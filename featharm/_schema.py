"""What a saved model may hold, declared as data: its arrays (axes, dtype, values) and its state entries.

A model file is input from a stranger. Each family declares, next to its ``_get_state`` / ``_set_state``:

* ``_stored``: every array it saves, as :class:`Stored` (named axes such as ``("batch", "feature")``, the
  dtype, and a rule on the values, see :data:`VALUE_RULES`);
* ``_check_state(state)``: checks its JSON state entries (the shared ones in ``BaseHarmonizer``, its own
  in an override calling ``super()``) and returns the size of every named axis;
* ``_check_arrays(state, arrays, dims)`` (optional): checks that relate several arrays.

:func:`featharm.persistence.load_model` applies all of them in one place, before any array data is read
(shapes and byte sizes) and before ``_set_state``. A check that fails raises :class:`DamagedState` naming
the entry, what was found and what was expected; the loader turns it into a
:class:`~featharm.exceptions.ModelFileError` naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Stored", "DamagedState", "VALUE_RULES", "AXIS_NAMES", "describe", "check_keys", "check_names",
           "check_levels", "check_int", "check_design"]

# name of each axis in messages
AXIS_NAMES = {
    "batch": "batch",
    "feature": "feature",
    "column": "design column",
    "basis": "spline column",
    "subject": "subject",
    "random": "random effect",
    "component": "component",
    "pc": "principal component",
    "scale_column": "scale column",
    "one": "1",
    "cell": "(batch, feature) cell with missing values",
    "group": "measure group",
}

# value rules of stored arrays: name -> wording in messages (the checks are in featharm.persistence)
VALUE_RULES = {
    "any": "any number",
    "finite": "finite numbers",
    "positive": "finite numbers > 0",
    "nonnegative": "finite numbers >= 0",
    "not_negative": "numbers >= 0 (or NaN)",
    "count": "whole numbers >= 0",
    "flag": "0 or 1",
    "sd": "finite numbers > 0 (>= 0 for constant features)",
    # batch × feature estimates undefined where a batch has no observed value of a feature (n_obs == 0)
    "observed": "finite numbers (NaN only where the batch has no observed value of the feature)",
}

DTYPES = ("float64", "bool")


@dataclass(frozen=True)
class Stored:
    """How one learned array is stored: its named axes, its dtype and what its values may be."""

    axes: tuple[str, ...]
    dtype: str = "float64"
    values: str = "any"
    optional: bool = False  # stored only by some fits (e.g. ``feature_scale``: features rescaled)

    def __post_init__(self):  # a family's declaration, checked when its class is defined
        if self.dtype not in DTYPES or self.values not in VALUE_RULES or not all(a in AXIS_NAMES for a in self.axes):
            raise ValueError(f"invalid stored-array declaration {self!r}: dtype in {sorted(DTYPES)}, values in "
                             f"{sorted(VALUE_RULES)}, axes in {sorted(AXIS_NAMES)}")


class DamagedState(Exception):
    """A saved state entry or array that is not what the family stores (``entry``, ``found``, ``expected``)."""

    def __init__(self, entry: str, found: str, expected: str):
        super().__init__(f"{entry} {found}; expected {expected}")
        self.entry, self.found, self.expected = entry, found, expected


def describe(value: Any, limit: int = 40) -> str:
    """A short description of a JSON value for messages: ``a str ('abc')``, ``a list of 3``, ``true``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'JSON object'} of {len(value)}"
    text = repr(value)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"a{'n' if type(value).__name__[0] in 'aeiou' else ''} {type(value).__name__} ({text})"


def check_keys(d: Any, entry: str, required=(), optional=(), *, closed: bool = True) -> dict:
    """``d`` is a JSON object with the ``required`` keys (and, when ``closed``, no keys but these)."""
    if not isinstance(d, dict):
        raise DamagedState(entry, f"is {describe(d)}", "a JSON object")
    missing = [k for k in required if k not in d]
    if missing:
        raise DamagedState(entry, f"lacks {missing}", f"the entries {list(required)}")
    if closed:
        extra = sorted(set(d) - set(required) - set(optional), key=str)
        if extra:
            raise DamagedState(entry, f"has unexpected entries {extra[:5]}",
                               f"only {sorted([*required, *optional])}")
    return d


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _first_duplicate(values: list):
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def check_names(value: Any, entry: str, what: str, *, allow_empty: bool = False) -> list[str]:
    """A list of unique strings (feature names, design columns ...)."""
    if not isinstance(value, list):
        raise DamagedState(entry, f"is {describe(value)}", f"a list of {what}")
    if not value and not allow_empty:
        raise DamagedState(entry, "is empty", f"a list of {what}")
    bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
    if bad is not None:
        raise DamagedState(f"{entry}[{bad}]", f"is {describe(value[bad])}", f"a list of {what} (strings)")
    dup = _first_duplicate(value)
    if dup is not None:
        raise DamagedState(entry, f"repeats {dup!r}", f"unique {what}")
    return value


def check_levels(value: Any, entry: str, what: str) -> list:
    """A non-empty list of unique levels, all strings or all finite numbers (as ``batch_levels`` gives)."""
    if not isinstance(value, list):
        raise DamagedState(entry, f"is {describe(value)}", f"a list of {what}")
    if not value:
        raise DamagedState(entry, "is empty", f"a list of {what}")
    if isinstance(value[0], str):
        bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
    else:
        bad = next((i for i, v in enumerate(value) if not (_is_number(v) and math.isfinite(v))), None)
    if bad is not None:
        raise DamagedState(f"{entry}[{bad}]", f"is {describe(value[bad])}",
                           f"{what} all strings or all finite numbers")
    dup = _first_duplicate(value)
    if dup is not None:
        raise DamagedState(entry, f"repeats {dup!r}", f"unique {what}")
    return value


def check_int(value: Any, entry: str, lo: int, hi: int | None = None) -> int:
    """An integer (not a bool) in ``[lo, hi]``."""
    span = f">= {lo}" if hi is None else f"from {lo} to {hi}"
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise DamagedState(entry, f"is {describe(value)}", f"an integer {span}")
    return value


def check_design(d: Any, entry: str) -> int:
    """The generic shape of a saved :class:`~featharm.design.CovariateDesign`; returns its column count.

    Only the container is checked (``formula`` a string, ``variables`` a list of strings, ``levels`` a
    dict of lists, ``columns`` a list of unique strings, ``ranges`` a dict, ``float32`` a bool); entries
    this loader does not know are left to :meth:`CovariateDesign.from_dict`.
    """
    check_keys(d, entry, ("formula", "variables", "levels", "columns"), closed=False)
    if not isinstance(d["formula"], str):
        raise DamagedState(f"{entry}.formula", f"is {describe(d['formula'])}", "a string")
    check_names(d["variables"], f"{entry}.variables", "covariate names", allow_empty=True)
    levels = d["levels"]
    if not isinstance(levels, dict):
        raise DamagedState(f"{entry}.levels", f"is {describe(levels)}", "a JSON object of level lists")
    for k, v in levels.items():
        if not isinstance(v, list):
            raise DamagedState(f"{entry}.levels[{k!r}]", f"is {describe(v)}", "a list of levels")
        if v:
            check_levels(v, f"{entry}.levels[{k!r}]", "levels")
    columns = check_names(d["columns"], f"{entry}.columns", "design column names", allow_empty=True)
    if not d["formula"].strip() and columns:
        raise DamagedState(f"{entry}.columns", f"lists {len(columns)} column(s) for an empty formula",
                           "no columns without a formula")
    if "ranges" in d and not isinstance(d["ranges"], dict):
        raise DamagedState(f"{entry}.ranges", f"is {describe(d['ranges'])}", "a JSON object")
    if "float32" in d and not isinstance(d["float32"], bool):
        raise DamagedState(f"{entry}.float32", f"is {describe(d['float32'])}", "true or false")
    return len(columns)
