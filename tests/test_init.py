"""Starting from an earlier run's weights, and training the head alone first."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lungjax import trees
from lungjax.config.base import base_config
from lungjax.models import init
from lungjax.models.resnet import create_model
from lungjax.training import optim


def _pure(model):
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return trees.flatten({"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(batch_stats)}, "/")


def test_initialize_from_a_workdir_copies_every_weight(tiny_workdir):
    source_model = create_model("resnet18", num_classes=6, width=0.125, seed=123)
    init.initialize(source_model, tiny_workdir)
    model = create_model("resnet18", num_classes=6, width=0.125, seed=7)
    assert init.initialize(model, tiny_workdir / "checkpoints") == []
    a, b = _pure(source_model), _pure(model)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    fresh = _pure(create_model("resnet18", num_classes=6, width=0.125, seed=7))
    assert any(not np.array_equal(fresh[k], b[k]) for k in b)  # something was actually copied


def test_head_is_skipped_when_the_class_count_differs(tiny_workdir):
    model = create_model("resnet18", num_classes=3, width=0.125)
    before = np.asarray(model.head.kernel[...])
    assert init.initialize(model, tiny_workdir) == ["params/head/bias", "params/head/kernel"]
    np.testing.assert_array_equal(model.head.kernel[...], before)


def test_other_mismatches_name_the_variable_and_shapes(tiny_workdir):
    model = create_model("resnet18", num_classes=6, width=0.25)
    with pytest.raises(ValueError, match=r"params/stages/0/0/bn1/bias has shape \(8,\) .* but \(16,\)"):
        init.initialize(model, tiny_workdir)


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a Keras weights file"):
        init.initialize(create_model("resnet18", num_classes=6, width=0.125), tmp_path / "weights.pt")


@pytest.mark.slow
def test_freeze_backbone_moves_only_the_head_first():
    model = create_model("resnet18", num_classes=6, width=0.125)
    _, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    config = base_config()
    config.model.freeze_backbone_steps = 2
    config.optimizer, config.weight_decay = "adamw", 0.1
    tx = optim.make_optimizer(config, optax.constant_schedule(1e-2))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    moved_by_step, update = [], jax.jit(tx.update)  # jitted: op by op, every leaf shape compiles apart
    for _ in range(3):
        updates, state = update(grads, state, params)
        moved_by_step.append(
            [
                (optim.is_head(path), bool(jnp.any(u != 0)))
                for path, u in jax.tree_util.tree_leaves_with_path(updates)
                if not optim.is_stem_border(path)  # frozen from scratch (test_step), whatever the steps
            ]
        )
    for step, leaves in enumerate(moved_by_step):
        heads = [m for is_head, m in leaves if is_head]
        backbone = [m for is_head, m in leaves if not is_head]
        assert heads and all(heads)
        assert all(backbone) if step >= 2 else not any(backbone)
