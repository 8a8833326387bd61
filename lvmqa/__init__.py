"""lvmqa: data-quality checks for LVM training data (sequences of sentence embeddings).

The public names are imported lazily so that ``lvmqa --help`` and the pytest plugin
stay fast; numpy, pandas, torch and faiss load only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckResult": "lvmqa.results",
    "Gate": "lvmqa.results",
    "from_gates": "lvmqa.results",
    "GateSpec": "lvmqa.gates",
    "declare_gate": "lvmqa.gates",
    "make_gate": "lvmqa.gates",
    "register_check": "lvmqa.gates",
    "CheckSkipped": "lvmqa.errors",
    "DatasetFormatError": "lvmqa.errors",
    "EncoderError": "lvmqa.errors",
    "LvmqaError": "lvmqa.errors",
    "RegistryError": "lvmqa.errors",
    "UnsafePickleError": "lvmqa.errors",
    "Dataset": "lvmqa.io",
    "open_dataset": "lvmqa.io",
    "build_sequences": "lvmqa.windows",
    "Session": "lvmqa.checks",
    "RunOptions": "lvmqa.checks",
    "load_registry": "lvmqa.registry",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


_RENAMED = {"make_gate": "make"}  # public name -> name in its module


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    raise AttributeError(f"module 'lvmqa' has no attribute {name!r}")
