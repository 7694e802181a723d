"""Timing lungjax's real train step (the one the training loop compiles) with data already on the device.

Shared by the CPU and GPU benchmarks so both measure the same code path: ``lungjax.training.step.train_step``
with an AdamW optimizer, class-weighted loss, replicated state, a batch sharded over the mesh and
the state donated.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Mapping
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lungjax import models
from lungjax.config.base import base_config
from lungjax.data import augment, labels
from lungjax.runtime import sharding
from lungjax.training import loop as train
from lungjax.training import optim
from lungjax.training import step as step_lib


@dataclasses.dataclass
class CompiledStep:
    """A jitted train step, its initial state, one device-resident batch, and its compilation's figures."""

    step_fn: object
    state: step_lib.TrainState
    batch: dict
    batch_size: int
    compile_seconds: float
    flops_per_step: float | None
    memory_bytes: int | None  # XLA's estimate: arguments + outputs + temporaries, minus aliased
    hlo: dict  # ``hlo_summary`` of the compiled step


def compile_step(
    model_name: str,
    *,
    batch_size: int,
    image_size: int,
    half_precision: bool,
    width: float = 1.0,
    seed: int = 0,
    stride_in_1x1: bool = False,
    levers: Mapping[str, object] = MappingProxyType({}),
    stored_size: int = 256,
) -> CompiledStep:
    """Builds the model and the jit-compiled step, compiles it ahead of time, and measures that.

    ``stride_in_1x1=True`` times the ResNet v1 bottleneck (Keras' ResNet50) instead of v1.5;
    ``levers`` sets config keys of the speed levers (dotted: ``{"model.stem_space_to_depth": True}``).
    With ``augment_on_device`` the batch holds ``stored_size`` images and ``light`` augmentation's
    transforms, which the step applies.
    """
    mesh = sharding.make_mesh()
    # Model, optimizer and state built as the training loop builds them: AdamW (decay on kernels
    # only), constant rate, label smoothing 0.1.
    config = base_config()
    config.model.name, config.model.width, config.model.stride_in_1x1 = model_name, width, stride_in_1x1
    config.optimizer, config.schedule, config.learning_rate, config.weight_decay = "adamw", "constant", 1e-4, 1e-4
    config.seed, config.half_precision, config.label_smoothing = seed, half_precision, 0.1
    config.image_size = image_size  # what an augment_on_device step warps to
    for key, value in levers.items():
        section, _, name = key.rpartition(".")
        setattr(config[section] if section else config, name, value)
    model = models.from_config(config.model, num_classes=labels.NUM_CLASSES, half_precision=half_precision, seed=seed)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 1, 1))
    replicated = sharding.replicated(mesh)
    state = jax.device_put(train.initial_state(config, params, batch_stats, tx), replicated)
    rng = np.random.default_rng(seed)
    size = stored_size if config.augment_on_device else image_size
    host_batch = {
        "image": rng.integers(0, 256, (batch_size, size, size, 1), dtype=np.uint8),
        "label": rng.integers(0, labels.NUM_CLASSES, batch_size).astype(np.int32),
    }
    if config.augment_on_device:
        light = augment.augmentation("light")
        drawn = [augment.draw(light, stored_size, image_size, rng) for _ in range(batch_size)]
        host_batch["warp"] = np.stack([matrix for matrix, _ in drawn]).astype(np.float32)
        host_batch["intensity"] = np.stack([intensity for _, intensity in drawn]).astype(np.float32)
    batch = sharding.to_global(host_batch, sharding.batch_sharding(mesh))
    step_fn = step_lib.make_train_step(
        config, graphdef=graphdef, tx=tx, class_weights=jnp.ones(labels.NUM_CLASSES), mesh=mesh
    )
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    # Timing calls go through the jitted function, as the loop's do (its C++ dispatch path is
    # faster than calling ``compiled``); with the persistent compilation cache enabled its first
    # call loads this compilation instead of compiling again.
    return CompiledStep(
        step_fn, state, batch, batch_size, compile_seconds, _flops(compiled), _memory(compiled), hlo_summary(compiled)
    )


# A reduction over every axis but the channels of an NHWC tensor: what BatchNorm's statistics and
# its backward's sums are, and nothing else in these models (pooling reduces H and W only).
_CHANNEL_REDUCTION = re.compile(r" reduce\(.*dimensions=\{0,1,2\}")
_FUSION = re.compile(r" fusion\(.*calls=%?([\w.-]+)")


def hlo_summary(compiled) -> dict:
    """Kernel counts from the optimized HLO: ``fusions`` (fusion instructions), ``channel_reduction_kernels``
    (fusions or lone instructions that reduce an NHWC tensor to per-channel values: BatchNorm's passes
    that read activations to reduce them) and ``channel_reductions`` (such reduce ops, several per kernel
    when XLA fuses them into one pass), with XLA's ``bytes_accessed`` estimate."""
    computations, name = {}, None
    for line in compiled.as_text().splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            computations[name] = []
        elif name is not None:
            computations[name].append(line)
    fused = {match.group(1) for lines in computations.values() for line in lines if (match := _FUSION.search(line))}
    kernels = reductions = 0
    for name, lines in computations.items():
        count = sum(1 for line in lines if _CHANNEL_REDUCTION.search(line))
        reductions += count
        kernels += min(count, 1) if name in fused else count
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return {
        "fusions": sum(1 for lines in computations.values() for line in lines if _FUSION.search(line)),
        "channel_reduction_kernels": kernels,
        "channel_reductions": reductions,
        "bytes_accessed": float(analysis.get("bytes accessed", 0.0)) if analysis else None,
    }


def _flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax returns one dict per device
        analysis = analysis[0] if analysis else {}
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _memory(compiled) -> int | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def time_steps(compiled: CompiledStep, *, warmup: int = 3, windows: int = 5, steps_per_window: int = 10) -> dict:
    """Median images/s over ``windows`` timed windows; the state is threaded through (donated)."""
    state = compiled.state
    for _ in range(warmup):
        state, metrics = compiled.step_fn(state, compiled.batch)
    jax.block_until_ready(state)
    window_seconds = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps_per_window):
            state, metrics = compiled.step_fn(state, compiled.batch)
        jax.block_until_ready((state, metrics))
        window_seconds.append(time.perf_counter() - start)
    compiled.state = state
    step_seconds = statistics.median(window_seconds) / steps_per_window
    return {
        "step_seconds_median": step_seconds,
        "images_per_sec": compiled.batch_size / step_seconds,
        "window_seconds": window_seconds,
    }


def peak_device_memory() -> int | None:
    """The allocator's peak bytes in use on device 0 so far (None where the backend has no stats)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")
