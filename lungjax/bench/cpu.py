"""CPU benchmark: lungjax's ResNet50 train step side by side with Keras 3 on the JAX and PyTorch backends.

Every contender lives in its own worker process (Keras reads ``KERAS_BACKEND`` and XLA reads
``XLA_FLAGS`` once, at import), built and warmed up once. The parent then alternates them: in each
round every worker in turn runs ``--steps`` timed steps while the others wait idle on a pipe, so
load from other users of the machine falls on all contenders alike. Reported: per contender the
median step time over all rounds, images/s from it, the ratio to the first contender, compile (or
first-step) seconds and peak resident memory.

Same work for every contender: ResNet50 (1-channel input, 6 classes), AdamW (lr 1e-4, weight
decay 1e-4), class-weighted cross-entropy with label smoothing 0.1, one fixed batch. lungjax runs
its real jitted step (``lungjax.bench.step_timing``); Keras runs ``model.train_on_batch``.

    python -m lungjax.bench.cpu                                   # lungjax vs keras-jax vs keras-torch
    python -m lungjax.bench.cpu --contender lungjax \\
        --contender "lungjax;XLA_FLAGS=--xla_cpu_enable_fast_math=true" --contender lungjax-bf16

A contender is ``KIND[+LEVER...][;NAME=VALUE...]``: KIND is ``lungjax`` (ResNet v1.5, float32),
``lungjax-bf16`` (bfloat16 compute), ``lungjax-v1`` (stride in the 1×1 conv, Keras' architecture),
``keras-jax``, ``keras-torch`` or ``keras-tensorflow``; a LEVER (``lungjax`` kinds only) is a boolean
key of the base config set True, dotted (``lungjax+model.strided_space_to_depth``); the ``NAME=VALUE``
pairs are extra environment variables for its process. The ``lungjax`` kinds run with the XLA CPU
flags a user of ``lungjax.main`` gets (``lungjax.xla_cpu``); ``"lungjax;LUNGJAX_XLA_CPU_DEFAULTS=0"``
measures without them. Prints a table last and writes JSON (``--out``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time

from absl import app, flags

from lungjax import bench, xla_cpu
from lungjax.bench import workers
from lungjax.config.base import base_config
from lungjax.data.labels import NUM_CLASSES

KINDS = ("lungjax", "lungjax-bf16", "lungjax-v1", "keras-jax", "keras-torch", "keras-tensorflow")
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-4
LABEL_SMOOTHING = 0.1

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("contender", None, "KIND[;NAME=VALUE...]; repeat (default: lungjax, keras-jax, keras-torch).")
flags.DEFINE_string("model", "resnet50", "Model name.")
flags.DEFINE_float("width", 1.0, "Width multiplier, lungjax only (Keras has no width).")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("image_size", 224, "Image size.")
flags.DEFINE_integer("warmup", 2, "Untimed steps, the compiling one included.")
flags.DEFINE_integer("steps", 5, "Timed steps per contender per round.")
flags.DEFINE_integer("rounds", 3, "Rounds.")
flags.DEFINE_float("timeout", 900.0, "Seconds to wait for one answer.")
flags.DEFINE_string("out", "cpu_bench.json", "Where the JSON results go.")
flags.DEFINE_enum("worker", None, KINDS, "Internal: run as this contender's worker process.")
flags.DEFINE_list("levers", [], "Internal: the worker's levers (boolean config keys set True).")


def _is_boolean_key(key: str) -> bool:
    config = base_config()
    for part in key.split("."):
        if part not in config:
            return False
        config = config[part]
    return isinstance(config, bool)


def parse_contender(spec: str) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """``(kind, levers, env)`` of a ``KIND[+LEVER...][;NAME=VALUE...]`` spec (the module docstring)."""
    head, *pairs = spec.split(";")
    kind, *levers = head.split("+")
    if kind not in KINDS:
        raise ValueError(f"unknown contender kind {kind!r}; expected one of {', '.join(KINDS)}")
    for lever in levers:
        if not kind.startswith("lungjax"):
            raise ValueError(f"contender {spec!r}: levers are lungjax settings; {kind} takes none")
        if not _is_boolean_key(lever):
            raise ValueError(f"contender {spec!r}: {lever!r} is not a boolean key of the base config")
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"contender {spec!r}: {pair!r} is not NAME=VALUE")
        env[name] = value
    return kind, tuple(levers), env


# ----------------------------------------------------------------------------------------------
# Workers: build, compile/warm up, then answer "steps N" requests with per-step seconds.


class LungjaxWorker:
    def __init__(self, args, half_precision: bool, stride_in_1x1: bool):
        from lungjax.bench import step_timing

        self._timing = step_timing
        self.compiled = step_timing.compile_step(
            args.model,
            batch_size=args.batch_size,
            image_size=args.image_size,
            half_precision=half_precision,
            width=args.width,
            stride_in_1x1=stride_in_1x1,
            levers=dict.fromkeys(args.levers, True),
        )
        self.levers = list(args.levers)
        self.compile_seconds = self.compiled.compile_seconds
        start = time.perf_counter()
        self._timing.time_steps(self.compiled, warmup=max(args.warmup - 1, 0), windows=1, steps_per_window=1)
        self.warmup_seconds = time.perf_counter() - start

    def steps(self, n: int) -> list[float]:
        return self._timing.time_steps(self.compiled, warmup=0, windows=n, steps_per_window=1)["window_seconds"]

    def describe(self) -> dict:
        import jax

        return {
            "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "levers": self.levers,
            "flops_per_step": self.compiled.flops_per_step,
            "xla_memory_bytes": self.compiled.memory_bytes,
        }


class KerasWorker:
    def __init__(self, args):
        import keras
        import numpy as np

        self._keras = keras
        model_cls = getattr(
            keras.applications, {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}[args.model]
        )
        self.model = model_cls(weights=None, input_shape=(args.image_size, args.image_size, 1), classes=NUM_CLASSES)
        optimizer = keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        optimizer.exclude_from_weight_decay(var_names=["bn", "bias"])  # kernels only, as lungjax
        self.model.compile(
            optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING)
        )
        rng = np.random.default_rng(0)
        self.x = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 1)).astype(np.float32) / 255.0
        self.y = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, args.batch_size)]
        self.class_weight = {c: 1.0 for c in range(NUM_CLASSES)}
        start = time.perf_counter()
        self._one_step()  # traces and compiles (JAX backend) or builds the optimizer variables
        self.compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(max(args.warmup - 1, 0)):
            self._one_step()
        self.warmup_seconds = time.perf_counter() - start

    def _one_step(self):
        # Returns Python floats, so it waits for the step to finish on every backend.
        return self.model.train_on_batch(self.x, self.y, class_weight=self.class_weight)

    def steps(self, n: int) -> list[float]:
        seconds = []
        for _ in range(n):
            start = time.perf_counter()
            self._one_step()
            seconds.append(time.perf_counter() - start)
        return seconds

    def describe(self) -> dict:
        info = {"keras": self._keras.__version__, "backend": self._keras.backend.backend()}
        if info["backend"] == "torch":
            import torch

            info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        elif info["backend"] == "jax":
            import jax

            info["jax"] = jax.__version__
        return info


def worker_main(args) -> None:
    """Runs in the contender's own process: says it is ready, then answers "steps N" requests."""
    kind = args.worker
    if kind.startswith("lungjax"):
        xla_cpu.apply_defaults()  # before compile_step starts JAX's backends
        worker = LungjaxWorker(args, half_precision=kind == "lungjax-bf16", stride_in_1x1=kind == "lungjax-v1")
    else:
        worker = KerasWorker(args)
    workers.emit(
        {
            "ready": True,
            "compile_seconds": worker.compile_seconds,
            "warmup_seconds": worker.warmup_seconds,
            **worker.describe(),
        }
    )
    workers.serve(lambda request: {"step_seconds": worker.steps(int(request.removeprefix("steps ")))})


