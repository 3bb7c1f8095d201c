"""One switch for the computational forms of a network (the math never changes).

The defaults are the official algorithm (grouped modulated conv, transposed upsampling conv,
reference upfirdn2d, gains and biases apart); export picks graph-friendly forms, each proven
equal to the default by the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .layers import FIR_FORMS, Blur, Upsample
from .modconv import MODCONV_FORMS, UPSAMPLE_FORMS, ModulatedConv2d
from .stylegan2 import CONSTANT_FORMS, StyledConv, ToRGB

# each kind of layer's form attributes, and the setting (set_forms's keyword) each one follows
FORM_ATTRIBUTES = {
    ModulatedConv2d: {"form": "modconv", "upsample_form": "upsample"},
    Blur: {"form": "fir"},
    Upsample: {"form": "fir"},
    StyledConv: {"constants": "constants"},
    ToRGB: {"constants": "constants"},
}
CHOICES = {"modconv": MODCONV_FORMS, "fir": FIR_FORMS, "upsample": UPSAMPLE_FORMS, "constants": CONSTANT_FORMS}


def _attributes(m: nn.Module) -> dict[str, str]:
    return next((names for kind, names in FORM_ATTRIBUTES.items() if isinstance(m, kind)), {})


def set_forms(
    module: nn.Module,
    *,
    modconv: str | None = None,
    fir: str | None = None,
    upsample: str | None = None,
    constants: str | None = None,
) -> None:
    """Set the modulated-conv form (grouped|scaled), FIR form (reference|depthwise), the upsampling
    conv's form (transpose|phase|folded) and where gains and biases go (apart|folded); None leaves a
    form as it is."""
    settings = {"modconv": modconv, "fir": fir, "upsample": upsample, "constants": constants}
    for kind, form in settings.items():
        if form is not None and form not in CHOICES[kind]:
            raise ValueError(f"{kind} form must be one of {CHOICES[kind]}, got {form!r}")
    for m in module.modules():
        for attribute, kind in _attributes(m).items():
            setattr(m, attribute, settings[kind] or getattr(m, attribute))


@contextlib.contextmanager
def using_forms(
    module: nn.Module, *, modconv: str, fir: str, upsample: str, constants: str = "folded"
) -> Iterator[nn.Module]:
    """Run a block with the given forms, then restore each layer's previous forms. Gains and biases are
    folded unless asked otherwise: it removes passes and changes nothing but float rounding."""
    saved = [(m, {a: getattr(m, a) for a in _attributes(m)}) for m in module.modules()]
    set_forms(module, modconv=modconv, fir=fir, upsample=upsample, constants=constants)
    try:
        yield module
    finally:
        for m, forms in saved:
            for attribute, form in forms.items():
                setattr(m, attribute, form)


def official_forms(module: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """The official algorithm: grouped modulated conv, transposed conv, reference upfirdn2d, gains and
    biases apart."""
    return using_forms(module, modconv="grouped", fir="reference", upsample="transpose", constants="apart")
