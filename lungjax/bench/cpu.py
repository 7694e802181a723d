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

A contender is ``KIND[;NAME=VALUE...]``: KIND is ``lungjax`` (ResNet v1.5, float32), ``lungjax-bf16``
(bfloat16 compute), ``lungjax-v1`` (stride in the 1×1 conv, Keras' architecture), ``keras-jax``,
``keras-torch`` or ``keras-tensorflow``; the ``NAME=VALUE`` pairs are extra environment variables
for its process. Prints a table last and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import time

from lungjax import bench

KINDS = ("lungjax", "lungjax-bf16", "lungjax-v1", "keras-jax", "keras-torch", "keras-tensorflow")
RESULT_PREFIX = "BENCH_RESULT "
NUM_CLASSES = 6
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-4
LABEL_SMOOTHING = 0.1


def parse_contender(spec: str) -> tuple[str, dict[str, str]]:
    kind, *pairs = spec.split(";")
    if kind not in KINDS:
        raise ValueError(f"unknown contender kind {kind!r}; expected one of {', '.join(KINDS)}")
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"contender {spec!r}: {pair!r} is not NAME=VALUE")
        env[name] = value
    return kind, env


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------
# Workers: build, compile/warm up, then answer "steps N" requests with per-step seconds.


class LungjaxWorker:
    def __init__(self, args, half_precision: bool, stride_in_1x1: bool):
        from lungjax.bench import step_timing

        self._timing = step_timing
        self.compiled = step_timing.compile_step(args.model, batch_size=args.batch_size,
                                                 image_size=args.image_size, half_precision=half_precision,
                                                 width=args.width, stride_in_1x1=stride_in_1x1)
        self.compile_seconds = self.compiled.compile_seconds
        start = time.perf_counter()
        self._timing.time_steps(self.compiled, warmup=max(args.warmup - 1, 0), windows=1, steps_per_window=1)
        self.warmup_seconds = time.perf_counter() - start

    def steps(self, n: int) -> list[float]:
        return self._timing.time_steps(self.compiled, warmup=0, windows=n, steps_per_window=1)["window_seconds"]

    def describe(self) -> dict:
        import jax

        return {"jax": jax.__version__, "flops_per_step": self.compiled.flops_per_step,
                "xla_memory_bytes": self.compiled.memory_bytes}


class KerasWorker:
    def __init__(self, args):
        import keras
        import numpy as np

        self._keras = keras
        model_cls = getattr(keras.applications, {"resnet50": "ResNet50", "resnet101": "ResNet101",
                                                  "resnet152": "ResNet152"}[args.model])
        self.model = model_cls(weights=None, input_shape=(args.image_size, args.image_size, 1),
                               classes=NUM_CLASSES)
        optimizer = keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        optimizer.exclude_from_weight_decay(var_names=["bn", "bias"])  # kernels only, as lungjax
        self.model.compile(optimizer=optimizer,
                           loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING))
        rng = np.random.default_rng(0)
        self.x = (rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 1))
                  .astype(np.float32) / 255.0)
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


def emit(payload: dict) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def worker_main(args) -> None:
    """Runs in the contender's own process; speaks one JSON line per request on stdout."""
    kind = args.worker
    if kind.startswith("lungjax"):
        worker = LungjaxWorker(args, half_precision=kind == "lungjax-bf16", stride_in_1x1=kind == "lungjax-v1")
    else:
        worker = KerasWorker(args)
    emit({"ready": True, "compile_seconds": worker.compile_seconds, "warmup_seconds": worker.warmup_seconds,
          "peak_rss_bytes": peak_rss_bytes(), **worker.describe()})
    for line in sys.stdin:
        command, _, count = line.strip().partition(" ")
        if command == "quit":
            break
        emit({"step_seconds": worker.steps(int(count)), "peak_rss_bytes": peak_rss_bytes()})


# ----------------------------------------------------------------------------------------------
# Parent: start the workers, alternate them, summarise.


