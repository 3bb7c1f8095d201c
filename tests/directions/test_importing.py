"""`directions add`: the official files, made here in their published layouts, imported and applied; unsafe,
misshapen, non-finite and edited files refused, each with its named error."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from psp_deploy.bundle import Bundle
from psp_deploy.directions import GanspaceEdit, add_direction
from psp_deploy.errors import BundleError, DirectionError, InputError
from psp_deploy.runtime.edits import Direction

N_STYLES = 10  # the small synthetic model: 64², 10 styles


@pytest.fixture()
def codes():
    return np.random.default_rng(0).standard_normal((3, N_STYLES, 512)).astype(np.float32)


def interfacegan_file(path, seed=1):
    """As e4e ships editings/interfacegan_directions/age.pt: torch.save of a [1, 512] tensor."""
    torch.save(torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 512)).astype(np.float32)), path)
    return path


def ganspace_file(path):
    """As e4e ships editings/ganspace_pca/ffhq_pca.pt: comp [80, 1, 512], std [80], mean [1, 512]."""
    rng = np.random.default_rng(2)
    comp = np.linalg.qr(rng.standard_normal((512, 80)))[0].T.reshape(80, 1, 512)
    pca = {
        "comp": torch.from_numpy(comp.astype(np.float32)),
        "std": torch.from_numpy(np.linspace(3, 0.5, 80).astype(np.float32)),
        "mean": torch.from_numpy(rng.standard_normal((1, 512)).astype(np.float32)),
    }
    torch.save(pca, path)
    return path, pca


def loaded(bundle_path, name):
    return Direction(name, *Bundle.open(bundle_path).direction(name))


def test_an_interfacegan_boundary_imports_and_adds_strength_times_it(bundle_copy, tmp_path, codes):
    path = interfacegan_file(tmp_path / "age.pt")
    record = add_direction(bundle_copy, "age", path)
    assert (record.kind, record.layers, record.shape) == ("interfacegan", list(range(N_STYLES)), [512])
    assert record.file == "directions/age.npy" and (bundle_copy / record.file).is_file()
    stated = json.loads((bundle_copy / "manifest.json").read_text())["directions"]["age"]
    assert stated["sha256"] == record.sha256 and stated["source"]["file"] == "age.pt"
    boundary = torch.load(path).numpy()
    # e4e's editor: latent + factor * direction, the [1, 512] direction on every layer
    assert np.array_equal(loaded(bundle_copy, "age").apply(codes, -3.0), codes + np.float32(-3.0) * boundary)


def test_layers_restrict_a_direction_and_npy_files_import_without_torch_load(bundle_copy, tmp_path, codes):
    vector = np.random.default_rng(3).standard_normal((1, 512)).astype(np.float32)
    np.save(tmp_path / "smile_boundary.npy", vector)  # InterFaceGAN's own format
    add_direction(bundle_copy, "smile", tmp_path / "smile_boundary.npy", layers="0-3,8")
    edited = loaded(bundle_copy, "smile").apply(codes, 2.0)
    moved = [0, 1, 2, 3, 8]
    assert np.array_equal(edited[:, moved], codes[:, moved] + np.float32(2.0) * vector)
    assert np.array_equal(np.delete(edited, moved, axis=1), np.delete(codes, moved, axis=1))


def test_an_offset_over_w_plus_imports_as_a_row_per_layer(bundle_copy, tmp_path, codes):
    offset = np.random.default_rng(4).standard_normal((1, N_STYLES, 512)).astype(np.float32)
    torch.save(torch.from_numpy(offset), tmp_path / "offset.pt")
    assert add_direction(bundle_copy, "offset", tmp_path / "offset.pt").kind == "offset"
    assert np.array_equal(loaded(bundle_copy, "offset").apply(codes, 0.5), codes + np.float32(0.5) * offset)


def e4e_ganspace(pca, latent, idx, start, end, strength):
    """e4e's editings/ganspace.py edit_latent, for one latent [n_styles, 512]."""
    w_centered = latent - pca["mean"]
    lat_comp, lat_std = pca["comp"], pca["std"]
    w_coord = torch.sum(w_centered[0].reshape(-1) * lat_comp[idx].reshape(-1)) / lat_std[idx]
    delta = (strength - w_coord) * lat_comp[idx] * lat_std[idx]
    delta_padded = torch.zeros(latent.shape)
    delta_padded[start:end] += delta.repeat(end - start, 1)
    return latent + delta_padded


def test_a_ganspace_component_applies_as_e4e_s_editor_does(bundle_copy, tmp_path, codes):
    path, pca = ganspace_file(tmp_path / "ffhq_pca.pt")
    record = add_direction(bundle_copy, "smile", path, ganspace=GanspaceEdit.parse("46,4,6,-20"))
    assert (record.kind, record.layers, record.params["component"], record.params["target"]) == (
        "ganspace",
        [4, 5],
        46,
        -20.0,
    )
    edited = loaded(bundle_copy, "smile").apply(codes, 1.0)
    expected = np.stack([e4e_ganspace(pca, torch.from_numpy(c), 46, 4, 6, -20).numpy() for c in codes])
    assert np.abs(edited - expected).max() <= 1e-4
    half = loaded(bundle_copy, "smile").apply(codes, 0.5)  # strength scales the move: half way there
    assert np.abs(half - (codes + expected) / 2).max() <= 1e-4


