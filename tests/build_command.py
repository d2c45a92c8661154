"""build_submission.py's main in this process, for the tests of build, preflight and budget:
build(argv, capsys) -> (exit status, stdout, stderr); FAST: 8 probe images."""

from __future__ import annotations

import pytest

from bloodcells.build import build_main

FAST = ["--probe-images", "8"]


def build(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
