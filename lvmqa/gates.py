"""The declared gate table: every pass/fail comparison lvmqa makes, in one place.

Each :class:`GateSpec` records its check, the metric it reads, the operator, the
threshold key users set in ``lvmqa.toml`` and its default, whether higher is better,
and its kind. Checks build their :class:`~lvmqa.results.Gate` objects with
:func:`make`, so the threshold, its provenance and the kind are decided here and
nowhere else; the pytest plugin turns the same table into one test item per dataset
and gate, with the resolved threshold in the test id (:func:`plan`).

Threshold lookup order (the same for every gate): the dataset's
``[datasets.NAME.thresholds]``, then the encoder's ``[encoders.E.thresholds]``, then
the encoder's built-in calibration, then the table's default. A gate whose default is
``None`` applies only where a threshold is configured (absolute cosine levels depend
on the encoder, so lvmqa does not guess them).

This module imports nothing heavy: the plugin reads it while pytest collects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from lvmqa.errors import LvmqaError
from lvmqa.results import CheckResult, Gate, GateKind

if TYPE_CHECKING:
    from lvmqa.checks import CheckContext

Op = Literal[">=", ">", "<=", "<", "=="]
Number = float | int


@dataclass(frozen=True)
class GateSpec:
    """One declared gate: ``metric op threshold`` for one check.

    ``id`` is unique within its check (the metric name unless one metric has two
    gates). ``key`` is the threshold key in lvmqa.toml (``None``: a fixed invariant or
    a threshold taken from the data, see ``threshold_of``). ``default`` ``None`` means
    the gate applies only where ``key`` is configured. ``sign`` -1 turns a positive
    configured limit into a lower bound (``z >= -3``). ``ci_metric`` names the metric
    holding the value's ``[low, high]`` CI; with ``null`` set, the gate is a
    significance test (see :class:`~lvmqa.results.Gate`). ``when`` says, for gates the
    check applies only to some data, when it does: it is the skip reason otherwise.
    """

    check: str
    id: str
    title: str
    metric: str
    op: Op
    key: str | None
    default: Number | None
    higher_is_better: bool | None
    kind: GateKind
    ci_metric: str | None = None
    null: float | None = None
    sign: int = 1
    threshold_of: Callable[[CheckContext], Number | None] | None = None
    threshold_text: str = ""
    when: str = ""

    @property
    def label(self) -> str:
        return f"{self.check}.{self.id}"


@dataclass(frozen=True)
class Threshold:
    """A gate's threshold for one dataset: its value, kind and where it came from."""

    value: Number
    kind: GateKind
    source: str


@dataclass(frozen=True)
class Planned:
    """One dataset × gate, as the plugin collects it: a threshold or why it does not apply."""

    dataset: str
    spec: GateSpec
    threshold: Threshold | None
    skip_reason: str = ""

    @property
    def test_id(self) -> str:
        shown = "unset" if self.threshold is None else format_number(self.threshold.value)
        return f"{self.dataset}-{self.spec.check}-{self.spec.id}{self.spec.op}{shown}"


def format_number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ------------------------------------------------------------------------- the table
def declare_gate(
    check: str,
    metric: str,
    op: Op,
    key: str | None = None,
    default: Number | None = None,
    kind: GateKind = "absolute",
    title: str = "",
    **extra: Any,
) -> GateSpec:
    """A :class:`GateSpec`, ``higher_is_better`` derived from the operator.

    Keyword extras are the optional GateSpec fields (``id``, ``ci_metric``, ``null``,
    ``sign``, ``threshold_of``, ``threshold_text``, ``when``).
    """
    higher = None if op == "==" else op in (">=", ">")
    return GateSpec(
        check, extra.pop("id", metric), title or metric, metric, op, key, default, higher, kind,
        **extra,
    )  # fmt: skip


_spec = declare_gate


def _dataset_dim(ctx: CheckContext) -> Number | None:
    return int(ctx.dataset.dim)


def _registry_dim(ctx: CheckContext) -> Number | None:
    entry = _encoder_entry(ctx)
    return getattr(entry, "dim", None)


def _pinned_fingerprint(ctx: CheckContext) -> Number | None:
    entry = _encoder_entry(ctx)
    return 1 if getattr(entry, "fingerprint", None) else None


