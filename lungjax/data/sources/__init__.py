"""Chest radiograph sources beyond NIH, each read into one table in one label space.

* :mod:`.contract`: the table every source produces (columns, the four label states, one validation);
* :mod:`.labelspace`: the harmonised vocabulary, each source's mapping into it, the named label sets,
  and the label matrix and mask a model trains on;
* :mod:`.splits`: patient-disjoint splits, official ones kept;
* one adapter per source, the only place that knows its file names, columns and conventions:
  :mod:`.chexpert`, :mod:`.mimic`, :mod:`.padchest`, :mod:`.vindr`, :mod:`.chestxray14` (NIH) and
  :mod:`.hospital` (a hospital's own CSV export).

Every adapter offers ``read(manual_dir, ...)`` (the source's files as downloaded) and ``table(...)``
(the same from frames already read, so the real metadata shipped without images can be checked).
"""
