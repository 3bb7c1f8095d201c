"""The batch runner: one naming rule, collisions refused before work, settings kept, file modes."""

import json
import os
import stat
import time

import numpy as np
import pytest

from psp_deploy.errors import InputError, OutputError
from psp_deploy.files import new_file_mode
from psp_deploy.runtime.batch import SETTINGS_FILE, BatchRunner, collect_inputs
from psp_deploy.runtime.io import write_image_atomic


def _tree(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"an input")
    return root


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _runner(out, overwrite=False, **settings):
    """Writes each input's bytes to OUT/NAME.txt: the runner's own behaviour, no model needed."""
    return BatchRunner(
        out_dir=out,
        outputs=lambda item: [item.output(out, ".txt")],
        prepare=lambda item: item.source.read_bytes(),
        compute=lambda batch: batch,
        write=lambda item, data: _write(item.output(out, ".txt"), data),
        overwrite=overwrite,
        settings=settings,
    )


def test_output_names_keep_every_dot_and_mirror_sub_folders(tmp_path):
    photos = _tree(tmp_path / "in", ["pic.1.jpg", "pic.2.jpg", "pic.png", "trip/obama_x3.2.jpeg"])
    out = tmp_path / "out"
    summary = _runner(out).run(collect_inputs([photos]))
    assert len(summary.done) == 4
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))
    assert written == ["pic.1.txt", "pic.2.txt", "pic.txt", "trip/obama_x3.2.txt"]


def test_a_single_file_keeps_its_dots_too(tmp_path):
    photo = _tree(tmp_path / "in", ["obama_x3.2.jpg"]) / "obama_x3.2.jpg"
    _runner(tmp_path / "out").run(collect_inputs([photo]))
    assert [p.name for p in (tmp_path / "out").glob("*.txt")] == ["obama_x3.2.txt"]


def test_colliding_outputs_are_refused_before_any_work(tmp_path):
    photos = _tree(tmp_path / "in", ["pic.jpg", "pic.png", "other.png"])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"pic\.jpg and .*pic\.png would both write .*pic\.txt"):
        _runner(out).run(collect_inputs([photos]))
    assert not out.exists()  # nothing was done


def test_an_output_that_is_an_input_is_refused(tmp_path):
    photos = _tree(tmp_path / "in", ["a.png", "b.jpg"])
    runner = _runner(photos)
    runner.outputs = lambda item: [item.output(photos, ".png")]  # -o the input folder: a.png → a.png
    with pytest.raises(InputError, match=r"a\.png would overwrite the input"):
        runner.run(collect_inputs([photos]))
    assert (photos / "a.png").read_bytes() == b"an input"


def test_output_path_that_is_a_file_is_a_named_error(tmp_path):
    photos = _tree(tmp_path / "in", ["a.png"])
    taken = tmp_path / "somefile"
    taken.write_text("keep me")
    with pytest.raises(InputError, match="somefile: exists and is not a directory"):
        _runner(taken).run(collect_inputs([photos]))
    assert taken.read_text() == "keep me"