def _fingerprint() -> list[GateSpec]:
    return [
        _spec("fingerprint", "dim", "==", None, None, "structural",
              "encoder dim matches dataset", threshold_of=_dataset_dim,
              threshold_text="the dataset's vector dimension"),
        _spec("fingerprint", "dim", "==", None, None, "registry",
              "encoder dim matches registry", id="registry_dim", threshold_of=_registry_dim,
              threshold_text="dim in the encoder's [encoders.E] table",
              when="set `dim = …` in the encoder's [encoders.E] table of lvmqa.toml"),
        _spec("fingerprint", "fingerprint_matches", "==", None, None, "registry",
              "fingerprint equals pinned value", threshold_of=_pinned_fingerprint,
              threshold_text="the fingerprint pinned in [encoders.E]",
              when="pin `fingerprint = …` in [encoders.E] (`lvmqa fingerprint E` prints it)"),
    ]  # fmt: skip


def _norms() -> list[GateSpec]:
    specs = []
    for part in ("target", "context"):
        specs += [
            _spec("norms", f"{part}_norm_mean_error", "<", "norm_mean_tolerance", 0.01,
                  "absolute", f"{part} norms near 1"),
            _spec("norms", f"{part}_norm_std", "<", "norm_std_max", 0.01, "absolute",
                  f"{part} norm spread"),
        ]  # fmt: skip
        specs += [
            _spec("norms", f"{part}_{bad}_count", "==", None, 0, "structural",
                  f"no {bad} {part} vectors")
            for bad in ("nan", "inf", "zero")
        ]  # fmt: skip
    return specs


def _embedding_space() -> list[GateSpec]:
    return [
        # Re-encoding a text with the encoder that made its vector reproduces it (cosine
        # ~1 for any encoder), so an absolute threshold is principled here.
        _spec("alignment", "cosine_p5", ">=", "alignment_p5", 0.98, "absolute",
              "texts re-encode to their stored vectors"),
        # Duplicate-aware recall: exact duplicates tie with the query, so strict recall
        # depends on tie order, which says nothing about the index or the space.
        _spec("oracle_recall", "dup_aware_recall_at_5", ">=", "recall_at_5", 0.97, "absolute",
              "own vector retrievable in top 5"),
        _spec("oracle_recall", "dup_aware_recall_at_1000", ">=", "recall_at_1000", 0.97,
              "absolute", "own vector retrievable in top 1000"),
        _spec("duplicates", "exact_duplicate_share", "<=", "duplicate_share", 0.01, "absolute",
              "exact duplicate targets"),
        _spec("duplicates", "near_duplicate_share", "<=", "duplicate_share", 0.01, "absolute",
              "near-duplicate targets"),
    ]  # fmt: skip


LOW_COHERENCE = 0.30  # the cosine below which an adjacent pair counts as low coherence
COHERENCE_DEFINITIONS = ("file_order", "within_window", "last_context_to_target", "article_order")


def _coherence() -> list[GateSpec]:
    calibrate = "calibrate it for the encoder or set `{key} = …` in [datasets.NAME.thresholds]"
    specs = [
        _spec("coherence", "file_order_mean", ">=", "min_coherence_mean", None, "calibrated",
              "file-order coherence mean", when=calibrate.format(key="min_coherence_mean")),
        _spec("coherence", "file_order_low_share", "<=", "max_low_coherence_share", None,
              "calibrated", "file-order low-coherence share",
              when=calibrate.format(key="max_low_coherence_share")),
        _spec("coherence", "adjacent_excess_over_random_ci_low", ">", "min_adjacent_excess",
              0.0, "statistical",
              "adjacent vectors the model reads are more alike than random pairs (CI low)"),
    ]  # fmt: skip
    for name in COHERENCE_DEFINITIONS:
        words = name.replace("_", " ")
        gated = f"{words} is compared with the baseline when both files have it" + (
            " and both files' windows slide over the rows" if name == "file_order" else ""
        )
        specs += [
            _spec("coherence_drift", f"{name}_mean_drift_pct", ">=", "drift_mean_pct", -5.0,
                  "statistical", f"{words}: mean coherence not significantly lower",
                  ci_metric=f"{name}_mean_drift_pct_ci", null=0.0, when=gated),
            _spec("coherence_drift", f"{name}_low_share_change_pp", "<=", "drift_low_share_pp",
                  5.0, "statistical", f"{words}: low-coherence share not significantly higher",
                  ci_metric=f"{name}_low_share_change_ci_pp", null=0.0, when=gated),
        ]  # fmt: skip
    return specs


