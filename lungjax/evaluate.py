"""Evaluation: a checkpoint -> predictions on a split -> metrics, plots and a report.

Stands alone: it imports no training code (``lungjax.train``, ``lungjax.step``, optax), restores only
the model item of a checkpoint (no optimizer state), and rebuilds the model from the config saved
in that checkpoint, so a later change of the config file cannot mismatch the weights.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lungjax import checkpoint, metrics, models, plots, sharding
from lungjax.data import dataset, labels, pipeline

SPLITS = ("test", "validation", "train")
CHECKPOINT_CHOICES = ("latest", "best")


def make_predict_fn(graphdef: nnx.GraphDef, mesh, dtype):
    """jit-compiled ``(model_state, uint8 images) -> class probabilities (float32)``."""

    def predict(model_state, images):
        model = nnx.merge(graphdef, model_state["params"], model_state["batch_stats"])
        logits = model(images.astype(dtype) * (1.0 / 255.0), train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return jax.jit(predict, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))


def predict_split(predict_fn, model_state, batches, mesh) -> dict[str, np.ndarray]:
    """Runs ``predict_fn`` over padded eval batches; returns the real rows only, in order."""
    in_sharding = sharding.batch_sharding(mesh)
    outputs: dict[str, list[np.ndarray]] = {"probs": [], "label": [], "image_name": [], "patient_id": []}
    for batch in batches:
        images = jax.make_array_from_process_local_data(in_sharding, batch["image"])
        probs = np.asarray(jax.device_get(predict_fn(model_state, images)))
        mask = batch["mask"]
        start = jax.process_index() * len(mask)  # this process's rows of the global batch
        outputs["probs"].append(probs[start:start + len(mask)][mask])
        for key in ("label", "image_name", "patient_id"):
            outputs[key].append(batch[key][mask])
    result = {key: np.concatenate(values) for key, values in outputs.items()}
    result["image_name"] = np.array([n.decode() if isinstance(n, bytes) else str(n)
                                     for n in result["image_name"]])
    return result


def resolve_step(manager, choice) -> int:
    """``latest`` | ``best`` | a step number -> an existing step, or a clear error."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}: train first")
    if choice == "latest":
        return manager.latest_step()
    if choice == "best":
        return manager.best_step() or manager.latest_step()
    if str(choice).isdigit() and int(choice) in steps:
        return int(choice)
    raise ValueError(f"config.eval.checkpoint must be one of {CHECKPOINT_CHOICES} or a saved step "
                     f"{sorted(steps)}, got {choice!r}")


def write_predictions(path: Path, predictions: dict[str, np.ndarray]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_name", "patient_id", "true_class", *labels.CLASS_NAMES])
        for name, pid, label, probs in zip(predictions["image_name"], predictions["patient_id"],
                                           predictions["label"], predictions["probs"]):
            writer.writerow([name, int(pid), labels.CLASS_NAMES[int(label)], *(f"{p:.6f}" for p in probs)])


def format_table(report: dict) -> str:
    """A plain-text metrics table for the console."""
    lines = [f"{'class':<14}{'AUC':>7}{'sens':>7}{'spec':>7}{'n':>7}"]
    for name, row in report["per_class"].items():
        auc = "  n/a" if row["auc"] is None else f"{row['auc']:.3f}"
        lines.append(f"{name:<14}{auc:>7}{row['sensitivity']:>7.3f}{row['specificity']:>7.3f}{row['support']:>7d}")
    lines.append(f"accuracy {report['accuracy']:.3f}   macro ROC-AUC {report['macro_auc']:.3f}   "
                 f"images {report['n_images']}   checkpoint step {report['checkpoint_step']}")
    return "\n".join(lines)


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Evaluates ``config.eval.checkpoint`` on ``config.eval.split``; writes ``<workdir>/eval/<split>/``."""
    split = config.eval.split
    if split not in SPLITS:
        raise ValueError(f"config.eval.split must be one of {SPLITS}, got {split!r}")
    manager = checkpoint.make_manager(workdir, read_only=True)
    step = resolve_step(manager, config.eval.checkpoint)
    saved = ml_collections.ConfigDict(checkpoint.restore_config(manager, step))
    mesh = sharding.make_mesh()
    model = models.from_config(saved.model, num_classes=labels.NUM_CLASSES,
                               half_precision=saved.half_precision)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model_state = jax.device_put({"params": params, "batch_stats": batch_stats}, sharding.replicated(mesh))
    model_state = checkpoint.restore_model(manager, step, model_state)
    manager.close()

    builder = dataset.build(saved.data, workdir)
    batch_size = config.eval.batch_size // jax.process_count()
    batches = pipeline.eval_batches(pipeline.data_source(builder, split), batch_size=batch_size,
                                    image_size=saved.image_size, worker_count=config.worker_count)
    dtype = jnp.bfloat16 if saved.half_precision else jnp.float32
    predictions = predict_split(make_predict_fn(graphdef, mesh, dtype), model_state, batches, mesh)

    report = metrics.classification_report(predictions["label"], predictions["probs"], labels.CLASS_NAMES,
                                           patient_ids=predictions["patient_id"],
                                           n_bootstrap=config.eval.n_bootstrap, seed=config.seed)
    report.update(split=split, checkpoint_step=int(step), dataset=builder.builder_config.name,
                  patient_disjoint=saved.data.split_scheme == "patient")
    out = Path(workdir) / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", predictions)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plots.plot_roc_curves(predictions["label"], predictions["probs"], labels.CLASS_NAMES, out / "roc.png")
    plots.plot_confusion_matrix(np.asarray(report["confusion_matrix"]), labels.CLASS_NAMES,
                                out / "confusion_matrix.png")
    return report
