"""CheXNet's recipe (Rajpurkar et al. 2017, arXiv 1711.05225), as far as its paper states it, on NIH's
14 findings with NIH's official split.

    python -m lungjax.main --config configs/chexnet.py --workdir runs/chexnet \
        --config.data.manual_dir=/path/to/NIH \
        --config.model.init_from=/path/to/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5

From the paper: DenseNet-121 from ImageNet weights (here Keras' DenseNet121, whose "torch"
preprocessing is the ImageNet mean and standard deviation CheXNet normalised with, folded into the
one-channel stem), 224 x 224 inputs, Adam (beta 0.9, 0.999) at 1e-3, batch 16, the learning rate
divided by 10 when the validation loss plateaus after an epoch, a weighted binary cross-entropy, and
random horizontal flips as the only augmentation (``augment="chexnet"``: allowed in this config only,
to follow the paper; lungjax's own presets never flip, since a mirrored chest shows dextrocardia).

Where lungjax differs, and why:

* the split: CheXNet used its own random patient split (70/10/20); this config uses NIH's official
  test list (what ``python -m lungjax.main`` builds when the lists are in manual_dir), so its numbers
  compare with Wang et al.'s table, not CheXNet's, split for split;
* the loss weights: CheXNet weighs positives by N/(P+N) and negatives by P/(P+N) per finding; lungjax's
  ``balanced`` uses N/P on the positive term and 1 on the negative, the same ratio, with each
  finding's loss scaled by 1/prevalence relative to CheXNet's;
* the epochs (20) and the checkpoint kept (best validation mean AUROC, CheXNet's lowest validation
  loss) are not stated as such in the paper or are lungjax's choice.
"""

from lungjax.config.base import base_config


def get_config():
    config = base_config()
    config.data.source = "nih"
    config.data.task = "full14"
    config.data.stored_size = 256
    config.image_size = 224
    config.augment = "chexnet"
    config.model.name = "densenet121"
    config.batch_size = 16
    config.num_epochs = 20
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.schedule = "plateau"
    config.plateau.factor = 0.1
    config.plateau.patience = 1
    config.weight_decay = 0.0
    config.class_weights = "balanced"
    config.worker_count = 8
    config.eval.batch_size = 128
    config.eval.checkpoint = "best"
    return config
