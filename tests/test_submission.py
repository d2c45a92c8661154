"""bloodcells.submission, packaging: hidden temporary zips (locked while their build runs,
removed by the next build otherwise), timestamped names never reused, every file at the
zip's root. Staging and check_export run in every build (tests/test_build.py);
write_half_weights is tested with model.py's exports in tests/test_model.py."""

from __future__ import annotations

import datetime
import fcntl
import os
import re
import zipfile
from types import SimpleNamespace

import pytest

from bloodcells import submission


def test_a_temporary_zip_is_removed_by_the_next_build_unless_a_running_build_holds_it(tmp_path):
    stale = tmp_path / ".submission_260101_000000.zip.99999999.tmp"
    running = tmp_path / ".submission_260101_000001.zip.4242.tmp"
    stale.write_bytes(b"half a zip")
    running.write_bytes(b"half a zip")
    with open(running, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert submission.remove_stale_zips(tmp_path) == [stale]
        assert running.exists() and not stale.exists()
    assert submission.remove_stale_zips(tmp_path) == [running]


def test_the_temporary_zip_is_renamed_into_place_or_removed(tmp_path):
    final = tmp_path / "submission_260101_000000.zip"
    with submission.locked_temporary_zip(final) as tmp:
        assert tmp.name == f".{final.name}.{os.getpid()}.tmp" and tmp.exists() and not final.exists()
        tmp.write_bytes(b"a zip")
        assert submission.remove_stale_zips(tmp_path) == []  # this build holds it
    assert final.read_bytes() == b"a zip" and list(tmp_path.iterdir()) == [final]
    with pytest.raises(RuntimeError):
        with submission.locked_temporary_zip(tmp_path / "submission_260101_000001.zip") as tmp:
            tmp.write_bytes(b"half a zip")
            raise RuntimeError("killed mid-build")
    assert list(tmp_path.iterdir()) == [final]


def test_submission_names_are_timestamped_and_never_reused(tmp_path, monkeypatch):
    assert re.fullmatch(r"submission_\d{6}_\d{6}\.zip", submission.submission_path(tmp_path).name)

    class Frozen:
        @staticmethod
        def now():
            return datetime.datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(submission, "_dt", SimpleNamespace(datetime=Frozen))
    names = []
    for _ in range(3):
        path = submission.submission_path(tmp_path)
        path.write_bytes(b"")
        names.append(path.name)
    assert names == ["submission_260102_030405.zip", "submission_260102_030405_2.zip",
                     "submission_260102_030405_3.zip"]


def test_zip_folder_puts_every_file_at_the_root_and_skips_folders(tmp_path):
    folder = tmp_path / "staged"
    (folder / "notes").mkdir(parents=True)
    (folder / "model.py").write_text("class Model: pass\n")
    (folder / "tiny.json").write_text("{}")
    (folder / "notes" / "readme.txt").write_text("not shipped")
    submission.zip_folder(folder, tmp_path / "s.zip")
    with zipfile.ZipFile(tmp_path / "s.zip") as zf:
        assert zf.namelist() == ["model.py", "tiny.json"]
        assert zf.read("model.py") == b"class Model: pass\n"
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_DEFLATED}
