"""Input checks shared by every model: tables, ids, columns, batches, parameters.

Each check raises a named featharm error (a subclass of a builtin) whose message names the column, value
or site and says how to fix it.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ._core.blocks import column_range, column_sum, iter_blocks
from .exceptions import (
    AlignmentError,
    BatchError,
    ColumnNotFoundError,
    DuplicateIndexError,
    FormulaError,
    InputError,
    LevelNameWarning,
    MissingValueError,
    NonNumericFeatureError,
    SmallBatchWarning,
    UnseenBatchError,
    warn,
)

SMALL_BATCH = 10


def _show(values, k: int = 5) -> str:
    values = _unique(values)
    head = ", ".join(map(repr, values[:k]))
    return head + (f" and {len(values) - k} more" if len(values) > k else "")


def _unique(values) -> list:
    """``values`` without repeats, in order (a message lists each id, level or name once)."""
    try:
        return list(dict.fromkeys(values))
    except TypeError:  # unhashable values: keep them all
        return list(values)


def show_rows(index, mask, k: int = 3) -> str:
    """``"row 'sub-004'"`` / ``"rows 5, 9 and 2 more"``: the labels of the rows in ``mask``."""
    ids = index[np.asarray(mask, dtype=bool)]
    return f"row{'s' if len(ids) > 1 else ''} {_show(ids, k)}"


def show_columns(columns, k: int = 12) -> str:
    """A column list for an error message, cut after ``k`` names."""
    cols = [str(c) for c in columns]
    return str(cols[:k])[:-1] + (f", ... ({len(cols) - k} more)]" if len(cols) > k else "]")


def check_integer(name: str, value, owner: str, minimum: int = 1) -> None:
    """``value`` must be an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        if minimum == 0:
            what = "a non-negative integer"
        raise InputError(f"The {name!r} parameter of {owner} must be {what}. Got {value!r} instead.")


