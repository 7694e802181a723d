"""The XLA CPU flags lungjax turns on by default, each only where the installed jaxlib knows it.

XLA parses ``XLA_FLAGS`` once per process, when JAX initialises its backends (the first
``jax.devices()``, array or jitted call; ``import jax`` does not), so ``apply_defaults`` must run
before that; later it changes nothing. A flag that XLA does not know aborts the whole process
there, whatever the platform: the table of flags is XLA's own and shared by the CPU and GPU
backends. So each flag is first tried in a child process, which is all that an unknown flag can
kill, and the answer is cached per jaxlib version and flag.

``LUNGJAX_XLA_CPU_DEFAULTS`` set to 0, false, no, off or disabled (any case) turns the defaults off;
1, true, yes, on, enabled or empty keeps them; any other value is a :class:`SettingError` (a typo
must not pass for either); a flag that the user's ``XLA_FLAGS`` already sets keeps the user's value.
The cache lives in ``$LUNGJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/lungjax``, else ``~/.cache/lungjax``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

# Convolutions on Eigen instead of YNNPACK: 1.2-2.6x on the ResNet50 train step on the 2-core dev VM
# (BENCHMARKS.md, CPU section), neutral on the demo's small ResNet, gradients equal within float32
# rounding. Taking YNNPACK's reductions away too was slower (0.82x of this).
DEFAULT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",)
OPT_OUT_ENV = "LUNGJAX_XLA_CPU_DEFAULTS"
OFF_VALUES = ("0", "false", "no", "off", "disabled")
ON_VALUES = ("", "1", "true", "yes", "on", "enabled")
CACHE_DIR_ENV = "LUNGJAX_CACHE_DIR"
CACHE_FILE = "xla_flags.json"
PROBE_TIMEOUT_S = 120
# A convolution checked against shifted matrix products, on the CPU device; ``jax.devices`` starts
# every backend, so a GPU plugin, which parses XLA_FLAGS too, meets the flag as well.
PROBE = """
import jax, numpy as np
rng = np.random.default_rng(0)
x, w = rng.standard_normal((2, 8, 8, 3), np.float32), rng.standard_normal((3, 3, 3, 4), np.float32)
cpu = jax.devices("cpu")[0]
y = jax.lax.conv_general_dilated(
    jax.device_put(x, cpu), jax.device_put(w, cpu), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
ref = sum(p[:, i:i + 8, j:j + 8] @ w[i, j] for i in range(3) for j in range(3))
raise SystemExit(0 if np.allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4) else 3)
"""


class SettingError(ValueError):
    """``LUNGJAX_XLA_CPU_DEFAULTS`` holds a value that is neither on nor off; the message says which are."""


def enabled() -> bool:
    """Whether ``LUNGJAX_XLA_CPU_DEFAULTS`` (unset: on) turns the defaults on."""
    value = os.environ.get(OPT_OUT_ENV, "")
    if value.strip().lower() in OFF_VALUES:
        return False
    if value.strip().lower() in ON_VALUES:
        return True
    raise SettingError(
        f"{OPT_OUT_ENV}={value!r} is neither off ({', '.join(OFF_VALUES)}) nor on ({', '.join(ON_VALUES[1:])}, or "
        "empty); set one of these or unset it"
    )


def apply_defaults() -> list[str]:
    """Appends the supported default flags to ``os.environ["XLA_FLAGS"]``; returns those it added."""
    if not enabled():
        return []
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge.backends_are_initialized():
        return []  # too late: XLA has parsed its flags, and jax would still key its cache on new ones
    user_flags = os.environ.get("XLA_FLAGS", "").split()
    user_names = {flag.split("=", 1)[0] for flag in user_flags}
    version = importlib.metadata.version("jaxlib")
    added = [flag for flag in DEFAULT_FLAGS if flag.split("=", 1)[0] not in user_names and supported(flag, version)]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([*user_flags, *added])
    return added


def supported(flag: str, jaxlib_version: str) -> bool:
    """Whether this jaxlib runs a convolution correctly with ``flag``: cached, else probed once."""
    key = f"jaxlib {jaxlib_version} {flag}"
    path = cache_dir() / CACHE_FILE
    answers = _read(path)
    if isinstance(answers.get(key), bool):
        return answers[key]
    answer = probe(flag)
    if answer is not None:
        _write(path, {**_read(path), key: answer})
    return bool(answer)


def probe(flag: str) -> bool | None:
    """Runs ``PROBE`` in a child with ``XLA_FLAGS=flag``; None when it did not finish in time (not cached).

    The child starts every installed backend whatever ``JAX_PLATFORMS`` says, as the answer is cached
    for the installation, and preallocates no GPU memory.
    """
    env = {name: value for name, value in os.environ.items() if name != "JAX_PLATFORMS"}
    env.update(XLA_FLAGS=flag, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    try:
        child = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    return child.returncode == 0


def cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lungjax"


def _read(path: Path) -> dict:
    try:
        answers = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or damaged: probe again
        return {}
    return answers if isinstance(answers, dict) else {}


def _write(path: Path, answers: dict) -> None:
    """Atomically (processes starting together may probe at once); skipped where the directory is not writable."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(answers, indent=1, sort_keys=True))
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):  # nothing to remove where the directory could not be made
            partial.unlink()
