"""bloodcells.sandbox: the one runner that ingestion, validation and --fit-budget share.
Tiny jobs with a numpy-only model.py, so nothing here needs TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bloodcells import sandbox
from processes import kill_and_expect_no_process, processes_mentioning, wait_for_job_status
from tests.conftest import REPO

MODEL_PY = "import numpy as np\nclass Model:\n    def predict(self, X):\n        return np.asarray(X).sum(axis=1)\n"

PROBE_ENV = '''
import site
from model import Model
status.update(cwd=os.getcwd(), path0=sys.path[0], pythonpath=os.environ.get("PYTHONPATH"),
              startup=os.environ.get("PYTHONSTARTUP"), user_site=site.ENABLE_USER_SITE,
              bytecode=sys.dont_write_bytecode, params=PARAMS)
save_array("y", Model().predict(load_input("x")))
print("job printed this")
'''


@pytest.fixture
def folder(tmp_path):
    sub = tmp_path / "submission"
    sub.mkdir()
    (sub / "model.py").write_text(MODEL_PY)
    return sub


def test_the_job_runs_as_on_the_server_and_hands_back_status_and_arrays(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "startup.py"))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    log = tmp_path / "logs" / "job.log"
    run = sandbox.run(folder, PROBE_ENV, {"x": x}, time_limit=60, params={"k": 1}, log_path=log)
    assert run.returncode == 0 and not run.timed_out and run.stage == "done", run.log
    s = run.status
    assert s["path0"] == str(folder.resolve()) and s["cwd"] != s["path0"] and s["cwd"].endswith("program")
    assert s["pythonpath"] is None and s["startup"] is None and not s["user_site"] and s["bytecode"]
    assert s["params"] == {"k": 1}
    np.testing.assert_array_equal(run.arrays["y"], x.sum(axis=1))
    assert "job printed this" in log.read_text() and "job printed this" in run.log
    assert run.changed == {"submission folder": [], "working directory": []}


def test_an_error_names_its_stage_and_writes_are_seen(folder):
    job = 'open("left_here.txt", "w").close()\nstatus["stage"] = "predict"\nraise RuntimeError("boom")\n'
    run = sandbox.run(folder, job, time_limit=60)
    assert run.returncode == 1 and run.stage == "predict"
    assert run.error() == "RuntimeError: boom" and "Traceback" in run.status["traceback"]
    assert run.changed["working directory"] == ["left_here.txt"]


def test_the_time_limit_kills_the_process_group_and_overtime_extends_it(folder, tmp_path):
    marker = tmp_path / "child_still_running"
    # a grandchild that outlives its parent unless the whole group is killed
    job = (f'import subprocess\nsubprocess.Popen([sys.executable, "-c", "import time; time.sleep(3); '
           f'open({str(marker)!r}, \\"w\\").close()"])\nstatus["stage"] = "sleeping"\nsave_status()\ntime.sleep(60)\n')
    start = time.monotonic()
    run = sandbox.run(folder, job, time_limit=1.5)
    assert run.timed_out and run.stage == "sleeping" and time.monotonic() - start < 20
    time.sleep(4)
    assert not marker.exists()

    waits = []
    job = 'required_done()\ntime.sleep(2.5)\nsave_array("late", np.zeros(1))\n'
    run = sandbox.run(folder, "import numpy as np\n" + job, time_limit=1.5, overtime=lambda elapsed: 10.0,
                      on_wait=lambda elapsed, stage: waits.append(stage), wait_every=0.5)
    assert not run.timed_out and run.required_done and "late" in run.arrays and waits


def test_an_interpreter_that_does_not_exist_is_a_start_error(folder, tmp_path):
    run = sandbox.run(folder, "pass", python=str(tmp_path / "no_python"), time_limit=10)
    assert run.start_error and run.returncode is None and os.fspath(tmp_path / "no_python") in run.start_error


# A caller that runs a job which hangs (and starts a grandchild that hangs too); the test
# SIGKILLs the caller, as an OOM kill or a closed terminal would.
HANGING_CALLER = r'''
import sys
from bloodcells import sandbox
job = ("import subprocess\n"
       "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', IO])\n"
       "status['stage'] = 'hanging'\nsave_status()\ntime.sleep(120)\n")
sandbox.run(sys.argv[1], job, time_limit=600)
'''


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list processes")
def test_a_killed_caller_leaves_no_process_and_the_next_run_removes_its_folder(folder, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    caller = subprocess.Popen([sys.executable, "-c", HANGING_CALLER, str(folder)],
                              env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(temp)})
    try:
        wait_for_job_status(caller, temp, "hanging", 30)
        assert len(processes_mentioning(str(temp))) >= 2, "the job and its grandchild never started"
    finally:
        kill_and_expect_no_process(caller, temp)
    left = list(temp.glob("bloodcells-*/sandbox_*"))
    assert left  # the killed caller could not clean up; the next run does
    root = left[0].parent
    monkeypatch.setattr(sandbox, "temp_root", lambda: root)
    run = sandbox.run(folder, "pass", time_limit=60)
    assert run.returncode == 0 and list(root.iterdir()) == []
