"""Shared fixtures. Synthetic checkpoints are costly (seconds to make, hundreds of MB), so
each configuration is made once per session and shared by every test that reads it."""

from pathlib import Path

import pytest

SMALL = dict(output_size=64, channel_multiplier=1)


def _configs():
    from psp_deploy.config import PspConfig

    return {
        "rgb": PspConfig(**SMALL),
        "rgb-128": PspConfig(output_size=128, channel_multiplier=1),
        "sketch": PspConfig(task="celebs_sketch_to_face", input_nc=1, label_nc=1, **SMALL),
        "segmentation": PspConfig(task="celebs_seg_to_face", input_nc=19, label_nc=19, **SMALL),
        "e4e": PspConfig(encoder_type="Encoder4Editing", **SMALL),
        "w": PspConfig(encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True, **SMALL),
        "w-plus": PspConfig(encoder_type="BackboneEncoderUsingLastLayerIntoWPlus", **SMALL),
    }


CONFIG_NAMES = list(_configs())


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """synthetic(name) → (net that made the file, checkpoint path), made once per session."""
    from psp_deploy.models.synthetic import save_checkpoint, synthetic_psp

    cache: dict[str, tuple] = {}
    folder = tmp_path_factory.mktemp("ckpt")

    def get(name: str):
        if name not in cache:
            net = synthetic_psp(_configs()[name], seed=len(cache))
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
    "rgb-grouped3": ("rgb", dict(modconv="grouped", batch=3, verify=True)),
    "rgb-scaled": ("rgb", dict(modconv="scaled", verify=False)),
    "sketch-scaled": ("sketch", dict(modconv="scaled", verify=False)),
    "segmentation-scaled": ("segmentation", dict(modconv="scaled", verify=False)),
}


@pytest.fixture(scope="session")
def bundles(synthetic, tmp_path_factory):
    """bundles(name) → (Bundle, parity results), exported once per session."""
    from psp_deploy.export import export_net

    cache: dict[str, tuple] = {}
    folder = tmp_path_factory.mktemp("bundles")

    def get(name: str):
        if name not in cache:
            ckpt_name, options = BUNDLES[name]
            net, path = synthetic(ckpt_name)
            cache[name] = export_net(
                net, folder / name, source={"checkpoint": path.name, "sha256": "synthetic"}, **options
            )
        return cache[name]

    return get
