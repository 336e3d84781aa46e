"""Optional GPU kernels behind the interfaces of the eager paths (DESIGN: speed tricks never change the math).

Each module here holds a kernel's PyTorch reference (what the kernel computes, and what its CPU tests
check) and the glue that runs the Triton kernel on CUDA; Triton itself is imported only when a kernel
runs (`triton_*.py`), so nothing on the CPU needs it. The eager paths stay the default.
"""

from __future__ import annotations

import functools
import importlib.util

from paramgolf.errors import UserError


@functools.cache  # a missing Triton raises, which is never cached
def need_triton(what: str) -> None:
    """Raise a UserError naming `what` when Triton is not installed (checked before a kernel module is imported)."""
    if importlib.util.find_spec("triton") is None:
        raise UserError(f"{what} needs Triton on CUDA: install triton, or use the eager path")
