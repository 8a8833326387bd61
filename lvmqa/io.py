"""Datasets: origin bank and sequences files, behind one read-only, streaming view.

Formats and key aliases follow ``../shared/origin-notes.md``:

* **bank** — one row per chunk (``vectors``/``embeddings``, ``concept_texts``,
  ``cpe_ids``, ``article_indices``, ``chunk_indices``, ``article_titles``). Windows
  are derived inside each article in chunk order.
* **sequences** — ``context_sequences``/``contexts``/``train_context_sequences``
  (N, C, D) plus ``target_vectors``/``targets``/``train_target_vectors`` (N, D), with
  optional texts, ids, positions and per-sequence or single-dict ``metadata``; or
  ``context_indices``/``target_indices`` into a ``vectors`` array.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd

from lvmqa.errors import DatasetFormatError
from lvmqa.npzfile import DataFile, Member, file_sha256
from lvmqa.registry import KEY_ROLES
from lvmqa.schema import validate_meta

T = TypeVar("T")

TARGET_KEYS = ("target_vectors", "targets", "train_target_vectors")
CONTEXT_KEYS = ("context_sequences", "contexts", "train_context_sequences")
BANK_VECTOR_KEYS = ("vectors", "embeddings")
FLOAT_KINDS = ("f",)
CHUNK_BYTES = 64 * 1024 * 1024

META_COLUMNS = {
    "article": "Int64",
    "chunk": "Int64",
    "target_id": "string",
    "title": "string",
    "context_articles_differ": "boolean",
    "context_chunks_consecutive": "boolean",
}

# Per-row ids under the names other pipelines give them; the first that fits wins.
# Top-level arrays win over fields of the per-sequence metadata dicts (and lists of a
# single-dict metadata); a registry mapping ``[datasets.X.keys] article = "doc_ids"``
# wins over both. An alias that does not fit (length, type) is skipped and listed in
# ``Dataset.unused_keys`` with the reason.
ID_KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "article": (
        "article_indices",
        "article_ids",
        "article_index",
        "article_id",
        "article_idx",
        "doc_ids",
        "doc_id",
        "doc_index",
        "doc_indices",
        "doc_idx",
        "document_ids",
        "document_id",
        "document_index",
        "document_indices",
        "page_ids",
        "page_id",
        "page_index",
    ),
    "chunk": (
        "chunk_indices",
        "target_chunk_index",
        "target_chunk_indices",
        "target_chunk_ids",
        "target_chunk_id",
        "chunk_index",
        "chunk_ids",
        "chunk_id",
        "chunk_idx",
        "chunk_positions",
        "chunk_position",
        "target_positions",
        "target_position",
        "positions",
        "position",
        "paragraph_index",
    ),
    "title": (
        "article_titles",
        "article_title",
        "titles",
        "title",
        "doc_titles",
        "doc_title",
        "document_titles",
        "document_title",
        "page_titles",
        "page_title",
    ),
    "target_id": (
        "cpe_ids",
        "target_ids",
        "target_cpe_id",
        "target_cpe_ids",
        "target_id",
        "chunk_uids",
        "chunk_ids",  # string chunk ids name the chunk; integer ones were taken as "chunk"
    ),
}
assert tuple(ID_KEY_ALIASES) == KEY_ROLES
# The origin's own names: a malformed one stays a format error, as it always was.
_STRICT_ID_KEYS = {
    "bank": frozenset({"article_indices", "chunk_indices", "cpe_ids", "article_titles"}),
    "sequences": frozenset({"target_ids", "article_ids"}),
}
_STRICT_META_FIELDS = frozenset({"article_index", "target_chunk_index"})
_META_FIELDS_READ = frozenset({"last_context_article", "crosses_article"})
_ROLE_IS_TEXT = {"article": False, "chunk": False, "title": True, "target_id": True}


# Rows start:stop of a member as float32 (``slot``: the ring buffer to read them into).
RowReader = Callable[[int, int, int], np.ndarray]


@dataclass(frozen=True)
class Chunk:
    start: int
    stop: int
    contexts: np.ndarray  # (k, C, D) float32
    targets: np.ndarray  # (k, D) float32


def _first(data: DataFile, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in data), None)


class Dataset:
    """A read-only view of a bank or sequences file; see docs/architecture.md."""

    kind: Literal["sequences", "bank"]

    def __init__(
        self,
        path: str | Path,
        *,
        context_length: int = 5,
        key_map: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.data = DataFile(self.path)
        self.source = str(self.path)
        self.keys: dict[str, str] = {}
        # role -> where its per-row ids were read: "doc_ids" or "metadata.article_index"
        self.id_keys: dict[str, str] = {}
        # file keys lvmqa did not read: key -> {"shape", "dtype", "note"} (see unused_keys)
        self.unused_keys: dict[str, dict[str, Any]] = {}
        self._key_map = _checked_key_map(key_map, self.source)
        self._skipped_keys: dict[str, str] = {}
        self._used_meta_fields: set[str] = set()
        self._meta_field_types: dict[str, str] = {}
        self._article_per_vector: np.ndarray | None = None
        self._single_dict_key: str | None = None  # a 1-element array read as file metadata
        self.file_metadata: dict[str, Any] = {}
        self._sha256: str | None = None
        self._hasher: threading.Thread | None = None
        self._hash_outcome: str | BaseException | None = None
        self.target_texts: np.ndarray | None = None
        self.context_texts: np.ndarray | None = None
        self._bank_rows: np.ndarray | None = None  # bank: (n,) target row per window
        self._bank_context_rows: np.ndarray | None = None  # bank: (n, C)
        self._bank_table: pd.DataFrame | None = None
        self._vectors: Member | None = None  # bank / index-based sequences
        self._targets: Member | None = None
        self._contexts: Member | None = None
        self._collect_scalars()
        if _first(self.data, CONTEXT_KEYS) or _first(self.data, TARGET_KEYS):
            self.kind = "sequences"
            self._open_sequences()
        elif "context_indices" in self.data and _first(self.data, BANK_VECTOR_KEYS):
            self.kind = "sequences"
            self._open_index_sequences()
        elif _first(self.data, BANK_VECTOR_KEYS):
            self.kind = "bank"
            self.context_length = context_length
            self._open_bank()
        elif "context_indices" in self.data:
            raise DatasetFormatError(
                "index-based sequences without the vectors they index",
                path=self.path,
                key="context_indices",
                expected=f"one of {', '.join(BANK_VECTOR_KEYS)} in the same file",
                found=f"keys {sorted(self.data.keys())}",
            )
        else:
            raise DatasetFormatError(
                "no vector array found",
                path=self.path,
                key=None,
                expected=f"one of {', '.join(TARGET_KEYS + BANK_VECTOR_KEYS)}",
                found=f"keys {sorted(self.data.keys()) or 'none'}",
            )
        self.meta = self._build_meta()
        if self.kind == "sequences":
            validate_meta(self.meta, source=self.source, bank=False)
        self.has_article_ids = bool(len(self.meta)) and not self.meta["article"].isna().any()
        self._check_key_map_used()
        self.unused_keys = self._list_unused_keys()

    # ----------------------------------------------------------------- opening
    def _collect_scalars(self) -> None:
        for key, member in self.data.members.items():
            if member.shape == ():
                value = member.load()
                item = value.item() if isinstance(value, np.ndarray) else value
                if key == "metadata" and isinstance(item, dict):
                    self.file_metadata.update(item)
                elif key == "manifest" and isinstance(item, (str, bytes)):
                    self.file_metadata["manifest"] = _parse_json(item, self.source, key)
                else:
                    self.file_metadata[key] = item
        for key, raw in self.data.json_members.items():
            self.file_metadata[key] = _parse_json(raw, self.source, key)

    def _float_member(self, key: str, ndim: int, what: str) -> Member:
        member = self.data.members[key]
        if member.dtype.kind not in FLOAT_KINDS:
            raise DatasetFormatError(
                f"{what} must be floating point",
                path=self.path,
                key=key,
                expected="float16, float32 or float64",
                found=str(member.dtype),
            )
        if len(member.shape) != ndim:
            raise DatasetFormatError(
                f"{what} have the wrong number of dimensions",
                path=self.path,
                key=key,
                expected=f"{ndim}-D",
                found=f"shape {member.shape}",
            )
        return member

    def _open_sequences(self) -> None:
        target_key = _first(self.data, TARGET_KEYS)
        context_key = _first(self.data, CONTEXT_KEYS)
        if target_key is None:
            raise DatasetFormatError(
                "missing target vectors",
                path=self.path,
                expected=f"one of {', '.join(TARGET_KEYS)}",
                found=f"keys {sorted(self.data.keys())}",
            )
        if context_key is None:
            raise DatasetFormatError(
                "missing context vectors",
                path=self.path,
                expected=f"one of {', '.join(CONTEXT_KEYS)}",
                found=f"keys {sorted(self.data.keys())}",
            )
        self.keys.update(targets=target_key, contexts=context_key)
        self._targets = self._float_member(target_key, 2, "target vectors")
        self._contexts = self._float_member(context_key, 3, "context vectors")
        n, dim = self._targets.shape
        cn, c, cdim = self._contexts.shape
        if cn != n:
            raise DatasetFormatError(
                "contexts and targets disagree in length",
                path=self.path,
                key=context_key,
                expected=f"{n} rows like '{target_key}'",
                found=f"{cn}",
            )
        if cdim != dim:
            raise DatasetFormatError(
                "context dimension differs from target dimension",
                path=self.path,
                key=context_key,
                expected=f"D={dim} like '{target_key}'",
                found=f"D={cdim}",
            )
        self._check_nonempty(n, dim, c)
        self.n, self.dim, self.context_length = n, dim, c
        self.stored_dtype = self._targets.dtype
        self.target_texts = self._text_column("target_texts", (n,))
        self.context_texts = self._text_column("context_texts", (n, c))
        if self.target_texts is not None and self.context_texts is not None:
            self.context_texts = _share_strings(self.context_texts, self.target_texts)

    def _open_index_sequences(self) -> None:
        vec_key = _first(self.data, BANK_VECTOR_KEYS)
        assert vec_key is not None
        self._vectors = self._float_member(vec_key, 2, "vectors")
        ctx_idx = self._int_member("context_indices", 2)
        tgt_key = "target_indices" if "target_indices" in self.data else None
        if tgt_key is None:
            raise DatasetFormatError(
                "missing target indices",
                path=self.path,
                key="target_indices",
                expected="(N,) integer array",
            )
        tgt_idx = self._int_member(tgt_key, 1)
        if len(tgt_idx) != len(ctx_idx):
            raise DatasetFormatError(
                "context and target indices disagree in length",
                path=self.path,
                key="context_indices",
                expected=f"{len(tgt_idx)} rows",
                found=f"{len(ctx_idx)}",
            )
        rows = self._vectors.shape[0]
        for key, arr in (("context_indices", ctx_idx), ("target_indices", tgt_idx)):
            if arr.size and (arr.min() < 0 or arr.max() >= rows):
                raise DatasetFormatError(
                    "index out of range",
                    path=self.path,
                    key=key,
                    expected=f"0..{rows - 1}",
                    found=f"{int(arr.min())}..{int(arr.max())}",
                )
        self.keys.update(vectors=vec_key, contexts="context_indices", targets=tgt_key)
        self._bank_rows = tgt_idx.astype(np.int64)
        self._bank_context_rows = ctx_idx.astype(np.int64)
        self.n, self.context_length = len(tgt_idx), ctx_idx.shape[1]
        self.dim = self._vectors.shape[1]
        self._check_nonempty(self.n, self.dim, self.context_length)
        self.stored_dtype = self._vectors.dtype
        self.target_texts = self._text_column("target_texts", (self.n,))
        self.context_texts = None
        if self.target_texts is None and "concept_texts" in self.data:
            # texts per vector row, like a bank: index them as the vectors are indexed
            texts = self._text_column("concept_texts", (rows,))
            assert texts is not None
            self.target_texts = texts[self._bank_rows]
            self.context_texts = texts[self._bank_context_rows]

    def _open_bank(self) -> None:
        vec_key = _first(self.data, BANK_VECTOR_KEYS)
        assert vec_key is not None
        self.keys["vectors"] = vec_key
        self._vectors = self._float_member(vec_key, 2, "bank vectors")
        rows, self.dim = self._vectors.shape
        if rows == 0:
            raise DatasetFormatError(
                "bank has no rows", path=self.path, key=vec_key, expected="N >= 1", found="N=0"
            )
        self.stored_dtype = self._vectors.dtype
        table = pd.DataFrame(index=pd.RangeIndex(rows))
        ids = self._top_level_ids(rows)
        for column in ("article", "chunk", "target_id", "title"):
            table[column] = ids.get(column, _all_missing(rows, META_COLUMNS[column]))
        texts = self._text_column("concept_texts", (rows,))
        # Windows are derived from the keys, so they must be valid before anything else.
        validate_meta(table, source=self.source, bank=True)
        self._bank_table = table
        self._bank_texts = texts
        c = self.context_length
        # Without chunk ids rows keep file order inside each article; without article
        # ids the whole bank counts as one article.
        article_key = (
            np.zeros(rows, dtype=np.int64)
            if table["article"].isna().any()
            else table["article"].to_numpy(np.int64)
        )
        chunk_key = (
            np.arange(rows) if table["chunk"].isna().any() else table["chunk"].to_numpy(np.int64)
        )
        order = np.lexsort((chunk_key, article_key))
        articles = article_key[order]
        position = np.arange(rows) - np.searchsorted(articles, articles, side="left")
        window_pos = np.flatnonzero(position >= c)
        if window_pos.size == 0:
            raise DatasetFormatError(
                "bank has no article with more chunks than the context length",
                path=self.path,
                key="article_indices",
                expected=f"at least one article with > {c} chunks",
                found="none",
            )
        self._bank_rows = order[window_pos]
        self._bank_context_rows = order[window_pos[:, None] + np.arange(-c, 0)[None, :]]
        self.n = int(window_pos.size)
        if texts is not None:
            self.target_texts = texts[self._bank_rows]
            self.context_texts = texts[self._bank_context_rows]
        self.keys["targets"] = vec_key

    def _check_nonempty(self, n: int, dim: int, c: int) -> None:
        if n == 0:
            raise DatasetFormatError(
                "dataset has no sequences",
                path=self.path,
                key=self.keys.get("targets"),
                expected="N >= 1",
                found="N=0",
            )
        if dim == 0 or c == 0:
            raise DatasetFormatError(
                "vectors have zero width",
                path=self.path,
                key=self.keys.get("contexts"),
                expected="C >= 1 and D >= 1",
                found=f"C={c}, D={dim}",
            )

    def _int_member(self, key: str, ndim: int) -> np.ndarray:
        member = self.data.members[key]
        arr = member.load()
        if arr.dtype.kind not in "iu" or arr.ndim != ndim:
            raise DatasetFormatError(
                "index array has the wrong type",
                path=self.path,
                key=key,
                expected=f"{ndim}-D integers",
                found=f"{arr.dtype} shape {arr.shape}",
            )
        return np.asarray(arr)

    def _text_column(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if key not in self.data:
            return None
        member = self.data.members[key]
        if member.shape != shape:  # from the header: no unpickling needed to refuse it
            raise DatasetFormatError(
                "texts disagree in length with the vectors",
                path=self.path,
                key=key,
                expected=f"shape {shape}",
                found=f"shape {member.shape}",
            )
        self.keys[key] = key
        return _normalise_texts(np.asarray(member.load()), self.source, key)

    def _per_row(self, key: str, rows: int, dtype: str) -> pd.Series:
        if key not in self.data:
            return _all_missing(rows, dtype)
        arr = np.asarray(self.data.members[key].load())
        if arr.shape != (rows,):
            raise DatasetFormatError(
                "per-row array disagrees in length",
                path=self.path,
                key=key,
                expected=f"shape ({rows},)",
                found=f"shape {arr.shape}",
            )
        self.keys[key] = key
        if dtype == "Int64":
            if arr.dtype.kind not in "iu":
                raise DatasetFormatError(
                    "ids must be integers",
                    path=self.path,
                    key=key,
                    expected="integer array",
                    found=str(arr.dtype),
                )
            if arr.dtype.kind == "u" and arr.size and int(arr.max()) > _INT64_MAX:
                row = int(np.argmax(arr > _INT64_MAX))
                raise DatasetFormatError(
                    "id is too large",
                    path=self.path,
                    key=key,
                    expected=f"integers up to {_INT64_MAX}",
                    found=f"{int(arr[row])} at row {row}",  # the stored value, not a wrapped -1
                )
            return pd.Series(pd.array(arr.astype(np.int64), dtype="Int64"))
        return pd.Series(pd.array([_as_text(v) for v in arr], dtype="string"))

    # -------------------------------------------------------------- metadata
    def _build_meta(self) -> pd.DataFrame:
        n = self.n
        meta = pd.DataFrame(index=pd.RangeIndex(n))
        for column, dtype in META_COLUMNS.items():
            meta[column] = _all_missing(n, dtype)
        if self.kind == "bank":
            assert self._bank_table is not None
            assert self._bank_rows is not None
            rows = self._bank_rows
            for column in ("article", "chunk", "target_id", "title"):
                meta[column] = self._bank_table[column].to_numpy()[rows]
                meta[column] = meta[column].astype(META_COLUMNS[column])
            ctx_rows = self._bank_context_rows
            assert ctx_rows is not None
            all_rows = np.concatenate([ctx_rows, rows[:, None]], axis=1)
            table = self._bank_table
            if not table["article"].isna().any():
                art = table["article"].to_numpy(np.int64)
                meta["context_articles_differ"] = (art[all_rows] != art[rows][:, None]).any(1)
            if self.has_bank_ids():
                chk = table["chunk"].to_numpy(np.int64)
                meta["context_chunks_consecutive"] = (np.diff(chk[all_rows], axis=1) == 1).all(1)
            for column in ("context_articles_differ", "context_chunks_consecutive"):
                meta[column] = meta[column].astype("boolean")
            return meta
        per_seq = self._per_sequence_metadata()
        if per_seq is not None:
            for column in per_seq.columns:
                meta[column] = per_seq[column]
        per_vector = self._vectors.shape[0] if self._vectors is not None else None
        found = self._top_level_ids(n, per_vector=per_vector)
        for role, values in self._single_dict_ids(n, exclude=set(found)).items():
            found.setdefault(role, values)
        for role, values in found.items():
            meta[role] = values.to_numpy()
        if self._article_per_vector is not None:
            assert self._bank_context_rows is not None
            context_article = self._article_per_vector[self._bank_context_rows]
            target_article = meta["article"].to_numpy(np.int64)
            meta["context_articles_differ"] = (context_article != target_article[:, None]).any(1)
        if "sequence_positions" in self.data:
            meta["position"] = self._per_row("sequence_positions", n, "Int64").to_numpy()
        for column, dtype in META_COLUMNS.items():
            meta[column] = meta[column].astype(dtype)
        return meta

    # ----------------------------------------------------------- id aliases
    def _top_level_ids(self, rows: int, *, per_vector: int | None = None) -> dict[str, pd.Series]:
        """Per-row id columns found among the top-level arrays, by role.

        ``per_vector``: an index layout's vector rows; an array with one value per vector
        is read through the target indices (and, for articles, the context indices).
        """
        found: dict[str, pd.Series] = {}
        strict_keys = _STRICT_ID_KEYS[self.kind]
        for role in KEY_ROLES:
            explicit = self._key_map.get(role)
            candidates = [explicit] if explicit is not None else list(ID_KEY_ALIASES[role])
            for key in candidates:
                member = self.data.members.get(key)
                if member is None or not member.shape or key in self.id_keys.values():
                    continue
                strict = explicit is not None or key in strict_keys
                shapes = [(rows,)] if per_vector is None else [(rows,), (per_vector,)]
                if member.shape not in shapes:
                    if strict:
                        raise DatasetFormatError(
                            "per-row array disagrees in length",
                            path=self.path,
                            key=key,
                            expected=f"shape ({rows},)",
                            found=f"shape {member.shape}",
                        )
                    self._skipped_keys[key] = (
                        f"named like {role} ids but shape {member.shape} is not one per row"
                    )
                    continue
                values = _role_series(role, pd.Series(np.asarray(member.load())))
                if isinstance(values, str):
                    if strict:
                        raise DatasetFormatError(
                            "ids must be integers" if not _ROLE_IS_TEXT[role] else values,
                            path=self.path,
                            key=key,
                            expected="integer array",
                            found=f"{member.dtype}: {values}",
                        )
                    self._skipped_keys[key] = f"named like {role} ids but {values}"
                    continue
                if member.shape != (rows,):  # one value per vector of an index layout
                    assert self._bank_rows is not None
                    per_row = values.to_numpy()[self._bank_rows]
                    if role == "article" and not values.isna().any():
                        self._article_per_vector = values.to_numpy(np.int64)
                    values = pd.Series(pd.array(per_row, dtype=META_COLUMNS[role]))
                self.keys[key] = key
                self.id_keys[role] = key
                found[role] = values
                break
        return found

    def _single_dict_ids(self, rows: int, *, exclude: set[str]) -> dict[str, pd.Series]:
        """Ids stored as lists of one value per row inside a single-dict ``metadata``."""
        found: dict[str, pd.Series] = {}
        for role in KEY_ROLES:
            if role in exclude:
                continue
            explicit = self._key_map.get(role)
            names = [explicit.removeprefix("metadata.")] if explicit else ID_KEY_ALIASES[role]
            for name in names:
                value = self.file_metadata.get(name)
                if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != rows:
                    continue
                values = _role_series(role, pd.Series(list(value), dtype=object))
                if isinstance(values, str):
                    self._skipped_keys[f"metadata.{name}"] = f"named like {role} ids but {values}"
                    continue
                self.id_keys[role] = f"metadata.{name}"
                found[role] = values
                break
        return found

    def _metadata_ids(self, records: pd.DataFrame) -> dict[str, pd.Series]:
        """Id columns from the fields of per-sequence metadata dicts, by role."""
        found: dict[str, pd.Series] = {}
        for role in KEY_ROLES:
            explicit = self._key_map.get(role)
            if explicit is not None and explicit in self.data.members:
                continue  # mapped to a top-level array
            names = [explicit.removeprefix("metadata.")] if explicit else ID_KEY_ALIASES[role]
            for name in names:
                if name not in records.columns:
                    continue
                values = _role_series(role, records[name])
                if isinstance(values, str):
                    if explicit is not None or name in _STRICT_META_FIELDS:
                        raise DatasetFormatError(
                            "metadata field must be an integer",
                            path=self.source,
                            key=f"metadata.{name}",
                            expected="integer",
                            found=values,
                        )
                    self._skipped_keys[f"metadata.{name}"] = f"named like {role} ids but {values}"
                    continue
                self._used_meta_fields.add(name)
                self.id_keys[role] = f"metadata.{name}"
                found[role] = values
                break
        return found

    def _check_key_map_used(self) -> None:
        for role, key in self._key_map.items():
            if role not in self.id_keys:
                fields = sorted(self._meta_field_types)
                raise DatasetFormatError(
                    f"the registry maps {role} ids to a key the file does not have",
                    path=self.path,
                    key=key,
                    expected="one of the file's keys "
                    + ", ".join(sorted(self.data.keys()) + [f"metadata.{f}" for f in fields]),
                    found="no such key",
                )

    def _list_unused_keys(self) -> dict[str, dict[str, Any]]:
        """File keys (and metadata fields) lvmqa did not read, with how to map them."""
        used = set(self.keys.values()) | set(self.id_keys.values())
        used |= set(self.data.json_members)
        if self._single_dict_key is not None:
            used.add(self._single_dict_key)
        rows = len(self._bank_table) if self._bank_table is not None else self.n
        out: dict[str, dict[str, Any]] = {}
        for key, member in self.data.members.items():
            if key in used or member.shape == ():
                continue
            out[key] = {
                "shape": list(member.shape),
                "dtype": str(member.dtype),
                "note": self._skipped_keys.get(key)
                or _mapping_hint(key, member.shape, member.dtype, rows),
            }
        for field, dtype in self._meta_field_types.items():
            if field in self._used_meta_fields or field in _META_FIELDS_READ:
                continue
            name = f"metadata.{field}"
            out[name] = {
                "shape": [self.n],
                "dtype": dtype,
                "note": self._skipped_keys.get(name)
                or _mapping_hint(name, (self.n,), np.dtype(object), self.n),
            }
        return out

    def has_bank_ids(self) -> bool:
        table = self._bank_table
        return (
            table is not None
            and not table["article"].isna().any()
            and not table["chunk"].isna().any()
        )

    def _per_sequence_metadata(self) -> pd.DataFrame | None:
        if "metadata" not in self.data or self.data.members["metadata"].shape == ():
            return None
        raw = np.asarray(self.data.members["metadata"].load(), dtype=object)
        if raw.shape == (1,) and self.n != 1 and isinstance(raw[0], Mapping):
            # "ONE dict in an object array", stored as a 1-element array
            self.file_metadata.update(raw[0])
            self._single_dict_key = "metadata"
            return None
        if raw.shape != (self.n,):
            raise DatasetFormatError(
                "per-sequence metadata disagrees in length",
                path=self.path,
                key="metadata",
                expected=f"{self.n} dicts",
                found=f"shape {raw.shape}",
            )
        bad = next((i for i, v in enumerate(raw) if not isinstance(v, Mapping)), None)
        if bad is not None:
            raise DatasetFormatError(
                "per-sequence metadata must hold dicts",
                path=self.path,
                key="metadata",
                expected="a dict per sequence",
                found=f"{type(raw[bad]).__name__} at row {bad}",
            )
        self.keys["metadata"] = "metadata"
        records = pd.DataFrame.from_records(list(raw))
        self._meta_field_types = {str(c): str(records[c].dtype) for c in records.columns}
        out = pd.DataFrame(index=pd.RangeIndex(self.n))

        def column(name: str) -> pd.Series | None:
            return records[name] if name in records.columns else None

        for role, values in self._metadata_ids(records).items():
            out[role] = values.to_numpy()
        differ = _all_missing(self.n, "boolean")
        last = column("last_context_article")
        if last is not None and "article" in out.columns:
            last_i = _to_int(last, self.source, "metadata.last_context_article")
            differ = (last_i != out["article"]).astype("boolean")
        crosses = column("crosses_article")
        if crosses is not None:
            # a dict without the field reads as NaN, which bool() would turn into True
            stated = pd.Series(
                pd.array([None if _missing(v) else bool(v) for v in crosses], dtype="boolean")
            )
            # crosses_article covers the whole window and decides where a dict states
            # it; elsewhere the last context's article is the evidence there is.
            differ = stated.where(stated.notna(), differ) | differ.fillna(False)
        out["context_articles_differ"] = differ
        return out

    def bank_table(self) -> pd.DataFrame:
        """Per-ROW table of a bank (target_id, article, chunk, title)."""
        if self._bank_table is None:
            raise DatasetFormatError("not a bank", path=self.path)
        return self._bank_table

    # ------------------------------------------------------------------ reads
    def target_rows(self, start: int, stop: int) -> np.ndarray:
        if self._targets is not None:
            return _f32(self._targets.rows(start, stop))
        return self.targets_at(np.arange(start, min(stop, self.n)))

    def target_rows_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Targets ``start:start + len(out)`` written into the float32 array ``out``.

        Straight from the file into ``out`` where the targets are stored as float32 in
        place: a scan that reuses ``out`` touches no fresh memory.
        """
        if self._targets is not None:
            return self._targets.rows_into(start, out)
        out[...] = self.target_rows(start, start + len(out))
        return out

    def context_rows(self, start: int, stop: int) -> np.ndarray:
        if self._contexts is not None:
            return _f32(self._contexts.rows(start, stop))
        return self.contexts_at(np.arange(start, min(stop, self.n)))

    def targets_at(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if self._targets is not None:
            return _take_rows(self._targets, idx)
        assert self._vectors is not None
        assert self._bank_rows is not None
        return _take_rows(self._vectors, self._bank_rows[idx])

    def contexts_at(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if self._contexts is not None:
            return _take_rows(self._contexts, idx)
        assert self._vectors is not None
        assert self._bank_context_rows is not None
        rows = self._bank_context_rows[idx]
        flat = _take_rows(self._vectors, rows.reshape(-1))
        return flat.reshape(len(idx), self.context_length, self.dim)

    def chunk_rows(self) -> int:
        row_bytes = (self.context_length + 1) * self.dim * 4
        return max(1, CHUNK_BYTES // max(row_bytes, 1))

    def iter_chunks(self, rows: int | None = None, *, reuse: int = 0) -> Iterator[Chunk]:
        """Consecutive row blocks of contexts and targets, as float32.

        By default each chunk owns fresh, writable arrays. With ``reuse=R`` (R >= 1)
        a chunk's arrays are READ-ONLY and valid only until the iterator has advanced
        R more times: float32 members stored in place are read-only views of a memory
        map of the block's rows (no copy at all), and others are read into a ring of R
        preallocated buffer pairs that are then overwritten. On a cached file this is
        several times faster than fresh 64 MB arrays, whose first touch costs a page
        fault per 4 KB. A consumer that lets a prefetch thread run ``d`` chunks ahead
        needs ``R >= d + 2``.
        """
        step = rows or self.chunk_rows()
        if reuse < 0:
            raise ValueError(f"reuse must be >= 0, got {reuse}")
        if reuse == 0 or self._contexts is None or self._targets is None:
            for start in range(0, self.n, step):
                stop = min(start + step, self.n)
                contexts = self.context_rows(start, stop)
                yield Chunk(start, stop, contexts, self.target_rows(start, stop))
            return
        yield from self._iter_chunks_in_ring(step, reuse, self._contexts, self._targets)

    def _iter_chunks_in_ring(
        self, step: int, ring: int, contexts: Member, targets: Member
    ) -> Iterator[Chunk]:
        """The ``reuse`` chunks: each member mapped or read into a ring of ``ring`` buffers.

        float32 contexts stored in place are mapped even at an unaligned offset: a
        consumer of sliding windows reads only a few cache lines of each context vector
        (see lvmqa.coherence). Targets are mapped only when aligned, because every byte
        of them goes through BLAS; otherwise they are read (one copy, in the caller's
        prefetch thread) into the ring.
        """
        step = min(step, self.n)

        def rows_of(member: Member, row_shape: tuple[int, ...], mapped: bool) -> RowReader:
            if mapped:
                return lambda start, stop, _slot: member.rows_mapped(start, stop)
            buffers = [np.empty((step, *row_shape), dtype=np.float32) for _ in range(ring)]

            def read(start: int, stop: int, slot: int) -> np.ndarray:
                return member.rows_into(start, buffers[slot][: stop - start])

            return read

        def mappable(member: Member) -> bool:
            return member.reads_in_place and member.dtype == np.float32

        read_contexts = rows_of(contexts, (self.context_length, self.dim), mappable(contexts))
        read_targets = rows_of(targets, (self.dim,), mappable(targets) and targets.maps_aligned)
        for i, start in enumerate(range(0, self.n, step)):
            stop = min(start + step, self.n)
            ctx = read_contexts(start, stop, i % ring)
            tgt = read_targets(start, stop, i % ring)
            ctx.flags.writeable = tgt.flags.writeable = False  # same contract as the maps
            yield Chunk(start, stop, ctx, tgt)

    def iter_target_chunks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        step = rows or self.chunk_rows() * (self.context_length + 1)
        for start in range(0, self.n, step):
            yield start, self.target_rows(start, min(start + step, self.n))

    def targets_matrix(self) -> np.ndarray:
        """(n, D) float32: the stored array itself when it is float32 on disk."""
        if (
            self._targets is not None
            and self._targets.dtype == np.float32
            and not self._targets.header.fortran_order
        ):
            return self._targets.mmap()
        out = np.empty((self.n, self.dim), dtype=np.float32)
        for start, block in self.iter_target_chunks():
            out[start : start + len(block)] = block
        return out

    def sha256(self) -> str:
        """``sha256:HEX`` of the file's bytes (waits for :meth:`hash_in_background`)."""
        if self._hasher is not None:
            self._hasher.join()
            self._hasher = None
            if isinstance(self._hash_outcome, BaseException):
                raise self._hash_outcome
            self._sha256 = self._hash_outcome
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    def sha256_if_requested(self) -> str | None:
        """The file's hash when it is known or a report asked for it, else None.

        The hash is a full extra read of the file (~9 s of a 16 s run on 13 GB): it is
        paid only when a JSON or HTML report names the file (the plugin then starts
        :meth:`hash_in_background` before the checks), never for the terminal summary.
        """
        if self._hasher is None and self._sha256 is None:
            return None
        return self.sha256()

    def hash_in_background(self) -> None:
        """Start hashing the file in a low-priority thread (once).

        Reports carry the file's sha256, a full extra read (~10 s for 13 GB at 1.4 GB/s).
        At the lowest CPU priority the hash uses the cycles the checks leave idle and
        barely slows the passes that keep both cores busy.
        """
        if self._hasher is not None or self._sha256 is not None:
            return

        def run() -> None:
            # Linux: a thread's own id as the "process" lowers only this thread.
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            try:
                self._hash_outcome = file_sha256(self.path)
            except BaseException as exc:  # re-raised by sha256() in the caller's thread
                self._hash_outcome = exc

        self._hasher = threading.Thread(target=run, name="lvmqa-sha256", daemon=True)
        self._hasher.start()

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "n_sequences": self.n,
            "dim": self.dim,
            "context_length": self.context_length,
            "stored_dtype": str(self.stored_dtype),
            "keys": dict(self.keys),
            "has_article_ids": self.has_article_ids,
        }


def _take_rows(member: Member, idx: np.ndarray) -> np.ndarray:
    if idx.size == 0:
        return np.empty((0, *member.shape[1:]), dtype=np.float32)
    array = member.mmap()
    order = np.argsort(idx, kind="stable")  # sorted access is sequential on disk
    out = np.empty((len(idx), *member.shape[1:]), dtype=np.float32)
    out[order] = array[idx[order]]
    return out


def _all_missing(n: int, dtype: str) -> pd.Series:
    """A column of ``n`` missing values (pd.NA), built without a Python list of n items."""
    return pd.Series(pd.NA, index=pd.RangeIndex(n), dtype=dtype)


def _f32(array: np.ndarray) -> np.ndarray:
    return array if array.dtype == np.float32 else array.astype(np.float32)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _normalise_texts(arr: np.ndarray, source: str, key: str) -> np.ndarray:
    """Texts as an object array of ``str`` (``None`` where missing).

    bytes must be UTF-8; numbers, dicts and other objects are a format error naming
    the first bad row, so the text checks never see a value they cannot read.
    """
    if arr.dtype.kind == "U":
        return arr.astype(object)
    flat = arr.reshape(-1)
    if arr.dtype == object and all(type(v) is str for v in flat):
        return arr
    out = np.empty(flat.shape, dtype=object)
    for i, value in enumerate(flat):
        if isinstance(value, str):
            out[i] = str(value)
        elif _missing(value):
            out[i] = None
        elif isinstance(value, bytes):
            try:
                out[i] = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetFormatError(
                    "text is not valid UTF-8",
                    path=source,
                    key=key,
                    expected="UTF-8 text",
                    found=f"byte {value[exc.start : exc.start + 1]!r} at offset {exc.start} "
                    f"of {_where(i, arr.shape)}",
                ) from None
        else:
            raise DatasetFormatError(
                "texts must be strings",
                path=source,
                key=key,
                expected="str (or None for a missing text)",
                found=f"{type(value).__name__} at {_where(i, arr.shape)}",
            )
    return out.reshape(arr.shape)


def _share_strings(texts: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``texts`` with each string that also occurs in ``pool`` replaced by pool's object.

    Context texts repeat the target texts of earlier rows, but each pickled member
    carries its own copies; sharing them halves the memory the texts take.
    """
    canonical = {text: text for text in pool.ravel() if text is not None}
    shared = np.empty(texts.size, dtype=object)
    shared[:] = [canonical.get(text, text) for text in texts.ravel()]
    return shared.reshape(texts.shape)


def _where(flat_index: int, shape: tuple[int, ...]) -> str:
    position = np.unravel_index(flat_index, shape)
    return "row " + ", position ".join(str(int(p)) for p in position)


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


_INT64_MAX = 2**63 - 1


def _is_id(value: object) -> bool:
    """A metadata id lvmqa can hold: an integer (or integral float) that fits in int64."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    if isinstance(value, (float, np.floating)) and not (
        math.isfinite(value) and float(value).is_integer()
    ):
        return False
    return -_INT64_MAX - 1 <= int(value) <= _INT64_MAX


def _to_int(series: pd.Series, source: str, key: str) -> pd.Series:
    # Python ints beyond int64, 1e30 and complex numbers make pandas raise (or wrap):
    # any value that is not an int64 id is the one-line error below, naming it.
    unfit = series.notna() & ~series.map(_is_id)
    values = pd.to_numeric(series.astype(object).where(~unfit), errors="coerce")
    bad = series.notna() & (unfit | values.isna() | (values % 1 != 0))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetFormatError(
            "metadata field must be an integer",
            path=source,
            key=key,
            expected="integer",
            found=f"{series.iloc[row]!r} at row {row}",
        )
    return values.round().astype("Int64")


def _parse_json(raw: str | bytes, source: str, key: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise DatasetFormatError("member is not valid JSON", path=source, key=key) from None
    except RecursionError:
        raise DatasetFormatError(
            "member is not valid JSON", path=source, key=key, found="nesting too deep"
        ) from None


def open_dataset(
    path: str | Path, *, context_length: int = 5, key_map: Mapping[str, str] | None = None
) -> Dataset:
    """Open a bank or sequences file (npz, npy folder) as a read-only Dataset.

    ``key_map``: role -> file key (or ``metadata.FIELD``), the registry's
    ``[datasets.X.keys]``; it wins over the aliases in ``ID_KEY_ALIASES``.
    """
    return Dataset(path, context_length=context_length, key_map=key_map)


def _checked_key_map(key_map: Mapping[str, str] | None, source: str) -> dict[str, str]:
    if not key_map:
        return {}
    for role, key in key_map.items():
        if role not in KEY_ROLES:
            raise DatasetFormatError(
                "unknown key role",
                path=source,
                key=role,
                expected=f"one of {', '.join(KEY_ROLES)}",
                found=repr(role),
            )
        if not isinstance(key, str) or not key:
            raise DatasetFormatError(
                "key mapping must name a file key",
                path=source,
                key=role,
                expected="a key of the file or 'metadata.FIELD'",
                found=repr(key),
            )
    return dict(key_map)


def _stable_id(text: str) -> int:
    """A 62-bit id from a string id: the same name gets the same number in every file."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def _role_series(role: str, values: pd.Series) -> pd.Series | str:
    """``values`` as the role's meta column, or why they cannot be one (a short reason)."""
    if _ROLE_IS_TEXT[role]:
        return pd.Series(
            pd.array([None if _missing(v) else _as_text(v) for v in values], dtype="string")
        )
    if values.dtype.kind == "b":
        return "the values are booleans"
    if values.dtype.kind == "u" and len(values) and int(values.max()) > _INT64_MAX:
        row = int(np.argmax(values.to_numpy() > _INT64_MAX))  # the stored value, not a wrapped -1
        return f"{int(values.iloc[row])} at row {row} is too large (ids fit in int64)"
    if values.dtype.kind in "iu":
        return pd.Series(pd.array(values.to_numpy(np.int64), dtype="Int64"))
    if values.dtype.kind == "c":  # one complex id makes pandas read the whole column so
        row = int(np.argmax(values.to_numpy().imag != 0))
        return f"{complex(values.iloc[row])!r} at row {row} is a complex number"
    # Python ints beyond int64, 1e30 and complex numbers make pandas raise or wrap.
    unfit = (values.notna() & ~values.map(_is_id)).to_numpy()
    numeric = pd.to_numeric(values.astype(object).where(~unfit), errors="coerce")
    bad = unfit | (values.notna() & (numeric.isna() | (numeric % 1 != 0))).to_numpy()
    if not bad.any():
        return numeric.round().astype("Int64").reset_index(drop=True)
    texts = values[bad]
    if role == "article" and all(isinstance(v, (str, bytes)) for v in texts):
        # string document ids ("guide/intro.md"): hashed, so two files agree on a name
        ids = [None if _missing(v) else _stable_id(str(_as_text(v))) for v in values]
        return pd.Series(pd.array(ids, dtype="Int64"))
    row = int(np.flatnonzero(bad)[0])
    return f"{values.iloc[row]!r} at row {row} is not an integer"


def _mapping_hint(key: str, shape: tuple[int, ...], dtype: np.dtype, rows: int) -> str:
    """How to use an unread key, from its shape and type."""
    if len(shape) != 1 or shape[0] != rows:
        return "not one value per row; lvmqa does not read it"
    roles: tuple[str, ...]
    if dtype.kind in "iuf":
        roles = ("article", "chunk")
    elif dtype.kind in "OUS":
        roles = ("title", "target_id", "article")
    else:
        return "one value per row of a type lvmqa does not read"
    return (
        f"one value per row: if these are {' or '.join(roles)} ids, map them in lvmqa.toml "
        f'with [datasets.NAME.keys] {roles[0]} = "{key}"'
    )


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead.

    File reads and numpy kernels release the GIL, so on two cores the next block is
    read while this one is computed. Memory stays bounded by ``depth`` + 2 blocks.
    """
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, payload: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put((kind, payload), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # re-raised in the consumer thread
            put("error", exc)

    worker = threading.Thread(target=produce, name="lvmqa-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise payload
            yield payload
    finally:
        stop.set()
        worker.join(timeout=5)
