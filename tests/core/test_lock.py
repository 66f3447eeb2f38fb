"""One writer per stage and work folder (issue 23, 3): a second writer is refused naming the
holder; a holder that died, however it died, leaves no lock behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from diffsci.core.lock import WorkdirBusy, stage_lock

HOLD = (
    "import sys, time; from diffsci.core.lock import stage_lock\n"
    "with stage_lock(sys.argv[1], 'train'):\n"
    "    print('held', flush=True); time.sleep(120)\n"
)


def _holder(workdir) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(WorkdirBusy) as e:
            with stage_lock(tmp_path, "train"):
                pass
        msg = str(e.value)
        assert f"the train stage is already running here (pid {p.pid} on" in msg
        assert "use another work folder" in msg
        with stage_lock(tmp_path, "infer"):  # another stage of the same folder may run
            pass
    finally:
        p.kill()
        p.wait()


def test_a_sigkilled_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    p = _holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (tmp_path / ".train.lock").exists()  # the file stays, the lock does not
    t0 = time.monotonic()
    with stage_lock(tmp_path, "train") as path:
        assert str(os.getpid()) in path.read_text()
    assert time.monotonic() - t0 < 5
