"""Loading official-format checkpoints: configurations, strictness, and hostile files."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from psp_deploy.config import PspConfig
from psp_deploy.errors import CheckpointError
from psp_deploy.models import load_psp, read_checkpoint
from psp_deploy.models.psp import Psp

from ..conftest import CONFIG_NAMES

# Outputs are compared for the configurations whose latent_avg or head differs most from
# the default; for the others, bitwise-identical weights and config are the proof.
COMPARE_OUTPUTS = {"e4e", "w"}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_synthetic_checkpoint_round_trips(name, synthetic):
    net, path = synthetic(name)
    config = net.config
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {"state_dict", "opts", "latent_avg"} <= set(raw)
    assert all(k.startswith(("encoder.", "decoder.")) for k in raw["state_dict"])
    assert isinstance(raw["opts"], dict) and raw["opts"]["encoder_type"] == config.encoder_type
    assert raw["latent_avg"].shape == ((1, 512) if config.learn_in_w else (config.n_styles, 512))

    loaded = load_psp(path)
    assert loaded.config == config
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.latent_avg, net.latent_avg)
    if name in COMPARE_OUTPUTS:
        x = torch.rand(1, config.input_nc, 256, 256) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_loaded_model_encodes_and_synthesizes_with_official_shapes(small_psp):
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        codes = small_psp.encode(x)
        image = small_psp.synthesize(codes)
        pooled = small_psp(x, resize=True)
    assert codes.shape == (2, 10, 512)
    assert image.shape == (2, 3, 64, 64)
    assert pooled.shape == (2, 3, 256, 256)
    assert torch.isfinite(image).all()
    # non-degenerate: codes move with the input and the image is not flat or saturated
    assert (codes[0] - codes[1]).abs().mean() > 0.05
    assert 0.1 < image.std() < 1.0


def test_official_key_shapes_at_1024():
    """Key names and shapes straight from the official layout (spec §2–§4)."""
    sd = Psp(PspConfig()).state_dict()
    expected = {
        "encoder.input_layer.0.weight": (64, 3, 3, 3),
        "encoder.input_layer.2.weight": (64,),
        "encoder.body.3.shortcut_layer.0.weight": (128, 64, 1, 1),
        "encoder.body.21.res_layer.5.fc1.weight": (32, 512, 1, 1),
        "encoder.styles.0.convs.6.weight": (512, 512, 3, 3),
        "encoder.styles.17.convs.10.bias": (512,),
        "encoder.latlayer1.weight": (512, 256, 1, 1),
        "encoder.latlayer2.weight": (512, 128, 1, 1),
        "decoder.style.8.weight": (512, 512),
        "decoder.input.input": (1, 512, 4, 4),
        "decoder.conv1.conv.weight": (1, 512, 512, 3, 3),
        "decoder.to_rgb1.conv.weight": (1, 3, 512, 1, 1),
        "decoder.convs.0.conv.blur.kernel": (4, 4),
        "decoder.convs.15.conv.weight": (1, 32, 32, 3, 3),
        "decoder.convs.15.activate.bias": (32,),
        "decoder.to_rgbs.7.upsample.kernel": (4, 4),
        "decoder.to_rgbs.7.bias": (1, 3, 1, 1),
        "decoder.noises.noise_16": (1, 1, 1024, 1024),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "encoder.styles.18.linear.weight" not in sd and "decoder.convs.16.conv.weight" not in sd
    assert not any(k.startswith("decoder.upsamples") for k in sd)
    assert sum(1 for k in sd if k.startswith("encoder.body.") and k.endswith("shortcut_layer.0.weight")) == 3


@pytest.fixture(scope="module")
def raw_small(small_ckpt):
    return torch.load(small_ckpt, map_location="cpu", weights_only=True)


def test_old_file_without_output_size_or_learn_in_w(raw_small, tmp_path):
    ckpt = dict(raw_small, opts={k: v for k, v in raw_small["opts"].items() if k not in ("output_size", "learn_in_w")})
    torch.save(ckpt, tmp_path / "old.pt")
    config = load_psp(tmp_path / "old.pt").config
    assert config.output_size == 64 and config.learn_in_w is False


def test_old_latent_avg_vector_broadcasts(raw_small, tmp_path):
    ckpt = dict(raw_small, latent_avg=raw_small["latent_avg"][0])
    torch.save(ckpt, tmp_path / "vec.pt")
    net = load_psp(tmp_path / "vec.pt")
    assert net.latent_avg.shape == (10, 512)
    assert torch.equal(net.latent_avg[5], raw_small["latent_avg"][0])


def test_e4e_extra_top_level_keys_are_ignored(raw_small, tmp_path):
    extras = dict(
        global_step=5, best_val_loss=0.3, optimizer={"state": {}}, discriminator_state_dict={"w": torch.ones(2)}
    )
    torch.save(dict(raw_small, **extras), tmp_path / "extras.pt")
    assert load_psp(tmp_path / "extras.pt").config.output_size == 64


def test_missing_key_is_named(raw_small, tmp_path):
    state = dict(raw_small["state_dict"])
    del state["decoder.convs.3.noise.weight"]
    torch.save(dict(raw_small, state_dict=state), tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing key decoder\.convs\.3\.noise\.weight \(expected shape \[1\]\)"):
        load_psp(tmp_path / "missing.pt")


def test_misshaped_key_names_expected_and_found(raw_small, tmp_path):
    state = dict(raw_small["state_dict"])
    state["encoder.latlayer2.weight"] = torch.zeros(512, 64, 1, 1)
    torch.save(dict(raw_small, state_dict=state), tmp_path / "shape.pt")
    with pytest.raises(
        CheckpointError, match=r"encoder\.latlayer2\.weight: expected shape \[512, 128, 1, 1\], found \[512, 64, 1, 1\]"
    ):
        load_psp(tmp_path / "shape.pt")


def test_contradicting_opts_fail(raw_small, tmp_path):
    torch.save(dict(raw_small, opts=dict(raw_small["opts"], output_size=1024)), tmp_path / "liar.pt")
    with pytest.raises(CheckpointError, match=r"opts\['output_size'\] says 1024 but the weights are for 64"):
        load_psp(tmp_path / "liar.pt")


@pytest.mark.parametrize("text", ["these are not weights\n", "# notes\n", "{}\n"])
def test_text_file_is_not_a_checkpoint(text, tmp_path):
    """Text read as pickle opcodes used to be refused as a file that "asks to run code"."""
    path = tmp_path / "notes.pt"
    path.write_text(text)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint: it starts with") as err:
        read_checkpoint(path)
    assert "run code" not in str(err.value)


def test_truncated_checkpoint(small_ckpt, tmp_path):
    path = tmp_path / "cut.pt"
    with open(small_ckpt, "rb") as src:
        path.write_bytes(src.read(1_000_000))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "nope.pt")


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder; give the checkpoint file"):
        read_checkpoint(tmp_path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_code_executing_pickle_is_refused_without_running(writer, tmp_path):
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"encoder.x": torch.ones(1)}, "opts": _Exploit(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match=r"refused to load: the file asks to import \S+, which") as err:
        read_checkpoint(path)
    assert not marker.exists()
    assert "weights_only" not in str(err.value)  # torch's advice to turn the protection off is not passed on


def test_non_psp_state_dict(tmp_path):
    torch.save({"state_dict": {"g_ema.style.1.weight": torch.ones(1)}}, tmp_path / "gan.pt")
    with pytest.raises(CheckpointError, match="not a pSp checkpoint"):
        read_checkpoint(tmp_path / "gan.pt")
