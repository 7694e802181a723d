"""Command line: ``python -m lungjax.main --config configs/demo.py --workdir runs/demo [--mode ...]``.

``--mode predict --images a.png b.dcm ...`` classifies files with the workdir's checkpoint; the
file names after the first may follow ``--images`` without repeating the flag.

Only parses flags and hands over to the library, so everything here is importable and testable.
Config values can be overridden on the command line: ``--config.batch_size=64``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "prepare", "predict")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the dataset, checkpoints, logs and reports.")
flags.DEFINE_enum("mode", "train", MODES,
                  "train: train (resuming) then evaluate; evaluate: evaluate a checkpoint only; "
                  "prepare: build the dataset only; predict: classify --images files.")
flags.DEFINE_multi_string("images", [], "predict mode: radiographs to classify (PNG, JPEG or DICOM).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    extra = argv[1:]
    if extra and FLAGS.mode != "predict":
        raise app.UsageError(f"unexpected arguments: {extra}")
    logging.set_verbosity(logging.WARNING)
    config, workdir = FLAGS.config, FLAGS.workdir
    if FLAGS.mode == "predict":
        from lungjax import predict  # imports no training code

        paths = [*FLAGS.images, *extra]
        if not paths:
            raise app.UsageError("--mode predict needs --images FILE [FILE ...]")
        failures = predict.predict_files(config, workdir, paths)
        if failures:
            print(f"{failures} of {len(paths)} files could not be classified", file=sys.stderr)
        return int(failures > 0)
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
