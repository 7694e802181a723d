"""The external report (``sections.cross_dataset``'s JSON) for a reader: ``external/report.{json,md,html}``
through the evaluation's document model, a heatmap per label and one summary plot of the gaps.

Every number cell names its report.json path (``document.Cell.keys``), so the page is checked against
the JSON number by number, as ``report.html`` is.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import MappingProxyType

from lungjax.evaluation.render import document, html, markdown, plots
from lungjax.evaluation.render.document import Cell, Section, Table, count, number, text, with_interval

REPORT_NAME = "report"
SUMMARY_FIGURE = "gap_summary.png"
METRICS = ("sensitivity", "specificity", "ppv", "npv")


def heatmap_name(label: str) -> str:
    """The PNG of one label's heatmap: its name made safe for a file name."""
    return "heatmap_" + re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + ".png"


def _matrix_table(report: dict, label: str) -> Table:
    entry = report["per_label"][label]
    sources = report["test_sources"]
    references = report["references"]
    xrv = references["torchxrayvision"]["auroc"]
    rows = []
    for run in report["runs"]:
        row = [text(run)]
        for source in sources:
            cell = entry["matrix"].get(run, {}).get(source)
            if cell is None:
                row.append(text("left out"))
                continue
            key = ("per_label", label, "matrix", run, source)
            shown = with_interval(report, (*key, "auroc"), (*key, "ci"))
            row.append(Cell(shown.text + (" (internal)" if cell["internal"] else ""), shown.keys))
        row.append(
            with_interval(
                report, ("per_label", label, "internal", run, "auroc"), ("per_label", label, "internal", run, "ci")
            )
        )
        rows.append(row)
    prevalence = [text("**Prevalence** (stated films)")]
    for source in sources:
        key = ("per_label", label, "prevalence", source)
        if source in entry["prevalence"]:
            value, counts = number(report, *key, "value"), entry["prevalence"][source]
            prevalence.append(
                Cell(
                    f"{value.text} ({counts['n_positive']}/{counts['n_stated']})",
                    (*value.keys, (*key, "n_positive"), (*key, "n_stated")),
                )
            )
        else:
            prevalence.append(text("—"))
    rows.append([*prevalence, text("")])
    reference = [text("**torchxrayvision** (published)")]
    for source in sources:
        value = xrv.get(source, {}).get(label)
        reference.append(
            number(report, "references", "torchxrayvision", "auroc", source, label)
            if value is not None
            else text("unknown")
        )
    rows.append([*reference, text("")])
    header = ["Trained run \\ tested on", *sources, "Internal (own test split)"]
    return Table(header, rows)


def _gap_table(report: dict, label: str) -> Table | None:
    gaps = report["per_label"][label]["gap"]
    rows = [
        [
            text(run),
            text(source),
            with_interval(
                report,
                ("per_label", label, "gap", run, source, "value"),
                ("per_label", label, "gap", run, source, "ci"),
            ),
        ]
        for run, per_source in gaps.items()
        for source in per_source
    ]
    return Table(["Run", "External source", "Gap, external - internal [95% CI]"], rows) if rows else None


def _matrix_sections(report: dict) -> list[Section]:
    sections = []
    cohen = report["references"]["cohen2020"]["auroc"]
    for label in report["labels"]:
        section = Section(f"{label}")
        value = cohen.get(label)
        section.blocks.append(
            "Cohen et al. 2020, mean cross-dataset AUROC: "
            + (f"{value:.2f}." if value is not None else "unknown (not among the recorded labels).")
        )
        section.blocks.append(_matrix_table(report, label))
        gap = _gap_table(report, label)
        if gap:
            section.blocks.append(gap)
        section.figures.append(heatmap_name(label))
        sections.append(section)
    return sections


