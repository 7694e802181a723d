"""A launcher for the kill -9 test: imports lungjax once, then forks one training process per request.

Importing JAX, Flax, Orbax and TFDS takes ~10 s on two busy cores, more than a tiny run trains; a
fork of this already-imported (but not yet JAX-initialised: no backend, one thread) process starts
training at once, so a dozen kills and restarts fit the CI budget. Each run is still its own OS
process, killed with SIGKILL, and sets JAX up from scratch.

    python fault_runner.py DATA_ROOT WORKDIR NUM_STEPS CHECKPOINT_EVERY EVAL_EVERY [single|union]

``union`` trains on conftest's union of sources instead of the single training tree.

Protocol, one line each way: ``run`` on stdin starts a run and answers ``pid <n>``; when that run
ends the launcher prints ``exit <code>`` (negative: killed by that signal; 0 finished; 1 failed).
The runs' own output goes to stderr.
"""

import os
import sys
import traceback
from pathlib import Path


def main(
    data_root: str, workdir: str, num_steps: str, checkpoint_every: str, eval_every: str, data: str = "single"
) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_train_config, union_train_config

    from lungjax.training import loop as train

    config = {"single": tiny_train_config, "union": union_train_config}[data](Path(data_root))
    config.num_train_steps, config.checkpoint_every_steps = int(num_steps), int(checkpoint_every)
    config.eval_every_steps = int(eval_every)
    print("ready", flush=True)
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            os.dup2(2, 1)  # stdout carries the protocol
            code = 1
            try:
                code = 0 if train.train(config, workdir) else 3
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
