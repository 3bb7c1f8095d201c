"""The one full-size check: an FFHQ-encode 1024 checkpoint exported with the CLI defaults."""

import pytest
from skimage import data

from psp_deploy.export import export_bundle
from psp_deploy.export.parity import TOLERANCE
from psp_deploy.models import load_psp
from psp_deploy.models.synthetic import make_checkpoint
from psp_deploy.runtime import Pipeline
from tests.directions.test_sefa import check_sefa


@pytest.mark.slow
@pytest.mark.xdist_group("full")
def test_ffhq_encode_1024_exports_and_runs(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "psp_ffhq_encode.pt", output_size=1024)
    bundle, results = export_bundle(checkpoint, tmp_path / "bundle")  # grouped, batch 1, verified
    assert {r.graph for r in results} == {"encoder", "mapping", "synthesis"}
    assert all(r.worst <= TOLERANCE for r in results), results
    assert bundle.config.n_styles == 18 and bundle.record("synthesis").batch == 1
    assert bundle.record("synthesis").outputs[0].shape == (1, 3, 1024, 1024)
    with Pipeline.from_bundle(bundle.root) as pipeline:
        result = pipeline.run(data.astronaut())
    assert result.images.shape == (1, 1024, 1024, 3) and result.codes.shape == (1, 18, 512)
    assert 20 < result.images.std() < 120  # a non-degenerate picture, neither flat nor saturated noise
    check_sefa(bundle.root, load_psp(checkpoint), range(0, 6), "0-5")  # SeFa at full size, from the file's net
