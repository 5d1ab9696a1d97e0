"""User data for ``skhpo bench``: a CSV file with a header row and a target column.

Numeric columns are used as they are; a column with any non-numeric value is categorical and
one-hot encoded (one 0/1 column per category, sorted). The task is a regression when the
target is numeric with non-integer values or more than ``MAX_CLASSES`` distinct values,
otherwise a classification. Missing values (empty cells, NA, NaN) are not supported: the
loader names the column and row so they can be imputed or dropped first.
"""

import csv
import math
import os

import numpy as np

__all__ = ["load_csv"]

MAX_CLASSES = 20
_MISSING = {"", "na", "nan", "null", "none", "?"}


def _as_float(value):
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def load_csv(path, target):
    """``(X float32, y, kind, feature_names)`` from a CSV file; see the module docstring."""
    if not os.path.isfile(path):
        raise ValueError(f"--csv: no such file {path!r}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row]
    if len(rows) < 3:
        raise ValueError(f"--csv: {path!r} needs a header row and at least two data rows")
    header, data = [h.strip() for h in rows[0]], rows[1:]
    if target not in header:
        raise ValueError(f"--target: {target!r} is not a column of {path!r}; columns: "
                         f"{', '.join(header)}")
    for i, row in enumerate(data, start=2):
        if len(row) != len(header):
            raise ValueError(f"--csv: line {i} of {path!r} has {len(row)} fields, the header "
                             f"has {len(header)}")
    columns = {name: [row[j].strip() for row in data] for j, name in enumerate(header)}
    for name, values in columns.items():
        for i, v in enumerate(values):
            if v.lower() in _MISSING:
                raise ValueError(f"--csv: column {name!r} has a missing value on line {i + 2}; "
                                 "impute or drop missing values first")
    features, names = [], []
    for name, values in columns.items():
        if name == target:
            continue
        numbers = [_as_float(v) for v in values]
        if all(n is not None for n in numbers):
            features.append(np.asarray(numbers, dtype=np.float32))
            names.append(name)
        else:  # categorical: one-hot
            for category in sorted(set(values)):
                features.append(np.asarray([v == category for v in values], dtype=np.float32))
                names.append(f"{name}={category}")
    if not features:
        raise ValueError(f"--csv: {path!r} has no feature column besides {target!r}")
    X = np.column_stack(features)
    y_raw = columns[target]
    y_num = [_as_float(v) for v in y_raw]
    numeric = all(v is not None for v in y_num)
    if numeric and (any(not float(v).is_integer() for v in y_num)
                    or len(set(y_num)) > MAX_CLASSES):
        return X, np.asarray(y_num, dtype=np.float32), "regression", names
    y = np.asarray([int(v) for v in y_num]) if numeric else np.asarray(y_raw)
    if len(np.unique(y)) < 2:
        raise ValueError(f"--target: column {target!r} has a single value; nothing to learn")
    return X, y, "classification", names
