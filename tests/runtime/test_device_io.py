"""The device-resident path's parts without a bundle: the runtime's own graphs against preprocess.py,
bit for bit; batch plans; provider options; buffers bound by address."""

import inspect

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from psp_deploy.errors import InputError
from psp_deploy.runtime.backends import BackendOptions
from psp_deploy.runtime.backends.onnxruntime import open_session, provider_options
from psp_deploy.runtime.backends.onnxruntime.buffers import Buffer, Buffers
from psp_deploy.runtime.backends.onnxruntime.io_graphs import normalise_graph, to_uint8_graph, upload_graph
from psp_deploy.runtime.backends.options import CudaConv
from psp_deploy.runtime.chunks import Chunk, buckets, padded, plan
from psp_deploy.runtime.preprocess import face_pixels, preprocess_rgb, preprocess_sketch, to_uint8

CPU = BackendOptions()


def run(graph: bytes, x: np.ndarray) -> np.ndarray:
    session = open_session(graph, "io", CPU, optimize=False)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(
    "graph", [normalise_graph("rgb"), normalise_graph("sketch"), to_uint8_graph(), upload_graph(19)]
)
def test_graphs_are_the_bytes_onnx_writes(graph):
    model = onnx.load_from_string(graph)
    onnx.checker.check_model(model, full_check=True)  # types and shapes infer through every node
    assert model.SerializeToString() == graph  # canonical protobuf: what onnx itself would write


def test_normalise_matches_preprocess_for_every_pixel_value():
    every = np.arange(256, dtype=np.uint8)
    rgb = np.stack([np.resize(np.roll(every, k), (256, 256)) for k in range(3)], axis=-1)  # each value, each channel
    faces = np.stack([rgb, rgb[::-1, ::-1]])
    np.testing.assert_array_equal(run(normalise_graph("rgb"), faces), np.stack([preprocess_rgb(f) for f in faces]))
    gray = faces[..., :1]
    np.testing.assert_array_equal(
        run(normalise_graph("sketch"), gray), np.stack([preprocess_sketch(g[..., 0]) for g in gray])
    )


