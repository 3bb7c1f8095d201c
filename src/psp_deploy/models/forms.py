"""One switch for the computational forms of a network (the math never changes).

The defaults are the official algorithm (grouped modulated conv, reference upfirdn2d);
export picks graph-friendly forms, each proven equal to the default by the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .layers import FIR_FORMS, Blur, Upsample
from .modconv import MODCONV_FORMS, UPSAMPLE_FORMS, ModulatedConv2d


def _check(kind: str, form: str | None, forms: tuple[str, ...]) -> None:
    if form is not None and form not in forms:
        raise ValueError(f"{kind} form must be one of {forms}, got {form!r}")


def set_forms(
    module: nn.Module, *, modconv: str | None = None, fir: str | None = None, upsample: str | None = None
) -> None:
    """Set the modulated-conv form (grouped|scaled), FIR form (reference|depthwise) and the
    upsampling conv's form (transpose|phase); None leaves a form as it is."""
    _check("modconv", modconv, MODCONV_FORMS)
    _check("FIR", fir, FIR_FORMS)
    _check("upsample", upsample, UPSAMPLE_FORMS)
    for m in module.modules():
        if isinstance(m, ModulatedConv2d):
            m.form = modconv or m.form
            m.upsample_form = upsample or m.upsample_form
        if fir is not None and isinstance(m, (Blur, Upsample)):
            m.form = fir


@contextlib.contextmanager
def using_forms(module: nn.Module, *, modconv: str, fir: str, upsample: str) -> Iterator[nn.Module]:
    """Run a block with the given forms, then restore each layer's previous forms."""
    layers = [m for m in module.modules() if isinstance(m, (ModulatedConv2d, Blur, Upsample))]
    saved = [(m, m.form, getattr(m, "upsample_form", None)) for m in layers]
    set_forms(module, modconv=modconv, fir=fir, upsample=upsample)
    try:
        yield module
    finally:
        for m, form, upsample_form in saved:
            m.form = form
            if upsample_form is not None:
                m.upsample_form = upsample_form


def official_forms(module: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """The official algorithm: grouped modulated conv, transposed conv and reference upfirdn2d."""
    return using_forms(module, modconv="grouped", fir="reference", upsample="transpose")