class Contender:
    def __init__(self, spec: str, args):
        self.spec = spec
        self.kind, self.extra_env = parse_contender(spec)
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        if self.kind.startswith("keras-"):
            env["KERAS_BACKEND"] = self.kind.split("-", 1)[1]
        command = [sys.executable, "-m", "lungjax.bench.cpu", "--worker", self.kind, "--model", args.model,
                   "--width", str(args.width), "--batch_size", str(args.batch_size),
                   "--image_size", str(args.image_size), "--warmup", str(args.warmup)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        text=True, bufsize=1)
        self.info: dict = {}
        self.step_seconds: list[float] = []
        self.peak_rss_bytes = 0

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.process.stdout], [], [], remaining)[0]:
                raise TimeoutError(f"{self.spec}: no answer within {timeout:.0f} s")
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.spec}: worker exited with {self.process.wait()}")
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])

    def request(self, steps: int, timeout: float) -> list[float]:
        self.process.stdin.write(f"steps {steps}\n")
        self.process.stdin.flush()
        answer = self.read(timeout)
        self.peak_rss_bytes = max(self.peak_rss_bytes, answer["peak_rss_bytes"])
        self.step_seconds.extend(answer["step_seconds"])
        return answer["step_seconds"]

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def summarise(args, contenders: list[Contender], errors: dict) -> dict:
    rows = []
    for contender in contenders:
        row = {"contender": contender.spec, "kind": contender.kind, "env": contender.extra_env, **contender.info}
        if contender.step_seconds:
            median = statistics.median(contender.step_seconds)
            row.update(step_seconds=contender.step_seconds, step_seconds_median=median,
                       images_per_sec=args.batch_size / median, peak_rss_bytes=contender.peak_rss_bytes,
                       round_medians=[statistics.median(r) for r in contender.info.get("rounds", [])])
        if contender.spec in errors:
            row["error"] = errors[contender.spec]
        rows.append(row)
    baseline = next((r for r in rows if "images_per_sec" in r), None)
    for row in rows:
        if baseline and "images_per_sec" in row:
            row["ratio_to_first"] = row["images_per_sec"] / baseline["images_per_sec"]
    return {"benchmark": "cpu_train_step_side_by_side", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "load_average_at_end": os.getloadavg(), "python": platform.python_version()},
            "model": args.model, "width": args.width, "batch_size": args.batch_size,
            "image_size": args.image_size, "rounds": args.rounds, "steps_per_round": args.steps,
            "warmup": args.warmup, "rows": rows}


def format_table(result: dict) -> str:
    lines = [f"{result['model']} train step, batch {result['batch_size']}, {result['image_size']}² × 1, "
             f"{result['rounds']} rounds × {result['steps_per_round']} steps, medians of all steps",
             f"{'contender':<58} {'img/s':>7} {'ratio':>6} {'s/step':>7} {'compile s':>9} {'peak RSS':>9}"]
    for row in result["rows"]:
        if "images_per_sec" not in row:
            lines.append(f"{row['contender']:<58} failed: {row.get('error', 'no steps')}")
            continue
        lines.append(f"{row['contender']:<58} {row['images_per_sec']:7.2f} {row['ratio_to_first']:6.2f} "
                     f"{row['step_seconds_median']:7.2f} {row.get('compile_seconds', float('nan')):9.1f} "
                     f"{row['peak_rss_bytes'] / 2**30:8.2f}G")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return {}
    specs = args.contender or ["lungjax", "keras-jax", "keras-torch"]
    for spec in specs:
        parse_contender(spec)  # fail fast on a typo
    contenders, errors = [], {}
    try:
        # Started one at a time so that their compiles do not compete with one another.
        for spec in specs:
            contender = Contender(spec, args)
            try:
                contender.info = contender.read(args.timeout)
                contenders.append(contender)
                print(f"[cpu bench] {spec}: ready, compile {contender.info['compile_seconds']:.1f} s", flush=True)
            except (RuntimeError, TimeoutError) as error:
                errors[spec] = str(error)
                contender.close()
                print(f"[cpu bench] {spec}: {error}", flush=True)
        for round_index in range(args.rounds):
            order = contenders if round_index % 2 == 0 else contenders[::-1]  # ABC, CBA, ABC, …
            for contender in order:
                if contender.spec in errors:
                    continue
                try:
                    seconds = contender.request(args.steps, args.timeout)
                    contender.info.setdefault("rounds", []).append(seconds)
                    print(f"[cpu bench] round {round_index + 1} {contender.spec}: "
                          f"{args.batch_size / statistics.median(seconds):.2f} img/s", flush=True)
                except (RuntimeError, TimeoutError) as error:
                    errors[contender.spec] = str(error)
    finally:
        for contender in contenders:
            contender.close()
    result = summarise(args, contenders, errors)
    for spec, error in errors.items():
        if not any(r["contender"] == spec for r in result["rows"]):
            result["rows"].append({"contender": spec, "error": error})
    return bench.finish(result, args.out, format_table(result))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contender", action="append", help="KIND[;NAME=VALUE...]; repeat (default: "
                        "lungjax, keras-jax, keras-torch)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--width", type=float, default=1.0, help="lungjax only (Keras has no width)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one answer")
    parser.add_argument("--out", default="cpu_bench.json")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