def test_strength_zero_leaves_the_codes_bit_for_bit(bundle_copy, tmp_path, codes):
    path, _ = ganspace_file(tmp_path / "ffhq_pca.pt")
    add_direction(bundle_copy, "smile", path, ganspace=GanspaceEdit(46, 4, 5, -20))
    add_direction(bundle_copy, "age", interfacegan_file(tmp_path / "age.pt"))
    for name in ("smile", "age"):
        assert loaded(bundle_copy, name).apply(codes, 0.0).tobytes() == codes.tobytes()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle", "npy"])
def test_a_pickle_that_asks_to_run_code_is_refused_without_running_it(bundle_copy, tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"comp": torch.ones(1, 512), "std": _Exploit(marker), "mean": torch.ones(512)}
    path = tmp_path / ("evil.npy" if writer == "npy" else "evil.pt")
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "raw pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        np.save(path, np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(DirectionError, match="refused to load") as err:
        add_direction(bundle_copy, "evil", path, ganspace=GanspaceEdit(0, 0, 1, 1))
    assert not marker.exists() and "weights_only" not in str(err.value)
    assert "evil" not in Bundle.open(bundle_copy).manifest.directions
    assert not (bundle_copy / "directions" / "evil.npy").exists()


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 256), r"got \[1, 256\]"),
        ((3, 512), r"\[10, 512\] \(an offset per style layer of this bundle\); got \[3, 512\]"),
    ],
)
def test_a_wrong_shape_is_refused(bundle_copy, tmp_path, shape, message):
    torch.save(torch.zeros(shape), tmp_path / "bad.pt")
    with pytest.raises(DirectionError, match=message):
        add_direction(bundle_copy, "bad", tmp_path / "bad.pt")


def test_nan_values_are_refused(bundle_copy, tmp_path):
    vector = np.ones((1, 512), np.float32)
    vector[0, 7] = np.nan
    np.save(tmp_path / "nan.npy", vector)
    with pytest.raises(DirectionError, match="holds 1 NaN or infinite values"):
        add_direction(bundle_copy, "nan", tmp_path / "nan.npy")
    np.save(tmp_path / "huge.npy", np.full((512,), 1e300))  # finite in float64, infinite in float32
    with pytest.raises(DirectionError, match="holds 512 NaN or infinite values"):
        add_direction(bundle_copy, "huge", tmp_path / "huge.npy")


def test_an_edited_direction_file_is_refused_when_used(bundle_copy, tmp_path):
    record = add_direction(bundle_copy, "age", interfacegan_file(tmp_path / "age.pt"))
    values = np.load(bundle_copy / record.file)
    values[3] += 1
    np.save(bundle_copy / record.file, values)
    with pytest.raises(BundleError, match=r"age\.npy: contents do not match the manifest's sha256"):
        Bundle.open(bundle_copy).direction("age")


def test_refusals_name_the_problem(bundle_copy, tmp_path):
    path, _ = ganspace_file(tmp_path / "ffhq_pca.pt")
    with pytest.raises(DirectionError, match="say which with --ganspace COMPONENT,START,END,STRENGTH"):
        add_direction(bundle_copy, "smile", path)
    with pytest.raises(DirectionError, match="component 80 out of 0..79"):
        add_direction(bundle_copy, "smile", path, ganspace=GanspaceEdit(80, 4, 5, 1))
    with pytest.raises(DirectionError, match="must lie in 0..10 with start < end"):
        add_direction(bundle_copy, "smile", path, ganspace=GanspaceEdit(1, 5, 5, 1))
    with pytest.raises(DirectionError, match="leave --layers out"):
        add_direction(bundle_copy, "smile", path, layers="4", ganspace=GanspaceEdit(1, 4, 5, 1))
    boundary = interfacegan_file(tmp_path / "age.pt")
    with pytest.raises(DirectionError, match="takes a GANSpace file"):
        add_direction(bundle_copy, "age", boundary, ganspace=GanspaceEdit(1, 4, 5, 1))
    add_direction(bundle_copy, "age", boundary)
    with pytest.raises(DirectionError, match="already has the direction"):
        add_direction(bundle_copy, "age", boundary)
    add_direction(bundle_copy, "age", interfacegan_file(tmp_path / "age2.pt", seed=5), force=True)
    torch.save({"weights": torch.ones(512)}, tmp_path / "other.pt")
    with pytest.raises(DirectionError, match="not GANSpace components .* it has weights"):
        add_direction(bundle_copy, "other", tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"direction name '\.\./x'"):
        add_direction(bundle_copy, "../x", boundary)
