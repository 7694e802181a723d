"""NIH six-class subset, patient-disjoint split, ResNet50 at 224 (bfloat16 on the GPU).

    python -m lungjax.main --config configs/default.py --workdir runs/nih \
        --config.data.manual_dir=/path/to/NIH
"""

from lungjax.config import base_config


def get_config():
    config = base_config()
    config.data.source = "nih"
    config.data.stored_size = 256
    config.image_size = 224
    config.augment = "light"
    config.model.name = "resnet50"
    config.model.dropout_rate = 0.2
    config.batch_size = 128
    config.num_epochs = 30
    config.learning_rate = 1e-3
    config.label_smoothing = 0.1
    config.half_precision = True
    config.worker_count = 6
    config.eval.checkpoint = "best"
    return config
