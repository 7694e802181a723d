"""The out-of-distribution warning measured: how often it fires on films like the training ones, and on others.

    python -m lungjax.bench.ood --workdir=runs/demo --export=runs/demo/export/<step> --images ../shared/data/real

The bundle (``--export``) is loaded as ``python -m lungjax.serve`` loads it and scores the features its
own model file gives. Its false-alarm rate is measured on the test split of the dataset it was trained
on (built in ``--workdir``), films that neither the fit nor the threshold saw: the share above the
threshold, with its 95% Clopper-Pearson interval, beside the rate the threshold was chosen for. Each of
``--images`` (files or folders, read as serve reads them) is then scored and called like or unlike.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags

from lungjax.data import radiograph_files, tasks, union
from lungjax.evaluation import out_of_distribution
from lungjax.evaluation.stats import rates
from lungjax.serve import bundle, bundle_format, files

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "the workdir whose dataset is built (the export's run)")
flags.DEFINE_string("export", None, "the bundle, <workdir>/export/<step>")
flags.DEFINE_string("split", "test", "the split of in-distribution films whose false alarms are counted")
flags.DEFINE_multi_string("images", [], "films from elsewhere to score (files or folders)")
flags.DEFINE_integer("batch_size", 64, "films per model call")
flags.mark_flags_as_required(["workdir", "export"])


def split_scores(loaded: bundle.Bundle, workdir: Path, split: str, batch_size: int) -> np.ndarray:
    """The bundle's out-of-distribution scores of every film of ``split`` of its dataset built in ``workdir``."""
    saved = ml_collections.ConfigDict(json.loads((loaded.directory / bundle_format.CONFIG_FILE).read_text()))
    source = union.split(union.open_built(saved.data, workdir), split)
    features = out_of_distribution.split_features(
        lambda images: loaded.predict(images)[1],
        source,
        batch_size=batch_size,
        image_size=loaded.image_size,
        worker_count=0,
        task=tasks.of_config(saved),
    )
    return loaded.unlike.score(features)


def main(argv):
    del argv
    try:
        loaded = bundle.load(FLAGS.export)
    except bundle.BundleError as err:
        print(f"lungjax.bench.ood: error: {err}", file=sys.stderr)
        return 2
    unlike = loaded.unlike
    scores = split_scores(loaded, Path(FLAGS.workdir), FLAGS.split, FLAGS.batch_size)
    flagged = int((scores > unlike.threshold).sum())
    interval = rates.clopper_pearson(flagged, len(scores))
    print(
        f"trained on: {', '.join(loaded.training_sources)}; threshold {unlike.threshold:.4g} chosen for a "
        f"false-alarm rate of {unlike.false_alarm_rate:.1%} on {unlike.n_validation} validation films"
    )
    print(
        f"{FLAGS.split} films flagged: {flagged} of {len(scores)} = {flagged / len(scores):.1%} "
        f"(95% CI {interval['low']:.1%} to {interval['high']:.1%}); "
        f"scores: median {np.median(scores):.3g}, max {scores.max():.3g}"
    )
    paths, _ = files.expand(FLAGS.images)
    for path in paths:
        radiograph = radiograph_files.read(path)
        probs, features = loaded.predict(loaded.prepare(radiograph.pixels)[None])
        score = float(unlike.score(np.asarray(features))[0])
        top = int(np.asarray(probs)[0].argmax())
        verdict = "UNLIKE the training films" if score > unlike.threshold else "like the training films"
        print(
            f"{radiograph_files.display_name(path)}: score {score:.3g}, {verdict}; "
            f"{loaded.class_names[top]} p={float(np.asarray(probs)[0, top]):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
