"""Exceptions and warnings raised by featharm.

Every error subclasses a builtin exception (mostly :class:`ValueError`), so code that already catches
``ValueError`` keeps working; the class name says what went wrong and the message names the column,
value or site, and how to fix it.
"""

from __future__ import annotations

import threading

__all__ = [
    "FeatharmError",
    "InputError",
    "ColumnNotFoundError",
    "NonNumericFeatureError",
    "MissingValueError",
    "DuplicateIndexError",
    "AlignmentError",
    "CovariateLookupError",
    "BatchError",
    "UnseenBatchError",
    "UnseenLevelError",
    "ConfoundingError",
    "FormulaError",
    "NotFittedError",
    "ModelFileError",
    "OutputError",
    "FeatharmWarning",
    "ConvergenceWarning",
    "SmallBatchWarning",
    "ConstantFeatureWarning",
    "MissingValueWarning",
    "CollinearityWarning",
    "OutOfRangeError",
    "SingularFitWarning",
    "SingleScanWarning",
    "StatsFileError",
    "MissingStatsError",
    "FederatedError",
    "DisclosureError",
    "FederatedFileError",
    "FreeSurferWarning",
    "UnmatchedIdWarning",
    "LevelNameWarning",
    "DisconnectedSitesError",
    "FeatureGroupError",
    "FeatureGroupWarning",
]


class FeatharmError(Exception):
    """Base class of every error featharm raises on purpose."""


class InputError(FeatharmError, ValueError):
    """The data or the covariates given to featharm cannot be used as they are."""


class ColumnNotFoundError(InputError, KeyError):
    """A column named in the call (batch, covariate, id) is not in the table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NonNumericFeatureError(InputError, TypeError):
    """A feature column does not hold numbers."""


class MissingValueError(InputError):
    """NaN or infinite values where featharm needs finite numbers."""


class DuplicateIndexError(InputError):
    """Row ids (the index) repeat, so rows cannot be matched unambiguously."""


class AlignmentError(InputError):
    """Features and covariates do not describe the same rows, or new data do not match the fitted features."""


class CovariateLookupError(AlignmentError):
    """The rows of ``X`` cannot be looked up in the covariate table given to a model's constructor
    (``ComBat(covariates=table)``): some ids are not in the table, or ``X`` has no row ids (a NumPy array)."""


class BatchError(InputError):
    """Too few batches, or a batch too small for the requested model."""


class UnseenBatchError(BatchError):
    """A batch (site) at transform time was not seen when the model was fitted."""


class UnseenLevelError(InputError):
    """A categorical covariate has a level at transform time that was not seen at fit time."""


class ConfoundingError(InputError):
    """The design is rank deficient: a covariate is confounded with batch or with other covariates."""


class DisconnectedSitesError(ConfoundingError):
    """Traveling-subject data whose sites are not all linked by shared subjects: the biases of sites in
    different groups cannot be compared (the message names the sites not connected to the rest)."""


class FormulaError(InputError):
    """The covariate formula cannot be parsed or evaluated on the covariate table."""


def _not_fitted_error() -> type:
    """:class:`NotFittedError`, made on first use: it subclasses scikit-learn's ``NotFittedError`` (so
    ``except sklearn.exceptions.NotFittedError`` catches it), and importing scikit-learn takes about a
    second, which ``import featharm`` and ``featharm --help`` should not pay."""
    from sklearn.exceptions import NotFittedError as _SkNotFittedError

    class NotFittedError(FeatharmError, _SkNotFittedError):
        """The model is used before :meth:`fit` was called (a scikit-learn ``NotFittedError``, so also a
        ``ValueError`` and an ``AttributeError``)."""

    NotFittedError.__module__ = __name__
    NotFittedError.__qualname__ = "NotFittedError"
    return NotFittedError


def __getattr__(name):
    if name == "NotFittedError":
        cls = globals().get("_NotFittedError") or _not_fitted_error()
        globals()["_NotFittedError"] = cls
        globals()["NotFittedError"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ModelFileError(FeatharmError, ValueError):
    """A saved model file is not a featharm model, is damaged, or has a newer schema."""


class OutputError(FeatharmError, OSError):
    """An output cannot be written: the same file as another output or as an input, a folder that cannot
    be created or written, a full disk. Nothing is written when it is raised (see :mod:`featharm._staging`)."""

    def __str__(self) -> str:  # one message, not OSError's "[Errno n] ..."
        return str(self.args[0]) if self.args else ""


class OutOfRangeError(InputError):
    """A covariate modelled by a spline has values outside the range the spline was fitted on."""


class StatsFileError(InputError):
    """A FreeSurfer stats file or group table is empty, truncated or malformed (the message names file and line)."""


class MissingStatsError(InputError):
    """Subjects lack stats files (or structures) that were asked for; the message lists subjects and files."""


class FederatedError(InputError):
    """Federated harmonization: summaries that do not follow the plan, a batch in two summaries, a plan that
    sites could not code identically (the message names the file, batch, level or feature and the fix)."""


class DisclosureError(FederatedError):
    """A site summary would hold sums over fewer subjects than the plan's min-count (a small batch, a rare
    categorical level in a batch, a feature observed in few subjects of a batch); nothing is written."""


class FederatedFileError(FeatharmError, ValueError):
    """A federated plan (.json) or site summary (.fhs) is not one, is damaged or tampered with, or has a newer
    schema (the message names the file, the entry, what was found and what was expected)."""


class FeatureGroupError(InputError):
    """Measure groups of the features (``priors=`` a mapping, ``--feature-groups FILE``) that do not match the
    features: a feature without a group, a group for a name that is not a feature, a feature listed twice."""


class FeatharmWarning(UserWarning):
    """Base class of featharm's warnings (filter them all with this category)."""