def _integrity() -> list[GateSpec]:
    ids = "needs article and chunk ids for the windows' rows"
    return [
        _spec("sequence_integrity", "crossing_share", "<=", "max_crossing_share", 0.0,
              "structural", "windows stay inside one article", when=ids),
        _spec("sequence_integrity", "wrong_order_share", "<=", "max_wrong_order_share", 0.0,
              "structural", "chunks never go backwards inside a window", when=ids),
        _spec("sequence_integrity", "non_consecutive_share", "<=", "max_non_consecutive_share",
              None, "registry", "windows do not skip chunks",
              when="set `max_non_consecutive_share = …` in [datasets.NAME.thresholds]"),
        _spec("sequence_integrity", "ordering_broken", "==", None, 0, "statistical",
              "file order keeps article structure (decay and break tests)",
              when="applies when no window has ids and the windows slide over the rows"),
        _spec("sequence_integrity", "position_profile_rises", "==", None, 1, "statistical",
              "context-position profile rises toward the target",
              when="needs enough windows to estimate the context-position profile"),
    ]  # fmt: skip


LEAKAGE_ROLES = ("val", "ood")


def _leakage() -> list[GateSpec]:
    specs = []
    for role in LEAKAGE_ROLES:
        when = f"needs a `{role} = …` split in the dataset's registry entry"
        specs += [
            # A shared title or id fails only where the content confirms it.
            _spec("split_leakage", f"{role}_article_overlap_confirmed_count", "<=",
                  "max_article_overlap", 0, "structural",
                  f"{role}_article_overlap_confirmed_count",
                  when=when + " and article ids or titles in both files"),
            _spec("split_leakage", f"{role}_shared_exact_duplicate_same_article_count", "<=",
                  "max_shared_duplicates", 0, "structural",
                  f"{role}_shared_exact_duplicate_same_article_count",
                  when=when + " and article ids or titles in both files"),
            _spec("split_leakage", f"{role}_shared_near_duplicate_same_article_count", "<=",
                  "max_shared_near_duplicates", 0, "structural",
                  f"{role}_shared_near_duplicate_same_article_count",
                  when=when + " and article ids or titles in both files"),
            _spec("split_leakage", f"{role}_shared_exact_duplicate_share", "<=",
                  "max_shared_duplicate_share", 0.005, "absolute",
                  f"{role}_shared_exact_duplicate_share",
                  when=when + " with the same vector dimension"),
            _spec("split_leakage", f"{role}_shared_near_duplicate_share", "<=",
                  "max_shared_near_duplicate_share", 0.005, "absolute",
                  f"{role}_shared_near_duplicate_share",
                  when=when + " with the same vector dimension"),
        ]  # fmt: skip
    return specs


def _texts() -> list[GateSpec]:
    # The text-quality keys are the metric names themselves.
    specs = [
        _spec("text_quality", metric, "<=", metric, default, "absolute", metric)
        for metric, default in (
            ("blocklist_share", 0.01),
            ("empty_share", 0.0),
            ("too_short_share", 0.01),
            ("too_long_share", 0.01),
        )
    ]
    specs += [
        _spec("text_quality", "duplicate_key_count", "<=", "duplicate_key_count", 0, "absolute",
              "duplicate_key_count", when="needs article and chunk ids"),
        # Low-quality pages found from the data (lvmqa.lowquality), against the baseline's
        # articles ("relative"; "statistical" when the dataset is its own reference).
        _spec("text_quality", "low_quality_significant_row_share", "<=",
              "max_low_quality_row_share", 0.01, "relative",
              "low_quality_significant_row_share",
              when="needs article ids and enough articles to judge pages against a reference"),
    ]  # fmt: skip
    return specs


