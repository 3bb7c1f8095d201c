"""The Pipeline against the torch reference, per task; mixing, batching, threads, bad bundles."""

import ast
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

import psp_deploy.runtime
from psp_deploy.bundle import GRAPHS
from psp_deploy.config import PspConfig
from psp_deploy.errors import BundleError, InputError
from psp_deploy.graph_io import IMAGE, IMAGE_256
from psp_deploy.runtime import Pipeline, RunOptions, parse_latent_mask
from psp_deploy.runtime.backends.onnxruntime import OnnxRuntimeBackend
from psp_deploy.runtime.chunks import Chunk
from psp_deploy.runtime.preprocess import preprocess, to_uint8

TOL = 1e-3


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


@pytest.fixture(scope="module")
def rgb_pipeline(bundles):
    return Pipeline.from_bundle(bundles("rgb-scaled")[0].root)


def reference(net, x, **kwargs):
    with torch.no_grad():
        return net(torch.from_numpy(x), **kwargs).numpy()


def sketch_of(rgb):
    gray = rgb.mean(axis=2)
    edges = np.abs(np.diff(gray, axis=0, prepend=0)) + np.abs(np.diff(gray, axis=1, prepend=0))
    return (255 - np.clip(edges * 4, 0, 255)).astype(np.uint8)


def label_map(seed=0):
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 19, (8, 8)), np.ones((40, 40), np.int64))  # 320×320, blocky classes


def test_rgb_pipeline_matches_torch(rgb_pipeline, synthetic, astronaut):
    net, _ = synthetic("rgb")
    x, face = rgb_pipeline.prepare(astronaut)
    assert face is not None and face.image.shape == (256, 256, 3)
    codes = rgb_pipeline.encode(x[None])
    image, pooled = rgb_pipeline.synthesize(codes)
    with torch.no_grad():
        ref_codes = net.encode(torch.from_numpy(x[None])).numpy()
    assert np.abs(codes - ref_codes).max() <= TOL
    assert np.abs(image - reference(net, x[None])).max() <= TOL
    assert np.abs(pooled - reference(net, x[None], resize=True)).max() <= TOL


@pytest.mark.parametrize("task,image", [("sketch", "sketch"), ("segmentation", "labels")])
def test_label_tasks_match_torch(bundles, synthetic, astronaut, task, image):
    pipeline = Pipeline.from_bundle(bundles(f"{task}-scaled")[0].root)
    net, _ = synthetic(task)
    inp = sketch_of(astronaut) if image == "sketch" else label_map()
    result = pipeline.run(inp)  # never aligned: sketches and label maps are not photos
    x = preprocess(inp, net.config)[None]
    expected = reference(net, x)
    assert result.aligned == [None]
    assert np.abs(pipeline.synthesize(result.codes)[0] - expected).max() <= TOL
    assert np.abs(result.images.astype(int) - to_uint8(expected).astype(int)).max() <= 1
    with pytest.raises(InputError, match="cannot be face-aligned"):
        pipeline.run(inp, align=True)


def test_preprocessing_by_hand():
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 255, 51
    x = preprocess(rgb, PspConfig())
    assert x.shape == (3, 256, 256) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [1.0, -0.6, -1.0], atol=1e-6)  # (v/255 − 0.5)/0.5
    sketch = preprocess(np.full((256, 256), 51, np.uint8), PspConfig(input_nc=1, label_nc=1))
    np.testing.assert_allclose(sketch[0, 0, 0], 0.2, atol=1e-6)  # v/255, not normalised
    labels = np.zeros((256, 256), np.int64)
    labels[0, 0] = 7
    segmentation = PspConfig(input_nc=19, label_nc=19)
    onehot = preprocess(labels, segmentation)
    assert onehot.shape == (19, 256, 256) and onehot[7, 0, 0] == 1 and onehot[0, 0, 0] == 0
    assert onehot.sum(axis=0).min() == onehot.sum(axis=0).max() == 1
    with pytest.raises(InputError, match=r"label values must lie in \[0, 18\]"):
        preprocess(np.full((4, 4), 19), segmentation)


def test_uint8_conversion_truncates_like_official():
    x = np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0], np.float32).reshape(1, 1, 1, 6).repeat(3, axis=1)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_style_mixing_with_given_z_matches_torch(rgb_pipeline, synthetic, astronaut):
    net, _ = synthetic("rgb")
    x = rgb_pipeline.prepare(astronaut)[0][None]
    z = np.random.default_rng(3).standard_normal((1, 512)).astype(np.float32)
    w = rgb_pipeline.mapping(z)
    mask = parse_latent_mask("5-9", 10)
    mixed = rgb_pipeline.mix(rgb_pipeline.encode(x), mask, w, 0.7)
    with torch.no_grad():
        inject = net.mapping(torch.from_numpy(z))[:, None].repeat(1, 10, 1)
    expected = reference(net, x, latent_mask=mask, inject_latent=inject, alpha=0.7)
    assert np.abs(rgb_pipeline.synthesize(mixed)[0] - expected).max() <= TOL