class ConvergenceWarning(FeatharmWarning):
    """An iterative estimate stopped at ``max_iter`` before meeting ``tol``."""


class SmallBatchWarning(FeatharmWarning):
    """A batch has few subjects, so its scale estimate is unstable."""


class CollinearityWarning(FeatharmWarning):
    """A covariate is nearly confounded with batch or other covariates; its effect is poorly identified."""


class ConstantFeatureWarning(FeatharmWarning):
    """Features with no residual variance are passed through unchanged."""


class MissingValueWarning(FeatharmWarning):
    """Missing values handled where the R references stop: a site with no (or one) observed value of a
    feature, or rows left out of the fit for a missing batch label or covariate."""


class FreeSurferWarning(FeatharmWarning):
    """FreeSurfer outputs that can be read but deserve attention (mixed versions, missing data kept, ...)."""


class UnmatchedIdWarning(FeatharmWarning):
    """Ids present in one table (features or covariates) and missing from the other."""


class LevelNameWarning(FeatharmWarning):
    """Levels of a batch or categorical covariate that differ only by case or surrounding spaces."""


class SingularFitWarning(FeatharmWarning):
    """A mixed model's random-effect variance is estimated at 0 (lme4's "boundary (singular) fit")."""


class SingleScanWarning(FeatharmWarning):
    """Longitudinal data with subjects scanned once (or repeated subject/time pairs)."""


class FeatureGroupWarning(FeatharmWarning):
    """A measure group with too few features for its own empirical-Bayes priors takes the prior pooled
    across all features."""


def warn(message: str, category: type[Warning] = FeatharmWarning) -> None:
    """Issue a warning attributed to the first caller outside featharm (the user's line)."""
    import inspect
    import os
    import warnings

    pkg_dir = os.path.dirname(os.path.abspath(__file__))
    frame = inspect.currentframe()
    level = 1
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not fname.startswith(pkg_dir + os.sep):
            break
        frame = frame.f_back
        level += 1
    for log in _logs():  # record_warnings(): kept for the model's fit_warnings_ and the report
        log.append({"category": category.__name__, "message": str(message)})
    warnings.warn(message, category, stacklevel=level)


_LOGS = threading.local()  # each thread's stack of record_warnings() lists


def _logs() -> list[list]:
    """This thread's active :class:`record_warnings` lists (innermost last). Per thread: two models fitted at
    the same time in two threads of one process keep their own ``fit_warnings_``."""
    logs = getattr(_LOGS, "stack", None)
    if logs is None:
        logs = _LOGS.stack = []
    return logs


def add_to_records(entries) -> None:
    """Add warnings recorded in another thread (``{"category", "message"}`` dicts, e.g. a
    :class:`record_warnings` list filled there) to this thread's active records, in order, without issuing
    them again."""
    for log in _logs():
        log.extend(dict(e) for e in entries)


class record_warnings:  # noqa: N801 (used as a context manager)
    """Context manager collecting the warnings featharm issues through :func:`warn` inside it, in this
    thread (see :func:`add_to_records` for work done on other threads).

    The warnings are still issued as usual (filters apply); the context value is a list of
    ``{"category": class name, "message": text}`` dicts, in order. Used to keep a model's
    ``fit_warnings_`` for its report.
    """

    def __enter__(self) -> list:
        self.log: list = []
        _logs().append(self.log)
        return self.log

    def __exit__(self, *exc) -> None:
        logs = _logs()
        for i in range(len(logs) - 1, -1, -1):  # by identity (equal lists may be nested)
            if logs[i] is self.log:
                del logs[i]
                break