def _smoke() -> list[GateSpec]:
    level = "set `{key} = …` in [encoders.E.thresholds] (a level calibrated for the encoder)"
    return [
        _spec("smoke_train", "val_cosine_epoch_1", ">=", "smoke_epoch1_min", None, "calibrated",
              "epoch1_val_cosine", when=level.format(key="smoke_epoch1_min")),
        _spec("smoke_train", "val_cosine_best", ">=", "smoke_final_min", None, "calibrated",
              "final_val_cosine", when=level.format(key="smoke_final_min")),
        _spec("smoke_train", "val_cosine_gain_lower_bound", ">", None, 0.0, "statistical",
              "beats_mean_of_context",
              when="applies when the val split has the power to show the expected gain "
              "(otherwise val_cosine_gain_upper_bound is gated)"),
        _spec("smoke_train", "val_cosine_gain_upper_bound", ">=", None, 0.0, "statistical",
              "not_worse_than_mean_of_context",
              when="applies when the val split is too small to show the expected gain "
              "(otherwise val_cosine_gain_lower_bound is gated)"),
        _spec("smoke_train", "val_cosine_drift_pct_upper_vs_baseline", ">=",
              "smoke_baseline_drift_pct_min", -5.0, "statistical", "not_below_baseline_dataset",
              when="needs a comparable baseline dataset (`baseline = …` or --baseline)"),
        _spec("ood_eval", "ood_cosine", ">=", "ood_min", None, "calibrated", "ood_cosine_min",
              when=level.format(key="ood_min")),
        _spec("ood_eval", "ood_gain_shift_z", ">=", "ood_gain_shift_z_min", 3.0, "statistical",
              "ood_gain_not_below_val_gain", sign=-1,
              when="needs at least two article groups on val and on OOD"),
    ]  # fmt: skip


def _builtin() -> list[GateSpec]:
    return [
        *_fingerprint(),
        *_norms(),
        *_embedding_space(),
        *_coherence(),
        *_integrity(),
        *_leakage(),
        *_texts(),
        *_smoke(),
    ]


GATES: dict[str, GateSpec] = {}


def register_gates(specs: Iterable[GateSpec]) -> None:
    """Add gates to the table (ids must be new within their check)."""
    for spec in specs:
        if spec.op not in (">=", ">", "<=", "<", "=="):
            raise LvmqaError(f"gate {spec.label}: unknown operator", expected=">=, >, <=, <, ==")
        if spec.label in GATES and GATES[spec.label] != spec:
            raise LvmqaError(f"gate {spec.label} is declared twice")
        GATES[spec.label] = spec


register_gates(_builtin())


def register_check(
    check_id: str,
    function: Callable[[CheckContext], Any] | str,
    *,
    title: str,
    gates: Iterable[GateSpec],
    phase: str = "P1",
) -> None:
    """Add a check of your own, with its declared gates, to lvmqa.

    Call it from your repository's ``conftest.py`` (it must run before pytest collects:
    ``pytest --pyargs quality_tests`` then runs one item per dataset and gate of your
    check too, and ``lvmqa_check(check_id)`` returns its result). ``function`` is
    ``check(ctx) -> CheckResult`` (a module-level function, or ``"module:function"``);
    build its gates with :func:`make` so that thresholds resolve like lvmqa's own.
    """
    import importlib

    from lvmqa.checks import CHECKS

    if not check_id.isidentifier() or check_id != check_id.lower():
        raise LvmqaError(
            f"check id {check_id!r} is not a snake_case name", expected="e.g. my_check"
        )
    if phase not in ("P0", "P1", "P2"):
        raise LvmqaError(f"check {check_id}: unknown phase {phase!r}", expected="P0, P1 or P2")
    if isinstance(function, str):
        target = function
    else:
        target = f"{function.__module__}:{function.__qualname__}"
        module_name, _, name = target.partition(":")
        found = getattr(importlib.import_module(module_name), name, None)
        if found is not function:
            raise LvmqaError(
                f"check {check_id}: {target} is not importable by that name",
                expected="a module-level function or a 'module:function' string",
            )
    entry = (phase, target, title)
    if check_id in CHECKS and CHECKS[check_id] != entry:
        raise LvmqaError(f"check '{check_id}' is already registered", found=CHECKS[check_id][1])
    specs = list(gates)
    if not specs:
        raise LvmqaError(f"check {check_id} declares no gate", expected="at least one GateSpec")
    for declared in specs:
        if declared.check != check_id:
            raise LvmqaError(f"gate {declared.label} is declared for another check than {check_id}")
    register_gates(specs)
    CHECKS[check_id] = entry


