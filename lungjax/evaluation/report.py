"""``report.md``: the evaluation report for a reader, rendered from the ``report.json`` dict.

Every headline number carries its 95% patient-bootstrap interval, and the reference project's
published figures stand beside ours together with whether our split let patients leak, because
that is the first thing a reader comparing the two needs to know.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

FIGURE_TITLES = MappingProxyType(
    {
        "roc.png": "ROC curves",
        "pr.png": "Precision-recall curves",
        "confusion_matrix.png": "Confusion matrix (row-normalised)",
        "reliability.png": "Reliability diagram",
        "training_curves.png": "Training curves",
        "gradcam_worst.png": "Grad-CAM, worst-scored examples",
        "gradcam_boxed.png": "Grad-CAM, examples with a box",
    }
)


def reference_figures() -> dict:
    """The reference Keras ResNet50's published test figures (per-image split, argmax decisions)."""
    return {
        "accuracy": 0.55,
        "macro_auc": 0.87,
        "per_class": {
            "Cardiomegaly": {"sensitivity": 0.85, "specificity": 0.96},
            "Pneumothorax": {"sensitivity": 0.77, "specificity": 0.86},
        },
    }


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _with_interval(value: float | None, interval: dict | None) -> str:
    """``0.812 [0.790, 0.833]``; the bracket is left out when there is no interval."""
    if interval is None or interval.get("low") is None:
        return _number(value)
    return f"{_number(value)} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _split_line(report: dict) -> str:
    crossing = report.get("patients_crossing_splits")
    if report.get("patient_disjoint"):
        return (
            "**Split: patient-disjoint** — no patient has films in more than one split, so these figures "
            "are not inflated by patient leakage."
        )
    return (
        f"**Split: NOT patient-disjoint** ({report.get('split_scheme')} split; {crossing} patients have "
        "films in more than one split) — like the reference's, these figures are inflated by patient leakage."
    )


def _comparison(report: dict) -> list[str]:
    intervals = report.get("confidence_intervals") or {}
    thresholded = report.get("at_thresholds", {}).get("per_class")
    reference = reference_figures()
    rows = [
        [label, _number(reference[key]), _with_interval(report[key], intervals.get(key)), "—"]
        for key, label in (("accuracy", "Accuracy"), ("macro_auc", "Macro ROC-AUC"))
    ]
    for name, figures in reference["per_class"].items():
        for metric, published in figures.items():
            ours = _with_interval(
                report["per_class"][name][metric], intervals.get("per_class", {}).get(name, {}).get(metric)
            )
            at_threshold = _number(thresholded[name][metric]) if thresholded else "n/a"
            rows.append([f"{name} {metric}", _number(published), ours, at_threshold])
    return _table(["Metric", "Reference (published)", "Ours, argmax [95% CI]", "Ours, Youden threshold"], rows)


def _per_class(report: dict) -> list[str]:
    intervals = (report.get("confidence_intervals") or {}).get("per_class", {})
    at = report.get("at_thresholds", {})
    rows = []
    for name, row in report["per_class"].items():
        ci = intervals.get(name, {})
        threshold = at.get("thresholds", {}).get(name)
        at_row = at.get("per_class", {}).get(name, {})
        rows.append(
            [
                name,
                str(row["support"]),
                _with_interval(row["auc"], ci.get("auc")),
                _number(row["pr_auc"]),
                _with_interval(row["sensitivity"], ci.get("sensitivity")),
                _with_interval(row["specificity"], ci.get("specificity")),
                _number(row["precision"]),
                _number(row["f1"]),
                _number(threshold),
                _number(at_row.get("sensitivity")),
                _number(at_row.get("specificity")),
            ]
        )
    return _table(
        [
            "Class",
            "n",
            "ROC-AUC",
            "PR-AUC",
            "Sensitivity",
            "Specificity",
            "Precision",
            "F1",
            "Threshold",
            "Sens. @thr",
            "Spec. @thr",
        ],
        rows,
    )


def _confusion(report: dict) -> list[str]:
    names = list(report["per_class"])
    rows = [[f"**{name}**", *map(str, counts)] for name, counts in zip(names, report["confusion_matrix"])]
    return _table(["true \\ predicted", *names], rows)