def check_positive_number(name: str, value, owner: str) -> None:
    """``value`` must be a real number (not a bool) above 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise InputError(f"The {name!r} parameter of {owner} must be a positive number. Got {value!r} instead.")


def check_option(name: str, value, allowed, owner: str) -> None:
    if value not in allowed:
        raise InputError(
            f"The {name!r} parameter of {owner} must be one of {list(allowed)}. Got {value!r} instead."
        )


# ----------------------------------------------------------------------------- text columns that hold numbers
# A text column is judged by what most of its values are. When at least this share of its non-missing
# values are numbers, it is a numeric column spoiled by a few cells ("n/a?", a quoted "2,45", "45y"), not
# a text column: site names, sex or diagnosis labels hold (almost) no numbers, a spoiled column almost only
# numbers, so any share between about 20 % and 95 % separates them; 80 % leaves room on both sides.
NUMERIC_SHARE = 0.8

# A categorical covariate with more distinct values than this that look like numbers is a numeric
# covariate read as text; a few coded levels ("0"/"1", "1.5T"/"3T") stay a legitimate factor.
NUMERIC_TEXT_LEVELS = 10

_DECIMAL_COMMA = re.compile(r"[-+]?\d*,\d+")
# a number followed by a short unit: "45y", "45 yrs", "3T", "2,5mm"
_NUMBER_WITH_UNIT = re.compile(r"[-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][-+]?\d+)?\s*[^\W\d_]{1,5}\.?")


def number_cells(s: pd.Series, *, units: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three masks over the cells of a column: present (not missing), a finite number, number-like.

    Number-like cells are the numbers and the numbers written with a decimal comma (``"2,45"``); with
    ``units`` also numbers followed by a short unit (``"45y"``, ``"3 T"``).
    """
    present = s.notna().to_numpy()
    number = np.zeros(len(s), dtype=bool)
    like = np.zeros(len(s), dtype=bool)
    if present.any():
        txt = s[present].astype(str).str.strip()
        num = pd.to_numeric(txt, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        number[present] = np.isfinite(num)
        ok = number[present] | txt.str.fullmatch(_DECIMAL_COMMA).to_numpy(dtype=bool, na_value=False)
        if units:
            ok |= txt.str.fullmatch(_NUMBER_WITH_UNIT).to_numpy(dtype=bool, na_value=False)
        like[present] = ok
    return present, number, like


def numbers_with_text(s: pd.Series) -> np.ndarray | None:
    """The cells of a text column that are not numbers, when it is a numeric column spoiled by them.

    That is: at least :data:`NUMERIC_SHARE` of its non-missing cells are numbers (a decimal comma counts,
    so a column written ``"2,45"`` throughout is caught too) and some are not. ``None`` otherwise: a
    genuine text column (site names, sex), or a column of numbers only.
    """
    if (pd.api.types.is_numeric_dtype(s.dtype) and not isinstance(s.dtype, pd.CategoricalDtype)) \
            or pd.api.types.is_bool_dtype(s.dtype):
        return None
    present, number, like = number_cells(s)
    if not present.any() or like[present].mean() < NUMERIC_SHARE:
        return None
    bad = present & ~number
    return bad if bad.any() else None


def show_cells(s: pd.Series, mask, k: int = 5) -> str:
    """``"'n/a?' at rows 'sub-004', 'sub-011'; '45y' at row 'sub-020'"``: the distinct values in ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    groups: dict = {}
    for pos in np.flatnonzero(mask):
        v = s.iloc[pos]
        groups.setdefault(v, []).append(pos)
    parts = []
    for v, pos in list(groups.items())[:k]:
        rows = np.zeros(len(s), dtype=bool)
        rows[pos] = True
        parts.append(f"{v!r} at {show_rows(s.index, rows)}")
    more = len(groups) - k
    return "; ".join(parts) + (f"; and {more} other value{'s' if more > 1 else ''}" if more > 0 else "")


def numbers_with_text_error(s: pd.Series, name, bad, *, fix: str) -> NonNumericFeatureError:
    """The error for the feature column ``name``, numeric but for the cells in ``bad``; ``fix`` ends it."""
    n_bad, n = int(np.sum(bad)), int(s.notna().sum())
    comma = [v for v in s[np.asarray(bad)] if isinstance(v, str) and _DECIMAL_COMMA.fullmatch(v.strip())]
    hint = (f" ({comma[0]!r} is written with a decimal comma: featharm reads decimal points only)"
            if comma else "")
    return NonNumericFeatureError(
        f"feature column {name!r} holds {show_cells(s, bad)}{hint}: {n_bad} of its {n} values "
        f"{'is not a number' if n_bad == 1 else 'are not numbers'}, so the column was read as text. {fix}"
    )


def check_categorical_covariate(s: pd.Series, name) -> None:
    """Refuse a covariate that would become categorical but is no factor; call it on columns used without ``C()``.

    Numeric columns are continuous and pass. A text (or categorical) column is refused when

    * more than :data:`NUMERIC_TEXT_LEVELS` distinct values and at least :data:`NUMERIC_SHARE` of them
      look like numbers (``"35.8"``, ``"2,45"``, ``"45y"``): a numeric covariate read as text, which would
      get one column per value (explicit pandas ``category`` columns are exempt: their type is a choice);
    * or more distinct values than half its rows (and more than :data:`NUMERIC_TEXT_LEVELS`): an id or a
      free-text column, whose levels would absorb the subjects themselves.

    ``C(age)`` declares a factor on purpose, so the caller skips it; subject ids (LongComBat's
    ``subject``) are not covariates and never reach this check. Raises :class:`FormulaError` naming the
    column, values and rows and saying how to fix it.
    """
    if pd.api.types.is_bool_dtype(s.dtype) or (pd.api.types.is_numeric_dtype(s.dtype)
                                               and not isinstance(s.dtype, pd.CategoricalDtype)):
        return
    present, number, like = number_cells(s, units=True)
    txt = s[present].astype(str).str.strip()
    n_levels = int(txt.nunique())
    if n_levels <= NUMERIC_TEXT_LEVELS:
        return
    if not isinstance(s.dtype, pd.CategoricalDtype) and like[present].mean() >= NUMERIC_SHARE:
        if number[present].all():
            raise FormulaError(
                f"covariate {name!r} holds numbers stored as text ({n_levels} distinct values), so it would "
                f"become a categorical covariate with one column per value. Convert it with pd.to_numeric, or "
                f"write C({name}) if it is categorical."
            )
        bad = present & ~number
        values = sorted(pd.unique(s[bad].astype(str).str.strip()).tolist(), key=str)
        unit = [v for v in values if _NUMBER_WITH_UNIT.fullmatch(v)]
        if unit:
            number_part = re.match(r"[-+]?[\d.,]*\d", unit[0]).group(0)
            fix = (f"Write the numbers without their unit ({unit[0]!r} -> {number_part}) and convert the "
                   "column with pd.to_numeric")
        else:
            fix = "Fix or drop those rows (pd.to_numeric(..., errors='coerce') makes text missing)"
        raise FormulaError(
            f"covariate {name!r} looks numeric but holds text: {values[:5]}{' ...' if len(values) > 5 else ''} "
            f"at rows {_show(s.index[bad])}, so it would become a categorical covariate with {n_levels} levels. "
            f"{fix}, or write C({name}) if it is categorical."
        )
    if n_levels > present.sum() / 2:
        first = ~pd.Series(txt.to_numpy()).duplicated().to_numpy()
        where = np.zeros(len(s), dtype=bool)
        where[np.flatnonzero(present)[first][:3]] = True
        raise FormulaError(
            f"covariate {name!r} has {n_levels} distinct values in {int(present.sum())} rows "
            f"({show_cells(s, where, 3)} ...): as a categorical covariate nearly every row would get a level "
            "of its own, which absorbs the data instead of preserving a covariate effect. If it is an id, "
            "leave it out of the formula (LongComBat takes the subject as subject=...); if it is a "
            f"measurement, make it numeric; if it really is a factor, write C({name})."
        )


def _feature_frame(X, owner: str, index, columns) -> pd.DataFrame:
    """``X`` as a DataFrame (a 2-D array wrapped, see :func:`check_features`), or a named error."""
    if isinstance(X, pd.DataFrame):
        return X
    if isinstance(X, np.ndarray) and X.ndim == 2:
        n, p = X.shape
        if index is not None and len(index) != n:
            raise AlignmentError(
                f"{owner} got the features as a NumPy array with {n} rows but the covariates have "
                f"{len(index)}; an array is matched to the covariates row by row, so give both the same "
                "rows (or pass a DataFrame indexed by subject id)."
            )
        return pd.DataFrame(X, index=index,
                            columns=list(columns) if columns is not None and len(columns) == p
                            else [f"x{j}" for j in range(p)])
    raise InputError(
        f"{owner} needs the features as a pandas DataFrame (rows = subjects, columns = features); "
        f"got {type(X).__name__}."
    )


def _check_feature_frame(df: pd.DataFrame) -> None:
    """Shape, column names and dtypes of a feature table (numbers only); raises a named error."""
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise InputError(f"the feature table is empty (shape {df.shape}).")
    if df.columns.duplicated().any():
        raise InputError(f"feature columns are repeated: {_show(df.columns[df.columns.duplicated()])}.")
    bad_dtypes = {dt for dt in set(df.dtypes) if not _numeric_feature_dtype(dt)}
    nonnum = [c for c, dt in df.dtypes.items() if dt in bad_dtypes] if bad_dtypes else []
    if nonnum:
        for c in nonnum:  # numbers spoiled by a few cells ("n/a?", "2,45"): name the cells
            bad = numbers_with_text(df[c])
            if bad is not None:
                raise numbers_with_text_error(
                    df[c], c, bad, fix=f"Fix those values, or make them missing with pd.to_numeric(X[{c!r}], "
                    "errors='coerce') and drop or fill those rows, or leave the column out of X.")
        example = f" ({nonnum[0]!r} has dtype {df[nonnum[0]].dtype})"
        numbers = [c for c in nonnum if df[c].dtype == object and pd.api.types.infer_dtype(df[c], skipna=True)
                   in ("floating", "integer", "mixed-integer-float")]
        if numbers:  # e.g. after a transpose or a row-wise build
            example = f" ({numbers[0]!r} holds numbers in an object column: convert with X.astype(float))"
        texts = [c for c in nonnum if (pd.api.types.is_string_dtype(df[c].dtype) or df[c].dtype == object)
                 and c not in set(numbers)]
        for c in texts:  # the error path only: find a value that is not a number
            s = df[c]
            bad = (pd.to_numeric(s, errors="coerce").isna() & s.notna()).to_numpy()
            if bad.any():
                example = f" ({c!r} holds {s[bad].iloc[0]!r} at row {s.index[bad][0]!r})"
                break
        else:
            if texts and not numbers:
                example = (f" ({texts[0]!r} holds numbers stored as text: convert with "
                           "X.apply(pd.to_numeric))")
        raise NonNumericFeatureError(
            f"feature column(s) {_show(nonnum)} are not numeric{example}; fix those values, or pass only the "
            "feature columns as X and the batch and covariates in the covariate table."
        )


def _numeric_feature_dtype(dt) -> bool:
    return (pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_bool_dtype(dt)
            and not pd.api.types.is_complex_dtype(dt))


def _missing_value_error(Y: np.ndarray, bad_cols: np.ndarray, index, columns) -> MissingValueError:
    j = int(np.flatnonzero(bad_cols)[0])
    rows = index[~np.isfinite(Y[:, j])]
    return MissingValueError(
        f"features have NaN or infinite values in {int(bad_cols.sum())} column(s), e.g. "
        f"{columns[j]!r} at rows {_show(rows)}; featharm does not impute: drop or fill those "
        "rows (or features) first."
    )


def check_features(X, owner: str = "featharm", *, index=None, columns=None, allow_nan: bool = False):
    """Return ``(Y, index, columns)`` for a samples × features table: float64, finite, numeric.

    A 2-D NumPy array is taken as rows in the order of ``index`` (e.g. the covariates' index) and
    columns ``columns`` when their lengths match, else as rows 0..n-1 and columns ``x0, x1, ...``.

    ``allow_nan``: NaN cells (missing values) are accepted (infinite values are still refused, naming the
    rows), and a fourth value is returned: a boolean array marking the columns that hold NaN.
    """
    df = _feature_frame(X, owner, index, columns)
    _check_feature_frame(df)
    Y = df.to_numpy(dtype=np.float64, copy=False)
    bad_cols = np.zeros(Y.shape[1], dtype=bool)
    for blk in iter_blocks(Y.shape[1], Y.shape[0], 16 * 2**20):  # no n × p temporary
        bad_cols[blk] = ~np.isfinite(Y[:, blk]).all(axis=0)
    if allow_nan:  # missing values (docs/methods.md §1.8): NaN accepted, infinite values refused
        return Y, df.index, df.columns, _nan_columns(Y, bad_cols, df.index, df.columns)
    if bad_cols.any():
        raise _missing_value_error(Y, bad_cols, df.index, df.columns)
    return Y, df.index, df.columns


def _nan_columns(Y: np.ndarray, bad_cols: np.ndarray, index, columns) -> np.ndarray:
    """The columns holding NaN among ``bad_cols`` (those not all finite); an infinite value is an error."""
    for j in np.flatnonzero(bad_cols):
        inf = np.isinf(Y[:, j])
        if inf.any():
            raise MissingValueError(
                f"feature {columns[j]!r} has infinite values at rows {_show(index[inf])}; featharm "
                "accepts missing values (NaN) but not infinite ones: fix those cells or make them NaN."
            )
    return bad_cols


class FeatureTable:
    """What :func:`model_features` returns: the values ``Y`` (float64 or float32, either layout, not
    copied when the input was a float array), the row ids, the column names and, when asked for, every
    column's smallest and largest value (``lo``, ``hi``; else ``None``; over the observed cells of a column
    holding NaN) and,
    with ``allow_nan``, the columns that hold NaN cells (``nan_cols``, boolean; else ``None``)."""

    __slots__ = ("Y", "index", "columns", "lo", "hi", "nan_cols")

    def __init__(self, Y, index, columns, lo=None, hi=None, nan_cols=None):
        self.Y, self.index, self.columns, self.lo, self.hi = Y, index, columns, lo, hi
        self.nan_cols = nan_cols


def _layout_array(A: np.ndarray) -> np.ndarray:
    """``A`` (2-D) as float32/float64 with contiguous rows or columns: itself when it already is one."""
    keep = A.dtype in (np.float64, np.float32) and A.dtype.isnative
    if keep and (A.strides[0] == A.itemsize or A.strides[1] == A.itemsize or min(A.shape) <= 1):
        return A
    dtype = A.dtype if keep else np.float64
    order = "C" if A.strides[1] == A.itemsize and A.strides[0] != A.itemsize else "F"
    return np.array(A, dtype=dtype, order=order, copy=True)


def model_features(X, owner: str = "featharm", *, index=None, columns=None, ranges: bool = False,
                   allow_nan: bool = False) -> FeatureTable:
    """:func:`check_features` for the estimators: the same checks and errors, but no copy of a float table.

    A float64 or float32 array (or a DataFrame over one) is returned as it is, in its own layout (row- or
    column-major; see :mod:`featharm._core.blocks`) and dtype: float32 features stay float32 (the models
    compute in float64 blocks and return float32). Other numeric dtypes are converted to float64, and a
    table with neither contiguous rows nor contiguous columns is copied. The finiteness check reads the
    table once: with ``ranges`` as the per-column minimum and maximum (kept in the result), else as the
    column sums (an overflow is checked again exactly). ``allow_nan`` as in :func:`check_features`: NaN
    cells are accepted and marked in ``nan_cols``; an infinite value is still an error naming the rows.
    """
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "fiu":
        n, p = X.shape
        if index is not None and len(index) != n:
            _feature_frame(X, owner, index, columns)  # raises the row-count error
        idx = index if index is not None else pd.RangeIndex(n)
        cols = pd.Index(list(columns) if columns is not None and len(columns) == p
                        else [f"x{j}" for j in range(p)])
        if n == 0 or p == 0:
            raise InputError(f"the feature table is empty (shape {(n, p)}).")
        if cols.duplicated().any():
            raise InputError(f"feature columns are repeated: {_show(cols[cols.duplicated()])}.")
        Y = _layout_array(X)
    else:
        df = _feature_frame(X, owner, index, columns)
        _check_feature_frame(df)
        dtypes = set(df.dtypes)
        dtype = np.float32 if dtypes == {np.dtype(np.float32)} else np.float64
        Y = _layout_array(df.to_numpy(dtype=dtype, copy=False))
        idx, cols = df.index, df.columns
    lo = hi = None
    if ranges:
        lo, hi = column_range(Y)
        bad_cols = ~(np.isfinite(lo) & np.isfinite(hi))
    else:
        bad_cols = ~np.isfinite(column_sum(Y))
        if bad_cols.any():  # a sum can overflow where every value is finite
            bad_cols[bad_cols] = ~np.isfinite(Y[:, bad_cols]).all(axis=0)
    if allow_nan:  # missing values (docs/methods.md §1.8): NaN accepted, infinite values refused
        nan_cols = _nan_columns(Y, bad_cols, idx, cols)
        if ranges:  # a column with NaN cells: its range over the observed cells (NaN when it has none)
            for j in np.flatnonzero(nan_cols):
                lo[j], hi[j] = np.fmin.reduce(Y[:, j]), np.fmax.reduce(Y[:, j])
        return FeatureTable(Y, idx, cols, lo, hi, nan_cols)
    if bad_cols.any():
        raise _missing_value_error(Y, bad_cols, idx, cols)
    return FeatureTable(Y, idx, cols, lo, hi)


def rows_of(covariates):
    """The index a NumPy feature array is matched to: the covariates' rows, in order."""
    return covariates.index if isinstance(covariates, pd.DataFrame) else None


def align_covariates(index: pd.Index, covariates, owner: str = "featharm") -> pd.DataFrame:
    """Covariates reordered to ``index``; both must hold the same unique ids."""
    if not isinstance(covariates, pd.DataFrame):
        raise InputError(
            f"{owner} needs the covariates as a pandas DataFrame holding the batch column and the "
            f"formula's columns; got {type(covariates).__name__}."
        )
    if index.has_duplicates:
        raise DuplicateIndexError(
            f"the feature table has repeated row ids: {_show(index[index.duplicated()].unique())}; "
            "ids must be unique (use a subject/session index)."
        )
    if covariates.index.has_duplicates:
        raise DuplicateIndexError(
            f"the covariate table has repeated row ids: "
            f"{_show(covariates.index[covariates.index.duplicated()].unique())}; ids must be unique."
        )
    if len(index) == len(covariates) and index.equals(covariates.index):
        return covariates
    missing = index.difference(covariates.index, sort=False)
    extra = covariates.index.difference(index, sort=False)
    if len(missing) or len(extra):
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} id(s) in the features but not in the covariates ({_show(missing)})")
        if len(extra):
            parts.append(f"{len(extra)} id(s) in the covariates but not in the features ({_show(extra)})")
        raise AlignmentError(
            "features and covariates must describe the same rows (matched by index): "
            + "; ".join(parts) + ". Subset both tables to the same ids."
        )
    return covariates.loc[index]