# ----------------------------------------------------------------------------------------------
# Parent: start the workers, alternate them, summarise.


class Contender:
    """One contender's worker process and the step times it has reported."""

    def __init__(self, spec: str, args):
        self.spec = spec
        self.kind, levers, self.extra_env = parse_contender(spec)
        env = dict(self.extra_env)
        if self.kind.startswith("keras-"):
            env["KERAS_BACKEND"] = self.kind.split("-", 1)[1]
        self.worker = workers.Worker(
            "lungjax.bench.cpu",
            {
                "worker": self.kind,
                "levers": ",".join(levers),
                "model": args.model,
                "width": args.width,
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "warmup": args.warmup,
            },
            env=env,
            name=spec,
        )
        self.info: dict = {}
        self.step_seconds: list[float] = []

    def request(self, steps: int, timeout: float) -> list[float]:
        seconds = self.worker.request(f"steps {steps}", timeout)["step_seconds"]
        self.step_seconds.extend(seconds)
        return seconds


def summarise(args, contenders: list[Contender], errors: dict) -> dict:
    rows = []
    for contender in contenders:
        row = {"contender": contender.spec, "kind": contender.kind, "env": contender.extra_env, **contender.info}
        if contender.step_seconds:
            median = statistics.median(contender.step_seconds)
            row.update(
                step_seconds=contender.step_seconds,
                step_seconds_median=median,
                images_per_sec=args.batch_size / median,
                peak_rss_bytes=contender.worker.peak_rss_bytes,
                round_medians=[statistics.median(r) for r in contender.info.get("rounds", [])],
            )
        if contender.spec in errors:
            row["error"] = errors[contender.spec]
        rows.append(row)
    baseline = next((r for r in rows if "images_per_sec" in r), None)
    for row in rows:
        if baseline and "images_per_sec" in row:
            row["ratio_to_first"] = row["images_per_sec"] / baseline["images_per_sec"]
    return {
        "benchmark": "cpu_train_step_side_by_side",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "model": args.model,
        "width": args.width,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup": args.warmup,
        "rows": rows,
    }


