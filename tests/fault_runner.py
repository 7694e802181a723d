"""A launcher for the kill tests: imports lungjax once, then forks one run per request.

Importing JAX, Flax, Orbax and TFDS takes ~10 s on two busy cores, more than a tiny run trains; a
fork of this already-imported (but not yet JAX-initialised: no backend, one thread) process starts
its run at once, so a dozen kills and restarts fit the CI budget. Each run is still its own OS
process, killed with a real signal, and sets JAX up from scratch.

    python fault_runner.py train DATA_ROOT WORKDIR NUM_STEPS CHECKPOINT_EVERY EVAL_EVERY [single|union]
    python fault_runner.py export|evaluate DATA_ROOT WORKDIR

``union`` trains on conftest's union of sources instead of the single training tree.

Protocol, one line each way: ``run`` on stdin starts a run and answers ``pid <n>``; when that run
ends the launcher prints ``exit <code>`` (negative: killed by that signal; 0 finished; 1 failed).
The test kills a training run from outside, at moments it watches for on disk. An export or an
evaluation writes its output in well under a second, too short a window to aim at from outside: for
them ``run POINT SIGNAL`` makes the run send itself ``SIGNAL`` (``TERM`` or ``KILL``) at ``POINT``
(``KILL_POINTS``). The runs' own output goes to stderr.
"""

import os
import signal
import sys
import traceback
from pathlib import Path


def _die(name: str) -> None:
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def _arm(point: str, name: str) -> None:
    """Makes this (forked) run send itself SIG``name`` at ``point``, whose writes are then cut short."""
    from lungjax import folders
    from lungjax.evaluation import evaluate

    if point == "writing":  # the draft holds some files: export's first, evaluation's table and Grad-CAM
        write_bytes = Path.write_bytes

        def first_file_then_die(self, data):
            write_bytes(self, data)
            if self.parent.name.startswith("."):  # a draft's
                _die(name)

        Path.write_bytes = first_file_then_die
        evaluate.write_plots = lambda *args, **kwargs: _die(name)
    elif point == "swapping":  # the draft is complete, the old output still in place
        folders.swap_in = lambda draft, final: _die(name)
    elif point == "set_aside":  # no exchange on this filesystem: the old output renamed aside, the new not in
        rename = os.rename
        folders._exchange = lambda first, second: False

        def rename_then_die(source, target):
            rename(source, target)
            if ".old." in Path(target).name:
                _die(name)

        folders.os.rename = rename_then_die
    else:
        raise ValueError(f"unknown kill point {point!r}")


KILL_POINTS = ("writing", "swapping", "set_aside")


def _run(mode: str, config, workdir: str) -> bool:
    if mode == "train":
        from lungjax.training import loop as train

        return bool(train.train(config, workdir))
    if mode == "export":
        from lungjax.export import bundle

        bundle.export(config, workdir, parity_images=8)
        return True
    from lungjax.evaluation import evaluate

    evaluate.evaluate(config, workdir)
    return True


def main(mode: str, data_root: str, workdir: str, *train_args: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_train_config, union_train_config

    from lungjax.export import bundle  # noqa: F401  (imported before the fork, like the rest)
    from lungjax.training import loop  # noqa: F401

    if mode == "train":
        num_steps, checkpoint_every, eval_every, *data = train_args
        config = {"single": tiny_train_config, "union": union_train_config}[data[0] if data else "single"](
            Path(data_root)
        )
        config.num_train_steps, config.checkpoint_every_steps = int(num_steps), int(checkpoint_every)
        config.eval_every_steps = int(eval_every)
    else:
        config = tiny_train_config(Path(data_root))
        config.eval.checkpoint, config.eval.n_bootstrap, config.eval.explain_examples = "latest", 0, 2
    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            os.dup2(2, 1)  # stdout carries the protocol
            code = 1
            try:
                if line.split()[1:]:
                    _arm(*line.split()[1:])
                code = 0 if _run(mode, config, workdir) else 3
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
