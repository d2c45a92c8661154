"""bloodcells.files, writing outputs safely: a file is written to a temporary sibling and
renamed into place, so an interrupted write leaves neither a half file nor a temporary and
the old file survives; JSON of numpy values and paths; the files' sha256."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bloodcells import files


def test_atomic_writes_leave_no_temporary_and_normal_permissions(tmp_path):
    from bloodcells.files import write_text_atomic

    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        from bloodcells.files import atomic_path
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_json_takes_numpy_values_and_paths_and_a_refused_object_keeps_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    files.write_json_atomic(target, {"n": np.int64(3), "acc": np.float32(0.5), "counts": np.arange(3),
                                     "where": Path("runs/a")})
    assert json.loads(target.read_text()) == {"n": 3, "acc": 0.5, "counts": [0, 1, 2], "where": "runs/a"}
    before = target.read_bytes()
    with pytest.raises(TypeError, match="not JSON serialisable: set"):
        files.write_json_atomic(target, {"n": 4, "labels": {1, 2}})
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize("compress", [True, False])
def test_npz_is_written_whole_or_not_at_all(tmp_path, monkeypatch, compress):
    target = tmp_path / "deeper" / "set.npz"  # the folder is made
    images = np.arange(2 * 96 * 96 * 3, dtype=np.uint8).reshape(2, 96, 96, 3)
    files.save_npz_atomic(target, compress=compress, images=images, labels=np.array([3, 5]))
    with np.load(target) as saved:
        assert np.array_equal(saved["images"], images) and saved["labels"].tolist() == [3, 5]
    before = target.read_bytes()

    def disk_full(fh, **arrays):
        fh.write(b"half an npz")
        raise OSError("no space left on device")

    monkeypatch.setattr(np, "savez_compressed" if compress else "savez", disk_full)
    with pytest.raises(OSError, match="no space left"):
        files.save_npz_atomic(target, compress=compress, images=images[:1], labels=np.array([3]))
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["set.npz"]


def test_sha256_of_a_file_read_in_chunks(tmp_path):
    data = os.urandom(100_003)
    (tmp_path / "blob").write_bytes(data)
    for chunk in (1 << 20, 4096, 7):
        assert files.sha256_file(tmp_path / "blob", chunk=chunk) == hashlib.sha256(data).hexdigest()
