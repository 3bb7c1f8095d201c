"""Shared fixtures. Synthetic checkpoints are costly (seconds to make, hundreds of MB), so
each configuration is made once per session and shared by every test that reads it."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SMALL = dict(output_size=64, channel_multiplier=1)


def _configs():
    from psp_deploy.config import PspConfig

    return {
        "rgb": PspConfig(**SMALL),
        "sketch": PspConfig(task="celebs_sketch_to_face", input_nc=1, label_nc=1, **SMALL),
        "segmentation": PspConfig(task="celebs_seg_to_face", input_nc=19, label_nc=19, **SMALL),
        "e4e": PspConfig(encoder_type="Encoder4Editing", **SMALL),
        "w": PspConfig(encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True, **SMALL),
        "w-plus": PspConfig(encoder_type="BackboneEncoderUsingLastLayerIntoWPlus", **SMALL),
    }


CONFIG_NAMES = list(_configs())
# The xdist group (worker) that builds each synthetic checkpoint: every test using one runs there.
GROUP_OF = {
    "rgb": "rgb",
    "sketch": "labels",
    "segmentation": "labels",
    "e4e": "encoders",
    "w": "encoders",
    "w-plus": "encoders",
}
# Fixtures built from the RGB checkpoint: tests using them run on the "rgb" worker.
RGB_FIXTURES = {
    "small_ckpt",
    "small_psp",
    "raw_small",
    "bundles",
    "grouped_synthesis",
    "rgb_pipeline",
    "bundle",
    "bundle_copy",
}


def pytest_configure(config):
    """Run-time caches (OpenVINO's compiled models, GBs at 1024²) go to a throw-away folder per
    process, not the user's, removed when the process's tests end. An xdist worker's torch gets its
    share of the cores, and so does ONNX Runtime: both size their thread pools to the whole machine,
    so two workers on two cores would run four threads that wait on each other."""
    from psp_deploy.runtime.cache import CACHE_ENV

    if CACHE_ENV not in os.environ:
        config.psp_cache = os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="psp-deploy-cache-")
        # torch's inductor keeps its compiled kernels in /tmp/torchinductor_USER for good (GBs after
        # a few runs of the inductor tests): they go to the throw-away folder too.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(config.psp_cache, "torchinductor"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(share)
        _onnxruntime_threads(share)


def _onnxruntime_threads(share: int) -> None:
    """Every ONNX Runtime session of this process, with options or without, runs ``share`` threads unless
    it asks for a number itself, and its idle threads sleep: spinning ones take the other worker's core
    (on two cores, two workers' sessions ran about 15% slower with ONNX Runtime's defaults)."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_inference_collection as collection

    class Shared(ort.SessionOptions):
        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = share
            self.add_session_config_entry("session.intra_op.allow_spinning", "0")

    ort.SessionOptions = Shared
    collection.C.get_default_session_options = Shared


def pytest_unconfigure(config):
    if hasattr(config, "psp_cache"):
        shutil.rmtree(config.psp_cache, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Pin each test to the xdist worker (group) that builds the checkpoint it needs.

    A parameter naming a configuration (name=..., task=...) decides; else using an RGB
    fixture means the "rgb" group. Explicit xdist_group marks win: test modules that only read the shared
    bundles (files, exported once per run) form groups of their own, so that the two workers' loads balance.
    """
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        params = item.callspec.params if hasattr(item, "callspec") else {}
        config = next((v for k, v in params.items() if k in ("name", "task") and v in GROUP_OF), None)
        if config is not None:
            item.add_marker(pytest.mark.xdist_group(GROUP_OF[config]))
        elif RGB_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.xdist_group("rgb"))


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """synthetic(name) → (net that made the file, checkpoint path), made once per session."""
    from psp_deploy.models.synthetic import save_checkpoint, synthetic_psp

    cache: dict[str, tuple] = {}
    folder = tmp_path_factory.mktemp("ckpt")

    def get(name: str):
        if name not in cache:
            # seeded by name, not by order: every worker must make the same weights, as a bundle exported by
            # one worker is compared with the nets another worker made
            net = synthetic_psp(_configs()[name], seed=CONFIG_NAMES.index(name))
            cache[name] = (net, save_checkpoint(net, folder / f"{name}.pt"))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def small_ckpt(synthetic) -> Path:
    """GradualStyleEncoder, RGB input, 64² output: the workhorse of the fast tests."""
    return synthetic("rgb")[1]


@pytest.fixture(scope="session")
def small_psp(small_ckpt):
    from psp_deploy.models import load_psp

    return load_psp(small_ckpt)


BUNDLES = {
    # name: (checkpoint config, export options)
    "rgb-scaled": ("rgb", dict(modconv="scaled", verify=True)),
    "sketch-scaled": ("sketch", dict(modconv="scaled", verify=False)),
    "segmentation-scaled": ("segmentation", dict(modconv="scaled", verify=False)),
}


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory, worker_id):
    """A folder every xdist worker of this run sees (the run's base temp folder)."""
    root = tmp_path_factory.getbasetemp()
    return root if worker_id == "master" else root.parent


@pytest.fixture(scope="session")
def bundles(synthetic, shared_dir):
    """bundles(name) → (Bundle, parity results), exported once per test run.

    Bundles are shared between xdist workers through files and a lock: the suite is
    CPU-bound, so a worker waiting for another's export beats exporting twice.
    """
    import json

    from filelock import FileLock

    from psp_deploy.bundle import Bundle
    from psp_deploy.export import export_net
    from psp_deploy.export.parity import ParityResult
    from psp_deploy.files import sha256_file

    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            folder, results_file = shared_dir / "bundles" / name, shared_dir / "bundles" / f"{name}.parity.json"
            folder.parent.mkdir(exist_ok=True)
            with FileLock(str(folder) + ".lock"):
                if not results_file.exists():
                    ckpt_name, options = BUNDLES[name]
                    net, path = synthetic(ckpt_name)
                    # the file's hash: the net is what the file holds, so engines built from the file (inductor) fit
                    source = {"checkpoint": path.name, "sha256": sha256_file(path)}
                    _, results = export_net(net, folder, source=source, **options)
                    results_file.write_text(json.dumps([r.__dict__ for r in results]))
            results = [ParityResult(**r) for r in json.loads(results_file.read_text())]
            cache[name] = (Bundle.open(folder), results)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def grouped_synthesis(synthetic, tmp_path_factory):
    """grouped_synthesis(batch) → (ONNX path, GraphSpec, ModelRecord) of the small RGB model's
    synthesis graph in grouped form: a bundle's graph without the cost of a whole bundle."""
    from psp_deploy.bundle import ModelRecord
    from psp_deploy.export.checks import check_graph
    from psp_deploy.export.graphs import graph_specs
    from psp_deploy.export.to_onnx import export_graph
    from psp_deploy.models.forms import set_forms

    cache: dict[int, tuple] = {}
    folder = tmp_path_factory.mktemp("grouped")

    def get(batch: int):
        if batch not in cache:
            net, _ = synthetic("rgb")
            set_forms(net, modconv="grouped", fir="depthwise")
            try:
                spec = graph_specs(net, batch)[2]
                model = export_graph(spec, 18)
            finally:
                set_forms(net, modconv="grouped", fir="reference")
            check_graph(model, "synthesis")
            path = folder / f"synthesis_b{batch}.onnx"
            path.write_bytes(model.SerializeToString())
            record = ModelRecord(path.name, "", "fp32", 18, list(spec.inputs), list(spec.outputs))
            cache[batch] = (path, spec, record)
        return cache[batch]

    return get


@pytest.fixture()
def bundle_copy(bundles, tmp_path):
    """A private copy of the scaled RGB bundle to modify: big files hard-linked (new files and the
    manifest, always replaced by rename, never touch the originals), small ones copied."""
    import os
    import shutil

    src = bundles("rgb-scaled")[0].root
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst, copy_function=os.link)
    for name in ("manifest.json", "mapping.onnx"):
        (dst / name).unlink()
        shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture()
def unwritable_dir(tmp_path):
    """A folder nobody can write into, root included (CI runs as root, which ignores mode bits): made
    immutable with chattr +i where the file system allows it, else read-only by mode for a normal user."""
    import subprocess

    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here: root can write into any folder")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
