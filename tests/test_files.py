"""The shared file helpers: JSON written whole or not at all, and file hashes."""

import hashlib
import json

import numpy as np
import pytest

from psp_deploy.errors import OutputError
from psp_deploy.files import require_writable, sha256_file, write_json


def test_write_json_is_indented_with_one_trailing_newline(tmp_path):
    write_json(tmp_path / "sub" / "a.json", {"b": [1, 2]})
    text = (tmp_path / "sub" / "a.json").read_text()
    assert text == json.dumps({"b": [1, 2]}, indent=2) + "\n"


def test_write_json_default_and_failure_leave_only_complete_files(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.float32(0.5)}, default=float)
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 0.5}
    with pytest.raises(TypeError):
        write_json(tmp_path / "a.json", {"x": object()})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 0.5}  # the old file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_sha256_file(tmp_path):
    data = bytes(range(256)) * 20_000  # over one read block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_require_writable_makes_the_folder_and_leaves_nothing(tmp_path):
    assert require_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_require_writable_refuses_a_locked_folder_naming_it(unwritable_dir):
    with pytest.raises(OutputError, match=f"cannot write to {unwritable_dir}"):
        require_writable(unwritable_dir)
    with pytest.raises(OutputError, match="cannot write to .*locked/sub"):
        require_writable(unwritable_dir / "sub")
