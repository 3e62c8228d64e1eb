"""Train-step throughput of PANNs Cnn14 (the tagging / SED model): examples/s, step time, and MFU on accelerators.

Usage: python benchmarks/cnn14.py [--batch 1,4] [--seconds 10] [--sample-rate 32000] [--steps 5] [--dtype float32]
       (on a GPU: --batch 16,32 --dtype bfloat16)

The step is the trainer's: log-mel front end + SpecAugment + Cnn14 (DecisionLevelMax head) forward, BCE, backward,
AdamW update, jitted with the state donated, compilation excluded. FLOPs come from XLA's cost analysis of the compiled
step; MFU = FLOPs / step time / device peak (uss_jax.train.trainer.PEAK_FLOPS; none on CPU). Prints a table, asserts
nothing.
"""

from __future__ import annotations

import argparse
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import uss_jax  # noqa: F401  (flax eager sharding off)
from uss_jax import losses
from uss_jax.models import cnn14
from uss_jax.train import trainer


def bench(batch: int, seconds: float, sample_rate: int, steps: int, dtype: str) -> dict[str, float]:
  model = cnn14.Cnn14(num_classes=527, head="decision_max", frontend="panns", sample_rate=sample_rate,
                      dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
  state = trainer.TrainState(model, optax.adamw(1e-3))
  graphdef, params = nnx.split(state)

  def step(params, wav, labels, key):
    ts = nnx.merge(graphdef, params)
    ts.model.train()

    def loss_fn(m):
      out = m(wav, rngs=nnx.Rngs(default=key))
      return losses.sigmoid_bce(out["logits"], labels)

    loss, grads = nnx.value_and_grad(loss_fn)(ts.model)
    ts.opt.update(ts.model, grads)
    return nnx.state(ts), loss

  rng = np.random.default_rng(0)
  wav = jnp.asarray(rng.standard_normal((batch, int(seconds * sample_rate)), np.float32) * 0.1)
  labels = jnp.asarray(rng.random((batch, 527)) < 0.01, jnp.float32)
  compiled = jax.jit(step, donate_argnums=0).lower(params, wav, labels, jax.random.key(0)).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  flops = float((analysis or {}).get("flops", 0.0))
  params, loss = compiled(params, wav, labels, jax.random.key(0))  # warm-up
  jax.block_until_ready(loss)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    params, loss = compiled(params, wav, labels, jax.random.key(i + 1))
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  peak = trainer.peak_flops(jax.devices()[0])
  return {"batch": batch, "step_s": step_s, "examples_per_s": batch / step_s, "gflop_per_step": flops / 1e9,
          "mfu": flops / step_s / peak if peak else float("nan")}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", default="1,4")
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--sample-rate", type=int, default=32000)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32")
  a = p.parse_args()
  dev = jax.devices()[0]
  print(f"Cnn14 train step (fwd + bwd + AdamW), {a.seconds:g} s at {a.sample_rate} Hz, {a.dtype}, "
        f"device {dev.platform}:{dev.device_kind}, jax {jax.__version__}")
  print(f"{'batch':>5} {'step s':>8} {'examples/s':>11} {'GFLOP/step':>11} {'MFU':>6}")
  for b in [int(x) for x in a.batch.split(",")]:
    r = bench(b, a.seconds, a.sample_rate, a.steps, a.dtype)
    mfu = "-" if np.isnan(r["mfu"]) else f"{r['mfu']:.1%}"
    print(f"{r['batch']:>5} {r['step_s']:>8.3f} {r['examples_per_s']:>11.2f} {r['gflop_per_step']:>11.1f} {mfu:>6}")


if __name__ == "__main__":
  main()
