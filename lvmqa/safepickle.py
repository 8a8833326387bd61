"""Read numpy object arrays without running code from the file.

``np.load(allow_pickle=True)`` hands the bytes to ``pickle.load``, which calls any
global the pickle names — ``os.system`` included. Datasets arrive in pull requests,
so lvmqa unpickles with an allowlist: plain Python values (built from pickle
opcodes, no globals needed) and numpy's own reconstructors. Anything else is refused
*before* it is called, and the refusal names the global.
"""

from __future__ import annotations

import io
import pickle
from typing import IO, Any

from lvmqa.errors import UnsafePickleError

# Globals that numpy object arrays and numpy scalars legitimately reference.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("collections", "OrderedDict"),
        # protocol-2 pickles of bytes go through codecs.encode(str, 'latin1')
        ("_codecs", "encode"),
        ("codecs", "encode"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str, key: str | None) -> None:
        super().__init__(file)
        self._source = source
        self._key = key

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refused to unpickle global '{module}.{name}' (object arrays may only hold "
            "plain values and numpy arrays; nothing was executed)",
            path=self._source,
            key=self._key,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            "refused a persistent-id reference in an object array",
            path=self._source,
            key=self._key,
        )


def safe_load(file: IO[bytes], *, source: str = "<pickle>", key: str | None = None) -> Any:
    """Unpickle from ``file`` allowing only plain values and numpy reconstructors."""
    return _RestrictedUnpickler(file, source, key).load()


def safe_loads(data: bytes, *, source: str = "<pickle>", key: str | None = None) -> Any:
    return safe_load(io.BytesIO(data), source=source, key=key)