def covariate_column(covariates: pd.DataFrame, name, role: str, *, fix: str, missing_fix: str) -> pd.Series:
    """The ``role`` column ``name`` of the covariates (batch, subject ...), which must have no missing value.

    ``fix`` ends the message of a missing column, ``missing_fix`` the message of missing values.
    """
    if name not in covariates.columns:
        raise ColumnNotFoundError(
            f"covariates have no {role} column {name!r}; columns present: {show_columns(covariates.columns)}. {fix}"
        )
    s = covariates[name]
    if s.isna().any():
        raise MissingValueError(
            f"{role} column {name!r} has missing values at rows {_show(s.index[s.isna().to_numpy()])}; {missing_fix}"
        )
    return s


def numeric_covariate(covariates: pd.DataFrame, name, role: str, *, fix: str, dtype_fix: str) -> np.ndarray:
    """The ``role`` column ``name`` (a smooth term, the time ...) as finite float64 values."""
    if name not in covariates.columns:
        raise ColumnNotFoundError(
            f"covariates have no {role} column {name!r}; columns present: {show_columns(covariates.columns)}. {fix}"
        )
    s = covariates[name]
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        present, number, _ = number_cells(s)
        text = present & ~number
        what = (f"it holds {show_cells(s, text, 3)}" if text.any() and not pd.api.types.is_bool_dtype(s)
                else f"it has dtype {s.dtype}")
        raise InputError(f"{role} column {name!r} must be a numeric column ({dtype_fix}); {what}.")
    x = s.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        raise MissingValueError(f"{role} column {name!r} has missing or infinite values at rows "
                                f"{_show(s.index[bad])}; fill or drop them first.")
    return x


