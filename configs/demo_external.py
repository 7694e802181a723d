"""External validation on the phantom's three hospitals: train on site A, on sites A + B, then score both
runs on the test splits of A, B and C (C never trained on); about 5 minutes on 2 CPU cores in all.

python -m lungjax.main --config configs/demo_external.py:A --workdir runs/external/A
python -m lungjax.main --config configs/demo_external.py:AB --workdir runs/external/AB
python -m lungjax.main --config configs/demo_external.py:matrix --workdir runs/external --mode external

Each site is a hospital export (``data.source="hospital"``) written by the phantom in that site's look
(``lungjax.data.phantom.sites``: exposure, noise, resolution, shutters, markers, portable films, label
prevalence, a labeller who misses nodules at C). The matrix, the transfer of the thresholds and
temperatures, and the shortcut probe land in runs/external/external/report.html.
"""

from lungjax.config.base import base_config

RUNS = "runs/external"  # where the two training commands above put their workdirs
SITES = ("A", "B", "C")


def get_config(arg: str = "A"):
    config = base_config()
    # Every site's data under one folder: a site is rendered and built once, by whichever command reads
    # it first (runs/external/tfds/hospital-A, -B, -C; the matrix's own test builds go to <workdir>/tfds).
    config.data.data_dir = f"{RUNS}/tfds"
    config.data.source = "hospital"
    config.data.sources = (("hospital", 1.0, "phantom:A"),)
    config.data.phantom_patients = 1000
    config.data.stored_size = 64
    config.data.labels = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Pneumothorax")
    config.image_size = 64
    # No intensity or geometric augmentation: a model that only ever sees one hospital's look, as a model
    # trained at one site does; the external drop is then that of the look and the labels, not hidden by it.
    config.augment = "none"
    config.model.name = "resnet18"
    config.model.width = 0.25
    config.batch_size = 32
    config.num_epochs = 10
    config.learning_rate = 3e-3
    config.class_weights = "none"
    config.checkpoint_every_steps = 300
    config.log_every_steps = 20
    config.eval.cam_stage = 3  # a 64 px input ends in a 2x2 map; stage 3 gives 4x4
    config.eval.n_bootstrap = 200
    if arg == "AB":
        config.data.sources = (("hospital", 1.0, "phantom:A"), ("hospital", 1.0, "phantom:B"))
        config.num_epochs = 5  # as many steps as site A's run: twice the films
    elif arg == "matrix":
        config.external.runs = (f"{RUNS}/A", f"{RUNS}/AB")
        config.external.tests = tuple(("hospital", f"phantom:{site}") for site in SITES)
    elif arg != "A":
        raise ValueError(f"configs/demo_external.py takes A, AB or matrix, got {arg!r}")
    return config
