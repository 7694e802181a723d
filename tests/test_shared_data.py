"""Builds that share a data directory, and builds stopped by a signal: one build at a time, no worker
left behind, and worker processes replaced where a script cannot start them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from lungjax import locking
from lungjax.config.base import base_config
from lungjax.data import dataset, nih

pytestmark = pytest.mark.slow  # every test here starts Python processes that build datasets

BUILD_SCRIPT = """
import sys
from lungjax.config.base import base_config
from lungjax.data import dataset

data = base_config().data
data.phantom_patients, data.stored_size, data.build_workers = {patients}, {size}, {workers}
print("BUILT", dataset.build(data, sys.argv[1]).data_dir, flush=True)
"""


def build_script(patients: int = 12, size: int = 32, workers: int = 1) -> str:
    return BUILD_SCRIPT.format(patients=patients, size=size, workers=workers)


def data_config(patients: int = 12, size: int = 32):
    data = base_config().data
    data.phantom_patients, data.stored_size = patients, size
    return data


def start(script: str, workdir: Path, *, stdin: bool = False) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if stdin:
        command = [sys.executable, "-", str(workdir)]
    else:
        (workdir.parent / "build.py").write_text(script)  # no `if __name__ == "__main__":` guard
        command = [sys.executable, str(workdir.parent / "build.py"), str(workdir)]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if stdin:
        process.stdin.write(script)
    process.stdin.close()
    process.stdin = None  # written and closed: communicate() must not flush it
    return process


def test_a_second_build_waits_for_the_first_and_then_uses_its_dataset(tmp_path):
    workdir = tmp_path / "run"
    config = nih.make_config("patient", 32)
    data_dir = dataset.data_dir(data_config(), workdir)
    data_dir.mkdir(parents=True)
    with locking.hold(nih.build_lock_path(data_dir, config)):  # a build that is still running
        waiting = start(build_script(), workdir)
        deadline = time.monotonic() + 120
        while not list(data_dir.glob(f"{dataset.PHANTOM_DIR}_*")) or waiting.poll() is not None:
            assert waiting.poll() is None, waiting.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(3 * locking.POLL_SECONDS)
        assert waiting.poll() is None  # still waiting: it must not build beside the running one
        assert not (data_dir / "nih_chest_xray").exists()
    out, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, err[-3000:]
    assert "another build of this dataset is running (pid" in err and "waiting for it to finish" in err
    assert out.split()[-1].endswith(f"nih_chest_xray/{config.name}/1.0.0")


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_build_workers_die_with_a_killed_parent(tmp_path):
    process = start(build_script(patients=400, size=256, workers=2), tmp_path / "run")
    deadline = time.monotonic() + 120
    while len(workers := children(process.pid)) < 2:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no worker processes started"
        time.sleep(0.2)
    time.sleep(1.0)  # let them start working
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], "worker processes outlived their parent"


@pytest.mark.parametrize("stdin", [False, True], ids=["script_without_main_guard", "code_from_stdin"])
def test_builds_with_workers_from_a_script_without_a_main_guard(tmp_path, stdin):
    """Spawned workers re-run the main script unless it is hidden from them: here that would run the
    build again in each worker, which would wait forever on the lock its parent holds."""
    process = start(build_script(workers=2), tmp_path / "run", stdin=stdin)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "could not start" not in err, err[-3000:]
    assert "BUILT" in out
