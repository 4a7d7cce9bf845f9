"""The `lvis` package (LVIS API 0.5.3, its last release) on today's NumPy and logging: import LVIS, LVISEval and
LVISResults from here, inside the functions that need them (importing `lvis` loads OpenCV and matplotlib, seconds
that a COCO run should not pay).

1. NumPy: lvis 0.5.3's LVISEval.accumulate calls `np.float`, an alias of the builtin float that NumPy deprecated in
   1.20 and removed in 1.24 (AttributeError: module 'numpy' has no attribute 'float'). lvis.eval, and only it, gets
   a view of NumPy with the alias back: its module global `np` becomes a proxy whose `float` is the builtin (what
   the alias always meant) and whose every other attribute is NumPy's. NumPy itself is not changed, so no other
   code starts accepting `np.float`.
2. Logging: `import lvis` calls logging.basicConfig, which gives the root logger a stderr handler if it has none;
   every later INFO line of a run would then be printed twice. The handler it adds is removed again, and the
   package's own loggers (its progress lines, a warning on every call) are quietened to errors.
tests/test_lvis.py checks that the NumPy shim is needed, that it works, and that numpy and the root logger are
left as they were.
"""
import logging

import numpy

_root_handlers = list(logging.getLogger().handlers)
import lvis.eval  # noqa: E402  (after noting the root handlers, to remove what its basicConfig adds)
from lvis import LVIS, LVISEval, LVISResults  # noqa: E402

for _handler in list(logging.getLogger().handlers):
    if _handler not in _root_handlers:
        logging.getLogger().removeHandler(_handler)
logging.getLogger("lvis").setLevel(logging.ERROR)


class NumpyWithFloatAlias:
    """numpy as lvis.eval uses it: np.float is the builtin float, as before NumPy 1.24."""

    float = float

    def __getattr__(self, name):
        return getattr(numpy, name)


if not hasattr(numpy, "float"):  # NumPy >= 1.24; older NumPy still has the alias
    lvis.eval.np = NumpyWithFloatAlias()

__all__ = ["LVIS", "LVISEval", "LVISResults", "NumpyWithFloatAlias"]
