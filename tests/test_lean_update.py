"""The CPU memory measures of training: the update split in two programs, and XLA's
memory-minimising CPU schedule asked for before JAX starts."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigthoughts.training.state import LEAN_CPU_FLAG, SplitUpdate, optimizer_step


def _loss_and_grads(params, x, y):
    def loss_fn(p):
        pred = jnp.tanh(x @ p["w"]) @ p["v"]
        loss = jnp.mean((pred - y) ** 2)
        return loss, {"mean_pred": pred.mean()}

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def test_split_update_matches_the_fused_update():
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(16, 8))), jnp.asarray(rng.normal(size=(16, 1)))
    init = {"w": jnp.asarray(rng.normal(size=(8, 4))), "v": jnp.asarray(rng.normal(size=(4, 1)))}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))

    @jax.jit
    def fused(params, opt_state, x, y):
        (loss, aux), grads = _loss_and_grads(params, x, y)
        params, opt_state, norm = optimizer_step(tx, params, opt_state, grads)
        return params, opt_state, {"loss": loss, "grad_norm": norm, **aux}

    split = SplitUpdate(_loss_and_grads, tx)
    a = jax.tree_util.tree_map(jnp.copy, init)
    b = jax.tree_util.tree_map(jnp.copy, init)
    sa, sb = tx.init(a), tx.init(b)
    for _ in range(3):
        a, sa, aux_a = fused(a, sa, x, y)
        b, sb, aux_b = split(b, sb, x, y)
        assert set(aux_a) == set(aux_b) == {"loss", "grad_norm", "mean_pred"}
        for k in aux_a:
            np.testing.assert_allclose(aux_a[k], aux_b[k], rtol=1e-6)
    for k in init:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
        assert not np.allclose(a[k], init[k])  # the weights moved


def _child(code: str, flags: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if flags is not None:
        env["XLA_FLAGS"] = flags
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.split("\n")


PROBE = """
import os, jax
from bigthoughts.training.state import lean_cpu_scheduler
first = lean_cpu_scheduler()
print(first)
print(os.environ.get("XLA_FLAGS", ""))
jax.devices()
print(lean_cpu_scheduler())
"""


def test_lean_cpu_scheduler_is_asked_for_before_jax_starts():
    first, flags, again, _ = _child(PROBE, None)
    assert first == "True" and LEAN_CPU_FLAG in flags and again == "True"


def test_a_users_own_scheduler_choice_is_kept():
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    first, flags, again, _ = _child(PROBE, mine)
    assert first == "False" and flags == mine and again == "False"


def test_too_late_once_jax_has_started():
    code = ("import jax; jax.devices()\n"
            "from bigthoughts.training.state import lean_cpu_scheduler\n"
            "import os; print(lean_cpu_scheduler()); print(os.environ.get('XLA_FLAGS', ''))")
    late, flags, _ = _child(code, None)
    assert late == "False" and flags == ""
