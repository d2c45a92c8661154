"""bloodcells.torch_pickle: a PyTorch state dict read without torch (the registry package's
EfficientNet-Lite0 checkpoint), refusing a pickle that would run code and a truncated file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bloodcells.cli import UserError
from bloodcells.torch_pickle import read_state_dict


def test_state_dict_reads_without_torch(checkpoint):
    state = read_state_dict(checkpoint)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 4_694_024


def test_state_dict_reader_refuses_code_and_truncation(tmp_path, checkpoint):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:5_000_000])
    with pytest.raises(UserError, match="truncated.pth: .*(ends early|not a PyTorch)"):
        read_state_dict(truncated)
    hostile = tmp_path / "hostile.pth"
    with open(hostile, "wb") as fh:
        for part in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(part, fh, protocol=2)
        pickle.dump(__import__("os").system, fh, protocol=2)  # a pickle that would run code
    with pytest.raises(UserError, match="refuses to load (posix|os).system"):
        read_state_dict(hostile)
