"""The reference's recipe, for side-by-side comparison: per-image "seed" split, ResNet50 at 224,
Adam 1e-5, batch 8, 30 epochs, label smoothing 0.1, dropout 0.5, balanced class weights, its
augmentation, learning rate reduced on a validation-loss plateau, early stop after 10 epochs
without a lower validation loss.

    python -m lungjax.main --config configs/seed.py --workdir runs/seed \
        --config.data.manual_dir=/path/to/NIH
"""

from lungjax.config import base_config


def get_config():
    config = base_config()
    config.data.source = "nih"
    config.data.split_scheme = "seed"
    config.image_size = 224
    config.augment = "seed"
    config.model.name = "resnet50"
    config.model.dropout_rate = 0.5
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