def test_seeded_mixing_is_reproducible_and_local(rgb_pipeline, astronaut):
    plain = rgb_pipeline.run(astronaut)
    a = rgb_pipeline.run(astronaut, latent_mask=[6, 7, 8, 9], seed=5)
    b = rgb_pipeline.run(astronaut, latent_mask=[6, 7, 8, 9], seed=5)
    c = rgb_pipeline.run(astronaut, latent_mask=[6, 7, 8, 9], seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.codes, c.codes)
    np.testing.assert_array_equal(a.codes[:, :6], plain.codes[:, :6])
    assert not np.allclose(a.codes[:, 6:], plain.codes[:, 6:])


@pytest.mark.parametrize("text,expected", [("8-9", [8, 9]), ("0,2,4-5", [0, 2, 4, 5]), ("3", [3])])
def test_latent_mask_parsing(text, expected):
    assert parse_latent_mask(text, 10) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("8-17", r"style indices in 0\.\.9, got \[8, 9, .*17\]"),
        ("a-b", r"'a-b' is not an index or a range"),
        ("", "is empty"),
        (" ", "is empty"),
        ("-1", r"'-1' is not an index or a range"),
        ("8-", r"'8-' is not an index or a range"),  # was read as [8]
        ("9-8", r"the range '9-8' runs backwards; write 8-9"),
        ("8,,9", "has an empty part"),  # was accepted
        ("8,", "has an empty part"),
    ],
)
def test_latent_mask_errors_say_what_is_wrong(text, message):
    with pytest.raises(InputError, match=message):
        parse_latent_mask(text, 10)


def test_a_graph_that_fails_to_open_releases_the_ones_opened_before(bundle_copy, monkeypatch):
    closed = []
    monkeypatch.setattr(OnnxRuntimeBackend, "close", lambda self: closed.append(self.graph))
    _edit_manifest(bundle_copy, lambda d: d["models"]["synthesis"]["fp32"].update(sha256="0" * 64))
    with pytest.raises(BundleError, match="synthesis.onnx: contents do not match"):
        Pipeline.from_bundle(bundle_copy)
    assert closed == ["encoder", "mapping"]


def test_fixed_batch_pads_and_trims(grouped_synthesis, rgb_pipeline, astronaut):
    path, _, record = grouped_synthesis(3)
    grouped = Pipeline(
        rgb_pipeline.bundle,
        {
            "encoder": rgb_pipeline.encoder,
            "mapping": rgb_pipeline.mapping_net,
            "synthesis": OnnxRuntimeBackend(path, record, "synthesis"),
        },
    )
    assert grouped.synthesis_net.record.batch == 3
    x = rgb_pipeline.prepare(astronaut)[0]
    rng = np.random.default_rng(0)
    codes = rgb_pipeline.encode(x[None]) + rng.normal(0, 0.3, (4, 10, 512)).astype(np.float32)  # 4 = 3 + 1
    batched = grouped.synthesize(codes)[0]
    assert batched.shape == (4, 3, 64, 64)
    one_by_one = np.concatenate([rgb_pipeline.synthesize(codes[i : i + 1])[0] for i in range(4)])
    assert np.abs(batched - one_by_one).max() <= 1e-4
    np.testing.assert_array_equal(grouped.chain.synthesize(codes, [IMAGE])[IMAGE], to_uint8(batched))
    with pytest.raises(InputError, match=r"synthesis input 'codes': expected batch size 3 \(shape \[3, 10, 512\]\)"):
        grouped.synthesis_net.infer({"codes": codes[:2]})
    with pytest.raises(InputError, match="expected dtype float32, got float64"):
        grouped.synthesis_net.infer({"codes": codes[:3].astype(np.float64)})


