"""Edits in the Pipeline: after mixing, before the synthesis, row by row; strength 0 is the unedited image bit
for bit; a batch equals single runs; sweeps; directions checked before any work."""

import numpy as np
import pytest
from skimage import data

from psp_deploy.directions import GanspaceEdit, add_direction
from psp_deploy.errors import BundleError, InputError
from psp_deploy.graph_io import IMAGE
from psp_deploy.runtime import Pipeline, RunOptions, Sweep
from psp_deploy.runtime.preprocess import to_uint8
from tests.directions.test_importing import ganspace_file, interfacegan_file
from tests.images import assert_same_image


@pytest.fixture()
def edited_bundle(bundle_copy, tmp_path):
    add_direction(bundle_copy, "age", interfacegan_file(tmp_path / "age.pt"))
    pca, _ = ganspace_file(tmp_path / "ffhq_pca.pt")
    add_direction(bundle_copy, "smile", pca, ganspace=GanspaceEdit(46, 4, 6, -20))
    return bundle_copy


@pytest.fixture()
def pipeline(edited_bundle):
    with Pipeline.from_bundle(edited_bundle) as opened:
        yield opened


def faces(n):
    """n different 256² crops of the astronaut, as uint8 faces (no alignment)."""
    photo = data.astronaut()
    return np.stack([photo[16 * k : 16 * k + 256, 24 * k : 24 * k + 256] for k in range(n)])


def test_strength_zero_gives_the_unedited_image_bit_for_bit(pipeline):
    x = faces(2)
    plain = pipeline.generate(x, [RunOptions(align=False)] * 2)
    zero = pipeline.generate(x, [RunOptions(align=False, edits=(("age", 0.0), ("smile", 0)))] * 2)
    assert zero.pixels[IMAGE].tobytes() == plain.pixels[IMAGE].tobytes()
    assert all(np.array_equal(o.mixed[0], p.codes) for o, p in zip(zero.outputs, plain.outputs, strict=True))


def test_edits_move_the_codes_then_the_synthesis_draws_them(pipeline):
    x = faces(1)
    edits = (("age", -3.0), ("smile", 1.5))
    out = pipeline.generate(x, [RunOptions(align=False, edits=edits)]).outputs[0]
    by_hand = pipeline.direction("smile").apply(pipeline.direction("age").apply(out.codes[None], -3.0), 1.5)
    assert np.array_equal(out.mixed, by_hand) and not np.array_equal(out.mixed[0], out.codes)
    assert np.array_equal(pipeline.edit(out.codes[None], edits), by_hand)
    assert_same_image(out.images, to_uint8(pipeline.synthesize(by_hand)[0]))


def test_edits_come_after_style_mixing(pipeline):
    x = faces(1)
    row = RunOptions(align=False, latent_mask=(6, 7, 8, 9), seed=3, edits=(("age", 2.0),))
    out = pipeline.generate(x, [row]).outputs[0]
    mixed = pipeline.mix(out.codes[None], row.latent_mask, pipeline.style_latent(3), None)
    assert np.array_equal(out.mixed, pipeline.edit(mixed, row.edits))


def test_edits_commute_with_batching(pipeline):
    x = faces(8)
    rows = [RunOptions(align=False, edits=(("age", float(s)), ("smile", 0.5))) for s in np.linspace(-3, 3, 8)]
    batch = pipeline.generate(x, rows).pixels[IMAGE]
    singles = np.concatenate([pipeline.generate(x[k : k + 1], rows[k : k + 1]).pixels[IMAGE] for k in range(8)])
    assert np.abs(batch.astype(int) - singles).max() <= 1


def test_a_sweep_makes_one_output_per_step_from_one_encode(pipeline):
    x = faces(2)
    row = RunOptions(align=False, edits=(("smile", 1.0),), sweep=Sweep.parse("age:-3:3:7"))
    generated = pipeline.generate(x, [row, RunOptions(align=False)])
    swept, plain = generated.outputs
    assert swept.images.shape == (7, 64, 64, 3) and plain.images.shape == (1, 64, 64, 3)
    smiled = pipeline.edit(swept.codes[None], row.edits)
    expected = np.concatenate([pipeline.direction("age").apply(smiled, s) for s in np.linspace(-3, 3, 7)])
    assert np.array_equal(swept.mixed, expected)
    assert_same_image(swept.images, to_uint8(pipeline.synthesize(expected)[0]))


def test_run_takes_edits(pipeline):
    photo = faces(1)[0]
    result = pipeline.run(photo, align=False, edits=[("age", 1.0)])
    encoded = pipeline.generate(photo[None], [RunOptions(align=False)]).outputs[0].codes
    assert np.array_equal(result.codes, pipeline.edit(encoded[None], [("age", 1.0)]))


def test_refusals_come_before_any_work(pipeline, edited_bundle):
    x = faces(1)
    with pytest.raises(InputError, match=r"no direction 'gender' \(this bundle has: age, smile\)"):
        pipeline.generate(x, [RunOptions(align=False, edits=(("gender", 1.0),))])
    with pytest.raises(InputError, match="does not combine with --n-outputs"):
        RunOptions(latent_mask=(1,), n_outputs=2, sweep=Sweep("age", -1, 1, 3))
    with pytest.raises(InputError, match="the strength must be a finite number"):
        RunOptions(edits=(("age", float("nan")),))
    with pytest.raises(InputError, match="a sweep needs at least 2 steps"):
        Sweep.parse("age:-3:3:1")
    with pytest.raises(InputError, match="write NAME:LOW:HIGH:STEPS"):
        Sweep.parse("age:-3:3")
    file = edited_bundle / "directions" / "smile.npy"
    values = np.load(file)
    np.save(file, values * 2)  # changed after the manifest recorded it, before this pipeline first used it
    with pytest.raises(BundleError, match=r"smile\.npy: contents do not match the manifest's sha256"):
        pipeline.generate(x, [RunOptions(align=False, edits=(("smile", 1.0),))])
