"""The reference's recipe, for side-by-side comparison: per-image "seed" split, ResNet50 at 224,
Adam 1e-5, batch 8, 30 epochs, label smoothing 0.1, dropout 0.5, balanced class weights, its
augmentation, learning rate reduced on a validation-loss plateau, early stop after 10 epochs
without a lower validation loss.

    python -m lungjax.main --config configs/seed.py --workdir runs/seed \
        --config.data.manual_dir=/path/to/NIH \
        --config.model.init_from=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

The reference fine-tuned Keras' ImageNet ResNet50: name that weights file (the one
``keras.applications.ResNet50(weights="imagenet")`` caches in ~/.keras/models/); nothing is
downloaded. Without it the ResNet50 starts from scratch.
"""

from lungjax.config.base import base_config


def get_config():
    config = base_config()
    config.data.source = "nih"
    config.data.split_scheme = "seed"
    config.image_size = 224
    config.augment = "seed"
    config.model.name = "resnet50"
    config.model.dropout_rate = 0.5
    config.model.stride_in_1x1 = True  # Keras' ResNet50 layout, so its ImageNet weights load
    config.batch_size = 8
    config.num_epochs = 30
    config.optimizer = "adam"
    config.learning_rate = 1e-5
    config.schedule = "plateau"  # factor/patience are our guess: the reference's values are not known
    config.plateau.factor = 0.2
    config.plateau.patience = 3
    config.weight_decay = 0.0
    config.label_smoothing = 0.1
    config.class_weights = "balanced"
    config.early_stop_patience = 10  # validations; one per epoch (eval_every_steps = 0)
    config.eval.checkpoint = "best"
    return config