def format_table(result: dict) -> str:
    lines = [
        f"{result['model']} train step, batch {result['batch_size']}, {result['image_size']}² × 1, "
        f"{result['rounds']} rounds × {result['steps_per_round']} steps, medians of all steps",
        f"{'contender':<58} {'img/s':>7} {'ratio':>6} {'s/step':>7} {'compile s':>9} {'peak RSS':>9}",
    ]
    for row in result["rows"]:
        if "images_per_sec" not in row:
            last_line = row.get("error", "no steps").splitlines()[-1]  # a worker's error ends with its stderr
            lines.append(f"{row['contender']:<58} failed: {last_line}")
            continue
        lines.append(
            f"{row['contender']:<58} {row['images_per_sec']:7.2f} {row['ratio_to_first']:6.2f} "
            f"{row['step_seconds_median']:7.2f} {row.get('compile_seconds', float('nan')):9.1f} "
            f"{row['peak_rss_bytes'] / 2**30:8.2f}G"
        )
    return "\n".join(lines)


def main(argv) -> None:
    del argv  # flags only
    args = FLAGS
    if args.worker:
        worker_main(args)
        return
    specs = args.contender or ["lungjax", "keras-jax", "keras-torch"]
    for spec in specs:
        parse_contender(spec)  # fail fast on a typo
    contenders, errors = [], {}
    try:
        # Started one at a time so that their compiles do not compete with one another.
        for spec in specs:
            contender = Contender(spec, args)
            try:
                contender.info = contender.worker.read(args.timeout)
                contenders.append(contender)
                print(f"[cpu bench] {spec}: ready, compile {contender.info['compile_seconds']:.1f} s", flush=True)
            except (RuntimeError, TimeoutError) as error:
                errors[spec] = str(error)
                contender.worker.close()
                print(f"[cpu bench] {spec}: {error}", flush=True)
        for round_index in range(args.rounds):
            order = contenders if round_index % 2 == 0 else contenders[::-1]  # ABC, CBA, ABC, …
            for contender in order:
                if contender.spec in errors:
                    continue
                try:
                    seconds = contender.request(args.steps, args.timeout)
                    contender.info.setdefault("rounds", []).append(seconds)
                    print(
                        f"[cpu bench] round {round_index + 1} {contender.spec}: "
                        f"{args.batch_size / statistics.median(seconds):.2f} img/s",
                        flush=True,
                    )
                except (RuntimeError, TimeoutError) as error:
                    errors[contender.spec] = str(error)
    finally:
        for contender in contenders:
            contender.worker.close()
    result = summarise(args, contenders, errors)
    for spec, error in errors.items():
        if not any(r["contender"] == spec for r in result["rows"]):
            result["rows"].append({"contender": spec, "error": error})
    bench.finish(result, args.out, format_table(result))


if __name__ == "__main__":
    app.run(main)
