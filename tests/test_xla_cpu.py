"""The default XLA CPU flags: probed in a child (an unknown flag aborts only it), cached per jaxlib
version, the user's own setting and the opt-out respected, and numerics unchanged by the flag."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from conftest import CONFIGS, REPO

from lungjax import xla_cpu

FLAG = xla_cpu.DEFAULT_FLAGS[0]
UNKNOWN_FLAG = "--xla_cpu_lungjax_no_such_flag=true"

# A small conv net (7x7/2 stem, 3x3/2, 1x1, dense head) forward and gradient, written to an .npz with
# the number of YNNPACK fusions XLA compiled, so that a comparison can tell the two paths ran.
NET = textwrap.dedent(
    """
    import sys
    import jax, numpy as np

    def conv(x, w, stride):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(params, x):
        h = jax.nn.relu(conv(x, params["stem"], 2))
        h = conv(jax.nn.relu(conv(h, params["mid"], 2)), params["wide"], 1)
        logits = h.mean(axis=(1, 2)) @ params["head"]
        return jax.nn.logsumexp(logits, axis=-1).mean() - logits[:, 0].mean()

    rng = np.random.default_rng(0)
    shapes = {"stem": (7, 7, 1, 16), "mid": (3, 3, 16, 32), "wide": (1, 1, 32, 64), "head": (64, 6)}
    params = {k: rng.standard_normal(s, np.float32) / np.sqrt(np.prod(s[:-1])) for k, s in shapes.items()}
    x = rng.standard_normal((4, 32, 32, 1), np.float32)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    ynn = step.lower(params, x).compile().as_text().count("__ynn_fusion")
    value, (grads, grad_x) = step(params, x)
    np.savez(sys.argv[1], ynn=ynn, loss=value, grad_x=grad_x, **grads)
    """
)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache, no XLA_FLAGS, no opt-out, and JAX's backends not yet started as far as
    ``apply_defaults`` can tell (earlier tests in this process may have started them)."""
    monkeypatch.setenv(xla_cpu.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(xla_cpu.OPT_OUT_ENV, raising=False)
    monkeypatch.setitem(
        sys.modules, "jax._src.xla_bridge", types.SimpleNamespace(backends_are_initialized=lambda: False)
    )
    return tmp_path / "cache" / xla_cpu.CACHE_FILE


def counting_probe(monkeypatch, answer):
    calls = []
    monkeypatch.setattr(xla_cpu, "probe", lambda flag: calls.append(flag) or answer)
    return calls


@pytest.mark.slow  # real child processes
def test_supported_flag_is_probed_for_real_and_added(fresh):
    assert xla_cpu.apply_defaults() == [FLAG]
    assert os.environ["XLA_FLAGS"] == FLAG
    assert xla_cpu._read(fresh) == {f"jaxlib {importlib.metadata.version('jaxlib')} {FLAG}": True}


@pytest.mark.slow  # real child processes
def test_unknown_flag_aborts_only_the_probe_and_is_not_added(fresh, monkeypatch):
    monkeypatch.setattr(xla_cpu, "DEFAULT_FLAGS", (UNKNOWN_FLAG,))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    assert xla_cpu.apply_defaults() == []
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
    assert list(xla_cpu._read(fresh).values()) == [False]


def test_answers_are_cached_per_jaxlib_version_and_flag(fresh, monkeypatch):
    calls = counting_probe(monkeypatch, True)
    assert xla_cpu.supported(FLAG, "1.0") and xla_cpu.supported(FLAG, "1.0")
    assert calls == [FLAG]  # the second call read the cache
    assert xla_cpu.supported(FLAG, "2.0")
    assert calls == [FLAG, FLAG]  # another jaxlib is probed again
    calls = counting_probe(monkeypatch, False)
    assert not xla_cpu.supported("--other=1", "2.0") and not xla_cpu.supported("--other=1", "2.0")
    assert calls == ["--other=1"]  # a refusal is cached as well
    assert len(xla_cpu._read(fresh)) == 3


def test_a_probe_that_timed_out_is_not_cached(fresh, monkeypatch):
    calls = counting_probe(monkeypatch, None)
    assert not xla_cpu.supported(FLAG, "1.0") and not xla_cpu.supported(FLAG, "1.0")
    assert len(calls) == 2 and not fresh.exists()


def test_an_unwritable_cache_dir_still_probes(fresh, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(xla_cpu.CACHE_DIR_ENV, str(tmp_path / "a_file" / "cache"))
    calls = counting_probe(monkeypatch, True)
    assert xla_cpu.supported(FLAG, "1.0") and xla_cpu.supported(FLAG, "1.0")
    assert len(calls) == 2


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(xla_cpu.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert xla_cpu.cache_dir() == tmp_path / "lungjax"
    monkeypatch.setenv(xla_cpu.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert xla_cpu.cache_dir() == tmp_path / "mine"


def test_the_flag_is_appended_to_the_users_other_flags(fresh, monkeypatch):
    counting_probe(monkeypatch, True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_cpu.apply_defaults() == [FLAG]
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}"


def test_the_users_own_value_of_the_flag_wins(fresh, monkeypatch):
    calls = counting_probe(monkeypatch, True)
    theirs = "--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_ELTWISE --xla_cpu_enable_fast_math=false"
    monkeypatch.setenv("XLA_FLAGS", theirs)
    assert xla_cpu.apply_defaults() == []
    assert os.environ["XLA_FLAGS"] == theirs and not calls


@pytest.mark.parametrize("value", ["0", "false", "OFF", "disabled", "Disabled", " no "])
def test_opt_out(fresh, monkeypatch, value):
    calls = counting_probe(monkeypatch, True)
    monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, value)
    assert xla_cpu.apply_defaults() == [] and "XLA_FLAGS" not in os.environ and not calls


@pytest.mark.parametrize("value", ["", "1", "true", "Yes", "ON", "enabled"])
def test_opt_in_spellings_keep_the_defaults(fresh, monkeypatch, value):
    counting_probe(monkeypatch, True)
    monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, value)
    assert xla_cpu.apply_defaults() == [FLAG]


@pytest.mark.parametrize("value", ["maybe", "disable", "2"])
def test_an_unknown_setting_is_refused_naming_the_values_allowed(fresh, monkeypatch, value):
    calls = counting_probe(monkeypatch, True)
    monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, value)
    with pytest.raises(xla_cpu.SettingError, match=f"{xla_cpu.OPT_OUT_ENV}='{value}' is neither off .*disabled"):
        xla_cpu.apply_defaults()
    assert "XLA_FLAGS" not in os.environ and not calls


def test_the_command_line_refuses_an_unknown_setting_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungjax.main",
            f"--config={CONFIGS / 'tiny.py'}",
            f"--workdir={tmp_path / 'run'}",
            "--mode=predict",
            f"--images={tmp_path / 'film.png'}",
        ],
        env={**os.environ, xla_cpu.OPT_OUT_ENV: "maybe"},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        f"lungjax: error: {xla_cpu.OPT_OUT_ENV}='maybe' is neither off (0, false, no, off, disabled) nor on "
        "(1, true, yes, on, enabled, or empty); set one of these or unset it"
    ]
    assert not (tmp_path / "run").exists()


