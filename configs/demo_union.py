"""Two sources in one model: CheXpert and PadChest, each a phantom tree in its real format (CheXpert's
JPEGs and 1 / 0 / -1 / blank CSV, PadChest's 16-bit PNGs and label lists), trained on the seven findings
NIH, CheXpert and PadChest share, with CheXpert's uncertain entries as Irvin et al.'s best policy per
finding; builds, trains and evaluates on 2 CPU cores in a few minutes.

python -m lungjax.main --config configs/demo_union.py --workdir runs/union
"""

from lungjax.config.base import base_config


def get_config():
    config = base_config()
    config.data.source = "chexpert"
    config.data.sources = (("chexpert", 1.0, "phantom"), ("padchest", 1.0, "phantom"))
    config.data.phantom_patients = 900
    config.data.stored_size = 64
    config.data.labels = ("shared7",)
    config.data.uncertainty = "irvin2019"
    config.image_size = 64
    config.model.name = "resnet18"
    config.model.width = 0.25
    config.batch_size = 32
    config.num_epochs = 6
    config.learning_rate = 3e-3
    config.class_weights = "none"
    config.checkpoint_every_steps = 300
    config.log_every_steps = 20
    config.eval.cam_stage = 3  # a 64 px input ends in a 2x2 map; stage 3 gives 4x4
    config.eval.n_bootstrap = 200
    return config
