"""SeFa from the bundle's synthesis graph: the paper's formula against an independent computation on the
checkpoint's own weights, orthonormal directions that move the image more than random ones, no torch."""

import subprocess
import sys

import numpy as np
import pytest

from psp_deploy.bundle import Bundle
from psp_deploy.directions import add_sefa
from psp_deploy.directions.sefa import style_weights
from psp_deploy.errors import DirectionError
from psp_deploy.runtime import Pipeline


def genforce_sefa(net, layers):
    """SeFa as its authors compute it (genforce/sefa utils.factorize_weight, e4e's editings/sefa.py): the
    modulation weights of the layers' convolutions (the last to_rgb for the last index), transposed and
    concatenated, columns normalised, np.linalg.eig of W·Wᵀ."""
    decoder = net.decoder
    modules = {0: decoder.conv1, **{k: decoder.convs[k - 1] for k in range(1, len(decoder.convs) + 1)}}
    modules[len(decoder.convs) + 1] = decoder.to_rgbs[-1]
    weight = np.concatenate([modules[k].conv.modulation.weight.detach().numpy().T for k in layers], axis=1)
    weight = weight / np.linalg.norm(weight, axis=0, keepdims=True)
    values, vectors = np.linalg.eig(weight.dot(weight.T))
    order = np.argsort(values.real)[::-1]
    return values.real[order], vectors.real[:, order].T


def check_sefa(root, net, layers, spec, top=10):
    """``directions sefa`` on the bundle at ``root`` against genforce_sefa on ``net``, the net it was exported
    from: orthonormal, the same eigenvalues and (up to sign) vectors, the stated sign convention."""
    records = add_sefa(root, spec, top=top)
    assert list(records) == [f"sefa{k}" for k in range(top)]
    bundle = Bundle.open(root)
    vectors = np.stack([bundle.direction(f"sefa{k}")[1] for k in range(top)])
    assert all(r.kind == "sefa" and r.layers == list(layers) for r in records.values())
    assert np.abs(vectors @ vectors.T - np.eye(top)).max() <= 1e-5
    values, expected = genforce_sefa(net, layers)
    eigenvalues = np.array([records[f"sefa{k}"].params["eigenvalue"] for k in range(top)])
    assert np.abs(eigenvalues - values[:top]).max() <= 1e-4 * values[0]
    assert np.abs(np.abs(np.sum(vectors * expected[:top], axis=1)) - 1).max() <= 1e-4  # equal up to sign
    largest = vectors[np.arange(top), np.abs(vectors).argmax(axis=1)]
    assert (largest > 0).all()  # the stated sign convention


@pytest.mark.parametrize("layers,spec", [(range(0, 6), "0-5"), ([8, 9], "8-9")])
def test_sefa_reproduces_the_formula_with_orthonormal_directions(bundle_copy, synthetic, layers, spec):
    check_sefa(bundle_copy, synthetic("rgb")[0], layers, spec)


def test_the_first_direction_moves_the_image_more_than_random_ones(bundle_copy):
    add_sefa(bundle_copy, "0-5", top=1)
    with Pipeline.from_bundle(bundle_copy) as pipeline:
        first = pipeline.direction("sefa0").values
        rng = np.random.default_rng(0)
        codes = pipeline.style_latent(0) + 0.3 * rng.standard_normal((8, 10, 512)).astype(np.float32)
        randoms = rng.standard_normal((8, 512)).astype(np.float32)
        randoms /= np.linalg.norm(randoms, axis=1, keepdims=True)
        base = pipeline.synthesize(codes)[0]

        def change(vectors):
            moved = codes.copy()
            moved[:, :6] += 3.0 * vectors[:, None, :]
            return np.abs(pipeline.synthesize(moved)[0] - base).mean(axis=(1, 2, 3))

        along_first, along_random = change(np.repeat(first[None], 8, axis=0)), change(randoms)
    assert along_first.mean() > 1.2 * along_random.mean(), (along_first, along_random)


def test_the_grouped_graph_gives_the_scaled_graph_s_style_weights(bundles, grouped_synthesis):
    scaled = style_weights(bundles("rgb-scaled")[0].model_path("synthesis"))
    grouped = style_weights(grouped_synthesis(2)[0])
    assert scaled.keys() == grouped.keys() and len(scaled) == 14
    assert all(np.array_equal(scaled[k], grouped[k]) for k in scaled)


def test_sefa_refusals(bundle_copy):
    with pytest.raises(DirectionError, match="--top must be from 1 to 512"):
        add_sefa(bundle_copy, "0-5", top=0)
    add_sefa(bundle_copy, "0-5", top=2)
    with pytest.raises(DirectionError, match="already has the direction.* sefa0, sefa1"):
        add_sefa(bundle_copy, "6-7", top=2)


def test_sefa_and_edits_run_without_torch_or_onnx(bundle_copy):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
        "import numpy as np\n"
        "from psp_deploy.directions import add_sefa\n"
        "from psp_deploy.runtime import Pipeline\n"
        f"add_sefa({str(bundle_copy)!r}, '0-3', top=2)\n"
        f"p = Pipeline.from_bundle({str(bundle_copy)!r})\n"
        "r = p.run(np.full((256, 256, 3), 120, np.uint8), align=False, edits=[('sefa1', 2.0)])\n"
        "assert r.images.shape == (1, 64, 64, 3)\n"
        "print('ok', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxscript')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok ['onnx', 'torch']"  # only the poisoned entries: nothing imported them
