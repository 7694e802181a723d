"""Command line: ``python -m lungjax.main --config configs/demo.py --workdir runs/demo [--mode ...]``.

``--mode predict --images a.png b.dcm ...`` classifies files with the workdir's checkpoint; the
file names after the first may follow ``--images`` without repeating the flag. ``--mode export``
writes the checkpoint as a bundle that ``python -m lungjax.serve`` runs (``lungjax.export``).

Only parses flags and hands over to the library, so everything here is importable and testable.
Config values can be overridden on the command line: ``--config.batch_size=64``.
Several processes (one per host): ``--coordinator_address``, ``--num_processes``, ``--process_id``,
or nothing under SLURM / Open MPI; see ``lungjax.runtime.distributed``.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import threading
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from lungjax.runtime import distributed, storage

MODES = ("train", "evaluate", "compare", "prepare", "predict", "export", "external")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the dataset, checkpoints, logs and reports.")
flags.DEFINE_enum(
    "mode",
    "train",
    MODES,
    "train: train (resuming) then evaluate; evaluate: evaluate a checkpoint only; compare: evaluate, then "
    "compare with the run --config.eval.compare_to names on the same images; prepare: build the dataset "
    "only; predict: classify --images files; export: write the checkpoint as a deployable bundle "
    "(<workdir>/export/<step>/); external: score config.external.runs on config.external.tests "
    "(<workdir>/external/report.html).",
)
flags.DEFINE_multi_string("images", [], "predict mode: radiographs to classify (PNG, JPEG or DICOM).")
flags.DEFINE_integer(
    "parity_images", 512, "export mode: at most this many validation images check the exported model's parity."
)
flags.DEFINE_string(
    "coordinator_address", None, "Several processes: host:port of process 0 (not needed under SLURM or Open MPI)."
)
flags.DEFINE_integer("num_processes", None, "Several processes: how many (not needed under SLURM or Open MPI).")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0..num_processes-1.")
flags.DEFINE_list(
    "local_device_ids",
    None,
    "Several processes: the local GPUs this process drives (default all; under SLURM and "
    "Open MPI JAX defaults to one per process, so pass 0,...,7 with one task per 8-GPU host).",
)
flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    distributed.HEARTBEAT_TIMEOUT_S,
    "Several processes: a peer silent this long is declared dead and every process stops.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    from lungjax import xla_cpu

    xla_cpu.apply_defaults()  # first: XLA reads XLA_FLAGS once, when the first JAX backend starts
    extra = argv[1:]
    if extra and FLAGS.mode != "predict":
        raise app.UsageError(f"unexpected arguments: {extra}")
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_keep_lungjax_warnings)
    threading.excepthook = _quiet_write_failures(threading.excepthook)
    sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)
    distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
        heartbeat_timeout_s=FLAGS.heartbeat_timeout_seconds,
        local_device_ids=FLAGS.local_device_ids and [int(i) for i in FLAGS.local_device_ids],
    )
    config, workdir = FLAGS.config, FLAGS.workdir
    from lungjax.config import check as config_check  # after initialize: it counts the devices

    config_check.validate(config, reads_data=FLAGS.mode in ("train", "prepare"), trains=FLAGS.mode != "prepare")
    if FLAGS.mode == "predict":
        from lungjax.evaluation import predict  # imports no training code

        paths = [*FLAGS.images, *extra]
        if not paths:
            raise app.UsageError("--mode predict needs --images FILE [FILE ...]")
        failures = predict.predict_files(config, workdir, paths)
        if failures:
            print(f"{failures} of {len(paths)} files could not be classified", file=sys.stderr)
        return int(failures > 0)
    if FLAGS.mode == "export":
        from lungjax.export import bundle

        print(f"exported: {bundle.export(config, workdir, parity_images=FLAGS.parity_images)}")
        return
    if FLAGS.mode == "external":
        from lungjax.evaluation import external

        external.external_report(config, workdir)
        page = Path(workdir).absolute() / external.EXTERNAL_DIR / "report.html"
        print(f"report: {page} (report.json and report.md beside it)")
        return
    if FLAGS.mode == "compare" and not config.eval.compare_to:
        raise config_check.ConfigError(
            "config.eval.compare_to: '' is not allowed with --mode compare; allowed: the workdir of the run to "
            "compare with (this workdir too, with another config.eval.compare_checkpoint)"
        )
    if FLAGS.mode in ("evaluate", "compare"):
        from lungjax.evaluation import evaluate  # imports no training code

        print(evaluate.format_table(evaluate.evaluate(config, workdir)))
        _print_outputs(config, workdir)
    elif FLAGS.mode == "prepare":
        from lungjax.data import union

        for builder in union.build(config.data, workdir).values():
            print(f"dataset ready: {builder.data_dir}")
    else:
        from lungjax.training import loop as train

        if train.train_and_evaluate(config, workdir) is None:
            return PREEMPTED_EXIT_CODE
        _print_outputs(config, workdir)


def _print_outputs(config, workdir: str) -> None:
    """The last lines of a run: where its report, plots, checkpoints and logs are."""
    import jax

    from lungjax.evaluation import evaluate

    if jax.process_index() == 0:
        root = Path(workdir).absolute()
        page = evaluate.report_folder(config, root) / "report.html"
        if page.is_file():
            print(f"report: {page} and report.md (plots and predictions.csv beside it)")
        print(f"checkpoints: {root / 'checkpoints'}; logs: {root / 'metrics.jsonl'}, tensorboard --logdir {root}")


def _keep_lungjax_warnings(record: std_logging.LogRecord) -> bool:
    """absl's log carries lungjax's own warnings and those of TFDS, Orbax and grain, which a user cannot
    act on ("Using custom data configuration", read-only managers): of the others, errors only, and
    not Orbax's copies of a failed write for lack of space (the command line says it once)."""
    if storage.no_space_errno(record.getMessage()) is not None:
        return False
    if record.exc_info and storage.write_failure(record.exc_info[1]) is not None:
        return False
    return record.levelno >= std_logging.ERROR or record.pathname.startswith(PACKAGE_DIR)


