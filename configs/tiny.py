"""Tiny: seconds-long runs for the tests (phantom, a very narrow ResNet18 at 32 pixels).

python -m lungjax.main --config configs/tiny.py --workdir /tmp/lungjax-tiny
"""

from lungjax.config.base import base_config


def get_config():
    config = base_config()
    config.data.source = "phantom"
    config.data.phantom_patients = 40
    config.data.stored_size = 32
    config.data.build_workers = 1
    config.image_size = 32
    config.model.name = "resnet18"
    config.model.width = 0.125
    config.batch_size = 8
    config.num_train_steps = 6
    config.learning_rate = 1e-3
    config.checkpoint_every_steps = 3
    config.log_every_steps = 2
    config.eval.batch_size = 16
    config.eval.n_bootstrap = 50
    return config