def check_batch_labels(s: pd.Series, levels: list, batch) -> None:
    """Refuse text batch labels that are one number written differently (``"3"``, ``"03"``, ``"3.0"``).

    As text they are different batches; as numbers, the same. Either reading may be right, so the user
    decides (a numeric batch column has no such ambiguity: 3 and 3.0 are one level).
    """
    if not levels or not isinstance(levels[0], str):
        return
    groups: dict = {}
    for lv in levels:
        try:
            x = float(lv.strip())
        except ValueError:
            continue
        if np.isfinite(x):
            groups.setdefault(x, []).append(lv)
    same = [g for g in groups.values() if len(g) > 1]
    if same:
        txt = s.astype(str).to_numpy()
        shown = " vs ".join(f"{lv!r} ({show_rows(s.index, txt == lv)})" for lv in same[0][:4])
        raise BatchError(
            f"batch column {batch!r} writes one number in different ways: {shown}; as text these are different "
            f"batches. Write each site one way (e.g. all {same[0][0]!r}), or give different sites distinct names."
        )


def get_batch(covariates: pd.DataFrame, batch: str) -> pd.Series:
    if not isinstance(batch, str) and not isinstance(batch, (int, np.integer)):
        raise InputError(f"The 'batch' parameter must be a column name. Got {batch!r} instead.")
    return covariate_column(covariates, batch, "batch", fix="Pass batch=<name of the site/scanner column>.",
                            missing_fix="every row needs a batch (ComBat and CovBat can leave such rows out with "
                                        "missing_covariates='exclude'; command line: --missing-covariates exclude).")


