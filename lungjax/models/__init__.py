"""Models: the Flax NNX ResNet family and DenseNet-121 with a grayscale stem, and ImageNet weight import."""

import jax.numpy as jnp

from lungjax.models import densenet, resnet

MODEL_NAMES = (*resnet.MODEL_NAMES, *densenet.MODEL_NAMES)


def compute_dtype(half_precision: bool):
    """The dtype policy: bfloat16 compute with float32 parameters when ``half_precision``."""
    return jnp.bfloat16 if half_precision else jnp.float32


def from_config(model_config, *, num_classes: int, half_precision: bool, seed: int = 0):
    """The model a config names, in the compute dtype of ``half_precision``."""
    if model_config.name in densenet.MODEL_NAMES:
        return densenet.create_densenet(
            model_config.name,
            num_classes=num_classes,
            width=model_config.width,
            dropout_rate=model_config.dropout_rate,
            stem_space_to_depth=model_config.stem_space_to_depth,
            stem_pad_channels=model_config.stem_pad_channels,
            fewer_pass_batch_norm=model_config.fewer_pass_batch_norm,
            dtype=compute_dtype(half_precision),
            seed=seed,
        )
    return resnet.create_model(
        model_config.name,
        num_classes=num_classes,
        width=model_config.width,
        dropout_rate=model_config.dropout_rate,
        stride_in_1x1=model_config.stride_in_1x1,
        stem_space_to_depth=model_config.stem_space_to_depth,
        stem_pad_channels=model_config.stem_pad_channels,
        strided_space_to_depth=model_config.strided_space_to_depth,
        fewer_pass_batch_norm=model_config.fewer_pass_batch_norm,
        dtype=compute_dtype(half_precision),
        seed=seed,
    )


def images_to_input(images, dtype):
    """uint8 pixels from the pipeline -> the models' input: [0, 1] in the compute dtype, on the device.

    Training, evaluation and Grad-CAM all scale here, so they cannot drift apart.
    """
    return images.astype(dtype) * (1.0 / 255.0)
