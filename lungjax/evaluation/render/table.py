"""The plain-text metrics table that the command line prints after an evaluation."""

from __future__ import annotations


def multi_label_table(report: dict) -> str:
    """The 14 findings' metrics table for the console."""
    lines = [f"{'finding':<20}{'AUROC':>7}{'PR-AUC':>8}{'n':>7}"]
    for name, row in report["per_finding"].items():
        auroc = "  n/a" if row["auroc"] is None else f"{row['auroc']:.3f}"
        pr_auc = "   n/a" if row["pr_auc"] is None else f"{row['pr_auc']:.3f}"
        lines.append(f"{name:<20}{auroc:>7}{pr_auc:>8}{row['support']:>7d}")
    mean = "n/a" if report["mean_auroc"] is None else f"{report['mean_auroc']:.3f}"
    lines.append(f"mean AUROC {mean}   images {report['n_images']}   checkpoint step {report['checkpoint_step']}")
    return "\n".join(lines + comparison_lines(report))


def single_label_table(report: dict) -> str:
    """The six-class metrics table for the console."""
    lines = [f"{'class':<14}{'AUC':>7}{'sens':>7}{'spec':>7}{'n':>7}"]
    for name, row in report["per_class"].items():
        auc = "  n/a" if row["auc"] is None else f"{row['auc']:.3f}"
        lines.append(f"{name:<14}{auc:>7}{row['sensitivity']:>7.3f}{row['specificity']:>7.3f}{row['support']:>7d}")
    lines.append(
        f"accuracy {report['accuracy']:.3f}   macro ROC-AUC {report['macro_auc']:.3f}   "
        f"images {report['n_images']}   checkpoint step {report['checkpoint_step']}"
    )
    return "\n".join(lines + comparison_lines(report))


def comparison_lines(report: dict) -> list[str]:
    comparison = report.get("comparison")
    if not comparison or comparison["mean_difference"] is None:
        return []
    ci = comparison["mean_difference_ci"] or {}
    interval = f" [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci.get("low") is not None else ""
    return [
        f"vs {comparison['run_b']}: mean AUROC {comparison['mean_auroc_a']:.3f} vs {comparison['mean_auroc_b']:.3f}, "
        f"difference {comparison['mean_difference']:+.3f}{interval} (95% paired patient bootstrap)"
    ]