def spec(check_id: str, gate_id: str) -> GateSpec:
    found = GATES.get(f"{check_id}.{gate_id}")
    if found is None:
        raise LvmqaError(
            f"no gate '{gate_id}' declared for check '{check_id}'",
            expected=", ".join(s.id for s in for_check(check_id)) or "a declared gate",
        )
    return found


def for_check(check_id: str) -> list[GateSpec]:
    return [s for s in GATES.values() if s.check == check_id]


def default(check_id: str, gate_id: str) -> Number | None:
    return spec(check_id, gate_id).default


# ------------------------------------------------------------------- thresholds
def _encoder_entry(ctx: CheckContext) -> Any:
    name = ctx.encoder_name()
    if not name:
        return None
    try:
        return ctx.session.registry.encoder(name)
    except LvmqaError:
        return None


def threshold_source(ctx: CheckContext, key: str) -> tuple[GateKind, Any, str] | None:
    """Where ``key`` is configured for this dataset: (kind, value, sentence), or None."""
    entry_thresholds = getattr(ctx.entry, "thresholds", None) or {}
    if key in entry_thresholds:
        where = f"[datasets.{ctx.name}.thresholds] {key}"
        return "registry", entry_thresholds[key], f"registry: {where}"
    enc = _encoder_entry(ctx)
    if enc is not None:
        if key in enc.thresholds:
            where = f"[encoders.{enc.name}.thresholds] {key}"
            return "registry", enc.thresholds[key], f"registry: {where}"
        if key in enc.calibration:
            return (
                "calibrated",
                enc.calibration[key],
                f"calibrated for encoder '{enc.name}' ({enc.model}): {key}",
            )
    return None


def resolve(ctx: CheckContext, gate: GateSpec) -> Threshold | str:
    """The gate's threshold for ``ctx``'s dataset, or the reason it does not apply."""
    if gate.threshold_of is not None:
        from_rule = gate.threshold_of(ctx)
        if from_rule is None:
            return f"{gate.title} does not apply to '{ctx.name}': {gate.when}"
        return Threshold(from_rule, gate.kind, f"{gate.threshold_text} (fixed rule)")
    if gate.key is None:
        assert gate.default is not None, gate.label
        return Threshold(gate.default, gate.kind, "fixed invariant of the check")
    found = threshold_source(ctx, gate.key)
    if found is None:
        if gate.default is None:
            return (
                f"{gate.label} has no threshold for '{ctx.name}': set `{gate.key} = …` in "
                f"[datasets.{ctx.name}.thresholds] or the encoder's [encoders.E.thresholds]"
            )
        value: Number = gate.default
        kind = gate.kind
        source = (
            f"lvmqa default; set `{gate.key} = …` in [datasets.{ctx.name}.thresholds] to change it"
        )
    else:
        found_kind, raw, source = found
        value = _number(raw, gate.key)
        # A configured threshold is a registry value or a calibration, except for the
        # parameters of statistical tests, which stay statistical.
        kind = gate.kind if gate.kind == "statistical" else found_kind
    return Threshold(gate.sign * value if gate.sign != 1 else value, kind, source)


def _number(raw: Any, key: str) -> Number:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise LvmqaError("threshold must be a number", key=key, found=type(raw).__name__)
    return raw


