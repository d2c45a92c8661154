"""bloodcells.cli, the command-line plumbing (issue 27, point 5): output paths checked before
the work, a closed pipe ending quietly, and no TensorFlow start-up lines before the kit's
message."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bloodcells.cli import UserError, check_distinct_outputs, check_output_file, check_output_folder
from conftest import REPO, snapshot

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has


def test_unusable_output_paths_are_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    before = snapshot(tmp_path)
    cases = [
        (check_output_file, tmp_path / "a_folder", "a_folder: --out: is a folder; expected a file name"),
        (check_output_file, tmp_path / "a_file" / "x.npz", "--out: .*a_file is a file, not a folder"),
        (check_output_folder, tmp_path / "a_file", "a_file: --out: is a file, not a folder; expected a folder"),
        (check_output_folder, tmp_path / "a_file" / "deeper" / "run", "--out: .*a_file is a file, not a folder"),
        # a file system nobody may create files in, root included
        (check_output_folder, "/proc/bloodcells_run", r"/proc/bloodcells_run: --out: cannot write in /proc \("),
        (check_output_file, "/proc/out.npz", r"/proc/out.npz: --out: cannot write in /proc \("),
    ]
    for check, path, message in cases:
        with pytest.raises(UserError, match=message):
            check(path, "--out")
    check_output_file(tmp_path / "new" / "deeper" / "x.npz", "--out")  # folders made when written
    check_output_folder(tmp_path / "a_folder", "--out")
    check_output_folder(tmp_path / "new_run", "--out", replaced=True)
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"--report: cannot write in .*ro \("):
            check_output_folder(folder / "report", "--report")
        with pytest.raises(UserError, match=r"--export: cannot write in .*ro \("):
            check_output_folder(folder / "export", "--export", replaced=True)
    finally:
        folder.chmod(0o755)


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"X\.npz: --out-test: the same file as --out-train; expected two different"):
        check_distinct_outputs({"--out-train": tmp_path / "X.npz", "--out-test": tmp_path / "sub" / ".." / "X.npz"})
    check_distinct_outputs({"--out-train": tmp_path / "A.npz", "--out-test": tmp_path / "B.npz", "--x": None})


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`python -m bloodcells.data FILE | head -1`: the reader is gone before the output."""
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((16, 96, 96, 3), np.uint8), labels=np.arange(16) % 8)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1); from bloodcells.data import main; "
                             "main()", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()  # before the program prints
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == "", err


def test_a_broken_pipe_to_anything_else_is_not_hidden():
    code = ("from bloodcells.cli import run_cli\n"
            "@run_cli\n"
            "def main(argv):\n"
            "    raise BrokenPipeError(32, 'a child process went away')\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == 1 and "BrokenPipeError: [Errno 32] a child process went away" in result.stderr


def test_no_tensorflow_startup_lines_before_the_message(tmp_path):
    """An error found after TensorFlow loaded (a run folder that already holds a run) is
    still the only line on stderr."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(b"")
    data = tmp_path / "set.npz"
    np.savez(data, images=np.zeros((16, 96, 96, 3), np.uint8), labels=np.arange(16) % 8)
    config = tmp_path / "c.toml"
    config.write_text('[model]\nbackbone = "small_cnn"\nweights = "none"\n')
    result = subprocess.run([sys.executable, "-m", "bloodcells.train", "--config", config, "--data", data,
                             "--out", run], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {run}: --out: already holds a run; expected a new folder, "
                                          f"or --resume"], result.stderr


def test_only_the_start_up_noise_is_filtered(capfd):
    """While TensorFlow loads, its start-up lines are dropped and anything else printed
    on the native stderr is passed on, in order."""
    from bloodcells.cli import _native_stderr_filtered

    noise = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             b"I0000 00:00:1796610919.695546    5554 port.cc:153] oneDNN custom operations are on.\n"
             b"E0000 00:00:1.5  8 cuda_dnn.cc:8310] Unable to register cuDNN factory: one is registered\n")
    with _native_stderr_filtered():
        os.write(2, noise + b"E0000 00:00:1.5  8 loader.cc:1] a real error\n" + noise + b"plain text\n")
    assert capfd.readouterr().err == "E0000 00:00:1.5  8 loader.cc:1] a real error\nplain text\n"