def test_nothing_is_added_once_backends_have_started(fresh, monkeypatch):
    calls = counting_probe(monkeypatch, True)
    monkeypatch.setitem(
        sys.modules, "jax._src.xla_bridge", types.SimpleNamespace(backends_are_initialized=lambda: True)
    )
    assert xla_cpu.apply_defaults() == [] and "XLA_FLAGS" not in os.environ and not calls


@pytest.mark.slow  # real child processes
def test_numerics_with_the_flag_equal_those_without(tmp_path):
    """One process per setting, both at once: XLA reads XLA_FLAGS once per process."""
    script = tmp_path / "net.py"
    script.write_text(NET)
    runs = {
        name: subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"{name}.npz")],
            env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags},
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, flags in (("with", FLAG), ("without", ""))
    }
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name}: {stderr[-2000:]}"
    with_flag, without = np.load(tmp_path / "with.npz"), np.load(tmp_path / "without.npz")
    assert with_flag["ynn"] < without["ynn"]  # the flag took the convolutions off YNNPACK
    for key in ("loss", "grad_x", "stem", "mid", "wide", "head"):
        scale = np.abs(without[key]).max()
        np.testing.assert_allclose(with_flag[key], without[key], rtol=1e-4, atol=1e-5 * scale, err_msg=key)
