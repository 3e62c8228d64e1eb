"""SoundFilter (seed 003) train-step throughput: examples/s, step time, MFU on accelerators.

The step of ``uss_jax.tasks.soundfilter.SoundFilterTask``: 2 s crops at 16 kHz (32,000 samples), the conditioning
encoder on a 2 s audio condition, the U-Net's enhanced and suppressed outputs, loss ``soundfilter_loss``
(softplus(30 - SI-SDR) on both outputs + the soft-clipped mixture-consistency SNR), Adam 1e-4, jitted with the
state donated, compilation excluded. No PyTorch reference figure exists (seed 003 publishes no code; the paper
trains at batch 512 on 32 TPU v3 cores). Prints a table, asserts nothing.

Usage: python benchmarks/soundfilter.py [--size paper] [--batch 8,32] [--seconds 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import sys

from flax import nnx
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import print_table, time_train_step  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.models import soundfilter  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.tasks.soundfilter import soundfilter_loss  # noqa: E402  pylint: disable=wrong-import-position


def bench(size: str, batch: int, seconds: float, steps: int) -> dict:
  samples = int(seconds * 16000)
  model = soundfilter.build_soundfilter(size, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  target = rng.standard_normal((batch, samples)) * 0.1
  background = rng.standard_normal((batch, samples)) * 0.1
  inputs = {"mixture": jnp.asarray(target + background, jnp.float32), "target": jnp.asarray(target, jnp.float32),
            "background": jnp.asarray(background, jnp.float32),
            "condition": jnp.asarray(rng.standard_normal((batch, samples)) * 0.1, jnp.float32)}

  def loss_fn(m, x):
    out = m(x["mixture"], x["condition"])
    return soundfilter_loss(x["mixture"], x["target"], x["background"], out["enhanced"], out["suppressed"],
                            condition=x["condition"])[0]

  return {"size": size, "batch": batch,
          **time_train_step(model, loss_fn, inputs, optax.adam(1e-4), steps=steps, batch=batch)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="paper", choices=sorted(soundfilter.SIZES))
  p.add_argument("--batch", default="8,32")
  p.add_argument("--seconds", type=float, default=2.0)
  p.add_argument("--steps", type=int, default=3)
  a = p.parse_args()
  rows = [bench(a.size, int(b), a.seconds, a.steps) for b in a.batch.split(",")]
  print_table(f"SoundFilter train step (fwd + bwd + Adam), {a.seconds:g} s crops at 16 kHz", rows)


if __name__ == "__main__":
  main()
