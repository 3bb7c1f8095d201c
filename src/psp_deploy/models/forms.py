"""One switch for the computational forms of a network (the math never changes).

The defaults are the official algorithm (grouped modulated conv, reference upfirdn2d);
export picks graph-friendly forms, each proven equal to the default by the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .layers import FIR_FORMS, Blur, Upsample
from .modconv import MODCONV_FORMS, ModulatedConv2d


def set_forms(module: nn.Module, *, modconv: str | None = None, fir: str | None = None) -> None:
    """Set the modulated-conv form (grouped|scaled) and FIR form (reference|depthwise)."""
    if modconv is not None and modconv not in MODCONV_FORMS:
        raise ValueError(f"modconv form must be one of {MODCONV_FORMS}, got {modconv!r}")
    if fir is not None and fir not in FIR_FORMS:
        raise ValueError(f"FIR form must be one of {FIR_FORMS}, got {fir!r}")
    for m in module.modules():
        if modconv is not None and isinstance(m, ModulatedConv2d):
            m.form = modconv
        if fir is not None and isinstance(m, (Blur, Upsample)):
            m.form = fir


@contextlib.contextmanager
def using_forms(module: nn.Module, *, modconv: str, fir: str) -> Iterator[nn.Module]:
    """Run a block with the given forms, then restore each layer's previous form."""
    saved = [(m, m.form) for m in module.modules() if isinstance(m, (ModulatedConv2d, Blur, Upsample))]
    set_forms(module, modconv=modconv, fir=fir)
    try:
        yield module
    finally:
        for m, form in saved:
            m.form = form


def official_forms(module: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """The official algorithm: grouped modulated conv and reference upfirdn2d."""
    return using_forms(module, modconv="grouped", fir="reference")