# ------------------------------------------------------------------ building gates
def make(
    ctx: CheckContext | None,
    check_id: str,
    gate_id: str,
    value: float | int | None,
    *,
    ci: tuple[float, float] | list[float] | None = None,
) -> Gate:
    """The :class:`Gate` for one declared gate and one measured value.

    ``ctx`` may be ``None`` only for gates with a fixed threshold (no key).
    """
    declared = spec(check_id, gate_id)
    if ctx is None:
        if declared.key is not None or declared.default is None:
            raise LvmqaError(f"gate {declared.label} needs the check context for its threshold")
        threshold = Threshold(declared.default, declared.kind, "fixed invariant of the check")
    else:
        resolved = resolve(ctx, declared)
        if isinstance(resolved, str):
            raise LvmqaError(resolved)
        threshold = resolved
    return Gate(
        declared.title,
        declared.metric,
        value,
        declared.op,
        threshold.value,
        threshold.kind,
        gate_id=declared.id,
        key=declared.key,
        source=threshold.source,
        ci=None if ci is None else (float(ci[0]), float(ci[1])),
        null=declared.null,
    )


def applies(ctx: CheckContext, check_id: str, gate_id: str) -> bool:
    """Whether the gate has a threshold for this dataset (``default=None`` gates need one)."""
    return not isinstance(resolve(ctx, spec(check_id, gate_id)), str)


def from_metrics(ctx: CheckContext, gate: GateSpec, metrics: Mapping[str, Any]) -> Gate | None:
    """Evaluate a declared gate on a check's metrics (None when the metric is absent)."""
    if gate.metric not in metrics or metrics[gate.metric] is None:
        return None
    ci = metrics.get(gate.ci_metric) if gate.ci_metric else None
    ci_pair = None
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        ci_pair = (_as_float(ci[0]), _as_float(ci[1]))
    return make(ctx, gate.check, gate.id, metrics[gate.metric], ci=ci_pair)


def _as_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def find(gates: Iterable[Gate], declared: GateSpec) -> Gate | None:
    """The check's gate for a declared one: by table id, else by metric and operator
    (gates built by hand before the check used :func:`make`)."""
    gates = list(gates)
    for gate in gates:
        if gate.gate_id == declared.id:
            return gate
    for gate in gates:
        if not gate.gate_id and gate.metric == declared.metric and gate.op == declared.op:
            return replace(gate, gate_id=declared.id, key=declared.key)
    return None


def not_applied_reason(declared: GateSpec, result: CheckResult) -> str:
    """Why a check did not apply a declared gate to this data, and how to make it apply."""
    details = result.details or {}
    for table in ("ungated_metrics", "not_gated", "not_compared"):
        notes = details.get(table)
        if isinstance(notes, Mapping):
            for name, why in notes.items():
                if declared.metric == name or declared.metric.startswith(f"{name}_"):
                    return f"{declared.label} not applied: {why}"
    hint = f": {declared.when}" if declared.when else ""
    return f"{declared.label} not applied to this data{hint}"


# ------------------------------------------------------------------ collection plan
def plan(ctx: CheckContext, check_ids: Iterable[str]) -> list[Planned]:
    """Every declared gate of these checks for one dataset, with thresholds resolved."""
    out = []
    for check_id in check_ids:
        for declared in for_check(check_id):
            try:
                resolved = resolve(ctx, declared)
            except LvmqaError as exc:
                resolved = str(exc)
            if isinstance(resolved, str):
                out.append(Planned(ctx.name, declared, None, resolved))
            else:
                out.append(Planned(ctx.name, declared, resolved))
    return out


def evidence_table(gate: Gate, *, check_id: str = "", dataset: str = "") -> str:
    """The small table a failing gate item prints: value, operator, threshold, source, CI."""
    where = " on ".join(part for part in (check_id, dataset) if part)
    where = f"{where}: " if where else ""
    rows = [
        ("gate", f"{where}{gate.name} ({gate.kind})"),
        ("value", f"{gate.metric} = {format_number(gate.value)}"),
        ("operator", gate.op),
        ("threshold", format_number(gate.threshold)),
        ("source", gate.source or "set by the check"),
    ]
    if gate.ci is not None:
        low, high = gate.ci
        rows.append(("CI (95 %)", f"{format_number(low)} .. {format_number(high)}"))
    if gate.null is not None:
        side = "upper" if gate.op in (">=", ">") else "lower"
        rows.append(
            (
                "rule",
                f"fails only when {gate.metric} is beyond the threshold AND the CI {side} "
                f"bound is beyond {format_number(gate.null)} (the change is not noise)",
            )
        )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {text}" for name, text in rows)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
