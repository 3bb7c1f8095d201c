"""The device-resident pipeline on a GPU (ONNX Runtime's CUDA provider): what the CPU tests cannot show.

Skipped where ONNX Runtime has no CUDA provider. The small model (64² output) keeps each check to
seconds; the properties do not depend on the size.
"""

import numpy as np
import pytest
from skimage import data

from psp_deploy.calibration.report import psnr_db
from psp_deploy.runtime import Pipeline, RunOptions
from psp_deploy.runtime.backends import BackendOptions
from psp_deploy.runtime.backends.cuda_memory import check, cudart
from psp_deploy.runtime.backends.onnxruntime import open_session
from psp_deploy.runtime.backends.onnxruntime.io_graphs import normalise_graph, to_uint8_graph
from psp_deploy.runtime.backends.options import BuildOptions
from psp_deploy.runtime.chunks import padded
from psp_deploy.runtime.preprocess import preprocess_rgb, to_uint8
from tests.images import assert_same_image
from tests.runtime.test_device_io import adversarial_floats

CUDA = BackendOptions(device="cuda")
PLAIN = [RunOptions(align=False)] * 3


@pytest.fixture(scope="module")
def root(bundles):
    return bundles("rgb-scaled")[0].root


@pytest.fixture(scope="module")
def gpu(root):
    with Pipeline.from_bundle(root, options=CUDA, max_batch=4) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def inputs(gpu):
    """Three photos as uint8 faces (the resident path's input) and as encoder tensors (the host's)."""
    photo = data.astronaut()
    photos = [photo, photo[:, ::-1].copy(), photo[::2, ::2].copy()]
    faces = np.stack([gpu.prepare_face(p, align=False)[0] for p in photos])
    return faces, np.stack([gpu.prepare(p, align=False)[0] for p in photos])


def run_on_gpu(graph: bytes, x: np.ndarray) -> np.ndarray:
    session = open_session(graph, "io", CUDA, optimize=False)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_small_graphs_are_exact_on_the_gpu():
    every = np.arange(256, dtype=np.uint8)
    faces = np.stack([np.resize(np.roll(every, k), (256, 256)) for k in range(3)], axis=-1)[None]
    np.testing.assert_array_equal(run_on_gpu(normalise_graph("rgb"), faces), preprocess_rgb(faces[0])[None])
    x = adversarial_floats()
    np.testing.assert_array_equal(run_on_gpu(to_uint8_graph(), x), to_uint8(x))


def test_gpu_fp32_matches_cpu_fp32(gpu, root, inputs):
    with Pipeline.from_bundle(root) as cpu:
        codes = cpu.encode(inputs[1])
        assert np.abs(gpu.encode(inputs[1]) - codes).max() <= 1e-3
        pairs = zip(("image", "image_256"), cpu.synthesize(codes), gpu.synthesize(codes), strict=True)
        for name, cpu_image, gpu_image in pairs:
            assert psnr_db(cpu_image, gpu_image) >= 50, name


def test_device_path_equals_the_host_conversion_of_the_same_sessions(gpu, inputs):
    rows = [RunOptions(align=False), RunOptions(align=False, resize=True), RunOptions(align=False)]
    done = gpu.generate(inputs[0], rows)
    assert gpu.describe()["resident"] and set(done.timings) == {"encode", "synthesize"}
    codes = gpu.encode(inputs[1])  # the numpy path: host-normalised input, same session and batch
    image, pooled = gpu.synthesize(codes)
    for k, (out, row) in enumerate(zip(done.outputs, rows, strict=True)):
        np.testing.assert_array_equal(out.codes, codes[k])  # the device normalises exactly as the host
        assert_same_image(out.images, to_uint8((pooled if row.resize else image)[k : k + 1]))


def test_cuda_graph_path_equals_the_plain_path(root, inputs):
    options = BackendOptions(device="cuda", cuda_graph=True)
    with Pipeline.from_bundle(root, options=options, max_batch=4) as graphed:
        assert graphed.chain.capturing
        runs = [graphed.generate(inputs[0], PLAIN) for _ in range(3)]  # 3 rows run as bucket 4: capture, replays
        # The same sessions without capture (numpy feeds opt out), at the bucket's shape.
        codes = graphed.encode(padded(inputs[1], 4))[:3]
        image = graphed.synthesize(padded(codes, 4))[0][:3]
        for done in runs:
            np.testing.assert_array_equal(np.stack([o.codes for o in done.outputs]), codes)
            assert_same_image(np.concatenate([o.images for o in done.outputs]), to_uint8(image))
        mixing = [RunOptions(align=False, latent_mask=(8, 9), seed=0, n_outputs=2)]  # mixed codes uploaded: bucket 2
        mixed = [graphed.generate(inputs[0][:1], mixing).outputs[0] for _ in range(3)]
        for out in mixed:
            assert_same_image(out.images, to_uint8(graphed.synthesize(out.mixed)[0]))


def test_tf32_is_off_unless_asked_and_reaches_every_session(gpu, root):
    described = gpu.describe()
    assert (described["device"], described["tf32"]) == ("cuda", False)
    for net in gpu.nets.values():
        assert net.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
    with Pipeline.from_bundle(root, options=BackendOptions(device="cuda", tf32=True)) as tf32:
        assert tf32.describe()["tf32"]
        for net in tf32.nets.values():
            assert net.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "1"


def test_host_buffers_are_page_locked(gpu, inputs):
    """From ONNX Runtime's CUDA host allocator where it offers one, else from the CUDA runtime (cuda-python)."""
    gpu.generate(inputs[0][:1], PLAIN[:1])
    assert gpu.describe()["pinned_host"], "neither ONNX Runtime nor cuda-python offers page-locked host memory here"
    buffers = gpu.chain.buffers
    assert buffers.runtime_pinned == (buffers.host_memory is None)
    rt = cudart()
    host = [b for b in buffers._buffers.values() if b.where == "cpu"]
    kinds = {check(rt.cudaPointerGetAttributes(b.value.data_ptr())).type for b in host}
    assert host and kinds == {rt.cudaMemoryType.cudaMemoryTypeHost}  # page-locked, known to CUDA


def test_measured_cuda_settings_are_recorded_and_used(bundle_copy, inputs):
    from psp_deploy.engines import build_engines

    engines = build_engines(bundle_copy, "onnxruntime", options=BuildOptions(device="cuda"))
    assert {e.graph for e in engines} == {"encoder", "synthesis"}
    for e in engines:
        tried = set(e.details["timings_ms"]) | set(e.details["failed"])  # ONNX Runtime may refuse a capture
        assert len(tried) == 4 and e.details["timings_ms"] and e.details["gpu"] and e.details["tf32"] is False
    with Pipeline.from_bundle(bundle_copy, options=CUDA, max_batch=4) as tuned:
        for e in engines:
            cuda = tuned.nets[e.graph].session.get_provider_options()["CUDAExecutionProvider"]
            assert cuda["prefer_nhwc"] == str(int(e.details["cuda_conv"]["prefer_nhwc"]))
            assert cuda["enable_cuda_graph"] == str(int(e.details["cuda_graph"]))
        tuned_codes = tuned.encode(inputs[1])
        with Pipeline.from_bundle(bundle_copy) as cpu:
            codes = cpu.encode(inputs[1])
            assert np.abs(tuned_codes - codes).max() <= 1e-3
            assert psnr_db(cpu.synthesize(codes)[0], tuned.synthesize(codes)[0]) >= 50
