"""The evaluation report for a reader, built from the ``report.json`` dict as one document model that
``report.md`` and ``report.html`` both render.

Every headline number carries its 95% patient-bootstrap interval, and the reference project's
published figures (six classes) or the published ChestX-ray14 tables (14 findings) stand beside
ours together with whether our split let patients leak, because that is the first thing a reader
comparing them needs to know. Each table cell that shows numbers from ``report.json`` names where
they come from (``Cell.keys``), so the HTML page can be checked against the JSON number by number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from lungjax.evaluation.fit import operating_points
from lungjax.evaluation.sections import reference as reference_section
from lungjax.evaluation.sections import subgroups

FIGURE_TITLES = MappingProxyType(
    {
        "roc.png": "ROC curves",
        "pr.png": "Precision-recall curves",
        "confusion_matrix.png": "Confusion matrix (row-normalised)",
        "reliability.png": "Reliability diagram",
        "reliability_calibrated.png": "Reliability diagram after temperature scaling",
        "training_curves.png": "Training curves",
        "gradcam_worst.png": "Grad-CAM, worst-scored examples",
        "gradcam_boxed.png": "Grad-CAM, examples with a box",
        "subgroups.png": "AUROC by subgroup",
        "comparison_roc.png": "ROC curves of both runs",
    }
)
MULTILABEL_FIGURE_TITLES = MappingProxyType(
    {
        **FIGURE_TITLES,
        "roc.png": "ROC curves, one panel per finding",
        "reliability.png": "Reliability diagrams, one panel per finding",
        "reliability_calibrated.png": "Reliability diagrams after temperature scaling, one panel per finding",
    }
)
# Where each figure is shown; the others go to the last section.
FIGURE_SECTIONS = MappingProxyType(
    {
        "subgroups.png": "Subgroup audit",
        "reliability.png": "Calibration",
        "reliability_calibrated.png": "Calibration",
        "comparison_roc.png": "Comparison with another run",
        "gradcam_worst.png": "Explanations: pointing game",
        "gradcam_boxed.png": "Explanations: pointing game",
    }
)

Key = tuple  # a path into report.json, e.g. ("per_class", "Nodule/Mass", "auc")


@dataclass(frozen=True)
class Cell:
    """A table cell: its text, and the report.json paths of the numbers it shows, in order."""

    text: str
    keys: tuple[Key, ...] = ()


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[Cell]]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # paragraphs (str), Tables and Code, in order
    figures: list[str] = field(default_factory=list)  # PNG names beside the report


@dataclass
class Document:
    title: str
    intro: list[str]
    sections: list[Section]
    figure_titles: MappingProxyType


# ------------------------------------------------------------------------------------------ cells


def _number(value: float | None) -> str:
    """Three decimals; a value that rounds to zero is 0.000, never -0.000."""
    return "n/a" if value is None else f"{value:.3f}".replace("-0.000", "0.000")


def number(report: dict, *key) -> Cell:
    """The value at ``key`` to 3 decimals ("n/a" when absent or None)."""
    value = _get(report, key)
    return Cell(_number(value), (key,) if value is not None else ())


def with_interval(report: dict, value_key: Key, interval_key: Key | None) -> Cell:
    """``0.812 [0.790, 0.833]``; the bracket is left out when there is no interval."""
    value = _get(report, value_key)
    interval = _get(report, interval_key) if interval_key else None
    if value is None:
        return Cell("n/a")
    if not interval or interval.get("low") is None:
        return Cell(_number(value), (value_key,))
    return Cell(
        f"{_number(value)} [{_number(interval['low'])}, {_number(interval['high'])}]",
        (value_key, (*interval_key, "low"), (*interval_key, "high")),
    )


def count(report: dict, *key) -> Cell:
    return Cell(str(_get(report, key)), (key,))


def text(value: str) -> Cell:
    return Cell(value)


def _get(report: dict, key: Key | None):
    """The value at ``key`` in ``report``, or None when any step is missing."""
    node = report
    for part in key or ():
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


# ----------------------------------------------------------------------------------- shared lines


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


def _ci_line(report: dict) -> str:
    intervals = report.get("confidence_intervals") or {}
    if not intervals:
        return "No confidence intervals (n_bootstrap = 0)."
    return f"Intervals: {intervals['level']:.0%} {intervals['method']}, {intervals['n_bootstrap']} replicates."


# -------------------------------------------------------------------------------- six-class sections


def _comparison(report: dict) -> Table:
    reference = reference_section.reference_figures()
    thresholded = "per_class" in report.get("at_thresholds", {})
    rows = [
        [
            text(label),
            text(_number(reference[key])),
            with_interval(report, (key,), ("confidence_intervals", key)),
            text("—"),
        ]
        for key, label in (("accuracy", "Accuracy"), ("macro_auc", "Macro ROC-AUC"))
    ]
    for name, figures in reference["per_class"].items():
        for metric, published in figures.items():
            rows.append(
                [
                    text(f"{name} {metric}"),
                    text(_number(published)),
                    with_interval(
                        report, ("per_class", name, metric), ("confidence_intervals", "per_class", name, metric)
                    ),
                    number(report, "at_thresholds", "per_class", name, metric) if thresholded else text("n/a"),
                ]
            )
    return Table(["Metric", "Reference (published)", "Ours, argmax [95% CI]", "Ours, Youden threshold"], rows)


def _headline(report: dict) -> Table:
    rows = [
        [text(label), with_interval(report, (key,), ("confidence_intervals", key))]
        for key, label in (
            ("accuracy", "Accuracy"),
            ("balanced_accuracy", "Balanced accuracy"),
            ("macro_auc", "Macro ROC-AUC"),
        )
    ]
    rows += [
        [text(label), number(report, key)]
        for key, label in (
            ("macro_pr_auc", "Macro PR-AUC"),
            ("log_loss", "Log-loss"),
            ("ece", "Expected calibration error"),
        )
    ]
    return Table(["Metric", "Value [95% CI]"], rows)


def _per_class(report: dict) -> Table:
    rows = []
    for name in report["per_class"]:
        ci = ("confidence_intervals", "per_class", name)
        rows.append(
            [
                text(name),
                count(report, "per_class", name, "support"),
                with_interval(report, ("per_class", name, "auc"), (*ci, "auc")),
                number(report, "per_class", name, "pr_auc"),
                with_interval(report, ("per_class", name, "sensitivity"), (*ci, "sensitivity")),
                with_interval(report, ("per_class", name, "specificity"), (*ci, "specificity")),
                number(report, "per_class", name, "precision"),
                number(report, "per_class", name, "f1"),
                number(report, "at_thresholds", "thresholds", name),
                number(report, "at_thresholds", "per_class", name, "sensitivity"),
                number(report, "at_thresholds", "per_class", name, "specificity"),
            ]
        )
    header = ["Class", "n", "ROC-AUC", "PR-AUC", "Sensitivity", "Specificity", "Precision", "F1", "Threshold"]
    return Table(header + ["Sens. @thr", "Spec. @thr"], rows)


def _confusion(report: dict) -> Table:
    names = list(report["per_class"])
    rows = [
        [text(f"**{name}**"), *(count(report, "confusion_matrix", i, j) for j in range(len(names)))]
        for i, name in enumerate(names)
    ]
    return Table(["true \\ predicted", *names], rows)


def _threshold_line(report: dict, multi_label: bool) -> str:
    at = report.get("at_thresholds", {})
    if "chosen_on" not in at:
        return at.get("note", "No thresholds were given, so there are no operating points.")
    if multi_label:
        undefined = at.get("undefined", {})
        return (
            f"Per-finding thresholds maximise Youden's J on the {at['chosen_on']} split and are applied unchanged "
            "here; a finding is called when its probability is at least its threshold."
            + (
                f" No threshold for {', '.join(undefined)} (no positive or no negative validation images)."
                if undefined
                else ""
            )
        )
    return f"Per-class thresholds maximise Youden's J on the {at['chosen_on']} split and are applied unchanged here."


def _pointing_game(report: dict) -> list:
    game = report.get("explain", {}).get("pointing_game")
    if not game or not game["n"]:
        return ["No example of this split has a box, so there is no pointing game."]
    key = ("explain", "pointing_game")
    lines = [
        f"Share of boxed findings whose Grad-CAM maximum falls inside the box: **{game['hits']}/{game['n']} "
        f"= {game['hit_rate']:.3f}**; chance (mean share of the image a box covers) {game['chance']:.3f}. "
        f"Flat heatmaps (no maximum; counted as misses): {game['flat']}."
    ]
    rows = [
        [
            text(name),
            Cell(f"{g['hits']}/{g['n']}", ((*key, "per_class", name, "hits"), (*key, "per_class", name, "n"))),
            number(report, *key, "per_class", name, "hit_rate"),
            number(report, *key, "per_class", name, "chance"),
        ]
        for name, g in game["per_class"].items()
    ]
    return lines + [Table(["Class", "Hits", "Hit rate", "Chance"], rows)]


# ----------------------------------------------------------------------- sections of both tasks


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _subgroup_sections(report: dict) -> Section:
    audit = report.get("subgroups") or {}
    section = Section("Subgroup audit")
    if "attributes" not in audit:
        section.blocks.append(audit.get("note", "No subgroup audit."))
        return section
    section.blocks.append(
        "AUROC per class within each subgroup, with its 95% patient-bootstrap interval. **▼** marks a cell "
        "whose whole interval lies below the class's AUROC on the whole split (first column); a cell with "
        f"fewer than {audit['min_cell_class_count']} positives or negatives is too small to estimate "
        "and shows its counts (positives+/negatives−) instead of a number."
    )
    flagged = audit["flagged"]
    section.blocks.append(
        f"**{len(flagged)} flagged cell(s)**: "
        + "; ".join(f"{f['class']} in {f['attribute']} = {f['cell']}" for f in flagged)
        + "."
        if flagged
        else "No cell's interval lies wholly below the overall AUROC."
    )
    for attribute, cells in audit["attributes"].items():
        header = ["Class", "All images"] + [
            f"{cell} ({_plural(row['images'], 'image')}, {_plural(row['patients'], 'patient')})"
            for cell, row in cells.items()
        ]
        rows = []
        for name in audit["overall_auroc"]:
            row = [text(name), number(report, "subgroups", "overall_auroc", name)]
            for cell in cells:
                key = ("subgroups", "attributes", attribute, cell, "per_class", name)
                figures = _get(report, key)
                if "too_small" in figures:
                    row.append(
                        Cell(
                            f"too small ({figures['positives']}+/{figures['negatives']}−)",
                            ((*key, "positives"), (*key, "negatives")),
                        )
                    )
                    continue
                value = with_interval(report, (*key, "auroc"), (*key, "ci"))
                row.append(Cell(("▼ " if figures.get("below_overall") else "") + value.text, value.keys))
            rows.append(row)
        section.blocks += [f"**{subgroups.ATTRIBUTE_TITLES[attribute]}**", Table(header, rows)]
    return section


def _operating_point_section(report: dict) -> Section:
    section = Section("Operating points")
    points = report.get("operating_points")
    if not points:
        section.blocks.append("No operating points.")
        return section
    section.blocks.append(
        f"Each rule picks one threshold per class on the {points['chosen_on']} split, applied unchanged here; "
        "a class is called when its probability is at least its threshold. A contract is **met** when the "
        "target metric's whole 95% interval on this split is at or above the target, **missed** when it lies "
        "wholly below, **uncertain** when it straddles the target. The 'On validation' column gives the target "
        "metric reached on validation at the chosen threshold (Youden's J for youden)."
    )
    metric_of = {rule: operating_points.parse(rule).metric for rule in points["rules"]}
    for rule in points["rules"]:
        rows = []
        for name, row in points["per_rule"][rule].items():
            key = ("operating_points", "per_rule", rule, name)
            if row["threshold"] is None:
                rows.append([text(name), text("none"), *[text("—")] * 5, text(f"{row['contract']}: {row['reason']}")])
                continue
            validation = row["validation"]
            rows.append(
                [
                    text(name),
                    number(report, *key, "threshold"),
                    number(report, *key, "validation", metric_of[rule])
                    if metric_of[rule]
                    else text(f"J {validation['sensitivity'] + validation['specificity'] - 1:.3f}"),
                    *(
                        with_interval(report, (*key, "test", metric, "value"), (*key, "test", metric, "ci"))
                        for metric in ("sensitivity", "specificity", "ppv", "npv")
                    ),
                    text(row.get("contract", "—")),
                ]
            )
        header = ["Class", "Threshold", "On validation", "Sensitivity", "Specificity", "PPV", "NPV", "Contract"]
        section.blocks += [f"**{rule}**", Table(header, rows)]
    return section


def _calibration_section(report: dict, per_finding: bool) -> Section:
    section = Section("Calibration")
    cal = report.get("calibration")
    if not cal:
        return section
    temperatures = ", ".join(f"{name} {t:.3f}" for name, t in cal["temperatures"].items())
    notes = [f"{name}: {why}" for name, why in cal["not_fitted"].items()]
    notes += [f"{name}: at the bound of the search range" for name in cal["at_bound"]]
    section.blocks.append(
        f"{cal['method'].capitalize()}, {cal['scope']}. Temperatures: {temperatures}."
        + (f" Left at 1 or bounded: {'; '.join(notes)}." if notes else "")
        + f" ECE over {cal['ece_bins']} equal-width bins; the change is after minus before, with a paired interval."
        " ECE sums absolute gaps, so the noise of resampling only adds to it: its interval can lie above its value;"
        " the change's interval is the one to read."
    )
    rows = [
        [
            text(f"{'Mean ' if per_finding else ''}{label}"),
            *(
                with_interval(report, ("calibration", f"{when}_{key}", "value"), ("calibration", f"{when}_{key}", "ci"))
                for when in ("before", "after", "change")
            ),
        ]
        for key, label in (("log_loss", "log-loss"), ("ece", "ECE"))
    ]
    section.blocks.append(Table(["", "Before", "After", "Change"], rows))
    if per_finding:
        rows = []
        for name in cal["per_finding"]:
            key = ("calibration", "per_finding", name)
            rows.append(
                [
                    text(name),
                    number(report, "calibration", "temperatures", name),
                    *(
                        with_interval(report, (*key, f"{when}_{metric}", "value"), (*key, f"{when}_{metric}", "ci"))
                        for metric in ("log_loss", "ece")
                        for when in ("before", "after")
                    ),
                ]
            )
        header = ["Finding", "Temperature", "Log-loss before", "Log-loss after", "ECE before", "ECE after"]
        section.blocks.append(Table(header, rows))
    return section


def _comparison_section(report: dict) -> Section | None:
    comparison = report.get("comparison")
    if not comparison:
        return None
    section = Section("Comparison with another run")
    section.blocks.append(
        f"Run a: `{comparison['run_a']}`; run b: `{comparison['run_b']}`; both on the same "
        f"{comparison['n_images']} images of {comparison['n_patients']} patients. The difference is a - b with a "
        f"paired 95% patient-bootstrap interval; p is DeLong's test. {comparison['delong_note']}"
        + (f" Source pixels {comparison['source_pixels']}." if "source_pixels" in comparison else "")
    )
    rows = []
    for name in comparison["per_class"]:
        key = ("comparison", "per_class", name)
        rows.append(
            [
                text(name),
                number(report, *key, "auroc_a"),
                number(report, *key, "auroc_b"),
                with_interval(report, (*key, "difference"), (*key, "difference_ci")),
                number(report, *key, "p_value"),
            ]
        )
    rows.append(
        [
            text(f"**Mean** ({len(comparison['mean_over'])} classes)"),
            number(report, "comparison", "mean_auroc_a"),
            number(report, "comparison", "mean_auroc_b"),
            with_interval(report, ("comparison", "mean_difference"), ("comparison", "mean_difference_ci")),
            text(""),
        ]
    )
    section.blocks.append(Table(["Class", "AUROC a", "AUROC b", "Difference [95% CI]", "DeLong p"], rows))
    if "mcnemar" in comparison:
        m = comparison["mcnemar"]
        section.blocks.append(
            f"McNemar's test on the argmax decisions ({m['method']}): only a right on {m['only_a_correct']} images, "
            f"only b right on {m['only_b_correct']}, p = {m['p_value']:.3f}."
        )
    return section


def _identity_section(report: dict) -> Section:
    section = Section("Run identity")
    section.blocks.append(
        f"Checkpoint step {report['checkpoint_step']}; dataset `{report['dataset']}`, fingerprint "
        f"`{report.get('dataset_fingerprint', 'n/a')}`; split scheme `{report.get('split_scheme')}`; "
        f"test-time crops {report.get('tta_crops')}. The config the checkpoint was trained with:"
    )
    if "config" in report:
        section.blocks.append(Code(json.dumps(report["config"], indent=2, sort_keys=True)))
    return section


def _place_figures(sections: list[Section], figures: Sequence[str]) -> None:
    """Each figure into its section (FIGURE_SECTIONS), the rest into a last "Figures" section."""
    by_title = {section.title: section for section in sections}
    rest = Section("Figures")
    for name in figures:
        by_title.get(FIGURE_SECTIONS.get(name), rest).figures.append(name)
    if rest.figures:
        sections.insert(-1, rest)  # before the run identity


def _depth_sections(report: dict, per_finding: bool) -> list[Section]:
    sections = [
        _subgroup_sections(report),
        _operating_point_section(report),
        _calibration_section(report, per_finding),
    ]
    comparison = _comparison_section(report)
    return sections + ([comparison] if comparison else [])


def six_class_document(report: dict, figures: Sequence[str] = ()) -> Document:
    sections = [
        Section(
            "Side by side with the reference",
            [_comparison(report), "The reference split per image (patients leak across splits) and decided by argmax."],
        ),
        Section("Headline metrics", [_headline(report), _ci_line(report)]),
        Section(
            "Per class",
            [
                "One-vs-rest; sensitivity to F1 at the argmax decision. " + _threshold_line(report, False),
                _per_class(report),
            ],
        ),
        Section("Confusion matrix", [_confusion(report)]),
        *_depth_sections(report, per_finding=False),
        Section("Explanations: pointing game", _pointing_game(report)),
        _identity_section(report),
    ]
    _place_figures(sections, figures)
    return Document(
        title=f"Evaluation: {report['split']} split, checkpoint step {report['checkpoint_step']}",
        intro=[
            f"Dataset `{report['dataset']}`: {report['n_images']} images of {report['n_patients']} patients; "
            f"test-time crops: {report['tta_crops']}.",
            _split_line(report),
        ],
        sections=sections,
        figure_titles=FIGURE_TITLES,
    )


# -------------------------------------------------------------------------------- 14-finding sections


def _published_columns(report: dict) -> list[dict]:
    return list((report.get("published") or {}).values())


def _per_finding(report: dict) -> Table:
    """Our figures per finding, then each published AUROC; a last row holds the means."""
    published = _published_columns(report)
    rows = []
    for name in report["per_finding"]:
        ci = ("confidence_intervals", "per_finding", name)
        rows.append(
            [
                text(name),
                count(report, "per_finding", name, "support"),
                with_interval(report, ("per_finding", name, "auroc"), (*ci, "auroc")),
                with_interval(report, ("per_finding", name, "pr_auc"), (*ci, "pr_auc")),
                number(report, "per_finding", name, "ece"),
                number(report, "at_thresholds", "thresholds", name),
                number(report, "at_thresholds", "per_finding", name, "sensitivity"),
                number(report, "at_thresholds", "per_finding", name, "specificity"),
                number(report, "at_thresholds", "per_finding", name, "f1"),
                *(text(_number(table["auroc"].get(name))) for table in published),
            ]
        )
    rows.append(
        [
            text(f"**Mean** ({len(report['means_over'])} findings)"),
            text(""),
            with_interval(report, ("mean_auroc",), ("confidence_intervals", "mean_auroc")),
            with_interval(report, ("mean_pr_auc",), ("confidence_intervals", "mean_pr_auc")),
            *[text("")] * 5,
            *(text(_number(table["mean_auroc"])) for table in published),
        ]
    )
    header = ["Finding", "n+", "AUROC [95% CI]", "PR-AUC [95% CI]", "ECE", "Threshold", "Sens.", "Spec.", "F1"]
    return Table(header + [table["column"] for table in published], rows)


def _published_sources(report: dict) -> list[str]:
    """Each published column's citation, model and split: a reader must see which test set it scored."""
    lines = [
        f"- **{table['column']}**: {table['citation']}. arXiv:{table['arxiv']}, {table['table']}. "
        f"Model: {table['model']}. Split: {table['split']}."
        for table in _published_columns(report)
    ]
    if lines:
        lines = [
            "\n".join(lines),
            "Only a column measured on NIH's official split can be compared with ours, and only when our test "
            "split is NIH's official test list; CheXNet's own split is not public, so its figures are context, "
            "not a head-to-head. A published mean is over that table's own findings.",
        ]
    return lines