def within_ulps(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` and its float32 neighbours up to ``n`` units in the last place either side."""
    values, down, up = [x], x, x
    for _ in range(n):
        down, up = np.nextafter(down, np.float32(-np.inf)), np.nextafter(up, np.float32(np.inf))
        values += [down, up]
    return np.concatenate(values)


def adversarial_floats() -> np.ndarray:
    """Values at and just either side of every step k/255 of (x + 1) / 2 (where truncation flips from
    k − 1 to k), the ends of [−1, 1], signed zeros, subnormals and the largest finite values."""
    steps = (2 * np.arange(256, dtype=np.float64) / 255 - 1).astype(np.float32)  # the x of pixel value k
    info = np.finfo(np.float32)
    ends = np.array([0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal, 3, -3, info.max, -info.max])
    values = np.concatenate([within_ulps(steps, 3), within_ulps(np.float32([-1, 1]), 3), ends.astype(np.float32)])
    return np.resize(values, (3, len(values))).reshape(1, 3, 1, -1)  # every channel sees every value


def test_to_uint8_matches_host_bit_for_bit_on_adversarial_values():
    x = adversarial_floats()
    expected = to_uint8(x)
    np.testing.assert_array_equal(run(to_uint8_graph(), x), expected)
    assert set(np.unique(expected)) == set(range(256))  # every pixel value is reached: the steps are all tested
    assert expected.flags.c_contiguous  # images go to cv2 and buffers as they are


def test_upload_passes_tensors_through():
    x = np.random.default_rng(0).normal(0, 1, (2, 19, 256, 256)).astype(np.float32)
    np.testing.assert_array_equal(run(upload_graph(19), x), x)


def test_to_uint8_serves_any_size_and_truncates():
    x = np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0], np.float32).reshape(1, 1, 1, 6).repeat(3, axis=1)
    assert run(to_uint8_graph(), x)[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_face_pixels_are_what_preprocess_resizes():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        run(normalise_graph("rgb"), face_pixels(photo, "rgb")[None])[0], preprocess_rgb(photo)
    )
    sketch = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)  # an RGB sketch: PIL's grayscale first
    gray = run(normalise_graph("sketch"), face_pixels(sketch, "sketch")[None])[0]
    np.testing.assert_array_equal(gray, preprocess_sketch(sketch))
    assert face_pixels(np.asarray(Image.fromarray(photo).resize((256, 256))), "rgb").shape == (256, 256, 3)


@pytest.mark.parametrize(
    "image,kind,message",
    [
        (np.zeros((8, 8), np.uint8), "rgb", r"expected a uint8 RGB image \[H, W, 3\], got uint8 \[8, 8\]"),
        (np.zeros((8, 8, 3), np.float32), "rgb", "got float32"),
        (np.zeros((8, 8), np.int64), "sketch", r"expected a uint8 sketch \[H, W\] or \[H, W, 3\], got int64"),
        (np.zeros((8, 8), np.uint8), "segmentation", "segmentation inputs are prepared on the host"),
    ],
)
def test_face_pixels_refuse_what_preprocess_refuses(image, kind, message):
    with pytest.raises(InputError, match=message):
        face_pixels(image, kind)


@pytest.mark.parametrize(
    "limit,expected", [(1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8)), (32, (1, 2, 4, 8, 16, 32))]
)
def test_buckets(limit, expected):
    assert buckets(limit) == expected


@pytest.mark.parametrize(
    "total,limit,fixed,bucketed,expected",
    [
        (13, 8, None, False, [(0, 8, 8), (8, 5, 5)]),  # dynamic graph: a partial chunk runs as it is
        (13, 8, None, True, [(0, 8, 8), (8, 5, 8)]),  # CUDA graphs: padded to the bucket holding it
        (3, 8, None, True, [(0, 3, 4)]),
        (7, 6, None, True, [(0, 6, 6), (6, 1, 1)]),
        (4, 8, 3, False, [(0, 3, 3), (3, 1, 3)]),  # a fixed graph: always its batch
        (4, 8, 3, True, [(0, 3, 3), (3, 1, 3)]),
        (0, 8, None, True, []),
    ],
)
def test_plan(total, limit, fixed, bucketed, expected):
    assert plan(total, limit, fixed, bucketed) == [Chunk(*c) for c in expected]


def test_padding_repeats_the_last_row():
    x = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(padded(x, 4), [[0, 1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5]])
    assert padded(x, 2) is x


def test_provider_options_state_every_cuda_choice():
    cuda = BackendOptions(device="cuda", cuda_conv={"synthesis": CudaConv("HEURISTIC", prefer_nhwc=True)})
    (name, chosen), fallback = provider_options("synthesis", cuda)
    assert (name, fallback) == ("CUDAExecutionProvider", ("CPUExecutionProvider", {}))
    assert chosen == {
        "device_id": "0",
        "use_tf32": "0",  # IEEE FP32 unless asked: ONNX Runtime's own default is TF32
        "enable_cuda_graph": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "prefer_nhwc": "1",
    }
    encoder = dict(provider_options("encoder", cuda)[0][1])
    assert (encoder["cudnn_conv_algo_search"], encoder["prefer_nhwc"]) == ("EXHAUSTIVE", "0")  # ORT's defaults


def test_fp16_graphs_keep_tensor_cores_on_cuda():
    # use_tf32=0 also turns cuDNN's tensor cores off for FP16 convolutions (5× slower on an H200)
    cuda = BackendOptions(device="cuda")
    use_tf32 = {p: provider_options("encoder", cuda, p)[0][1]["use_tf32"] for p in ("fp32", "fp16", "int8")}
    assert use_tf32 == {"fp32": "0", "fp16": "1", "int8": "0"}


def test_a_graph_s_precision_reaches_its_session_options(monkeypatch, tmp_path):
    """The backend hands its record's precision to the one place that chooses provider options."""
    import psp_deploy.runtime.backends.onnxruntime as backend
    from psp_deploy.bundle import ModelRecord, TensorSpec

    asked = []
    choose = backend.provider_options
    monkeypatch.setattr(backend, "provider_options", lambda *args: asked.append(args[2:]) or choose(*args))
    path = tmp_path / "to_uint8.onnx"
    path.write_bytes(to_uint8_graph())
    floats, pixels = TensorSpec("floats", ("batch", 3, 8, 8)), TensorSpec("pixels", ("batch", 8, 8, 3), "uint8")
    with backend.OnnxRuntimeBackend(path, ModelRecord(path.name, "", "fp16", 18, [floats], [pixels]), "synthesis"):
        assert asked == [("fp16",)]


def test_tf32_and_cuda_graphs_reach_the_cuda_options_when_asked():
    asked = BackendOptions(device="cuda", tf32=True, cuda_graph=True)
    chosen = {graph: provider_options(graph, asked)[0][1] for graph in ("encoder", "mapping", "synthesis", "to_uint8")}
    assert {graph: c["use_tf32"] for graph, c in chosen.items()} == dict.fromkeys(chosen, "1")
    graphs = {graph: c["enable_cuda_graph"] for graph, c in chosen.items()}
    assert graphs == {"encoder": "1", "mapping": "0", "synthesis": "1", "to_uint8": "0"}  # fixed-shape graphs only


def test_cpu_sessions_get_the_cpu_provider_only():
    assert provider_options("encoder", CPU) == [("CPUExecutionProvider", {})]
    assert open_session(to_uint8_graph(), "to_uint8", CPU).get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    "flag,message",
    [
        ("tf32", "tf32 is a mode of ONNX Runtime's CUDA provider: it needs --device cuda, not cpu"),
        ("cuda_graph", "cuda_graph is a mode of ONNX Runtime's CUDA provider: it needs --device cuda, not cpu"),
    ],
)
def test_cuda_modes_need_cuda(flag, message):
    with pytest.raises(InputError, match=message):
        BackendOptions(**{flag: True})


def test_unknown_conv_algo_search_is_refused():
    with pytest.raises(InputError, match="algo_search must be one of EXHAUSTIVE, HEURISTIC, DEFAULT, got 'FASTEST'"):
        CudaConv("FASTEST")


def test_buffers_are_allocated_once_and_bound_by_rows():
    buffers = Buffers("cpu")
    assert not buffers.pinned  # page-locked memory is a CUDA matter
    floats = buffers.on_device("floats", (4, 3, 2, 5), np.float32)
    assert buffers.on_device("floats", (4, 3, 2, 5), np.float32) is floats
    pixels = buffers.on_host("pixels", (4, 2, 5, 3), np.uint8)
    x = np.linspace(-1.2, 1.2, 2 * 3 * 2 * 5, dtype=np.float32).reshape(2, 3, 2, 5)
    floats.fill(x)
    pixels.view()[:] = 7  # rows past the call's must stay as they were
    session = open_session(to_uint8_graph(), "to_uint8", CPU, optimize=False)
    binding = session.io_binding()
    floats.bind_input(binding, "floats", 2)
    pixels.bind_output(binding, "pixels", 2)
    session.run_with_iobinding(binding)
    np.testing.assert_array_equal(pixels.rows(2), to_uint8(x))
    assert (pixels.view()[2:] == 7).all()
    np.testing.assert_array_equal(floats.rows(2), x)
    with pytest.raises(ValueError, match="only host buffers"):
        Buffer(floats.value, "cuda", floats.dtype, floats.capacity).view()  # device memory is not Python's to read


def test_ort_api_the_gpu_path_relies_on_exists():
    """The CUDA-only calls, checked where no GPU is: their names and signatures in this ONNX Runtime."""
    assert hasattr(ort, "get_ep_devices") and hasattr(ort.OrtDeviceMemoryType, "HOST_ACCESSIBLE")
    assert "memory_info" in inspect.signature(ort.OrtValue.ortvalue_from_shape_and_type).parameters
    assert callable(getattr(ort.OrtEpDevice, "memory_info", None))


def test_a_buffer_is_never_rebound_with_another_shape_or_dtype():
    """A role keeps its capacity for the pipeline's life (a captured CUDA graph recorded its address)."""
    buffers = Buffers("cpu")
    first = buffers.on_device("codes", (4, 18, 512), np.float32)
    assert buffers.on_device("codes", (4, 18, 512), np.float32) is first
    with pytest.raises(ValueError, match=r"'codes' is float32 \(4, 18, 512\), asked for float32 \(8, 18, 512\)"):
        buffers.on_device("codes", (8, 18, 512), np.float32)
    with pytest.raises(ValueError, match="asked for uint8"):
        buffers.on_host("codes", (4, 18, 512), np.uint8)
