"""NIH ChestX-ray14's benchmark with lungjax's own recipe: all 112,120 images, the 14 findings as a
multi-label problem, NIH's official patient-disjoint split, ResNet50 at 224 in bfloat16.

    python -m lungjax.main --config configs/full14.py --workdir runs/full14 \
        --config.data.manual_dir=/path/to/NIH \
        --config.model.init_from=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

``manual_dir`` must hold ``train_val_list.txt`` and ``test_list.txt`` beside ``Data_Entry_2017.csv``
for the official split (without them the build makes a stratified patient split and says so).
Validation is 10% of the train_val patients (``metadata.OFFICIAL_VALIDATION_SHARE``); the best
checkpoint is the one with the best validation mean AUROC. The report puts Wang et al.'s and
CheXNet's published AUROCs beside ours. Not yet run on the real images: no NIH pixels were
reachable where it was written.
"""

from lungjax.config.base import base_config


def get_config():
    config = base_config()
    config.data.source = "nih"
    config.data.task = "full14"
    config.data.stored_size = 256
    config.image_size = 224
    config.augment = "light"
    config.model.name = "resnet50"
    config.model.stride_in_1x1 = True  # Keras' ResNet50 layout, so its ImageNet weights load
    config.model.freeze_backbone_steps = 500
    config.batch_size = 256
    config.num_epochs = 20
    config.learning_rate = 1e-3
    config.warmup_epochs = 1.0
    config.class_weights = "balanced"
    config.half_precision = True
    config.worker_count = 12
    config.eval.checkpoint = "best"
    return config