def test_rerun_with_other_settings_is_refused_unless_told_to_overwrite(tmp_path):
    photos = _tree(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    items = collect_inputs([photos])
    assert len(_runner(out, resize=False).run(items).done) == 2
    assert json.loads((out / SETTINGS_FILE).read_text()) == {"resize": False}
    assert len(_runner(out, resize=False).run(items).skipped) == 2  # same settings: resume
    with pytest.raises(InputError, match=r"other settings \(resize False → True\).*--overwrite"):
        _runner(out, resize=True).run(items)
    redone = _runner(out, overwrite=True, resize=True).run(items)
    assert len(redone.done) == 2 and json.loads((out / SETTINGS_FILE).read_text()) == {"resize": True}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_the_umask_gives_new_files(tmp_path, umask):
    previous = os.umask(umask)
    new_file_mode.cache_clear()
    try:
        write_image_atomic(tmp_path / "face.png", np.zeros((4, 4, 3), np.uint8))
        (tmp_path / "plain").touch()
    finally:
        os.umask(previous)
        new_file_mode.cache_clear()
    mode = stat.S_IMODE((tmp_path / "face.png").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask


def test_outputs_left_by_a_stopped_overwrite_are_redone_not_skipped(tmp_path):
    photos = _tree(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    items = collect_inputs([photos])
    _runner(out, resize=False).run(items)
    time.sleep(0.05)  # file times tick coarsely: keep the two runs apart
    _runner(out, overwrite=True, resize=True).run(items[:1])  # an --overwrite run stopped after one input
    rerun = _runner(out, resize=True).run(items)
    assert [i.source.name for i in rerun.skipped] == ["a.png"] and [i.source.name for i in rerun.done] == ["b.png"]


def test_an_output_folder_inside_the_input_folder_is_not_read_as_input(tmp_path):
    photos = _tree(tmp_path / "in", ["a.png"])
    out = photos / "out"
    _runner(out).run(collect_inputs([photos], out))
    assert [i.source.name for i in collect_inputs([photos], out)] == ["a.png"]
    assert len(_runner(out).run(collect_inputs([photos], out)).skipped) == 1
    assert [i.source.name for i in collect_inputs([str(photos / "**" / "*.png")], out)] == ["a.png"]  # globs too


def test_the_input_folder_as_output_folder_is_refused_naming_the_clash(tmp_path):
    """`align aligned/ -o aligned/` said "no input images found" of a folder full of PNGs."""
    photos = _tree(tmp_path / "in", ["a.png", "b.png"])
    for spec in (photos, str(photos / "*.png")):
        with pytest.raises(InputError, match=r"in(/\*\.png)? is also the output folder \(--output .*in\): outputs"):
            collect_inputs([spec], photos)
    with pytest.raises(InputError, match=r"in/sub lies inside the output folder .*in: outputs would be written among"):
        collect_inputs([_tree(photos / "sub", ["c.png"])], photos)
    assert sorted(p.name for p in photos.iterdir()) == ["a.png", "b.png", "sub"]  # nothing written


def test_a_file_named_in_the_output_folder_is_an_input(tmp_path):
    """Only what a folder or a glob finds under the output folder is taken for an output; a file named
    as such is an input, and one whose output would replace it is refused by name."""
    out = _tree(tmp_path / "out", ["a.png"])
    items = collect_inputs([out / "a.png"], out)
    assert [i.source.name for i in items] == ["a.png"]
    runner = _runner(out)
    runner.outputs = lambda item: [item.output(out, ".png")]
    with pytest.raises(InputError, match=r"a\.png would overwrite the input"):
        runner.run(items)


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, unwritable_dir):
    photos = _tree(tmp_path / "in", ["a.png"])
    for out in (unwritable_dir, unwritable_dir / "new"):
        runner = _runner(out)
        runner.prepare = lambda item: pytest.fail("work started")
        with pytest.raises(OutputError, match=f"cannot write to {out}"):
            runner.run(collect_inputs([photos], out))
    assert list(unwritable_dir.iterdir()) == []


def test_the_summary_says_how_long_the_run_took(tmp_path):
    photos = _tree(tmp_path / "in", ["a.png", "b.png"])
    runner = _runner(tmp_path / "out")
    runner.prepare = lambda item: time.sleep(0.05) or item.source.read_bytes()
    summary = runner.run(collect_inputs([photos]))
    assert summary.elapsed >= 0.1 and summary.rate == pytest.approx(2 / summary.elapsed)
    again = runner.run(collect_inputs([photos]))  # all skipped: no rate to speak of
    assert len(again.skipped) == 2 and again.rate is None


def test_other_suffixes_for_other_inputs(tmp_path):
    codes = _tree(tmp_path / "codes", ["a.npy", "b.png", "trip/c.npy"])
    items = collect_inputs([codes], suffixes=(".npy",), kind="codes")
    assert sorted(i.stem.as_posix() for i in items) == ["a", "trip/c"]
    with pytest.raises(InputError, match=r"no input codes found \(looked for \.npy\)"):
        collect_inputs([_tree(tmp_path / "none", ["x.png"])], suffixes=(".npy",), kind="codes")


def test_a_glob_keeps_sub_folders_below_its_fixed_part(tmp_path):
    photos = _tree(tmp_path / "in", ["trip/pic.jpg", "pic.jpg"])
    items = collect_inputs([str(photos / "**" / "*.jpg")])
    assert sorted(i.stem.as_posix() for i in items) == ["pic", "trip/pic"]


def test_outputs_are_never_written_into_a_bundle(tmp_path):
    photos = _tree(tmp_path / "in", ["a.png"])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="is inside the bundle"):
        _runner(bundle / "out").run(collect_inputs([photos]))
    assert not (bundle / "out").exists()


def test_run_options_refuse_seeds_and_blends_numpy_cannot_take():
    """What every row passes (run, serve, Pipeline.run): a negative seed was a numpy traceback mid-run."""
    from psp_deploy.runtime import RunOptions

    for seed, n in ((-1, 1), (2**32, 1), (2**32 - 2, 3), (1.5, 1)):
        with pytest.raises(InputError, match="seed must be an integer from 0 to"):
            RunOptions(latent_mask=(1,), seed=seed, n_outputs=n)
    for alpha in (-0.1, 1.1, float("nan")):
        with pytest.raises(InputError, match="mix_alpha must be from 0 to 1"):
            RunOptions(latent_mask=(1,), mix_alpha=alpha)
    assert RunOptions(latent_mask=(1,), seed=2**32 - 3, n_outputs=3, mix_alpha=1.0).seed == 2**32 - 3
