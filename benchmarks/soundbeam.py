"""SoundBeam (seed 002) train-step throughput: examples/s, step time, MFU on accelerators.

The step of ``uss_jax.tasks.tse.TSETask``: 6 s mixtures at 16 kHz (96,000 samples), 2 targets per mixture, both clues
(class one-hot and a 6 s enrollment) in one batched call, loss ``tse_loss`` (0.5 L(class) + 0.5 L(enrollment),
L = -0.9 SNR - 0.1 SI-SNR), Adam 1e-3 with clipping at norm 5 (``configs/soundbeam.py``), jitted with the state
donated, compilation excluded. An example = one mixture (2 extractions x 2 clues). No PyTorch reference figure
exists for SoundBeam (seed 002 publishes no code). Prints a table, asserts nothing.

Usage: python benchmarks/soundbeam.py [--size paper] [--batch 1,4] [--seconds 6] [--steps 3] [--classes 20]
       [--remat none,scan]
"""

from __future__ import annotations

import argparse
import os
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import print_table, time_train_step  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.models import soundbeam  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.tasks import tse  # noqa: E402  pylint: disable=wrong-import-position


def bench(size: str, batch: int, seconds: float, steps: int, classes: int, remat: str = "none") -> dict:
  samples = int(seconds * 16000)
  model = soundbeam.soundbeam(size, classes, rngs=nnx.Rngs(0), remat=remat)
  rng = np.random.default_rng(0)
  k = 2  # targets per mixture
  inputs = {
      "mixture": jnp.asarray(rng.standard_normal((batch, samples)) * 0.1, jnp.float32),
      "target": jnp.asarray(rng.standard_normal((batch * k, samples)) * 0.05, jnp.float32),
      "onehot": jax.nn.one_hot(jnp.asarray(rng.integers(classes, size=batch * k)), classes),
      "enrollment": jnp.asarray(rng.standard_normal((batch * k, samples)) * 0.1, jnp.float32),
  }

  def loss_fn(m, x):
    est = m(x["mixture"], x["onehot"], x["enrollment"])
    return tse.tse_loss(est, x["target"])[0]

  tx = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(1e-3))
  return {"size": f"{size}, remat {remat}", "batch": batch,
          **time_train_step(model, loss_fn, inputs, tx, steps=steps, batch=batch)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="paper", choices=sorted(soundbeam.SIZES))
  p.add_argument("--batch", default="1,4")
  p.add_argument("--seconds", type=float, default=6.0)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--classes", type=int, default=20)
  p.add_argument("--remat", default="none", help="comma-separated TCN remat modes (none, block, scan)")
  a = p.parse_args()
  rows = [bench(a.size, int(b), a.seconds, a.steps, a.classes, r) for r in a.remat.split(",")
          for b in a.batch.split(",")]
  print_table(f"SoundBeam train step (fwd + bwd + Adam), {a.seconds:g} s mixtures at 16 kHz, 2 targets x 2 clues",
              rows)


if __name__ == "__main__":
  main()
