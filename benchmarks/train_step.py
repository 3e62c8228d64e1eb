"""Shared timing of a jitted train step (fwd + bwd + optimizer, state donated) for the benchmark scripts.

``time_train_step(model, loss_fn, inputs, tx)`` compiles ``(state, inputs) -> (state, loss)`` once (the trainer's
pattern: ``nnx.split`` of ``uss_jax.train.trainer.TrainState``, ``nnx.value_and_grad``, donation), reads the FLOPs of
the compiled step from XLA's cost analysis, and times further calls. MFU = FLOPs / step time / the device's peak
(``uss_jax.train.trainer.peak_flops``; none on a CPU). Asserts nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx
import jax
import numpy as np
import optax

import uss_jax  # noqa: F401  (flax eager sharding off)
from uss_jax.train import trainer


def time_train_step(model: nnx.Module, loss_fn: Callable[[nnx.Module, Mapping[str, jax.Array]], jax.Array],
                    inputs: Mapping[str, jax.Array], tx: optax.GradientTransformation, *, steps: int = 3,
                    batch: int, wrt: Any = nnx.Param) -> dict[str, Any]:
  """Compile + time one train step.

  Args:
    model: the model (put in train mode).
    loss_fn: ``(model, inputs) -> scalar loss``.
    inputs: the step's arrays (fixed across steps).
    tx: the optimizer.
    steps: timed calls after one warm-up call (median reported).
    batch: examples per step (for examples/s).
    wrt: the trained variables (an ``nnx`` filter, as a task's ``trainable``); the others get no optimizer state
      and no update.

  Returns:
    dict: ``params_m`` (millions), ``compile_s``, ``step_s`` (median), ``examples_per_s``, ``gflop_per_step``,
    ``mfu`` (NaN without a known peak), ``temp_gib`` (XLA's temporary buffers of the step, i.e. activations kept
    for the backward pass and workspace), ``loss`` (last).
  """
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  graphdef, state = nnx.split(trainer.TrainState(model, tx, wrt=wrt))

  def step(state, inputs):
    ts = nnx.merge(graphdef, state)
    ts.model.train()
    loss, grads = nnx.value_and_grad(lambda m: loss_fn(m, inputs), argnums=nnx.DiffState(0, wrt))(ts.model)
    ts.opt.update(ts.model, grads)
    return nnx.state(ts), loss

  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state, inputs).compile()
  compile_s = time.perf_counter() - t0
  return {"params_m": n_params / 1e6, "compile_s": compile_s,
          **measure_compiled(compiled, state, inputs, steps=steps, batch=batch)}


def measure_compiled(compiled: Any, state: Any, inputs: Any, *, steps: int, batch: int) -> dict[str, Any]:
  """Times a compiled ``(state, inputs) -> (state, loss)`` step (state donated) and reads XLA's analyses.

  Args:
    compiled: ``jax.jit(...).lower(state, inputs).compile()`` of the step, with any shardings.
    state, inputs: its arguments; ``state`` is consumed (donated) and threaded through the calls.
    steps: timed calls after one warm-up call (median reported).
    batch: examples per step (for examples/s).

  Returns:
    dict: ``step_s`` (median), ``examples_per_s``, ``gflop_per_step`` (XLA cost analysis), ``mfu`` (NaN without a
    known peak, ``uss_jax.train.trainer.peak_flops``), ``temp_gib`` (XLA's temporary buffers: activations kept for
    the backward pass and workspace), ``loss`` (last).
  """
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  flops = float((analysis or {}).get("flops", 0.0))
  memory = compiled.memory_analysis()
  temp_gb = float(getattr(memory, "temp_size_in_bytes", 0) or 0) / 2**30
  state, loss = compiled(state, inputs)
  jax.block_until_ready(loss)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, loss = compiled(state, inputs)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  peak = trainer.peak_flops(jax.devices()[0])
  return {"step_s": step_s, "examples_per_s": batch / step_s, "gflop_per_step": flops / 1e9,
          "mfu": flops / step_s / peak if peak and flops else float("nan"), "temp_gib": temp_gb,
          "loss": float(loss)}


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
  """Prints ``title`` and one line per result of ``time_train_step`` (with its ``batch`` and ``size``)."""
  dev = jax.devices()[0]
  print(f"{title}; device {dev.platform}:{dev.device_kind}, jax {jax.__version__}")
  print(f"{'size':>6} {'batch':>5} {'params M':>9} {'compile s':>10} {'step s':>8} {'examples/s':>11} "
        f"{'GFLOP/step':>11} {'MFU':>6} {'temp GiB':>9}")
  for r in rows:
    mfu = "-" if np.isnan(r["mfu"]) else f"{r['mfu']:.1%}"
    print(f"{r['size']:>6} {r['batch']:>5} {r['params_m']:>9.2f} {r['compile_s']:>10.1f} {r['step_s']:>8.3f} "
          f"{r['examples_per_s']:>11.2f} {r['gflop_per_step']:>11.1f} {mfu:>6} {r['temp_gib']:>9.2f}")