def _without_closed_loop_callbacks(hook):
    """A ``sys.unraisablehook`` without tensorstore's late callbacks into an event loop that Orbax
    already closed after a failed save: one "Event loop is closed" traceback per pending write, after
    the failure that is reported itself."""

    def unraisablehook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            hook(unraisable)

    return unraisablehook


def _quiet_write_failures(hook):
    """A ``threading.excepthook`` that leaves a writer thread's failed write for lack of space to the
    main thread, which meets it again (TensorBoard's writer re-raises it there) and says it once."""

    def excepthook(args):
        if storage.write_failure(args.exc_value) is None:
            hook(args)

    return excepthook


# The engine's deliberate refusals, by module: each message already says what is wrong and what to
# do, so the command line prints it on one line instead of a traceback. Looked up only in modules
# already imported (an error can only come from those), so no mode imports more than it uses.
EXPECTED_ERRORS = (
    ("lungjax.config.check", "ConfigError"),
    ("lungjax.runtime.workdir", "WorkdirError"),
    ("lungjax.runtime.checkpoint", "CheckpointError"),
    ("lungjax.data.images", "ImageError"),
    ("lungjax.data.metadata", "MetadataError"),
    ("lungjax.evaluation.fit.validation", "ValidationFitError"),
    ("lungjax.data.sources.contract", "SourceError"),
    ("lungjax.evaluation.external_sources", "ExternalError"),
    ("lungjax.evaluation.sections.expert", "ExpertLabelsError"),
    ("lungjax.evaluation.sections.comparison", "CompareError"),
    ("lungjax.export.bundle", "ExportError"),
    ("lungjax.xla_cpu", "SettingError"),
)
ERROR_EXIT_CODE = 2
PACKAGE_DIR = str(Path(__file__).parent)
# A run stopped by SIGTERM or SIGINT saved a checkpoint and must be run again: EX_TEMPFAIL, distinct
# from success (0) and from errors, so a scheduler can requeue it (README, "Several hosts under SLURM").
PREEMPTED_EXIT_CODE = 75


def _is_expected(err: BaseException) -> bool:
    classes = [getattr(sys.modules[module], name) for module, name in EXPECTED_ERRORS if module in sys.modules]
    return isinstance(err, (FloatingPointError, *classes))


def _fail(err: BaseException | str) -> None:
    print(f"lungjax: error: {' '.join(str(err).split())}", file=sys.stderr)
    sys.exit(ERROR_EXIT_CODE)


def parse_flags(argv):
    """absl's parser, with every bad flag as one line and exit status 2 (absl's own exits 1 after its usage
    text); an override of a key the config lacks names it and the allowed keys."""
    try:
        return FLAGS(argv)
    except flags.Error as err:  # a missing flag, a value of the wrong type, an unknown flag
        _fail(err)
    except AttributeError as err:  # how ml_collections reports ``--config.<unknown key>``
        from lungjax.config import check as config_check

        try:
            config_check.check_override_flags(argv)
        except config_check.ConfigError as config_err:
            _fail(config_err)
        raise err


RERUN = "free some space (or raise the limit) and rerun the same command"
# After a write failed for lack of space: what each mode keeps, and what to do.
NO_SPACE_ADVICE = {
    "train": f"{RERUN}: complete checkpoints are kept and training resumes from the last one",
    "evaluate": f"{RERUN}: the report was not swapped in (an earlier one is kept)",
    "compare": f"{RERUN}: the report was not swapped in (an earlier one is kept)",
    "prepare": f"the dataset build stopped and nothing of it was kept: {RERUN}",
    "predict": RERUN,
    "export": f"{RERUN}: no bundle was swapped in (an earlier one is kept)",
    "external": f"{RERUN}: the external report was not swapped in (an earlier one is kept)",
}


def no_space_message(failure: storage.WriteFailure, mode: str, dataset_folder: Path | None) -> str:
    """The failed write, what was kept and what to do: for the dataset's build when the file is in
    ``dataset_folder`` (whatever the mode, which may build the dataset first), else for what ``mode``
    writes."""
    if dataset_folder is not None and failure.file is not None:
        if Path(failure.file).absolute().is_relative_to(dataset_folder):
            return f"the dataset build into {dataset_folder} stopped: {failure}; nothing of it was kept: {RERUN}"
    return f"{failure}; {NO_SPACE_ADVICE[mode]}"


def _dataset_folder() -> Path | None:
    """This run's dataset folder, if this run may have built it (only then is the module imported)."""
    dataset = sys.modules.get("lungjax.data.dataset")
    return None if dataset is None else dataset.data_dir(FLAGS.config.data, FLAGS.workdir)


def run_reporting_errors(argv):
    """``main`` with the engine's expected errors as one line on stderr and exit code 2."""
    try:
        return main(argv)
    except Exception as err:
        no_space = storage.write_failure(err)
        if no_space is not None:
            message = no_space_message(no_space, FLAGS.mode, _dataset_folder())
            print(f"lungjax: error: {message}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            # Not sys.exit: at interpreter shutdown every write Orbax abandoned prints its traceback.
            # The workdir lock and writers were released while the error unwound to here.
            os._exit(ERROR_EXIT_CODE)
        if not _is_expected(err):
            raise
        _fail(err)


if __name__ == "__main__":
    sys.exit(app.run(run_reporting_errors, flags_parser=parse_flags))
