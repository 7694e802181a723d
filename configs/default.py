"""NIH six-class subset, patient-disjoint split, ResNet50 at 224 (bfloat16 on the GPU).

    python -m lungjax.main --config configs/default.py --workdir runs/nih \
        --config.data.manual_dir=/path/to/NIH \
        --config.model.init_from=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

Starts from Keras' ImageNet ResNet50 weights when given (strongly advised: 14k images do not train
a ResNet50 from scratch well), trains the new head alone for the first 500 steps, then everything
with AdamW and a cosine schedule. Batch 256 keeps an H100/H200 busy (see BENCHMARKS.md). Not yet
tuned on the real images: no NIH pixels were reachable where it was written.
"""

from lungjax.config.base import base_config


def get_config():
    config = base_config()
    config.data.source = "nih"
    config.data.stored_size = 256
    config.image_size = 224
    config.augment = "light"
    config.model.name = "resnet50"
    config.model.dropout_rate = 0.2
    config.model.stride_in_1x1 = True  # Keras' ResNet50 layout, so its ImageNet weights load
    config.model.freeze_backbone_steps = 500
    config.batch_size = 256
    config.num_epochs = 30
    config.learning_rate = 1e-3
    config.warmup_epochs = 2.0
    config.label_smoothing = 0.1
    config.half_precision = True
    config.worker_count = 12
    config.eval.checkpoint = "best"
    return config