def batch_levels(s: pd.Series) -> list:
    """Sorted batch levels as plain Python values (numbers stay numbers, everything else becomes str)."""
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        vals = [v.item() if hasattr(v, "item") else v for v in pd.unique(s)]
        return sorted(vals)
    return sorted(pd.unique(s.astype(str)).tolist())


def encode_batches(s: pd.Series, levels: list, batch: str) -> np.ndarray:
    """Index of each row's batch in ``levels``; unseen batches raise :class:`UnseenBatchError`."""
    numeric = bool(levels) and not isinstance(levels[0], str)
    vals = s.to_numpy() if numeric else s.astype(str).to_numpy()
    lut = {v: i for i, v in enumerate(levels)}
    codes = np.fromiter((lut.get(v.item() if hasattr(v, "item") else v, -1) for v in vals),
                        dtype=np.intp, count=len(vals))
    if (codes < 0).any():  # the same site written as 3 in one file and "3" in another
        by_text = {str(v): i for i, v in enumerate(levels)}
        if len(by_text) == len(levels):
            miss = codes < 0
            codes[miss] = [by_text.get(str(v.item() if hasattr(v, "item") else v), -1) for v in vals[miss]]
    if (codes < 0).any():
        unseen: dict = {}  # by text, as matched above: 4 and "4" are one site, listed once
        for v in vals[codes < 0]:
            v = v.item() if hasattr(v, "item") else v
            first, n = unseen.get(str(v), (v, 0))
            unseen[str(v)] = (first, n + 1)
        text = np.array([str(v.item() if hasattr(v, "item") else v) for v in vals], dtype=object)
        desc = ", ".join(f"{v!r} ({n} row{'s' if n > 1 else ''}) at "
                         f"{show_rows(s.index, (codes < 0) & (text == str(v)))}"
                         for v, n in sorted(unseen.values(), key=lambda t: -t[1]))
        raise UnseenBatchError(
            f"{batch!r} has value(s) not seen when the model was fitted: {desc}. Known: {levels}. "
            "Fit the model with these sites included, or estimate them with new_sites='estimate' "
            "(command line: --new-sites estimate) where the model supports it."
        )
    return codes