def _expert_labels(report: dict) -> Section | None:
    """Optional: AUROC against NIH's text-mined labels and against expert labels on the same images.

    Expected shape: ``{finding: {"images": n, "auroc_nih_labels": x, "auroc_expert_labels": y,
    "agreement": z}}`` with ``agreement`` the share of those images where the two labels agree.
    """
    expert = report.get("expert_labels")
    if not expert:
        return None
    rows = [
        [
            text(name),
            count(report, "expert_labels", name, "images"),
            number(report, "expert_labels", name, "auroc_nih_labels"),
            number(report, "expert_labels", name, "auroc_expert_labels"),
            number(report, "expert_labels", name, "agreement"),
        ]
        for name in expert
    ]
    header = ["Finding", "Images", "AUROC (NIH labels)", "AUROC (expert labels)", "Label agreement"]
    return Section("NIH labels against expert labels", [Table(header, rows)])


def multilabel_document(report: dict, figures: Sequence[str] = ()) -> Document:
    split_line = _split_line(report) if "patient_disjoint" in report else f"Split scheme: `{report['split_scheme']}`."
    mean_auroc = with_interval(report, ("mean_auroc",), ("confidence_intervals", "mean_auroc")).text
    mean_pr_auc = with_interval(report, ("mean_pr_auc",), ("confidence_intervals", "mean_pr_auc")).text
    intro = [
        f"Dataset `{report['dataset']}`: {report['n_images']} images of {report['n_patients']} patients.",
        split_line,
        f"**Mean AUROC {mean_auroc}** over {len(report['means_over'])} findings; mean PR-AUC {mean_pr_auc}. "
        + _ci_line(report),
    ]
    if "external" in report:
        external = report["external"]
        intro.insert(0, f"**{external['statement'][0].upper()}{external['statement'][1:]}.**")
        intro.append(f"Thresholds and temperatures: fitted on {external['decisions_fitted_on']}.")
        if external["left_out"]:
            intro.append(
                "Left out: " + "; ".join(f"{row['label']} ({row['reason']})" for row in external["left_out"]) + "."
            )
    undefined = [name for name, row in report["per_finding"].items() if "note" in row]
    if undefined:
        intro.append(
            "Undefined on this split: "
            + "; ".join(f"{name} ({report['per_finding'][name]['note']})" for name in undefined)
            + "."
        )
    sections = [
        Section(
            "Per finding",
            [
                f"n+ is the number of positive images. ECE: equal-width, {report['ece_bins']}-bin expected calibration "
                "error of each finding's probability against its own label. " + _threshold_line(report, True),
                _per_finding(report),
                *_published_sources(report),
            ],
        )
    ]
    expert = _expert_labels(report)
    sections += [expert] if expert else []
    sections += _depth_sections(report, per_finding=True)
    if "explain" in report:
        sections.append(Section("Explanations: pointing game", _pointing_game(report)))
    sections.append(_identity_section(report))
    _place_figures(sections, figures)
    return Document(
        title=(
            f"Evaluation: {report['split']} split, checkpoint step {report['checkpoint_step']} "
            f"({len(report['per_finding'])} findings, multi-label)"
        ),
        intro=intro,
        sections=sections,
        figure_titles=MULTILABEL_FIGURE_TITLES,
    )
