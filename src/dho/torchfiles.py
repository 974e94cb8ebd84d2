"""Reading other projects' ``torch.save`` dicts without running any code from them.

Files are read with ``torch.load(..., weights_only=True)``: tensors, containers and plain Python
scalars only. Scripts that store hyper-parameters found by numpy (``np.float64`` alphas and betas)
pickle numpy scalars too; exactly the globals those need are allowed for the one call, nothing
else (any other global, e.g. a class instance or an ``os.system`` reduce, is refused).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_torch_file", "numpy_float64_globals"]


def numpy_float64_globals() -> list[Any]:
    """What unpickling a ``numpy.float64`` scalar needs: ``multiarray.scalar`` (under the module
    names numpy 1.x and 2.x write), ``numpy.dtype`` and the float64 dtype class (it is BUILT)."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    names = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    return [scalar, *((scalar, name) for name in names), np.dtype, type(np.dtype(np.float64))]


def load_torch_file(path: str | Path) -> dict[str, Any]:
    """The dict stored at ``path`` by ``torch.save``, on the CPU; numpy float64 scalars allowed.

    Raises FileNotFoundError when there is no file and a one-line ValueError when it cannot be
    read this way (anything pickled beyond tensors, plain containers and numpy float64 scalars)
    or does not hold a dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals(numpy_float64_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle errors come in many kinds
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        reason = (f"it pickles {refused.group(1)}, which is not allowed" if refused else
                  f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}")
        raise ValueError(f"{path} cannot be read as a plain torch file ({reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dict")
    return data
