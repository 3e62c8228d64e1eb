"""Anchor mining throughput: clips/s of ``data_pipelines.anchors.mine_anchors`` with a full-size detector.

Usage: python benchmarks/anchors.py [--clips 32] [--batch 8,16] [--seconds 10] [--sample-rate 32000] [--mesh]
       [--dtype float32]   (on a GPU: --clips 512 --batch 32,64 --mesh)

Detector: PANNs Cnn14_DecisionLevelMax (527 classes, random weights; the PANNs log-mel front end inside), eval mode.
Source: ``--clips`` random int16 clips of ``--seconds`` at ``--sample-rate`` with 1-3 random positive labels each, in
memory (so disk reads are not measured). A first run into a scratch folder compiles; the timed run mines into a fresh
folder (chunk files, metadata, host-side row assembly included). ``detector only`` is the jitted forward on the same
batches (no rule, no host work). ``setup s`` is a rerun over the finished folder (detector probe, weight digest,
metadata, loading the index): a fixed cost per call; ``w/o setup`` is the throughput without it, and ``overhead`` =
1 - (w/o setup) / (detector only) is what the rule, batch assembly, transfers and chunk writes cost per clip.
Clips/s are per process (all devices of the mesh together). Prints a table, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

import uss_jax  # noqa: F401  (flax eager sharding off)
from data_pipelines import anchors
from uss_jax.models import cnn14
from uss_jax.train import sharding


def make_source(clips: int, samples: int, classes: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(clips):
    labels = np.zeros(classes, np.uint8)
    labels[rng.choice(classes, size=int(rng.integers(1, 4)), replace=False)] = 1
    out.append({"waveform": (rng.standard_normal(samples) * 3000).astype(np.int16), "labels": labels})
  return out


def detector_only(model: nnx.Module, source, batch: int, mesh) -> float:
  """Seconds for the jitted forward over ``source`` in batches (compiled first), results fetched to the host."""
  graphdef, state = nnx.split(model)

  def fwd(state, wave):
    m = nnx.merge(graphdef, state)
    m.eval()
    return m(wave)["framewise_output"]

  fwd = jax.jit(fwd)
  waves = np.stack([s["waveform"].astype(np.float32) / 32768.0 for s in source])
  put = (lambda x: sharding.make_global_batch({"w": x}, sharding.batch_sharding(mesh))["w"]) if mesh else jnp.asarray
  jax.block_until_ready(fwd(state, put(waves[:batch])))
  t = time.perf_counter()
  for b0 in range(0, len(waves), batch):
    np.asarray(fwd(state, put(waves[b0:b0 + batch]))[:, :1, :1])
  return time.perf_counter() - t


def bench(clips: int, batch: int, seconds: float, sample_rate: int, use_mesh: bool, dtype: str) -> dict[str, float]:
  model = cnn14.Cnn14(527, head="decision_max", frontend="panns", sample_rate=sample_rate, dtype=jnp.dtype(dtype),
                      rngs=nnx.Rngs(0))
  mesh = sharding.create_mesh({"data": -1}) if use_mesh else None
  source = make_source(clips, int(seconds * sample_rate), 527)
  kw = dict(sample_rate=sample_rate, segment_seconds=2.0, batch_size=batch, mesh=mesh, chunk_size=max(batch, 64))
  with tempfile.TemporaryDirectory() as tmp:
    anchors.mine_anchors(model, source[:batch], out_dir=os.path.join(tmp, "warm"), **kw)  # compile
    t = time.perf_counter()
    index = anchors.mine_anchors(model, source, out_dir=os.path.join(tmp, "timed"), **kw)
    mine_s = time.perf_counter() - t
    t = time.perf_counter()
    anchors.mine_anchors(model, source, out_dir=os.path.join(tmp, "timed"), **kw)  # all chunks done: setup only
    setup_s = time.perf_counter() - t
  fwd_s = detector_only(model, source, batch, mesh)
  steady_s = mine_s - setup_s
  return {"batch": batch, "clips": clips, "rows": len(index), "mine_s": mine_s, "setup_s": setup_s,
          "clips_per_s": clips / mine_s, "steady_clips_per_s": clips / steady_s, "fwd_clips_per_s": clips / fwd_s,
          "overhead": 1 - fwd_s / steady_s}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--clips", type=int, default=32)
  p.add_argument("--batch", default="8,16")
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--sample-rate", type=int, default=32000)
  p.add_argument("--mesh", action="store_true", help="shard each batch over all devices (data axis)")
  p.add_argument("--dtype", default="float32")
  a = p.parse_args()
  dev = jax.devices()[0]
  print(f"Anchor mining, Cnn14_DecisionLevelMax (random weights, {a.dtype}), {a.clips} clips of {a.seconds:g} s at "
        f"{a.sample_rate} Hz, 2 s segments; device {dev.platform}:{dev.device_kind} x "
        f"{jax.device_count() if a.mesh else 1}, jax {jax.__version__}")
  print(f"{'batch':>5} {'rows':>5} {'mine s':>8} {'setup s':>8} {'clips/s':>8} {'w/o setup':>10} "
        f"{'detector-only':>14} {'overhead':>9}")
  for b in [int(x) for x in a.batch.split(",")]:
    r = bench(a.clips, b, a.seconds, a.sample_rate, a.mesh, a.dtype)
    print(f"{r['batch']:>5} {r['rows']:>5} {r['mine_s']:>8.2f} {r['setup_s']:>8.2f} {r['clips_per_s']:>8.2f} "
          f"{r['steady_clips_per_s']:>10.2f} {r['fwd_clips_per_s']:>14.2f} {r['overhead']:>8.1%}")


if __name__ == "__main__":
  main()