def _pointing_game(report: dict) -> list[str]:
    game = report.get("explain", {}).get("pointing_game")
    if not game or not game["n"]:
        return ["No example of this split has a box, so there is no pointing game."]
    lines = [
        f"Share of boxed findings whose Grad-CAM maximum falls inside the box: **{game['hits']}/{game['n']} "
        f"= {game['hit_rate']:.3f}**; chance (mean share of the image a box covers) {game['chance']:.3f}. "
        f"Flat heatmaps (no maximum; counted as misses): {game['flat']}.",
        "",
    ]
    rows = [
        [name, f"{g['hits']}/{g['n']}", _number(g["hit_rate"]), _number(g["chance"])]
        for name, g in game["per_class"].items()
    ]
    return lines + _table(["Class", "Hits", "Hit rate", "Chance"], rows)


def render_markdown(report: dict, figures: Sequence[str] = ()) -> str:
    """The whole report as Markdown; ``figures`` are file names beside ``report.md`` to link."""
    intervals = report.get("confidence_intervals") or {}
    at = report.get("at_thresholds", {})
    threshold_line = (
        f"Per-class thresholds maximise Youden's J on the {at['chosen_on']} split and are applied unchanged here."
        if "chosen_on" in at
        else at.get("note", "")
    )
    ci_line = (
        f"Intervals: {intervals['level']:.0%} {intervals['method']}, {intervals['n_bootstrap']} replicates."
        if intervals
        else "No confidence intervals (n_bootstrap = 0)."
    )
    headline = [
        ["Accuracy", _with_interval(report["accuracy"], intervals.get("accuracy"))],
        ["Balanced accuracy", _with_interval(report["balanced_accuracy"], intervals.get("balanced_accuracy"))],
        ["Macro ROC-AUC", _with_interval(report["macro_auc"], intervals.get("macro_auc"))],
        ["Macro PR-AUC", _number(report["macro_pr_auc"])],
        ["Log-loss", _number(report["log_loss"])],
        ["Expected calibration error", _number(report["ece"])],
    ]
    lines = [
        f"# Evaluation: {report['split']} split, checkpoint step {report['checkpoint_step']}",
        "",
        f"Dataset `{report['dataset']}`: {report['n_images']} images of {report['n_patients']} patients; "
        f"test-time crops: {report['tta_crops']}.",
        "",
        _split_line(report),
        "",
        "## Side by side with the reference",
        "",
        *_comparison(report),
        "",
        "The reference split per image (patients leak across splits) and decided by argmax.",
        "",
        "## Headline metrics",
        "",
        *_table(["Metric", "Value [95% CI]"], headline),
        "",
        ci_line,
        "",
        "## Per class",
        "",
        "One-vs-rest; sensitivity to F1 at the argmax decision. " + threshold_line,
        "",
        *_per_class(report),
        "",
        "## Confusion matrix",
        "",
        *_confusion(report),
        "",
        "## Explanations: pointing game",
        "",
        *_pointing_game(report),
        "",
        "## Figures",
        "",
    ]
    lines += [f"- [{FIGURE_TITLES.get(name, name)}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- multi-label report

MULTILABEL_FIGURE_TITLES = MappingProxyType(
    {
        **FIGURE_TITLES,
        "roc.png": "ROC curves, one panel per finding",
        "reliability.png": "Reliability diagrams, one panel per finding",
    }
)


def _published_columns(report: dict) -> list[dict]:
    return list((report.get("published") or {}).values())


def _per_finding(report: dict) -> list[str]:
    """Our figures per finding, then each published AUROC; a last row holds the means."""
    intervals = report.get("confidence_intervals") or {}
    per_finding_ci = intervals.get("per_finding", {})
    at = report.get("at_thresholds", {})
    published = _published_columns(report)
    rows = []
    for name, row in report["per_finding"].items():
        ci = per_finding_ci.get(name, {})
        at_row = at.get("per_finding", {}).get(name, {})
        rows.append(
            [
                name,
                str(row["support"]),
                _with_interval(row["auroc"], ci.get("auroc")),
                _with_interval(row["pr_auc"], ci.get("pr_auc")),
                _number(row["ece"]),
                _number(at.get("thresholds", {}).get(name)),
                _number(at_row.get("sensitivity")),
                _number(at_row.get("specificity")),
                _number(at_row.get("f1")),
                *(_number(table["auroc"].get(name)) for table in published),
            ]
        )
    rows.append(
        [
            f"**Mean** ({len(report['means_over'])} findings)",
            "",
            _with_interval(report["mean_auroc"], intervals.get("mean_auroc")),
            _with_interval(report["mean_pr_auc"], intervals.get("mean_pr_auc")),
            *[""] * 5,
            *(_number(table["mean_auroc"]) for table in published),
        ]
    )
    header = ["Finding", "n+", "AUROC [95% CI]", "PR-AUC [95% CI]", "ECE", "Threshold", "Sens.", "Spec.", "F1"]
    return _table(header + [table["column"] for table in published], rows)


def _published_sources(report: dict) -> list[str]:
    """Each published column's citation, model and split: a reader must see which test set it scored."""
    lines = []
    for table in _published_columns(report):
        lines.append(
            f"- **{table['column']}**: {table['citation']}. arXiv:{table['arxiv']}, {table['table']}. "
            f"Model: {table['model']}. Split: {table['split']}."
        )
    if lines:
        lines += [
            "",
            "Only a column measured on NIH's official split can be compared with ours, and only when our test "
            "split is NIH's official test list; CheXNet's own split is not public, so its figures are context, "
            "not a head-to-head. A published mean is over that table's own findings.",
        ]
    return lines


def _expert_labels(report: dict) -> list[str]:
    """Optional: AUROC against NIH's text-mined labels and against expert labels on the same images.

    Expected shape: ``{finding: {"images": n, "auroc_nih_labels": x, "auroc_expert_labels": y,
    "agreement": z}}`` with ``agreement`` the share of those images where the two labels agree.
    """
    expert = report.get("expert_labels")
    if not expert:
        return []
    rows = [
        [
            name,
            str(row["images"]),
            _number(row["auroc_nih_labels"]),
            _number(row["auroc_expert_labels"]),
            _number(row["agreement"]),
        ]
        for name, row in expert.items()
    ]
    return [
        "## NIH labels against expert labels",
        "",
        *_table(["Finding", "Images", "AUROC (NIH labels)", "AUROC (expert labels)", "Label agreement"], rows),
        "",
    ]


def render_multilabel_markdown(report: dict, figures: Sequence[str] = ()) -> str:
    """The 14-finding (multi-label) report as Markdown; ``figures`` are file names beside it to link."""
    intervals = report.get("confidence_intervals") or {}
    at = report.get("at_thresholds", {})
    threshold_line = (
        f"Per-finding thresholds maximise Youden's J on the {at['chosen_on']} split and are applied unchanged "
        "here; a finding is called when its probability is at least its threshold."
        if "chosen_on" in at
        else at.get("note", "No thresholds were given, so there are no operating points.")
    )
    ci_line = (
        f"Intervals: {intervals['level']:.0%} {intervals['method']}, {intervals['n_bootstrap']} replicates."
        if intervals
        else "No confidence intervals (n_bootstrap = 0)."
    )
    split_line = _split_line(report) if "patient_disjoint" in report else f"Split scheme: `{report['split_scheme']}`."
    undefined = [name for name, row in report["per_finding"].items() if "note" in row]
    lines = [
        f"# Evaluation: {report['split']} split, checkpoint step {report['checkpoint_step']} "
        f"({len(report['per_finding'])} findings, multi-label)",
        "",
        f"Dataset `{report['dataset']}`: {report['n_images']} images of {report['n_patients']} patients.",
        "",
        split_line,
        "",
        f"**Mean AUROC {_with_interval(report['mean_auroc'], intervals.get('mean_auroc'))}** over "
        f"{len(report['means_over'])} findings; mean PR-AUC "
        f"{_with_interval(report['mean_pr_auc'], intervals.get('mean_pr_auc'))}. {ci_line}",
        "",
    ]
    if undefined:
        lines += [
            "Undefined on this split: "
            + "; ".join(f"{name} ({report['per_finding'][name]['note']})" for name in undefined)
            + ".",
            "",
        ]
    lines += [
        "## Per finding",
        "",
        f"n+ is the number of positive images. ECE: equal-width, {report['ece_bins']}-bin expected calibration "
        "error of each finding's probability against its own label. " + threshold_line,
        "",
        *_per_finding(report),
        "",
        *_published_sources(report),
        "",
        *_expert_labels(report),
        *(["## Explanations: pointing game", "", *_pointing_game(report), ""] if "explain" in report else []),
        "## Figures",
        "",
    ]
    lines += [f"- [{MULTILABEL_FIGURE_TITLES.get(name, name)}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
