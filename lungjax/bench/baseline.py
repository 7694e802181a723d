"""A linear baseline on raw pixels: how hard is the dataset a run was trained on?

Fits scikit-learn's logistic regression to the training split's images downsampled to 32x32
(standardised pixels) and reports the test split's one-vs-rest macro ROC-AUC next to the run's own
``eval/test/report.json`` (for the 14 findings: one logistic regression per finding, and the mean
AUROC over the findings with test positives and negatives, as the report computes it). If a linear
model on pixels came close to the CNN, the phantom would be too easy to tell us anything.

    python -m lungjax.bench.baseline --config configs/demo.py --workdir runs/demo
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lungjax.data import dataset, records, tasks
from lungjax.evaluation.sections import multi_label
from lungjax.evaluation.stats import ranking

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The config the run was trained with.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's workdir (its built dataset is reused).")
flags.DEFINE_integer("pixels", 32, "Side of the downsampled images the linear model sees.")
flags.DEFINE_float("C", 1e-2, "Inverse regularisation strength of the logistic regression.")
flags.mark_flags_as_required(["config", "workdir"])


def split_pixels(builder, split: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(images flattened to side*side floats, labels: classes or 0/1 rows) of a whole split, in order."""
    source = records.data_source(builder, split)
    features, targets = [], []
    for index in range(len(source)):
        record = source[index]
        image = cv2.imdecode(np.frombuffer(record["image"], np.uint8), cv2.IMREAD_GRAYSCALE)
        features.append(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).ravel())
        targets.append(record["label"])
    return np.asarray(features, np.float64), np.asarray(targets)


def baseline_auc(builder, task: tasks.Task, *, side: int, inverse_regularisation: float) -> float:
    train_x, train_y = split_pixels(builder, "train", side)
    test_x, test_y = split_pixels(builder, "test", side)
    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    if not task.multi_label:
        model = LogisticRegression(C=inverse_regularisation, max_iter=2000).fit(train_x, train_y)
        return ranking.macro_auc(test_y, model.predict_proba(test_x))
    probs = np.full(test_y.shape, 0.5)
    for k in range(test_y.shape[1]):
        if len(np.unique(train_y[:, k])) == 2:  # a finding without training positives stays at 0.5
            model = LogisticRegression(C=inverse_regularisation, max_iter=2000).fit(train_x, train_y[:, k])
            probs[:, k] = model.predict_proba(test_x)[:, 1]
    report = multi_label.multilabel_report(
        test_y, probs, task.class_names, patient_ids=np.arange(len(test_y)), n_bootstrap=0
    )
    return report["mean_auroc"]


def main(argv):
    del argv
    builder = dataset.build(FLAGS.config.data, FLAGS.workdir)
    task = tasks.get(FLAGS.config.data.task)
    auc = baseline_auc(builder, task, side=FLAGS.pixels, inverse_regularisation=FLAGS.C)
    result = {
        "logistic_regression_macro_auc": auc,
        "pixels": FLAGS.pixels,
        "C": FLAGS.C,
        "classes": list(task.class_names),
    }
    report = Path(FLAGS.workdir) / "eval" / "test" / "report.json"
    if report.is_file():
        saved = json.loads(report.read_text())
        result["cnn_macro_auc"] = saved["mean_auroc"] if task.multi_label else saved["macro_auc"]
        result["gap"] = result["cnn_macro_auc"] - auc
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
