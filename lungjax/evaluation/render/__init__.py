"""The report for a reader: plots, Grad-CAM figures, the document model, Markdown, HTML and the console
table, from ``report.json`` and arrays; no JAX."""
