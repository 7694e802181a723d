"""The report's document model (:mod:`lungjax.evaluation.render.document`) as Markdown: ``report.md``."""

from __future__ import annotations

from lungjax.evaluation.render import document


def _markdown_table(table: document.Table) -> list[str]:
    return [
        "| " + " | ".join(table.header) + " |",
        "|" + "---|" * len(table.header),
        *("| " + " | ".join(cell.text for cell in row) + " |" for row in table.rows),
    ]


def to_markdown(doc: document.Document) -> str:
    lines = [f"# {doc.title}", ""]
    for paragraph in doc.intro:
        lines += [paragraph, ""]
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, document.Table):
                lines += [*_markdown_table(block), ""]
            elif isinstance(block, document.Code):
                lines += ["```json", block.text, "```", ""]
            else:
                lines += [block, ""]
        lines += [f"- [{doc.figure_titles.get(name, name)}]({name})" for name in section.figures]
        if section.figures:
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
