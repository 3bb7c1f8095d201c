"""The command's face: version, choices in --help, messages printed literally, defaults."""

import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.runtime.backends import REGISTRY

pytestmark = pytest.mark.xdist_group("cli")  # see tests/conftest.py


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "240"})  # help lines unwrapped


def test_version():
    result = _invoke("--version")
    assert result.exit_code == 0 and re.fullmatch(r"psp-deploy \d+\.\d+\.\d+\S*\n", result.output)


BACKENDS = f"<{'|'.join(['auto', *REGISTRY])}>"  # the one table's names, in its order
PRECISIONS = f"<{'|'.join(dict.fromkeys(p for spec in REGISTRY.values() for p in spec.precisions))}>"


@pytest.mark.parametrize(
    "command,choices",
    [
        ("run", [BACKENDS, PRECISIONS, "<cpu|cuda>"]),
        ("serve", [BACKENDS, PRECISIONS, "127.0.0.1"]),
        ("build", [BACKENDS, PRECISIONS]),
        ("export", ["<grouped|scaled>", "<transpose|phase|folded>"]),
    ],
)
def test_help_lists_the_choices(command, choices):
    text = re.sub(r"[\s│]+", " ", _invoke(command, "--help").output)
    for choice in choices:
        assert choice in text, (choice, text)


def test_install_hints_keep_their_extra_in_brackets(bundles, tmp_path):
    root = bundles("rgb-scaled")[0].root
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    cuda = _invoke("run", root, tmp_path / "photo.png", "-o", tmp_path / "out", "--device", "cuda")
    assert cuda.exit_code == 2 and "pip install onnxruntime-gpu" in cuda.output, cuda.output
    cpu_only = ("--backend", "openvino", "--device", "cuda")
    openvino = _invoke("run", root, tmp_path / "photo.png", "-o", tmp_path / "out", *cpu_only)
    assert openvino.exit_code == 2 and "openvino runs on the CPU, not cuda" in openvino.output, openvino.output
    trt = _invoke("build", root, "--backend", "tensorrt")
    assert trt.exit_code == 2 and "pip install 'psp-deploy[trt]'" in trt.output, trt.output
    tuning = _invoke("build", root, "--device", "cuda")  # auto: onnxruntime, which needs onnxruntime-gpu
    assert tuning.exit_code == 2 and "install onnxruntime-gpu" in tuning.output, tuning.output
    cpu_builds = [("--backend", "openvino", "--tf32"), ("--backend", "openvino", "--device", "cuda")]
    refusals = [_invoke("build", root, *args) for args in cpu_builds]
    assert [r.exit_code for r in refusals] == [2, 2]
    assert (
        "--tf32 is a GPU build option" in refusals[0].output
        and "openvino runs on the CPU, not cuda" in refusals[1].output
    )


def test_build_defaults_to_a_backend_this_machine_has(bundle_copy):
    result = _invoke("build", bundle_copy)
    assert result.exit_code == 0, result.output
    assert "backend: openvino" in result.output  # no TensorRT here; what `run --backend auto` picks


def _commands():
    import typer

    group = typer.main.get_command(app)
    return [((), group), *(((name,), command) for name, command in group.commands.items())]


def _squeezed(text: str) -> str:
    """Text as words without the spaces, line breaks and box lines a layout puts between them."""
    return re.sub(r"[\s│`]+", "", text)


def _last_columns(output: str) -> str:
    """The text of each panel's last column (help, description), its rows joined: where the first row's
    last cell starts (after the two spaces of padding between cells), in every row of the panel."""
    text, rows = [], None
    for line in output.splitlines():
        if line.startswith("╭"):
            rows = []
        elif line.startswith("╰") and rows:
            start = [m.start(1) for m in re.finditer(r"\s{2,}(\S)", rows[0])][-1]
            text += [row[start:] for row in rows]
            rows = None
        elif rows is not None:
            rows.append(line[1:-1])
    return _squeezed("".join(text))


@pytest.mark.parametrize("columns", ["80", "60"])
def test_help_wraps_every_word_at_narrow_widths(columns):
    """Every option's help and every command's summary is there whole: wrapped, a word wider than
    its column folded onto the next line, never cut with "…" (at 80 columns "(OUTPUT/psp-deploy.json)"
    was cut to "(OUTPUT/psp-depl…", and "--optimization-level" to "--optimization-l…")."""
    for name, command in _commands():
        result = CliRunner().invoke(app, [*name, "--help"], env={"COLUMNS": columns})
        assert result.exit_code == 0, result.output
        assert max(map(len, result.output.splitlines())) <= int(columns), result.output
        texts = [command.help or "", *(getattr(param, "help", None) or "" for param in command.params)]
        assert result.output.count("…") == sum(t.count("…") for t in texts), result.output
        helps = _last_columns(result.output)
        for param in command.params:
            assert _squeezed(getattr(param, "help", None) or "") in helps, (name, param.name, result.output)
        for sub in getattr(command, "commands", {}).values():
            assert _squeezed(sub.help.split("\n\n")[0]) in helps, (sub.name, result.output)


def test_flags_show_no_value_placeholder():
    """A flag takes no value: --help, --version and --resize/--no-resize show no "<bool>"."""
    for name, _ in _commands():
        result = _invoke(*name, "--help")
        assert result.exit_code == 0 and "<bool>" not in result.output, (name, result.output)
    run_help = _invoke("run", "--help").output
    assert "<path>" in run_help and "<int range>" in run_help  # options that take a value still say which


def test_an_error_after_a_progress_bar_stands_alone(tmp_path):
    """In a log or a pipe, a bar stopped by an error prints neither its last frame nor a blank line."""
    (tmp_path / "bad.pt").write_text("garbage")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"error: {tmp_path / 'bad.pt'}: " + result.output.split(": ", 2)[2].rstrip()]
    assert "loading checkpoint" not in result.output


def _screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: enough of VT100 for rich's live displays (carriage return,
    line feed, cursor up, erase line; colours ignored)."""
    lines, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", raw):
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
            lines += [""] * (row + 1 - len(lines))
        elif token.startswith("\x1b["):
            code, number = token[-1], token[2:-1]
            if code == "A":
                row = max(row - int(number or 1), 0)
            elif code == "K":
                lines[row] = "" if number == "2" else lines[row][:col]
        elif token:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [line.rstrip() for line in lines if line.strip()]


def test_an_error_after_a_progress_bar_stands_alone_on_a_terminal(tmp_path):
    """On a terminal the bar is erased before the error line: no "⠋ loading checkpoint 0/7" above it."""
    import os
    import pty
    import subprocess
    import sys

    (tmp_path / "bad.pt").write_text("garbage")
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color"}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TERMINAL_WIDTH"):
        env.pop(name, None)
    command = [sys.executable, "-m", "psp_deploy.cli", "export", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "o")]
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    raw = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process ended and closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 2
    text = raw.decode()
    assert "loading checkpoint" in text  # the bar was drawn...
    screen = _screen(text)
    assert len(screen) == 1 and screen[0].startswith(f"error: {tmp_path / 'bad.pt'}: not a PyTorch checkpoint"), screen
