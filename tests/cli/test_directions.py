"""`psp-deploy directions add | sefa | list`: through the real CLI."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from psp_deploy.bundle import Bundle
from psp_deploy.cli import app
from tests.directions.test_importing import _Exploit, ganspace_file, interfacegan_file


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_add_sefa_and_list(bundle_copy, tmp_path):
    added = invoke("directions", "add", bundle_copy, "age", interfacegan_file(tmp_path / "age.pt"), "--layers", "0-7")
    assert added.exit_code == 0, added.output
    assert "added age: interfacegan on layers 0-7 (age.pt)" in added.output
    pca, _ = ganspace_file(tmp_path / "ffhq_pca.pt")
    added = invoke("directions", "add", bundle_copy, "smile", pca, "--ganspace", "46,4,5,-20")
    assert added.exit_code == 0, added.output
    sefa = invoke("directions", "sefa", bundle_copy, "--layers", "0-5", "--top", "3")
    assert sefa.exit_code == 0 and sefa.output.count("sefa on layers 0-5 (SeFa #") == 3, sefa.output
    listed = invoke("directions", "list", bundle_copy)
    assert listed.exit_code == 0, listed.output
    for line in ("age", "interfacegan", "smile", "ffhq_pca.pt, component 46 to -20 std", "sefa2", "SeFa #2"):
        assert line in listed.output
    assert sorted(Bundle.open(bundle_copy).manifest.directions) == ["age", "sefa0", "sefa1", "sefa2", "smile"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ganspace", "46,4"], "write COMPONENT,START,END,STRENGTH"),
        (["--layers", "3-1"], "layers '3-1': the range '3-1' runs backwards"),
        (["--layers", "0-12"], r"layers must name style indices in 0..9"),
    ],
)
def test_add_refusals_are_one_line_and_exit_2(bundle_copy, tmp_path, args, message):
    done = invoke("directions", "add", bundle_copy, "age", interfacegan_file(tmp_path / "age.pt"), *args)
    assert done.exit_code == 2 and done.output.startswith("error: ") and message in done.output, done.output
    assert not Bundle.open(bundle_copy).manifest.directions


def test_a_code_running_pickle_is_refused_by_the_command(bundle_copy, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": _Exploit(marker)}, tmp_path / "evil.pt")
    done = invoke("directions", "add", bundle_copy, "evil", tmp_path / "evil.pt")
    assert done.exit_code == 2 and "refused to load: the file asks to import" in done.output, done.output
    assert not marker.exists()
    np.save(tmp_path / "nan.npy", np.full((512,), np.nan, np.float32))
    done = invoke("directions", "add", bundle_copy, "nan", tmp_path / "nan.npy")
    assert done.exit_code == 2 and "holds 512 NaN or infinite values" in done.output


def test_list_of_a_bundle_without_directions(bundles):
    done = invoke("directions", "list", bundles("rgb-scaled")[0].root)
    assert done.exit_code == 0 and "no directions" in done.output