def test_concurrent_runs_equal_sequential(rgb_pipeline, astronaut):
    photos = [astronaut, astronaut[:, ::-1].copy(), astronaut[40:, 30:].copy(), astronaut[::-1].copy()[::-1].copy()]
    sequential = [rgb_pipeline.run(p, latent_mask=[8, 9], seed=i) for i, p in enumerate(photos)]
    results: dict[int, object] = {}

    def work(i):
        results[i] = rgb_pipeline.run(photos[i], latent_mask=[8, 9], seed=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(4):
        np.testing.assert_array_equal(results[i].images, sequential[i].images)
        np.testing.assert_array_equal(results[i].codes, sequential[i].codes)


def test_edited_model_file_is_refused(bundle_copy):
    with open(bundle_copy / "mapping.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"mapping\.onnx: contents do not match the manifest's sha256"):
        Pipeline.from_bundle(bundle_copy)


def _edit_manifest(path, edit):
    data = json.loads((path / "manifest.json").read_text())
    edit(data)
    (path / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(schema_version=7), "schema_version 7 is not supported"),
        (lambda d: d["models"]["mapping"]["fp32"]["inputs"][0].update(name="latent"), r"inputs \['z'\] do not match"),
        (lambda d: [t["shape"].__setitem__(0, 2) for t in d["models"]["mapping"]["fp32"]["inputs"]], "batch dimension"),
        (lambda d: d["models"].pop("synthesis"), "no synthesis graph"),
        (lambda d: d["config"].update(output_size=100), "output_size must be one of"),
    ],
)
def test_wrong_manifest_is_refused(bundle_copy, edit, message):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        Pipeline.from_bundle(bundle_copy)


def test_missing_precision_says_how_to_make_it(bundles):
    with pytest.raises(
        BundleError, match=r"no int8 encoder graph; available: fp32 \(make it with `psp-deploy calibrate`\)"
    ):
        Pipeline.from_bundle(bundles("rgb-scaled")[0].root, precision="int8")


def test_runtime_imports_and_runs_without_torch(bundles):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import numpy as np\n"
        "from psp_deploy.runtime import Pipeline\n"
        f"p = Pipeline.from_bundle({str(bundles('rgb-scaled')[0].root)!r})\n"
        "r = p.run(np.full((256, 256, 3), 120, np.uint8), align=False)\n"
        "assert r.images.shape == (1, 64, 64, 3)\n"
        "print('ok', [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxscript')])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok ['torch']"  # only the poisoned entry: nothing imported it


def test_no_module_of_the_runtime_imports_torch_even_lazily():
    """The runtime stays torch-free in its source too: a backend that needs torch lives outside runtime/ (the
    inductor backend, psp_deploy/inductor/), not behind a lazy import the test above would not reach."""
    runtime = Path(psp_deploy.runtime.__file__).parent
    found = []
    for path in sorted(runtime.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(runtime)}:{node.lineno}" for n in names if n.split(".")[0] == "torch"]
    assert not found, found


def numpy_path(pipeline):
    """A pipeline over the same sessions that takes the numpy path (the one before the resident chain)."""
    host = Pipeline(pipeline.bundle, pipeline.nets, max_batch=pipeline.max_batch)
    host.chain = host.host
    return host


def test_resident_path_equals_the_numpy_path_bit_for_bit(rgb_pipeline, astronaut):
    resident = Pipeline(rgb_pipeline.bundle, rgb_pipeline.nets, max_batch=1)  # two chunks for two faces
    photos = [astronaut, astronaut[:, ::-1].copy()]
    faces = np.stack([resident.prepare_face(p, align=False)[0] for p in photos])
    assert faces.dtype == np.uint8 and faces.shape == (2, 256, 256, 3)  # normalised on the device
    tensors = np.stack([resident.prepare(p, align=False)[0] for p in photos])
    rows = [RunOptions(align=False), RunOptions(align=False, resize=True)]
    expected = numpy_path(resident).generate(tensors, rows)
    for done in (resident.generate(faces, rows), resident.generate(tensors, rows)):  # uint8 up, or float32 up
        assert set(done.timings) == {"encode", "synthesize"}
        for out, ref in zip(done.outputs, expected.outputs, strict=True):
            np.testing.assert_array_equal(out.codes, ref.codes)
            np.testing.assert_array_equal(out.images, ref.images)
        assert [o.images.shape for o in done.outputs] == [(1, 64, 64, 3), (1, 256, 256, 3)]


def test_resident_results_are_the_caller_s_own_arrays(rgb_pipeline, astronaut):
    """The chain fills the caller's arrays straight from its reused host buffers: a later call must
    not change an earlier result, and chunks land in their own rows."""
    resident = Pipeline(rgb_pipeline.bundle, rgb_pipeline.nets, max_batch=1)  # a chunk per face
    photos = [astronaut, astronaut[:, ::-1].copy()]
    host = numpy_path(resident)
    for first_photos, second_photos in ((photos, photos[::-1]), (photos[:1], photos[1:])):  # two chunks; one
        first = resident.run(first_photos, align=False)
        kept = first.images.copy()
        second = resident.run(second_photos, align=False)
        np.testing.assert_array_equal(first.images, kept)
        assert not np.shares_memory(first.images, second.images) and first.images.flags.c_contiguous
        for done, given in ((first, first_photos), (second, second_photos)):
            np.testing.assert_array_equal(done.images, host.run(given, align=False).images)


