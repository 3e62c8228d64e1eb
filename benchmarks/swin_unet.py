"""CaRE-SEP (and ST-SED-SEP) train step at recipe size: step time, examples/s, XLA temporary memory, MFU.

  python benchmarks/swin_unet.py                                  # configs/care_sep.py D = 96 and D = 256 ("2048")
  python benchmarks/swin_unet.py --variants smoke --batch 8       # CPU-sized
  python benchmarks/swin_unet.py --system st_sed_sep --variants ""

One jitted step = the joint_separation task's loss (Eq. (1) on both sources of each mixture: 2 x batch separations
+ the query passes, MAE + SDR, CLS BCE when the variant has it), its gradient and an AdamW update, on random
segments of ``config.data.segment_seconds`` (10 s at full size: the HTS-AT 1024-frame image) replicated over the
devices' batch axis. Prints a table; asserts no time.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import types

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from uss_jax.models import registry  # noqa: E402
from uss_jax.tasks.joint_separation import JointSeparationTask  # noqa: E402
from uss_jax.train import trainer  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_step import measure_compiled  # noqa: E402  pylint: disable=wrong-import-position


def bench(system: str, variant: str, batch: int, steps: int, classes: int) -> dict:
  from configs import care_sep, st_sed_sep  # pylint: disable=import-outside-toplevel
  config = (care_sep if system == "care_sep" else st_sed_sep).get_config(variant)
  model = registry.build_system(config, {"num_classes": classes}, nnx.Rngs(0))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  opt = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=5e-4)
  graphdef, state = nnx.split(trainer.TrainState(model, opt))
  state = jax.device_put(state, rep)
  sr = int(config.data.sample_rate)
  n = int(round(config.data.segment_seconds * sr))
  rng = np.random.default_rng(0)
  target, interferer = (0.1 * rng.standard_normal((2, batch, n))).astype(np.float32)
  inputs = {"mixture": target + interferer, "target": target, "interferer": interferer,
            "class_id": rng.integers(0, classes, batch).astype(np.int32),
            "interferer_class_id": rng.integers(0, classes, batch).astype(np.int32)}
  inputs = {k: jax.device_put(v, rows) for k, v in inputs.items()}
  task = types.SimpleNamespace(config=config)

  def step(state, batch_):
    ts = nnx.merge(graphdef, state)
    ts.model.train()
    loss, grads = nnx.value_and_grad(lambda m: JointSeparationTask.loss(task, m, batch_, nnx.Rngs(0))[0])(ts.model)
    ts.opt.update(ts.model, grads)
    return nnx.state(ts), loss

  t0 = time.perf_counter()
  compiled = jax.jit(step, in_shardings=(rep, rows), out_shardings=(rep, rep),
                     donate_argnums=0).lower(state, inputs).compile()
  compile_s = time.perf_counter() - t0
  m = measure_compiled(compiled, state, inputs, steps=steps, batch=batch)
  return {"system": system, "variant": variant or "full", "query_dim": int(model.interface().condition_size),
          "batch": batch, "seconds": config.data.segment_seconds, "params_m": round(n_params / 1e6, 2),
          "compile_s": round(compile_s, 1), "step_s": round(m["step_s"], 4),
          "examples_per_s": round(m["examples_per_s"], 2), "xla_temp_gib": round(m["temp_gib"], 2),
          "mfu": round(m["mfu"], 4), "loss": round(m["loss"], 3)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--system", default="care_sep", choices=("care_sep", "st_sed_sep"))
  p.add_argument("--variants", default=",2048", help="comma-separated config variants ('' = full, D = 96)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--classes", type=int, default=527)
  a = p.parse_args()
  out = [bench(a.system, v, a.batch, a.steps, a.classes) for v in a.variants.split(",")]
  print(f"{a.system} train step (both sources, fwd + bwd + AdamW), {jax.devices()[0].device_kind}, "
        f"{jax.device_count()} device(s)")
  keys = list(out[0])
  print(" | ".join(keys))
  for r in out:
    print(" | ".join(str(r[k]) for k in keys))


if __name__ == "__main__":
  main()