def _transfer_section(report: dict) -> Section:
    section = Section("Transfer of operating points and calibration")
    section.blocks.append(
        "Thresholds and temperatures chosen on each run's own validation split, applied unchanged to the external "
        "test split (stated films only). A contract is **met** when the target metric's whole 95% interval is at or "
        "above the target, **missed** when wholly below, **uncertain** when it straddles it."
    )
    if not report["transfer"]:
        section.blocks.append("No external pair was scored, so nothing transferred.")
    for run, per_source in report["transfer"].items():
        for source, transfer in per_source.items():
            base = ("transfer", run, source)
            if "note" in transfer:
                section.blocks.append(f"**{run} -> {source}**: {transfer['note']}.")
                continue
            for rule in transfer["rules"]:
                rows = []
                for label, row in transfer["operating_points"][rule].items():
                    key = (*base, "operating_points", rule, label)
                    if row["threshold"] is None:
                        rows.append(
                            [text(label), text("none"), *[text("—")] * 4, text(f"{row['contract']}: {row['reason']}")]
                        )
                        continue
                    rows.append(
                        [
                            text(label),
                            number(report, *key, "threshold"),
                            *(
                                with_interval(report, (*key, "test", m, "value"), (*key, "test", m, "ci"))
                                for m in METRICS
                            ),
                            text(row.get("contract", "—")),
                        ]
                    )
                header = ["Label", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV", "Contract"]
                section.blocks += [f"**{run} -> {source}, {rule}**", Table(header, rows)]
            cal = (*base, "calibration")
            rows = [
                [
                    text(label),
                    number(report, *cal, "temperatures", label),
                    *(
                        with_interval(
                            report,
                            (*cal, "per_finding", label, f"{when}_ece", "value"),
                            (*cal, "per_finding", label, f"{when}_ece", "ci"),
                        )
                        for when in ("before", "after")
                    ),
                ]
                for label in transfer["calibration"]["per_finding"]
            ]
            rows.append(
                [
                    text("**Mean**"),
                    text(""),
                    *(
                        with_interval(report, (*cal, f"{when}_ece", "value"), (*cal, f"{when}_ece", "ci"))
                        for when in ("before", "after")
                    ),
                ]
            )
            section.blocks += [
                f"**{run} -> {source}, calibration** (ECE over {transfer['calibration']['ece_bins']} bins)",
                Table(["Label", "Temperature", "ECE before", "ECE after"], rows),
            ]
    return section


def _shortcut_section(report: dict) -> Section | None:
    probes = report.get("shortcut")
    if not probes:
        return None
    section = Section("Shortcut check")
    rows = []
    for name, probe in probes.items():
        rows.append(
            [
                text(name),
                text(", ".join(probe["sources"])),
                count(report, "shortcut", name, "n_films"),
                count(report, "shortcut", name, "n_patients"),
                with_interval(report, ("shortcut", name, "auroc"), ("shortcut", name, "ci")),
                text("separable" if probe["separable"] else "not separable"),
            ]
        )
    section.blocks.append(
        "Can a linear probe tell the sources apart? "
        + next(iter(probes.values()))["method"]
        + f". Separable means AUROC >= {next(iter(probes.values()))['separable_at']} (Zech et al. 2018: "
        "a CNN told hospitals apart almost perfectly)."
    )
    section.blocks.append(Table(["Read from", "Sources", "Films", "Patients", "AUROC [95% CI]", "Verdict"], rows))
    section.blocks += [f"**{probe['warning']}**" for probe in probes.values() if probe["warning"]]
    return section


def _ood_section(report: dict) -> Section | None:
    ood = report.get("out_of_distribution")
    if not ood:
        return None
    section = Section("Unlike the training films")
    section.blocks.append(
        "Share of each source's films whose Mahalanobis distance to the run's training features exceeds the "
        "threshold chosen on its validation split (its false-alarm rate there), with an exact binomial interval."
    )
    rows = []
    for run, record in ood.items():
        for source in record["per_source"]:
            key = ("out_of_distribution", run, "per_source", source)
            rows.append(
                [
                    text(run),
                    text(source),
                    number(report, "out_of_distribution", run, "false_alarm_rate"),
                    count(report, *key, "n_films"),
                    with_interval(report, (*key, "share_unlike"), (*key, "ci")),
                    number(report, *key, "median_distance"),
                ]
            )
    section.blocks.append(Table(["Run", "Source", "Chosen rate", "Films", "Flagged [95% CI]", "Median distance"], rows))
    return section


def _left_out_section(report: dict) -> Section:
    section = Section("Labels left out")
    if not report["left_out"]:
        section.blocks.append("None: every pair shares every label of its run.")
        return section
    rows = [
        [text(row["run"]), text(row["source"]), text(row["label"]), text(row["reason"])] for row in report["left_out"]
    ]
    section.blocks.append(Table(["Run", "Source", "Label", "Why"], rows))
    return section


def _references_section(report: dict) -> Section:
    references = report["references"]
    cohen, xrv = references["cohen2020"], references["torchxrayvision"]
    return Section(
        "References",
        [
            f"- **Cohen et al. 2020**: {cohen['citation']}. {cohen['what']}; {cohen['provenance']}.\n"
            f"- **torchxrayvision**: {xrv['citation']}. Model {xrv['model']}: {xrv['what']}.",
            "A label a reference does not give is shown as unknown; nothing is filled in.",
        ],
    )


def external_document(report: dict, figures=()) -> document.Document:
    """The external report as a document: statements, one section per label, then the rest."""
    bootstrap = report["bootstrap"]
    sections = [
        *_matrix_sections(report),
        Section(
            "Generalisation gap, all pairs",
            [bootstrap["gap"] + "."],
            [SUMMARY_FIGURE] if SUMMARY_FIGURE in figures else [],
        ),
        _transfer_section(report),
        *(s for s in (_shortcut_section(report), _ood_section(report)) if s),
        _left_out_section(report),
        _references_section(report),
    ]
    for section in sections:
        section.figures = [name for name in section.figures if name in figures]
    return document.Document(
        title="External validation: "
        + ", ".join(f"{run} ({' + '.join(r['trained_on'])})" for run, r in report["runs"].items()),
        intro=[
            "\n".join(f"- {line}" for line in report["statements"]),
            f"AUROC over the films that state each label; intervals: {bootstrap['level']:.0%} {bootstrap['method']}, "
            f"{bootstrap['n_bootstrap']} replicates.",
        ],
        sections=sections,
        figure_titles=MappingProxyType(
            {
                SUMMARY_FIGURE: "Generalisation gaps",
                **{heatmap_name(label): f"{label}: train x test AUROC" for label in report["labels"]},
            }
        ),
    )


def write_external_report(out_dir: str | os.PathLike, report: dict) -> Path:
    """``out_dir/report.{json,md,html}`` and the figures; returns the HTML's path. The JSON is written last,
    by rename, so a reader never sees a report without its page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for label in report["labels"]:
        plots.plot_cross_dataset_heatmap(report, label, out / heatmap_name(label))
        figures.append(heatmap_name(label))
    plots.plot_cross_dataset_summary(report, out / SUMMARY_FIGURE)
    figures.append(SUMMARY_FIGURE)
    doc = external_document(report, figures)
    (out / f"{REPORT_NAME}.md").write_text(markdown.to_markdown(doc))
    page = out / f"{REPORT_NAME}.html"
    page.write_text(html.render(doc, out))
    partial = out / f"{REPORT_NAME}.json.partial"
    partial.write_text(json.dumps(report, indent=2))
    partial.replace(out / f"{REPORT_NAME}.json")
    return page
