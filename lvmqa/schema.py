"""pandera schemas for the per-row metadata tables that the loaders build.

Checked once when a dataset is opened: article and chunk indices are non-negative
integers and (article, chunk) keys are unique in a bank (windows are derived from
them). A violation is a ``DatasetFormatError`` naming the file, the column, the rule
and the first bad row. Missing texts are not fatal here: the file stays readable and
the text_quality check counts them as empty texts, which fails its gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lvmqa.errors import DatasetFormatError

_KEYS = {"article": "article_indices", "chunk": "chunk_indices"}


def _schema(*, unique_keys: bool) -> Any:
    import pandera.pandas as pa

    return pa.DataFrameSchema(
        {
            "article": pa.Column("Int64", pa.Check.ge(0), nullable=True),
            "chunk": pa.Column("Int64", pa.Check.ge(0), nullable=True),
        },
        unique=["article", "chunk"] if unique_keys else None,
        report_duplicates="exclude_first",
        strict=False,
    )


def validate_meta(table: pd.DataFrame, *, source: str, bank: bool) -> None:
    """Raise DatasetFormatError on the first schema violation of a metadata table."""
    columns = table[["article", "chunk"]]
    unique_keys = bank and not columns.isna().any().any()
    if _plainly_valid(columns, unique_keys=unique_keys):
        return
    import pandera.errors

    try:
        _schema(unique_keys=unique_keys).validate(columns, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        raise _first_failure(exc.failure_cases, source, bank) from None


def _plainly_valid(columns: pd.DataFrame, *, unique_keys: bool) -> bool:
    """True when vectorised numpy checks show the table passes the schema.

    The same rules as :func:`_schema`, without importing pandera (a third of a
    second) or its per-check overhead: the common, valid file opens fast, and any
    doubt (another dtype, a violation) goes to pandera, which words the error.
    """
    if any(str(dtype) != "Int64" for dtype in columns.dtypes):
        return False
    values = {}
    for name in ("article", "chunk"):
        array = columns[name].array
        data = np.asarray(array.to_numpy(dtype="int64", na_value=0))
        if (data < 0).any():
            return False
        values[name] = data
    if not unique_keys or len(columns) < 2:
        return True
    keys = np.stack([values["article"], values["chunk"]], axis=1)
    return len(np.unique(keys, axis=0)) == len(keys)


def _first_failure(cases: pd.DataFrame, source: str, bank: bool) -> DatasetFormatError:
    first = cases.iloc[0]
    column = str(first.get("column"))
    check = str(first.get("check"))
    row = first.get("index")
    if "unique" in check or column in ("None", "nan") or "duplicate" in check.lower():
        return DatasetFormatError(
            "duplicate (article, chunk) key in a bank",
            path=source,
            key="article_indices/chunk_indices",
            expected="each (article, chunk) once",
            found=f"{len(cases)} repeated keys, first at row {row}",
        )
    key = _KEYS.get(column, column) if bank else f"metadata.{column}"
    return DatasetFormatError(
        f"'{column}' fails its schema check {check}",
        path=source,
        key=key,
        expected="non-negative integers",
        found=f"{first.get('failure_case')} at row {row}",
    )
