"""Learning-rate schedules and optimizers named in configs (uss_jax/train/optim.py) against hand values."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uss_jax.train import optim


def test_uss_step_schedule_matches_the_reference_warm_up():
  # bytedance/uss get_lr_lambda: x0.001 below 10k steps, x0.01 below 20k, x0.1 below 30k, then x1.
  sched = optim.make_schedule({"name": "step", "boundaries": [10_000, 20_000, 30_000],
                               "factors": [0.001, 0.01, 0.1, 1.0]}, peak=1e-3, total_steps=10**6)
  for step, factor in [(0, 0.001), (9_999, 0.001), (10_000, 0.01), (25_000, 0.1), (30_000, 1.0), (999_999, 1.0)]:
    assert math.isclose(float(sched(step)), 1e-3 * factor, rel_tol=1e-6), step


def test_warmup_half_cycle_cosine_matches_the_mae_formula():
  peak, warm, total = 4e-4, 10, 110
  sched = optim.make_schedule({"name": "warmup_cosine", "warmup_steps": warm}, peak=peak, total_steps=total)
  for step in [0, 5, 10, 35, 60, 109]:
    if step < warm:
      expected = peak * step / warm
    else:  # MAE util/lr_sched.py: lr * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))
      expected = peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
    assert math.isclose(float(sched(step)), expected, rel_tol=1e-5, abs_tol=1e-9), step


def test_amsgrad_adamw_with_clipping_matches_a_numpy_step():
  tx, _ = optim.make_optimizer({"name": "adamw", "learning_rate": 0.1, "amsgrad": True, "weight_decay": 0.5,
                                "grad_clip_norm": 1.0}, {"name": "constant"}, total_steps=10)
  p = {"w": jnp.array([1.0, 3.0])}
  g = {"w": jnp.array([3.0, 4.0])}  # norm 5 -> clipped to norm 1
  state = tx.init(p)
  updates, state = tx.update(g, state, p)
  gc = np.array([0.6, 0.8])
  m, v = 0.1 * gc, 0.001 * gc**2
  m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.999)
  expected = -0.1 * (m_hat / (np.sqrt(v_hat) + 1e-8) + 0.5 * np.array([1.0, 3.0]))
  np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5)


def test_bad_names_raise_clear_errors():
  with pytest.raises(ValueError, match="config.schedule.name"):
    optim.make_schedule({"name": "linear-ish"}, 1.0, 10)
  with pytest.raises(ValueError, match="config.optimizer.name"):
    optim.make_optimizer({"name": "lamb"}, {"name": "constant"}, 10)
  with pytest.raises(ValueError, match="len\\(factors\\)"):
    optim.make_schedule({"name": "step", "boundaries": [1], "factors": [1.0]}, 1.0, 10)
  assert isinstance(optim.make_optimizer({"name": "sgd"}, {"name": "constant"}, 10)[0],
                    optax.GradientTransformation)
