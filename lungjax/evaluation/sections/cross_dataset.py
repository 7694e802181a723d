"""The external report's JSON: trained runs scored on other sources' test splits, label by label.

For each (run, test source) pair the labels the two share are scored over the films that state them
(``label_mask``): a train x test AUROC matrix with patient-bootstrap intervals, the generalisation gap
(external minus internal) with its interval, each label's prevalence per source (label shift made
visible), the published cross-dataset references, and the transfer of the run's validation-fitted
operating points and temperatures to the external films. Labels a pair does not share are listed as
left out with the reason; asking for a label that no pair shares is refused.

The gap's two AUROCs come from different patients (the run's own test split and the external one), so
they are bootstrapped independently, each over its own patients, and the interval is the percentile
interval of the replicate-by-replicate difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lungjax.evaluation.fit import operating_points
from lungjax.evaluation.sections import calibration, cross_dataset_references
from lungjax.evaluation.sections import operating_points as operating_point_section
from lungjax.evaluation.stats import rates, separability, stated
from lungjax.evaluation.stats.bootstrap import CI_LEVEL
from lungjax.evaluation.stats.numeric import optional_float

INTERNAL_SEED_OFFSET = 1  # the internal split's draws are separate from the external ones


@dataclass(frozen=True)
class Run:
    """A trained run: its name, the sources it trained on, its label list (the order of its outputs),
    its predictions on its own test split, and its ``validation_fit.json`` record (None: not fitted)."""

    name: str
    trained_on: tuple[str, ...]
    labels: tuple[str, ...]
    internal: Mapping[str, np.ndarray]
    validation_fit: Mapping | None = None


@dataclass(frozen=True)
class TestSet:
    """One run's predictions on one source's test split, over the run's labels; ``source_labels`` are the
    labels that source states at all (``labelspace.source_labels``)."""

    run: str
    source: str
    source_labels: tuple[str, ...]
    predictions: Mapping[str, np.ndarray] = field(repr=False)


def shared_labels(run: Run, test: TestSet) -> tuple[list[str], list[dict]]:
    """The labels a run and a test source share (the run's order), and each left-out label with the reason."""
    left_out = [
        {"run": run.name, "source": test.source, "label": label, "reason": f"{test.source} does not state it"}
        for label in run.labels
        if label not in test.source_labels
    ]
    left_out += [
        {"run": run.name, "source": test.source, "label": label, "reason": f"{run.name} was not trained on it"}
        for label in test.source_labels
        if label not in run.labels and label != "No Finding"
    ]
    return [label for label in run.labels if label in test.source_labels], left_out


def _columns(predictions: Mapping[str, np.ndarray], n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive (N, L) bool, probs (N, L) float64, stated (N, L) float64) of a predictions dict."""
    labels, probs = np.asarray(predictions["label"]), np.asarray(predictions["probs"], np.float64)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != n_labels:
        raise ValueError(f"predictions must hold label and probs of shape (N, {n_labels}), got {labels.shape}")
    return labels > 0.5, probs, stated.stated_mask(predictions.get("label_mask"), labels.shape)


def _statement(run: Run, source: str) -> str:
    kind = "internal" if source in run.trained_on else "external"
    return f"{run.name}: trained on {' + '.join(run.trained_on)}, tested on {source} ({kind})"


def _transfer(run: Run, test: TestSet, labels: list[str], n_bootstrap: int, seed: int) -> dict:
    """The run's validation thresholds and temperatures applied unchanged to the external films."""
    fit = run.validation_fit
    if fit is None:
        return {"note": f"{run.name} has no validation fit: nothing to transfer"}
    if list(fit["class_names"]) != list(run.labels):
        raise ValueError(f"{run.name}: the validation fit's labels {fit['class_names']} are not the run's {run.labels}")
    columns = [run.labels.index(label) for label in labels]
    positive, probs, mask = _columns(test.predictions, len(run.labels))
    positive, probs, mask = positive[:, columns], probs[:, columns], mask[:, columns]
    patient_ids = np.asarray(test.predictions["patient_id"])
    chosen = fit["operating_points"]
    rules = operating_points.parse_all(list(chosen))
    fitted = fit["temperature"]
    temperatures = {
        "temperatures": [fitted["temperatures"][c] for c in columns],
        "not_fitted": {name: why for name, why in fitted["not_fitted"].items() if name in labels},
        "at_bound": [name for name in fitted["at_bound"] if name in labels],
    }
    return {
        "chosen_on": f"{run.name}'s validation split ({' + '.join(run.trained_on)})",
        "applied_to": f"{test.source}'s test split, unchanged",
        "rules": [rule.text for rule in rules],
        "operating_points": operating_point_section.apply(
            rules,
            chosen,
            positive,
            probs,
            labels,
            patient_ids=patient_ids,
            n_bootstrap=n_bootstrap,
            seed=seed,
            stated=mask > 0,
        ),
        "calibration": calibration.calibration_report(
            positive.astype(np.int64),
            probs,
            temperatures,
            labels,
            multi_label=True,
            patient_ids=patient_ids,
            n_bootstrap=n_bootstrap,
            seed=seed,
            stated=mask > 0,
        ),
    }


def _out_of_distribution(ood: Mapping) -> dict:
    """Per run and source: the share of films above the run's threshold, with its exact binomial interval."""
    report = {}
    for run, record in ood.items():
        per_source = {}
        for source, distances in record["per_source"].items():
            distances = np.asarray(distances, np.float64)
            flagged = int((distances > record["threshold"]).sum())
            per_source[source] = {
                "n_films": int(distances.size),
                "n_unlike": flagged,
                "share_unlike": flagged / distances.size if distances.size else None,
                "ci": rates.clopper_pearson(flagged, int(distances.size)),
                "median_distance": float(np.median(distances)) if distances.size else None,
            }
        report[run] = {
            "threshold": float(record["threshold"]),
            "false_alarm_rate": float(record["false_alarm_rate"]),
            "per_source": per_source,
        }
    return report


def shortcut_section(probes: Mapping[str, dict]) -> dict:
    """Each shortcut probe (``separability.shortcut_probe``'s record, keyed by what it read) with its warning."""
    report = {}
    for name, probe in probes.items():
        if probe["separable"]:
            warning = (
                f"WARNING: a linear probe on {name} tells {', '.join(probe['sources'])} apart with AUROC "
                f"{probe['auroc']:.3f} (>= {separability.SEPARABLE_AUROC}, Zech et al.'s 'almost perfectly'): a "
                "model can learn the source instead of the finding; read the external figures with that in mind."
            )
        else:
            warning = None
        report[name] = {**probe, "warning": warning}
    return report


def cross_dataset_report(
    runs: Sequence[Run],
    tests: Sequence[TestSet],
    *,
    labels: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    shortcut: Mapping[str, dict] | None = None,
    ood: Mapping | None = None,
) -> dict:
    """The external report (module docstring) of ``tests``, each an evaluation of one of ``runs``.

    ``labels`` restricts the report to those labels; one that no (run, external source) pair shares is
    refused. ``shortcut`` maps what a probe read (e.g. "penultimate features") to
    ``separability.shortcut_probe``'s record; ``ood`` maps a run to ``{"threshold", "false_alarm_rate",
    "per_source": {source: distances}}``.
    """
    by_name = {run.name: run for run in runs}
    unknown = sorted({test.run for test in tests} - set(by_name))
    if unknown:
        raise ValueError(f"test sets of unknown runs {unknown}; runs: {sorted(by_name)}")
    pairs, left_out = [], []
    for test in tests:
        shared, dropped = shared_labels(by_name[test.run], test)
        pairs.append((by_name[test.run], test, shared))
        left_out += dropped
    external_shared = {label for run, test, shared in pairs if test.source not in run.trained_on for label in shared}
    if labels is not None:
        refused = [label for label in labels if label not in external_shared]
        if refused:
            raise ValueError(
                f"labels {refused} are not shared by any trained run and external test source "
                f"({', '.join(sorted({f'{run.name}->{test.source}' for run, test, _ in pairs}))})"
            )
    wanted = [label for run in runs for label in run.labels if labels is None or label in labels]
    wanted = list(dict.fromkeys(wanted))
    sources = list(dict.fromkeys(test.source for test in tests))

    internal = {}
    for run in runs:
        positive, probs, mask = _columns(run.internal, len(run.labels))
        internal[run.name] = {}
        for c, label in enumerate(run.labels):
            if label in wanted:
                internal[run.name][label] = stated.auroc_with_interval(
                    positive[:, c],
                    probs[:, c],
                    mask[:, c],
                    np.asarray(run.internal["patient_id"]),
                    n_bootstrap,
                    seed + INTERNAL_SEED_OFFSET,
                )

    per_label = {label: {"matrix": {}, "internal": {}, "gap": {}, "prevalence": {}} for label in wanted}
    transfer = {}
    for run, test, shared in pairs:
        positive, probs, mask = _columns(test.predictions, len(run.labels))
        patient_ids = np.asarray(test.predictions["patient_id"])
        scored = []
        for label in shared:
            if label not in per_label:
                continue
            c = run.labels.index(label)
            cell, replicates = stated.auroc_with_interval(
                positive[:, c], probs[:, c], mask[:, c], patient_ids, n_bootstrap, seed
            )
            entry = per_label[label]
            entry["prevalence"].setdefault(
                test.source,
                {
                    "value": optional_float(
                        stated.stated_prevalence(positive[:, c], mask[:, c], np.ones((1, len(mask))))[0]
                    ),
                    "n_stated": cell["n_stated"],
                    "n_positive": cell["n_positive"],
                },
            )
            if cell["auroc"] is None:
                reason = "no stated films" if cell["n_stated"] == 0 else "no positive or no negative stated films"
                left_out.append({"run": run.name, "source": test.source, "label": label, "reason": reason})
                continue
            is_internal = test.source in run.trained_on
            entry["matrix"].setdefault(run.name, {})[test.source] = {**cell, "internal": is_internal}
            scored.append(label)
            own, own_replicates = internal[run.name][label]
            entry["internal"][run.name] = own
            if not is_internal and own["auroc"] is not None:
                gap = {"value": cell["auroc"] - own["auroc"], "ci": None}
                if replicates is not None and own_replicates is not None:
                    gap["ci"] = stated.difference_of_independent(replicates, own_replicates)
                entry["gap"].setdefault(run.name, {})[test.source] = gap
        if test.source not in run.trained_on and scored:
            transfer.setdefault(run.name, {})[test.source] = _transfer(run, test, scored, n_bootstrap, seed)

    report = {
        "kind": "external validation",
        "statements": [_statement(by_name[test.run], test.source) for test in tests],
        "runs": {run.name: {"trained_on": list(run.trained_on), "labels": list(run.labels)} for run in runs},
        "test_sources": sources,
        "labels": [label for label in wanted if per_label[label]["matrix"]],
        "per_label": {label: entry for label, entry in per_label.items() if entry["matrix"]},
        "left_out": left_out,
        "references": cross_dataset_references.references(wanted, sources),
        "transfer": transfer,
        "bootstrap": {
            "level": CI_LEVEL,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "method": "percentile bootstrap over patients, stated entries only",
            "gap": (
                "external minus internal AUROC; the two splits hold different patients, so each is bootstrapped "
                "independently over its own patients and the interval is that of the replicate differences"
            ),
        },
    }
    if shortcut:
        report["shortcut"] = shortcut_section(shortcut)
    if ood:
        report["out_of_distribution"] = _out_of_distribution(ood)
    return report
