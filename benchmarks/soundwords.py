"""SoundWords (seed 003) train-step throughput on a batch-sharded mesh: step time, examples/s, MFU on accelerators, and
the collectives XLA put into the step (the global contrastive gather).

The step of ``uss_jax.tasks.contrastive``: the audio tower (VGGish log-mel -> ResNet-ish, ``--audio`` size) on
``--seconds`` clips at 16 kHz and the text tower (BERT of ``--text`` size: ``minilm`` = all-MiniLM-L6-v2's shape,
``base`` = BERT-base, ``tiny``; random weights, the timing does not depend on them) on ``--tokens`` tokens, the
symmetric contrastive loss over the GLOBAL batch (``contrastive.soundwords_loss``), Adam 5e-5; the batch sharded over
the ``data`` axis of all devices, the state replicated, donated, compilation excluded. The table names the all-gather
of the ``(global batch, D)`` embeddings (the similarity matrix is global) and every other all-gather (on CPU meshes:
XLA gathers the framed audio before the FFT of the log-mel front end, i.e. the front end is not batch-parallel).
Prints a table, asserts nothing.

Usage: python benchmarks/soundwords.py [--batch 64,256] [--audio small] [--text minilm] [--seconds 2] [--steps 3]
       (CPU meshes: XLA_FLAGS=--xla_force_host_platform_device_count=8)
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from uss_jax.models import bert as bert_lib  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.models import soundwords as soundwords_lib  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.tasks import contrastive  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.train import trainer  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import measure_compiled  # noqa: E402  pylint: disable=wrong-import-position

TEXT_SIZES = {
    "tiny": bert_lib.BERT_TINY.to_dict(),
    "minilm": {**bert_lib.BERT_BASE.to_dict(), "hidden_size": 384, "num_hidden_layers": 6,
               "intermediate_size": 1536},  # all-MiniLM-L6-v2 (config.json of the wheel)
    "base": bert_lib.BERT_BASE.to_dict(),
}


def bench(batch: int, audio: str, text: str, seconds: float, tokens: int, steps: int, dim: int) -> dict:
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  spec = {"embedding_dim": dim, "audio": {"size": audio, "width": None, "stages": None},
          "text": {"pooling": "cls", "bert": TEXT_SIZES[text]}}
  model = soundwords_lib.build_soundwords(spec, rngs=nnx.Rngs(0))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  graphdef, state = nnx.split(trainer.TrainState(model, optax.adam(5e-5)))
  state = jax.device_put(state, rep)
  rng = np.random.default_rng(0)
  vocab = TEXT_SIZES[text]["vocab_size"]
  inputs = {"audio": rng.standard_normal((batch, int(seconds * 16000))).astype(np.float32) * 0.1,
            "token_ids": rng.integers(5, vocab, size=(batch, tokens)).astype(np.int32),
            "attention_mask": np.ones((batch, tokens), np.int32)}
  inputs = {k: jax.device_put(v, rows) for k, v in inputs.items()}

  def step(state, batch_):
    ts = nnx.merge(graphdef, state)
    ts.model.train()
    loss, grads = nnx.value_and_grad(lambda m: contrastive.soundwords_loss(m, batch_)[0])(ts.model)
    ts.opt.update(ts.model, grads)
    return nnx.state(ts), loss

  t0 = time.perf_counter()
  compiled = jax.jit(step, in_shardings=(rep, rows), out_shardings=(rep, rep),
                     donate_argnums=0).lower(state, inputs).compile()
  compile_s = time.perf_counter() - t0
  hlo = compiled.as_text()
  gathers = re.findall(r"= \w+\[([\d,]+)\]\S* all-gather\(", hlo)
  embedding_gather = any(sorted(map(int, g.split(","))) == sorted((batch, dim)) for g in gathers)
  others = collections.Counter(g for g in gathers if sorted(map(int, g.split(","))) != sorted((batch, dim)))
  m = measure_compiled(compiled, state, inputs, steps=steps, batch=batch)
  return {"batch": batch, "devices": jax.device_count(), "params_m": round(n_params / 1e6, 2),
          "compile_s": round(compile_s, 1), "step_s": round(m["step_s"], 4),
          "examples_per_s": round(m["examples_per_s"], 1), "mfu": round(m["mfu"], 4),
          "embedding_all_gather": embedding_gather,
          "other_all_gathers": "; ".join(f"[{k}] x{v}" for k, v in sorted(others.items())) or "-",
          "loss": round(m["loss"], 4)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", default="64,256")
  p.add_argument("--audio", default="small", choices=("resnet50", "small", "tiny"))
  p.add_argument("--text", default="minilm", choices=sorted(TEXT_SIZES))
  p.add_argument("--seconds", type=float, default=2.0)
  p.add_argument("--tokens", type=int, default=32)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--steps", type=int, default=3)
  a = p.parse_args()
  rows = [bench(int(b), a.audio, a.text, a.seconds, a.tokens, a.steps, a.dim) for b in a.batch.split(",")]
  print(f"SoundWords train step (fwd + bwd + Adam), audio {a.audio}, text {a.text}, {a.seconds:g} s clips, "
        f"{a.tokens} tokens, {jax.devices()[0].device_kind}")
  keys = list(rows[0])
  print(" | ".join(keys))
  for r in rows:
    print(" | ".join(str(r[k]) for k in keys))


if __name__ == "__main__":
  main()
