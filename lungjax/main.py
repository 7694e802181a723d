"""Command line: ``python -m lungjax.main --config configs/demo.py --workdir runs/demo [--mode ...]``.

Only parses flags and hands over to the library, so everything here is importable and testable.
Config values can be overridden on the command line: ``--config.batch_size=64``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "prepare")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the dataset, checkpoints, logs and reports.")
flags.DEFINE_enum("mode", "train", MODES,
                  "train: train (resuming) then evaluate; evaluate: evaluate a checkpoint only; "
                  "prepare: build the dataset only.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config, workdir = FLAGS.config, FLAGS.workdir
    if FLAGS.mode == "evaluate":
        from lungjax import evaluate  # imports no training code

        print(evaluate.format_table(evaluate.evaluate(config, workdir)))
    elif FLAGS.mode == "prepare":
        from lungjax.data import dataset

        builder = dataset.build(config.data, workdir)
        print(f"dataset ready: {builder.data_dir}")
    else:
        from lungjax import train

        train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    sys.exit(app.run(main))
