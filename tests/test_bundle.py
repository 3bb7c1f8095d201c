"""The manifest against what its graphs declare: an edited field is refused, naming it, by every backend."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from psp_deploy.bundle import Bundle, GraphDeclaration
from psp_deploy.cli import app
from psp_deploy.errors import BundleError
from psp_deploy.runtime.backends import backend_class

EDITS = {  # field: the edited value (the exported bundle says [0.5, 0.5, 0.5], 64, 10, null)
    "preprocess.mean": [0.4, 0.5, 0.5],
    "config.output_size": 128,
    "config.n_styles": 12,
    "modconv.batch": 4,
}


def _edit(root, field, value):
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    section, key = field.split(".")
    data[section][key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("field", EDITS)
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_edited_manifest_field_is_refused(bundle_copy, backend, field):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'psp-deploy[openvino]')")
    _edit(bundle_copy, field, EDITS[field])
    stated = re.escape(json.dumps(EDITS[field]))
    expected = rf"manifest\.json: {re.escape(field)} is {stated} but mapping\.onnx declares "
    with pytest.raises(BundleError, match=expected):
        backend_class(backend).from_bundle(Bundle.open(bundle_copy), "mapping", "fp32")


def test_an_edited_output_shape_is_refused(bundle_copy):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["models"]["mapping"]["fp32"]["outputs"][0]["shape"] = ["batch", 256]
    path.write_text(json.dumps(data))
    expected = r'models\.mapping\.fp32\.outputs\.w is \["batch", 256\] but mapping\.onnx declares \["batch", 512\]'
    with pytest.raises(BundleError, match=expected):
        backend_class("onnxruntime").from_bundle(Bundle.open(bundle_copy), "mapping", "fp32")


def test_the_cli_refuses_an_edited_manifest(bundle_copy, tmp_path):
    """The reported case: `psp-deploy run` on a bundle with an edited preprocess.mean exited 0."""
    _edit(bundle_copy, "preprocess.mean", EDITS["preprocess.mean"])
    Image.new("RGB", (256, 256)).save(tmp_path / "face.png")
    result = CliRunner().invoke(app, ["run", str(bundle_copy), str(tmp_path / "face.png"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())  # the console wraps long lines
    assert "preprocess.mean is [0.4, 0.5, 0.5] but encoder.onnx declares [0.5, 0.5, 0.5]" in message


def test_a_graph_without_metadata_is_refused(bundles):
    bundle = bundles("rgb-scaled")[0]
    bare = GraphDeclaration("mapping.onnx", [("z", ["batch", 512])], [("w", ["batch", 512])], {})
    with pytest.raises(BundleError, match=r"mapping\.onnx declares no psp_deploy\.config metadata .*export the bundle"):
        bundle.check_declared("mapping", "fp32", bare)


def test_an_edited_latent_avg_is_refused(bundle_copy):
    """latent_avg.npy (what calibration reads) is hash-checked like the graphs."""
    path = bundle_copy / "latent_avg.npy"
    codes = np.load(path)
    path.unlink()  # hard-linked to the shared bundle: replace, never edit in place
    np.save(path, codes + np.float32(0.01))
    with pytest.raises(BundleError, match=r"latent_avg\.npy: contents do not match the manifest's sha256"):
        Bundle.open(bundle_copy).latent_avg()
