"""Check ids, the context a check runs in, and the session that runs each check once.

Checks live in their own modules as ``check_<id>(ctx) -> CheckResult``; this module
maps ids to them lazily, so importing lvmqa does not import torch or faiss.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from lvmqa.errors import CheckSkipped, LvmqaError, RegistryError
from lvmqa.io import Dataset
from lvmqa.registry import DatasetEntry, Registry
from lvmqa.results import CheckResult, GateKind, skipped

T = TypeVar("T")

# id -> (phase, "module:function", title)
CHECKS: dict[str, tuple[str, str, str]] = {
    "fingerprint": ("P0", "lvmqa.encoders:check_fingerprint", "Encoder fingerprint"),
    "norms": ("P0", "lvmqa.metrics:check_norms", "Vector norms"),
    "alignment": ("P0", "lvmqa.encoders:check_alignment", "Text-vector alignment"),
    "oracle_recall": ("P0", "lvmqa.retrieval:check_oracle_recall", "Oracle recall (FAISS)"),
    "duplicates": ("P0", "lvmqa.retrieval:check_duplicates", "Duplicates"),
    "coherence": ("P1", "lvmqa.coherence:check_coherence", "Adjacency coherence"),
    "coherence_drift": ("P1", "lvmqa.coherence:check_coherence_drift", "Coherence drift"),
    "sequence_integrity": ("P1", "lvmqa.integrity:check_sequence_integrity", "Sequence integrity"),
    "split_leakage": ("P1", "lvmqa.leakage:check_split_leakage", "Split leakage"),
    "text_quality": ("P1", "lvmqa.texts:check_text_quality", "Text quality"),
    "smoke_train": ("P2", "lvmqa.smoke:check_smoke_train", "Smoke training"),
    "ood_eval": ("P2", "lvmqa.smoke:check_ood_eval", "OOD evaluation"),
}


@dataclass(frozen=True)
class RunOptions:
    seed: int = 0
    recall_sample: int = 1000
    alignment_sample: int = 256
    index_factory: str = "Flat"
    nprobe: int | None = None
    smoke_max_sequences: int | None = None
    smoke_epochs: int = 5
    smoke_device: str | None = None
    trust_registry: bool = False
    baseline: str | None = None  # --baseline override
    encoder: str | None = None  # --encoder override
    debug: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class CheckContext:
    """What a check may see: its dataset, registry entry, options and related datasets."""

    def __init__(self, session: Session, entry: DatasetEntry) -> None:
        self.session = session
        self.entry = entry
        self.name = entry.name
        self.options = session.options
        self._dataset: Dataset | None = None
        self._cache: dict[str, Any] = {}

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = self.session.open(self.entry)
        return self._dataset

    # ------------------------------------------------------------ thresholds
    def _encoder_entry(self) -> Any:
        name = self.encoder_name()
        return self.session.registry.encoder(name) if name else None

    def _threshold_source(self, key: str) -> tuple[str, Any] | None:
        if key in self.entry.thresholds:
            return "registry", self.entry.thresholds[key]
        enc = self._encoder_entry()
        if enc is not None:
            if key in enc.thresholds:
                return "registry", enc.thresholds[key]
            if key in enc.calibration:
                return "calibrated", enc.calibration[key]
        return None

    def threshold(self, key: str, default: Any) -> Any:
        found = self._threshold_source(key)
        return default if found is None else found[1]

    def has_threshold(self, key: str) -> bool:
        return self._threshold_source(key) is not None

    def threshold_kind(self, key: str) -> GateKind:
        found = self._threshold_source(key)
        return (
            "absolute"
            if found is None
            else ("calibrated" if found[0] == "calibrated" else "registry")
        )

    # ------------------------------------------------------ related datasets
    def _related(self, name: str | None) -> CheckContext | None:
        return self.session.context(name) if name else None

    def baseline(self) -> CheckContext | None:
        return self._related(self.options.baseline or self.entry.baseline)

    def split(self, role: str) -> CheckContext | None:
        return self._related(self.entry.split_name(role))

    def source_bank(self) -> Dataset | None:
        related = self._related(self.entry.source)
        return related.dataset if related else None

    # --------------------------------------------------------------- encoder
    def encoder_name(self) -> str | None:
        return self.options.encoder or self.entry.encoder

    def encoder(self) -> Any:
        name = self.encoder_name()
        if not name:
            raise CheckSkipped(
                f"no encoder configured for dataset '{self.name}' "
                "(set `encoder` in lvmqa.toml or pass --encoder)"
            )
        from lvmqa.encoders import load_encoder

        spec = self.session.registry.encoder(name).model
        return load_encoder(
            spec, trusted=self.session.trusted, base_dir=self.session.registry.folder
        )

    # ------------------------------------------------------------- sharing
    def cached(self, key: str, compute: Callable[[], T]) -> T:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]  # type: ignore[no-any-return,unused-ignore]

    def result(self, check_id: str) -> CheckResult:
        return self.session.run(self.name, check_id)


class Session:
    """Runs checks once per dataset and keeps every result for JSON, report and diagnosis."""

    def __init__(self, registry: Registry, options: RunOptions | None = None) -> None:
        self.registry = registry
        self.options = options or RunOptions()
        self.trusted = registry.trusted or self.options.trust_registry
        self.contexts: dict[str, CheckContext] = {}
        self.results: dict[str, dict[str, CheckResult]] = {}
        self.requested: list[str] = []
        # Set when a JSON or HTML report will be written: report-only sections (the
        # filter preview, the file's sha256) are computed only then.
        self.report_requested = False

    def add(self, name_or_path: str) -> str:
        entry = self.registry.dataset(name_or_path)
        if entry.name in self.contexts and self.contexts[entry.name].entry != entry:
            raise RegistryError(f"two datasets are named '{entry.name}'; rename one file")
        self.contexts.setdefault(entry.name, CheckContext(self, entry))
        if entry.name not in self.requested:
            self.requested.append(entry.name)
        return entry.name

    def context(self, name: str) -> CheckContext:
        if name not in self.contexts:
            self.contexts[name] = CheckContext(self, self.registry.dataset(name))
        return self.contexts[name]

    def open(self, entry: DatasetEntry) -> Dataset:
        path = self.data_path(entry)
        manifest = path.with_name(path.name.removesuffix(".npz") + ".manifest.json")
        if manifest.is_file():
            # A filter output set: refuse one that a crash or a concurrent run left
            # incomplete or mixed (each file's hash is in the manifest, written last).
            from lvmqa.filtering import verify_output_set

            verify_output_set(manifest)
        return Dataset(path, context_length=entry.context_length, key_map=entry.keys)

    def data_path(self, entry: DatasetEntry) -> Path:
        if entry.build is not None:
            from lvmqa.windows import materialize

            return materialize(entry.name, entry.build)
        assert entry.path is not None
        if not entry.path.exists():
            raise RegistryError(
                "data file not found", path=entry.path, key=f"datasets.{entry.name}.path"
            )
        return entry.path

    def run(self, name: str, check_id: str) -> CheckResult:
        done = self.results.setdefault(name, {})
        if check_id not in done:
            done[check_id] = run_check(self.context(name), check_id)
        return done[check_id]


def check_function(check_id: str) -> Callable[[CheckContext], CheckResult]:
    if check_id not in CHECKS:
        raise LvmqaError(f"unknown check '{check_id}'", expected=", ".join(CHECKS))
    module_name, func_name = CHECKS[check_id][1].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name)  # type: ignore[no-any-return,unused-ignore]


def run_check(ctx: CheckContext, check_id: str) -> CheckResult:
    """Run one check; skips and lvmqa errors become results, not exceptions."""
    started = time.perf_counter()
    try:
        result = check_function(check_id)(ctx)
    except CheckSkipped as exc:
        result = skipped(check_id, str(exc))
    except LvmqaError as exc:
        result = CheckResult(check_id, "error", {}, str(exc))
    except Exception as exc:  # a bug in a check must not hide the other checks
        if ctx.options.debug:
            raise
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result = CheckResult(
            check_id,
            "error",
            {},
            f"internal error {type(exc).__name__}: {exc} "
            f"(at {Path(where.filename).name}:{where.lineno}; "
            "rerun with --debug for the traceback)",
        )
    result.duration_s = time.perf_counter() - started
    return replace(result, check_id=check_id) if result.check_id != check_id else result
