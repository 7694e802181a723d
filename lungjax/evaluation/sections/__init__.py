"""The sections of ``report.json``, each computed from predictions; ``schema`` says which and in what order."""