def test_resident_mixing_equals_the_numpy_path(rgb_pipeline, astronaut):
    face = rgb_pipeline.prepare_face(astronaut, align=False)[0][None]
    rows = [RunOptions(align=False, resize=True, latent_mask=(6, 7, 8, 9), seed=1, n_outputs=2)]
    done, expected = rgb_pipeline.generate(face, rows), numpy_path(rgb_pipeline).generate(face, rows)
    assert set(done.timings) == {"encode", "mix", "synthesize"}
    np.testing.assert_array_equal(done.outputs[0].mixed, expected.outputs[0].mixed)
    np.testing.assert_array_equal(done.outputs[0].images, expected.outputs[0].images)
    assert done.outputs[0].images.shape == (2, 256, 256, 3)


def test_bucketed_chunks_equal_unpadded_ones(rgb_pipeline):
    chain = Pipeline(rgb_pipeline.bundle, rgb_pipeline.nets, max_batch=4).chain
    codes = np.random.default_rng(1).normal(0, 1, (3, 10, 512)).astype(np.float32)
    plain = chain.synthesize(codes, [IMAGE, IMAGE_256])
    chain.capturing = True  # what CUDA graphs do to a plan (a CPU session ignores the graph id each run names)
    assert chain._chunks(3) == [Chunk(0, 3, 4)]
    bucketed = chain.synthesize(codes, [IMAGE, IMAGE_256])
    for name in (IMAGE, IMAGE_256):
        assert bucketed[name].shape == plain[name].shape and bucketed[name].shape[0] == 3
        assert np.abs(bucketed[name].astype(int) - plain[name]).max() <= 1  # a padded batch may round differently


def test_describe_says_what_runs(rgb_pipeline):
    described = rgb_pipeline.describe()
    assert described["backend"] == "onnxruntime" and described["precisions"] == dict.fromkeys(GRAPHS, "fp32")
    chosen = {k: described[k] for k in ("device", "tf32", "cuda_graph", "resident", "pinned_host")}
    never = dict.fromkeys(("encoder", "mapping", "synthesis"), False)
    assert chosen == {"device": "cpu", "tf32": False, "cuda_graph": never, "resident": True, "pinned_host": False}
    providers = {graph: session["providers"] for graph, session in described["sessions"].items()}
    assert providers == dict.fromkeys(GRAPHS, ["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "x,message",
    [
        (np.zeros((1, 256, 256, 1), np.uint8), r"rgb pipeline: expected uint8 faces \['N', 256, 256, 3\], got uint8"),
        (np.zeros((1, 3, 256, 256), np.float64), "encoder input 'image': expected dtype float32, got float64"),
        (np.zeros((1, 3, 128, 128), np.float32), r"encoder input 'image': expected dimension 2 256"),
        (np.zeros((0, 256, 256, 3), np.uint8), "no inputs given"),
    ],
)
def test_generate_refuses_what_it_cannot_bind(rgb_pipeline, x, message):
    with pytest.raises(InputError, match=message):
        rgb_pipeline.generate(x, [RunOptions(align=False)] * len(x))


def test_run_pastes_each_face_back_into_its_photo(rgb_pipeline, astronaut, bundles):
    from psp_deploy.runtime.paste import paste_mask

    result = rgb_pipeline.run(astronaut, paste=True)
    pasted, face = result.pasted[0], result.aligned[0]
    assert pasted.shape == astronaut.shape and pasted.dtype == np.uint8
    support = paste_mask(astronaut.shape, [face], result.images.shape[1]) > 0
    np.testing.assert_array_equal(pasted[~support], astronaut[~support])  # outside the mask: the photo itself
    assert np.abs(pasted[support].astype(int) - astronaut[support]).mean() > 5  # inside: the generated face
    np.testing.assert_array_equal(result.images, rgb_pipeline.run(astronaut).images)  # pasting changes no image
    with pytest.raises(InputError, match="it needs alignment"):
        rgb_pipeline.run(astronaut, paste=True, align=False)
    with Pipeline.from_bundle(bundles("sketch-scaled")[0].root) as sketch:
        with pytest.raises(InputError, match="sketch inputs are not photos"):
            sketch.run(astronaut[..., 0], paste=True)
