"""Tools an agent can be given beyond its tier's standard toolset.

- `notebook.py`: `@cma.tool` — a notebook function offered to agents, run in that notebook's kernel (kernel
  side, with `schema.py`, its input schema from the signature, and `results.py`, its return value as content);
- `kernels.py`: the server's side of notebook tools — which kernel registered what, and running a call there;
- `registry.py`: the server's registry of custom tools, and the internal route sandboxes reach them through.

`cma.tools()` lists this kernel's tools, and `jupyter_cma.tools` is this package, so the package can be called:
its class is swapped for a module type with `__call__` (Python allows that for modules).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self) -> list[dict[str, Any]]:
        """This kernel's tools: name, description, input_schema, timeout, and whether the server has them."""
        from .notebook import tools

        return tools()


sys.modules[__name__].__class__ = _CallablePackage
