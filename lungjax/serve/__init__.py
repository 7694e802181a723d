"""``python -m lungjax.serve --export <workdir>/export/<step> --images a.dcm b.png dir/ --out preds/``.

The standalone predictor of an exported bundle (:mod:`lungjax.export`): it needs JAX, NumPy, OpenCV
(pydicom for DICOM files) and five small lungjax modules, the file reader
(:mod:`lungjax.data.radiograph_files`), the temperature formula (:mod:`lungjax.evaluation.fit.temperature`),
the decision rule (:mod:`lungjax.evaluation.fit.decisions`), the out-of-distribution score
(:mod:`lungjax.evaluation.fit.ood`) and the XLA CPU defaults (:mod:`lungjax.xla_cpu`),
and none of the training stack (Flax,
Optax, Orbax, grain, TFDS), so a serving machine installs little and runs the very numbers that were
exported. The bundle is trusted whole or refused before the first image (:mod:`lungjax.serve.bundle`).

Per image, in the order given (folders walked in name order): one row of ``predictions.csv`` and
one record of ``predictions.jsonl`` with the probabilities, the calibrated probabilities, the
classes called at each operating point, the out-of-distribution score (how far the film's features lie
from the training films'; above the manifest's threshold a warning says the film is unlike them, also
printed as one line) and every input warning; a file that cannot be read gets
its error instead and the run goes on (a FIFO, a dangling or looping link among them: see
:mod:`lungjax.serve.files`). Both files are written aside and renamed over the previous ones when the
run completes. Exit status: 0 when every image was classified, 1 when some could not be read, 2 for
a bad command line (an ``--out`` that is a file, an unknown ``LUNGJAX_XLA_CPU_DEFAULTS``) or a bundle
that is refused.
"""
