"""The one table of backends: every entry carries all its facts, and what the rest of the package derives
from it (the CLI's choices, `auto`, refusals) follows it."""

import importlib
import importlib.util

import pytest

from psp_deploy.errors import BackendUnavailableError
from psp_deploy.runtime.backends import REGISTRY, backend_class, check_device, check_precision
from psp_deploy.runtime.backends.base import Backend
from psp_deploy.runtime.backends.registry import DEVICE_NAMES

KNOWN_PRECISIONS = {"fp32", "fp16", "bf16", "int8"}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_backend_states_all_its_facts(name):
    spec = REGISTRY[name]
    assert spec.name == name
    assert spec.devices and set(spec.devices) <= set(DEVICE_NAMES), spec.devices
    assert "fp32" in spec.precisions and set(spec.precisions) <= KNOWN_PRECISIONS, spec.precisions
    assert set(spec.calibrates) <= set(spec.precisions) - {"fp32"}
    assert spec.builder is None or (spec.engine_suffix and ":" in spec.builder)
    module, _, function = (spec.builder or ":").partition(":")
    if not spec.installed:
        pytest.skip(f"{spec.library} is not installed: the class and builder cannot be imported here")
    cls = backend_class(name)
    assert issubclass(cls, Backend) and cls.name == name and cls.spec() is spec
    if spec.builder:
        assert callable(getattr(importlib.import_module(module), function))


def test_refusals_name_what_each_backend_runs():
    with pytest.raises(BackendUnavailableError, match="unknown backend 'trt'; choose one of onnxruntime"):
        check_precision("trt", "fp32")
    with pytest.raises(BackendUnavailableError, match="openvino runs on the CPU, not cuda: use --backend onnxruntime"):
        check_device("openvino", "cuda")
    check_device("onnxruntime", "cuda")  # the table says it runs there: no refusal
