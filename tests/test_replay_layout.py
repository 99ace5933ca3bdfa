"""A recording made by a version with another params/state layout is refused with a clear error (exit 2),
never replayed with the kernels reading past its arrays."""
import numpy as np

from controller.cli import main
from controller.core import layout as L
from controller.replay import Recorder


def test_recording_with_shorter_params_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "old.rec"
    rec = Recorder(path, np.zeros(L.N_PARAMS - 121), L.new_state(0.0))
    rec.close()
    assert main(["replay", str(path), "--verify"]) == 2
    assert "another params/state layout" in capsys.readouterr().err
