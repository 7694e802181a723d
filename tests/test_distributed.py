"""Several processes on one machine (CPU, gloo collectives, 127.0.0.1): 2 processes x 2 devices
against 1 process x 4 devices, a 2-process checkpoint evaluated and resumed in 1 process, the
training data stream across process counts, and a run that loses a process.

The multi-process runs go through the real command line (``--coordinator_address``,
``--num_processes``, ``--process_id``) in subprocesses that share the session's compilation cache;
every wait has a timeout.
"""

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from absl import flags
from conftest import (
    FOUR_DEVICE_OPTIMIZER,
    FOUR_DEVICE_STEPS,
    UNION_SOURCES,
    command_line_overrides,
    example_source,
    tiny_train_config,
    union_train_config,
)
from test_resume import saved_params

from lungjax.data import pipeline, sampling
from lungjax.data import records as records_lib
from lungjax.data import union as union_lib
from lungjax.evaluation import evaluate
from lungjax.runtime import checkpoint, distributed
from lungjax.training import loop as train

pytestmark = pytest.mark.slow  # every test here starts processes or trains

TESTS = Path(__file__).parent
REPO = TESTS.parent
RUN_TIMEOUT_S = 300
STEPS = FOUR_DEVICE_STEPS
# The 2-process runs train what the 1-process 4-device reference trains.
RUN_FLAGS = (f"--config.num_train_steps={STEPS}", f"--config.optimizer={FOUR_DEVICE_OPTIMIZER}")
HEARTBEAT_S = 5
# A survivor stops when the heartbeat timeout declares its peer dead; allow for start-up of the
# abort and a loaded machine.
PEER_LOSS_BOUND_S = HEARTBEAT_S + 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two(workdir: Path, data_root: Path, cache_env: dict, *flags: str) -> list[subprocess.Popen]:
    """Two ``lungjax.main`` processes with 2 CPU devices each, joined through 127.0.0.1."""
    workdir.mkdir(parents=True)
    port = free_port()
    env = {**os.environ, **cache_env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    processes = []
    for index in range(2):
        log = (workdir.parent / f"{workdir.name}.process{index}.log").open("w")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lungjax.main",
                    f"--config={REPO / 'configs' / 'tiny.py'}",
                    f"--workdir={workdir}",
                    *command_line_overrides(data_root),
                    *flags,
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={index}",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()  # the child holds its own descriptor
    return processes


def logs_of(workdir: Path) -> str:
    return "\n".join(path.read_text()[-3000:] for path in sorted(workdir.parent.glob(f"{workdir.name}.process*.log")))


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def wait_all(processes: list[subprocess.Popen], workdir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process run did not finish in {timeout_s} s:\n{logs_of(workdir)}")
    finally:
        stop(processes)
    codes = [process.returncode for process in processes]
    assert codes == [0, 0], f"exit codes {codes}:\n{logs_of(workdir)}"


def config_for(data_root: Path, steps: int = STEPS):
    config = tiny_train_config(data_root)
    config.num_train_steps, config.optimizer = steps, FOUR_DEVICE_OPTIMIZER
    return config


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def assert_same_model(a: dict, b: dict, rtol: float = 1e-5) -> None:
    """Relative to the norm of each part: elementwise is too strict for values near zero, where the
    order of a sum over devices changes the last bits."""
    for part in ("params", "batch_stats"):
        x, y = flat(a[part]), flat(b[part])
        assert np.linalg.norm(x - y) <= rtol * np.linalg.norm(y), part


def same_number(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)


def without_flipped_operating_points(a: dict, b: dict) -> tuple[dict, dict]:
    """The two reports' ``at_thresholds`` without the classes whose validation-chosen thresholds differ.

    A Youden threshold is a discontinuous function of the scores: rounding-level differences between
    topologies can move its maximum to a distant threshold when two regions of the ROC curve nearly
    tie (seen: 0.1653 vs 0.1729 with test scores equal to 5e-8). What must agree then is the J
    reached on validation, to within one example crossing; the rates at two different thresholds
    need not.
    """
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
    for name in list(a.get("thresholds", {})):
        if same_number(a["thresholds"][name], b["thresholds"][name]):
            continue
        reached_a, reached_b = a["on_validation"].pop(name), b["on_validation"].pop(name)
        counts = (reached_a["positives"], reached_a["negatives"])
        assert counts == (reached_b["positives"], reached_b["negatives"]), name
        assert abs(reached_a["youden_j"] - reached_b["youden_j"]) <= 1 / min(counts) + 1e-12, (name, a, b)
        for part in (a, b):
            del part["thresholds"][name], part["per_class"][name]
    return a, b


def assert_same_report(a, b, path: str = "report") -> None:
    """Counts, names and structure equal; real numbers equal to 1e-5 relative (1e-7 absolute); see
    ``without_flipped_operating_points`` for the one exception."""
    if path == "report.at_thresholds" and "thresholds" in a:
        a, b = without_flipped_operating_points(a, b)
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_report(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_report(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert same_number(a, b), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def read_report(workdir: Path) -> dict:
    return json.loads((workdir / "eval" / "test" / "report.json").read_text())


def predicted_names(workdir: Path) -> list[str]:
    lines = (workdir / "eval" / "test" / "predictions.csv").read_text().splitlines()[1:]
    return [line.split(",")[0] for line in lines]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data_root, built, compilation_cache) -> Path:
    """2 processes x 2 devices: train ``STEPS`` steps (saves at 3 and 4), then evaluate the test split."""
    workdir = tmp_path_factory.mktemp("distributed") / "two"
    wait_all(launch_two(workdir, data_root, compilation_cache, *RUN_FLAGS), workdir, RUN_TIMEOUT_S)
    return workdir


def test_two_processes_match_one_process_with_four_devices(
    two_process_run, four_device_run, data_root, built, tmp_path
):
    four = tmp_path / "four"  # a copy: evaluating writes into the workdir
    shutil.copytree(four_device_run, four)
    assert_same_model(saved_params(two_process_run), saved_params(four))

    info = json.loads((two_process_run / "run_info.json").read_text())
    assert info["process_count"] == 2 and len(info["devices"]) == 4
    # The 1x4 model's report, computed here (1 device: evaluation is the same on any device count).
    reference = evaluate.evaluate(config_for(data_root), four)
    assert_same_report(read_report(two_process_run), json.loads(json.dumps(reference)))
    # Every test image exactly once, in the split's order.
    names = predicted_names(two_process_run)
    assert names == predicted_names(four) and len(set(names)) == len(names)
    assert len(names) == len(records_lib.data_source(built, "test"))


def test_two_process_checkpoint_evaluates_in_one_process(two_process_run, data_root, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(two_process_run, workdir)
    shutil.rmtree(workdir / "eval")
    report = evaluate.evaluate(config_for(data_root), workdir)
    assert report["checkpoint_step"] == STEPS
    assert_same_report(read_report(two_process_run), read_report(workdir))
    assert predicted_names(workdir) == predicted_names(two_process_run)


def saved_items(workdir: Path, step: int) -> dict:
    """The JSON items of a checkpoint: the data iterator's state and the run facts."""
    manager = checkpoint.make_manager(workdir, read_only=True)
    items = manager.restore(
        step,
        args=checkpoint.ocp.args.Composite(
            data=checkpoint.ocp.args.JsonRestore(), run=checkpoint.ocp.args.JsonRestore()
        ),
    )
    manager.close()
    return {"data": json.dumps(items["data"]).encode(), "run": items["run"]}


def test_two_process_training_resumes_in_one_process(two_process_run, data_root, built, tmp_path):
    """No grain workers: the data position maps exactly, so 4 steps on 2 processes then 2 on 1
    process read what 6 uninterrupted steps on 1 process read, and end where they do."""
    workdir = tmp_path / "resumed"
    shutil.copytree(two_process_run, workdir)
    assert train.train(config_for(data_root, steps=STEPS + 2), workdir)
    uninterrupted = config_for(data_root, steps=STEPS + 2)
    uninterrupted.checkpoint_every_steps = 1  # keeps step 4 to compare data positions with
    assert train.train(uninterrupted, tmp_path / "uninterrupted")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == STEPS + 2

    two, one = saved_items(two_process_run, STEPS), saved_items(tmp_path / "uninterrupted", STEPS)
    assert two["run"]["process_count"] == 2
    mapped = sampling.data_state_for_process(
        two["data"],
        saved_process_count=2,
        worker_count=0,
        global_batch_size=config_for(data_root).batch_size,
        num_records=len(records_lib.data_source(built, "train")),
    )
    assert json.loads(mapped) == json.loads(one["data"])
    # 4 steps on 4 devices then 2 on 1 against 6 on 1: the device counts' rounding differences
    # (<= 1e-5 after 4 steps) grow a little; rows read in another order already differed by 5e-3.
    assert_same_model(saved_params(workdir), saved_params(tmp_path / "uninterrupted"), rtol=1e-4)


def test_two_process_union_training_resumes_in_one_process(data_root, union_built, compilation_cache, tmp_path):
    """A union of sources maps across process counts as one source does: 4 steps on 2 processes then 2
    on 1 read what 6 uninterrupted steps on 1 process read (the mixed sampler's positions)."""
    workdir = tmp_path / "two"
    union_flags = (
        f"--config.data.sources={UNION_SOURCES!r}",
        f"--config.data.phantom_patients={union_train_config(data_root).data.phantom_patients}",
    )
    wait_all(launch_two(workdir, data_root, compilation_cache, *RUN_FLAGS, *union_flags), workdir, RUN_TIMEOUT_S)
    report = json.loads((workdir / "eval" / "test" / "report.json").read_text())  # evaluated on 2 processes
    assert report["n_images"] == sum(len(records_lib.data_source(b, "test")) for b in union_built.values())
    two = saved_items(workdir, STEPS)
    assert two["run"]["process_count"] == 2

    def union_config(steps):
        config = union_train_config(data_root)
        config.num_train_steps, config.optimizer, config.checkpoint_every_steps = steps, FOUR_DEVICE_OPTIMIZER, 1
        return config

    assert train.train(union_config(STEPS + 2), workdir)
    assert train.train(union_config(STEPS + 2), tmp_path / "uninterrupted")
    mapped = sampling.data_state_for_process(
        two["data"],
        saved_process_count=2,
        worker_count=0,
        global_batch_size=union_config(STEPS).batch_size,
        num_records=len(union_lib.split(union_built, "train")),
    )
    assert json.loads(mapped) == json.loads(saved_items(tmp_path / "uninterrupted", STEPS)["data"])
    assert_same_model(saved_params(workdir), saved_params(tmp_path / "uninterrupted"), rtol=1e-4)


def test_losing_a_process_stops_the_other_and_keeps_its_checkpoints(
    two_process_run, data_root, compilation_cache, tmp_path
):
    workdir = tmp_path / "killed"
    processes = launch_two(
        workdir,
        data_root,
        compilation_cache,
        "--config.num_train_steps=100000",
        "--config.optimizer=sgd",
        "--config.keep_checkpoints=1000",
        f"--heartbeat_timeout_seconds={HEARTBEAT_S}",
    )
    survivor, victim = processes
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (workdir / "checkpoints" / "3").is_dir():  # renamed into place once complete
            assert survivor.poll() is None and victim.poll() is None, logs_of(workdir)
            assert time.monotonic() < deadline, f"no checkpoint in {RUN_TIMEOUT_S} s:\n{logs_of(workdir)}"
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor.wait(timeout=PEER_LOSS_BOUND_S + 30)
        elapsed = time.monotonic() - killed
    finally:
        stop(processes)
    assert survivor.returncode != 0 and elapsed <= PEER_LOSS_BOUND_S, (elapsed, logs_of(workdir))

    manager = checkpoint.make_manager(workdir, read_only=True)
    latest = manager.latest_step()
    manager.close()
    assert latest >= 3
    assert np.isfinite(flat(saved_params(workdir, latest))).all()
    # Same program, same data: its step 3 is the one the finished 2-process run saved.
    np.testing.assert_array_equal(flat(saved_params(workdir, 3)), flat(saved_params(two_process_run, 3)))


def test_one_process_runs_without_the_distributed_runtime(monkeypatch):
    """Only a launcher's multi-task step (or explicit flags) starts ``jax.distributed``."""
    for variable in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "8")  # a batch script's shell: one process
    assert not distributed.initialize() and jax.process_count() == 1
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    assert distributed.launched_as_several()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert distributed.launched_as_several()


def png(value: int) -> bytes:
    return cv2.imencode(".png", np.full((8, 8), value, np.uint8))[1].tobytes()


SOURCE = example_source([{"image": png(10 * i), "label": i} for i in range(10)])


def loader(
    monkeypatch,
    *,
    count: int,
    index: int,
    batch_size: int,
    workers: int = 0,
    resume_from: bytes = None,
    saved_process_count: int = 1,
):
    """The training loader as process ``index`` of ``count`` builds it; restored from ``resume_from``,
    a state saved by process 0 of ``saved_process_count``, when given."""
    monkeypatch.setattr(jax, "process_count", lambda: count)
    monkeypatch.setattr(jax, "process_index", lambda: index)
    iterator = iter(
        pipeline.train_loader(
            SOURCE, batch_size=batch_size, image_size=8, augment="light", seed=3, worker_count=workers
        )
    )
    if resume_from is not None:
        iterator.set_state(
            sampling.data_state_for_process(
                resume_from,
                saved_process_count=saved_process_count,
                worker_count=workers,
                global_batch_size=batch_size * count,
                num_records=len(SOURCE),
            )
        )
    return iterator


def union(batches: list[dict]) -> dict:
    """The processes' local batches as one global batch, in process order."""
    return {key: np.concatenate([b[key] for b in batches]) for key in ("label", "image")}


def assert_same_batch(a: dict, b: dict) -> None:
    """The same records in the same rows (labels are record ids here), with the same augmentation."""
    for key in ("label", "image"):
        np.testing.assert_array_equal(a[key], b[key])


def test_data_stream_maps_across_process_counts(monkeypatch):
    one = loader(monkeypatch, count=1, index=0, batch_size=4)
    reference = [next(one) for _ in range(4)]  # crosses the first epoch boundary (10 records)
    two = [loader(monkeypatch, count=2, index=p, batch_size=2) for p in range(2)]
    for step in range(2):
        assert_same_batch(union([next(it) for it in two]), reference[step])
    saved_by_two = two[0].get_state()  # what a 2-process checkpoint holds: process 0's state
    resumed = loader(monkeypatch, count=1, index=0, batch_size=4, resume_from=saved_by_two, saved_process_count=2)
    assert_same_batch(next(resumed), reference[2])

    one = loader(monkeypatch, count=1, index=0, batch_size=4)
    for _ in range(3):
        next(one)
    saved_by_one = one.get_state()
    resumed = [loader(monkeypatch, count=2, index=p, batch_size=2, resume_from=saved_by_one) for p in range(2)]
    assert_same_batch(union([next(it) for it in resumed]), reference[3])


@pytest.fixture
def parsed_flags():
    """grain's worker processes read its absl flags, which the CLI parses and pytest does not."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def test_unmappable_data_position_resumes_at_next_epoch(monkeypatch, caplog, parsed_flags):
    """With grain workers each worker batches its own slice: a changed layout restarts the epoch."""
    one = loader(monkeypatch, count=1, index=0, batch_size=1)
    records = [next(one) for _ in range(14)]  # positions 0..13: the second epoch starts at 10
    one = loader(monkeypatch, count=1, index=0, batch_size=2)
    for _ in range(3):
        next(one)
    saved = one.get_state()  # 6 of 10 records of the first epoch read
    with caplog.at_level(logging.WARNING):
        restored = loader(monkeypatch, count=1, index=0, batch_size=2, workers=1, resume_from=saved)
    assert "resuming at the start of epoch 2" in caplog.text and "records 6 to 9 are skipped" in caplog.text
    expected = {key: np.concatenate([r[key] for r in records[10:12]]) for key in records[0]}
    assert_same_batch(next(restored), expected)
