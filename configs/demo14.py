"""Demo, 14 findings: a small ResNet on the embedded phantom's 14-finding films (NIH's co-occurrence of
findings, several per film); trains and evaluates on 2 CPU cores.

python -m lungjax.main --config configs/demo14.py --workdir runs/d14
"""

from lungjax.config.base import base_config


def get_config():
    config = base_config()
    config.data.source = "phantom"
    config.data.task = "full14"
    config.data.phantom_patients = 2000
    config.data.stored_size = 64
    config.image_size = 64
    config.augment = "light"
    config.model.name = "resnet18"
    config.model.width = 0.25
    config.batch_size = 32
    config.num_epochs = 10
    config.learning_rate = 3e-3
    config.warmup_epochs = 1.0
    # Unweighted: NIH's rarest findings (Hernia 0.2%) would get positive weights of several hundred.
    config.class_weights = "none"
    config.checkpoint_every_steps = 300
    config.log_every_steps = 20
    config.eval.cam_stage = 3  # a 64 px input ends in a 2x2 map; stage 3 gives 4x4
    return config