def warn_near_duplicate_levels(levels, column, what: str = "batch column") -> None:
    """Warn when text levels differ only by case or surrounding spaces ("Guys", "Guys ", "guys")."""
    groups: dict = {}
    for lv in levels:
        if isinstance(lv, str):
            groups.setdefault(lv.strip().casefold(), []).append(lv)
    alike = [g for g in groups.values() if len(g) > 1]
    if alike:
        warn(
            f"{what} {column!r} has levels that differ only by case or spaces: "
            f"{'; '.join(' vs '.join(map(repr, g)) for g in alike[:5])}. They are treated as different; "
            "if they are the same, fix the spelling (e.g. .str.strip()) and refit.",
            LevelNameWarning,
        )


def check_batch_sizes(levels: list, counts: np.ndarray, batch: str, *, allow_single: bool) -> None:
    if len(levels) < 2:
        raise BatchError(
            f"harmonization needs at least 2 batches in {batch!r}; found only {levels}. With one site "
            "there is nothing to harmonize (and ComBat would still change the data)."
        )
    warn_near_duplicate_levels(levels, batch)
    single = [lv for lv, c in zip(levels, counts) if c < 2]
    if single and not allow_single:
        raise BatchError(
            f"batch(es) {single} of {batch!r} have a single subject, so their scale cannot be estimated. "
            "Use mean_only=True (location-only adjustment, as sva does), or merge or drop them."
        )
    small = [f"{lv!r} (n={c})" for lv, c in zip(levels, counts) if c < SMALL_BATCH]
    if small:
        warn(
            f"batch(es) of {batch!r} with fewer than {SMALL_BATCH} subjects: {', '.join(small)}; their "
            "site-effect estimates are unstable (empirical Bayes shrinks them, but check the results).",
            SmallBatchWarning,
        )
