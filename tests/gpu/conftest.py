"""GPU tests: every test under tests/gpu carries the `gpu` marker, so `pytest -m gpu` selects them, and
every `gpu` test is skipped, with the reason (shown by -ra), where ONNX Runtime cannot run on an
NVIDIA GPU: no GPU, no onnxruntime-gpu, or a CUDA provider that does not start."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def cuda_skip_reason() -> str | None:
    from psp_deploy.benchmark.gpu import cuda_problem

    problem = cuda_problem()
    return f"needs an NVIDIA GPU with onnxruntime-gpu: {problem}" if problem else None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.gpu)
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    reason = cuda_skip_reason() if gpu_tests else None
    for item in gpu_tests if reason else ():
        item.add_marker(pytest.mark.skip(reason=reason))
