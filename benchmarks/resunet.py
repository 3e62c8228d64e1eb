"""Full-size ResUNet30 (bytedance/uss) on the CPU: train-step time and separation real-time factor, beside PyTorch.

Train step = forward + backward of the L1 waveform loss ``mean|y_hat - y|`` + AdamW (amsgrad, lr 1e-3, betas
(0.9, 0.999), wd 0; ``uss_jax.train.optim.make_optimizer``), BatchNorm in train mode, on 2 s segments at 32 kHz
(64,000 samples), jitted with the state donated. Separation: ``uss_jax.inference.real_time_factor``, i.e. the path of
``uss-jax separate`` (4 s chunks with 50 % Hann overlap-add, so every sample goes through the model twice, batches
of ``--sep_batch`` chunks through one jitted eval-mode forward) on a ``--seconds`` long synthetic mixture;
real-time factor (RTF) = wall time / audio duration. ``--rtf_recipes`` adds the RTF of recipe-built systems
(``uss_resunet30:smoke`` = the quickstart size) on a ``--rtf_seconds`` long mixture (default ``--seconds``).

PyTorch side by side, measured in the same run (never a stored figure): with ``--torch_python PATH`` (an interpreter
of a benchmark-only environment with torch + numpy; torch is never a project dependency) the script runs
``benchmarks/torch_reference/resunet30.py`` as a subprocess: a PyTorch ResUNet30 with bytedance/uss's state_dict
layout, first checked against the parity fixture (``tests/fixtures/parity/uss_resunet30``: weight rule on the
manifest, ``inputs.npz`` -> ``outputs.npz``; the relative error is printed), then timed with
``torch.set_num_threads(2)`` on the same chunking (4 s chunks, 50 % Hann overlap-add, ``--sep_batch`` chunks per
call, eval mode, ``torch.inference_mode``) and mixture length, and on the same train step (L1 + AdamW amsgrad).
Without it: "PyTorch reference: not measured (no --torch_python)". Never asserts a time: the machine is shared;
the load average (``/proc/loadavg``) is printed before and after each measurement.

Usage: ``python benchmarks/resunet.py [--batches 1,4] [--steps 3] [--seconds 120] [--sep_batch 4]
[--rtf_recipes 'uss_resunet30:smoke'] [--rtf_seconds 600] [--train_recipes 'uss_resunet30;mae_resunet:frozen']
[--torch_python /work/torchbench/bin/python] [--profile]``. ``--train_recipes`` times the separator train step of
recipe-built systems (MAE-ResUNet frozen / updated beside ResUNet30: step time, examples/s, XLA temp memory).
``--profile`` also times the pieces of one eval forward (STFT, U-Net, mask + iSTFT) and the encoder / decoder
blocks' forward + backward separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax import inference
from uss_jax.models.resunet import ResUNet30, count_params
from uss_jax.train import optim

SAMPLE_RATE = 32000
SEGMENT = 2 * SAMPLE_RATE
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "parity", "uss_resunet30")


def loadavg() -> str:
  """The 1 / 5 / 15 minute load averages (the two cores are shared with other jobs)."""
  try:
    with open("/proc/loadavg", encoding="utf-8") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return "n/a"


def torch_reference(python: str | None, seconds: float, sep_batch: int, batches: str, steps: int) -> dict | None:
  """Runs ``torch_reference/resunet30.py`` with ``python`` (parity check, then timings); None when not measurable."""
  if not python:
    return None
  cmd = [python, os.path.join(HERE, "torch_reference", "resunet30.py"), "--fixture", FIXTURE, "--seconds",
         str(seconds), "--sep_batch", str(sep_batch), "--train_batches", batches, "--steps", str(steps)]
  load0 = loadavg()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  except OSError as e:
    print(f"PyTorch reference: not measured ({e})")
    return None
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    print(f"PyTorch reference: not measured (exit {proc.returncode}: {(proc.stderr or proc.stdout)[-600:]})")
    return None
  res = json.loads(lines[-1][len("RESULT "):])
  res["load"] = f"{load0} -> {loadavg()}"
  return res


def _timeit(fn, repeats: int) -> tuple[float, float]:
  """(first call incl. compilation, median of ``repeats`` further calls) in seconds; ``fn`` must block."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def make_train_step(model: ResUNet30):
  """A jitted ``(state, mixture, condition, target) -> (state, loss)`` over the split (model, optimizer) state
  (donated), the pattern of ``uss_jax.train.trainer``."""
  tx, _ = optim.make_optimizer({"name": "adamw", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                                "weight_decay": 0.0, "amsgrad": True}, {"name": "constant"}, total_steps=1)
  graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))

  def step(state, mixture, condition, target):
    model, opt = nnx.merge(graphdef, state)
    model.train()

    def loss_fn(m):
      return jnp.mean(jnp.abs(m(mixture, condition)["waveform"] - target))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return nnx.state((model, opt)), loss

  return jax.jit(step, donate_argnums=0), state


def bench_train(batch: int, steps: int) -> tuple[float, float, float]:
  """(compile + first step s, median step s, final loss) for a fresh full-size model."""
  model = ResUNet30(rngs=nnx.Rngs(0))
  model.train()
  step, state = make_train_step(model)
  rng = np.random.default_rng(batch)
  mixture = jnp.asarray(rng.standard_normal((batch, SEGMENT)) * 0.1, jnp.float32)
  target = mixture * 0.5
  condition = jnp.asarray(rng.standard_normal((batch, 2048)), jnp.float32)
  holder = {"state": state, "loss": None}

  def run():
    holder["state"], holder["loss"] = step(holder["state"], mixture, condition, target)
    jax.block_until_ready(holder["loss"])

  first, median = _timeit(run, steps)
  return first, median, float(holder["loss"])


class _WaveformOnly(nnx.Module):
  """ResUNet30 with the ``(mixture, condition) -> waveform`` interface ``uss_jax.inference.Separator`` expects."""

  def __init__(self, separator: ResUNet30):
    self.separator = separator

  def __call__(self, mixture, condition):
    return self.separator(mixture, condition)["waveform"]


def bench_separation(seconds: float, sep_batch: int, chunk_seconds: float | None) -> dict:
  """``uss_jax.inference.real_time_factor``: the real ``uss-jax separate`` path (4 s chunks, 50 % overlap-add,
  ``sep_batch`` chunks per call) on a ``seconds`` long mixture at 32 kHz, full-size untrained model."""
  separator = inference.Separator(_WaveformOnly(ResUNet30(rngs=nnx.Rngs(0))), sample_rate=SAMPLE_RATE,
                                  segment_seconds=2.0, embedding_dim=2048, description="full-size ResUNet30")
  return inference.real_time_factor(separator, seconds, chunk_seconds=chunk_seconds, batch_size=sep_batch, repeats=1)


def profile(batch: int) -> None:
  """Times the pieces of the eval forward and the fwd + bwd of the encoder / decoder halves."""
  model = ResUNet30(rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, SEGMENT)) * 0.1, jnp.float32)
  c = jnp.asarray(rng.standard_normal((batch, 2048)), jnp.float32)

  def part(name, fn, *args):
    f = jax.jit(fn)
    first, med = _timeit(lambda: jax.block_until_ready(f(*args)), 3)
    print(f"  {name:<42s} {med * 1e3:9.1f} ms   (first call {first:6.1f} s)")

  spec = jax.jit(lambda s, a: nnx.merge(graphdef, s).spectrogram(a))(state, x)
  logits = jax.jit(lambda s, m: nnx.merge(graphdef, s).unet(m, c))(state, spec[0])
  print(f"profile, eval forward, batch {batch}:")
  part("STFT + magnitude / phase", lambda s, a: nnx.merge(graphdef, s).spectrogram(a), state, x)
  part("U-Net (bn0 .. after_conv)", lambda s, m: nnx.merge(graphdef, s).unet(m, c), state, spec[0])
  part("mask + iSTFT", lambda s, l, m, co, si: nnx.merge(graphdef, s).apply_mask(l, m, co, si, SEGMENT),
       state, logits, *spec)
  part("whole forward", lambda s, a: nnx.merge(graphdef, s)(a, c)["waveform"], state, x)

  def grad_of(fn):
    return lambda s, *a: jax.grad(lambda p: jnp.sum(fn(p, *a)))(s)

  model.train()
  graphdef, state = nnx.split(model)
  print(f"profile, train-mode forward + backward, batch {batch}:")
  part("U-Net fwd + bwd", grad_of(lambda s, m: nnx.merge(graphdef, s).unet(m, c)), state, spec[0])
  part("STFT + mask + iSTFT fwd + bwd (no U-Net)",
       grad_of(lambda s, a, l: nnx.merge(graphdef, s).apply_mask(l, *nnx.merge(graphdef, s).spectrogram(a),
                                                                  SEGMENT)), state, x, logits)
  h = jnp.asarray(rng.standard_normal((batch, 224, 1024, 32)), jnp.float32)
  part("encoder_block1 fwd + bwd (224x1024x32)",
       grad_of(lambda s, a: nnx.merge(graphdef, s).encoder_block1(a, c)[1]), state, h)
  h2 = jnp.asarray(rng.standard_normal((batch, 112, 512, 64)), jnp.float32)
  part("decoder_block6 fwd + bwd (-> 224x1024x32)",
       grad_of(lambda s, a, k: nnx.merge(graphdef, s).decoder_block6(a, k, c)), state, h2, h)


def _recipe_system(recipe: str):
  """``(config, system)``: the system a recipe builds (``configs/<recipe>.py:<variant>``, e.g.
  ``uss_resunet30:smoke`` = the quickstart size), built by the model registry with untrained weights (timings do not
  depend on them). MAE-ResUNet recipes get an A-MAE encoder context: ViT-B for full-size variants
  (``mae_resunet:frozen``), ViT-small for ``smoke`` / ``tiny``. SoundFilter recipes are built with
  ``condition.mode='audio'`` (a jointly trained audio encoder instead of a frozen SoundWords run, which a recipe alone
  does not name): the generator, which is what separation runs per chunk, is the same; the condition is computed
  once per file."""
  import importlib  # pylint: disable=import-outside-toplevel
  from uss_jax.models import registry  # pylint: disable=import-outside-toplevel
  module, _, variant = recipe.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(variant)
  if module == "soundfilter":
    config.condition.mode = "audio"
  small = "smoke" in variant or "tiny" in variant
  query = importlib.import_module("configs.sed_cnn14").get_config("smoke" if small else "")
  context = {"query_net_config": query.to_dict(), "num_classes": 19, "condition_space": "bench",
             "class_names": [str(i) for i in range(19)],
             "mae_encoder": {"size": "small" if small else "base", "img_size": [208, 128]},
             "mae_fbank": {"sample_rate": 16000, "num_mel_bins": 128, "norm_stats": "audioset"}}
  return config, registry.build_system(config, context, nnx.Rngs(0))


def bench_recipe_rtf(recipe: str, seconds: float, sep_batch: int) -> dict:
  """RTF of the ``uss-jax separate`` path for the system of ``recipe`` (see ``_recipe_system``)."""
  _, model = _recipe_system(recipe)
  separator = inference.Separator(model, description=recipe)
  return inference.real_time_factor(separator, seconds, batch_size=sep_batch, repeats=1)


def bench_recipe_train(recipe: str, batch: int, steps: int) -> dict:
  """Train step of the separator of ``recipe`` (see ``_recipe_system``) on ``batch`` segments of the recipe's
  length and rate: L1 waveform loss + AdamW amsgrad over the parameters the separation task trains
  (``SeparationTask.trainable``: a frozen MAE-ResUNet's A-MAE encoder excluded), timed by
  ``benchmarks/train_step.time_train_step`` (step time, examples/s, XLA temp memory, MFU on accelerators)."""
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, HERE)
  from train_step import time_train_step  # pylint: disable=import-outside-toplevel
  config, system = _recipe_system(recipe)
  separator = system.separator
  mode = (config.model.get("mae") or {}).get("mode", "frozen")
  frozen = config.model.get("name") == "mae_resunet" and mode == "frozen"
  wrt = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("encoder"))) if frozen else nnx.Param
  sr, seg = int(config.data.sample_rate), int(round(config.data.segment_seconds * config.data.sample_rate))
  rng = np.random.default_rng(batch)
  mixture = jnp.asarray(rng.standard_normal((batch, seg)) * 0.1, jnp.float32)
  inputs = {"mixture": mixture, "target": mixture * 0.5,
            "condition": jnp.asarray(rng.standard_normal((batch, system.interface().condition_size)), jnp.float32)}

  def loss_fn(m, x):
    return jnp.mean(jnp.abs(m(x["mixture"], x["condition"])["waveform"] - x["target"]))

  tx, _ = optim.make_optimizer({"name": "adamw", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                                "weight_decay": 0.0, "amsgrad": True}, {"name": "constant"}, total_steps=1)
  r = time_train_step(separator, loss_fn, inputs, tx, steps=steps, batch=batch, wrt=wrt)
  r["trained_m"] = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(separator, wrt))) / 1e6
  return {"recipe": recipe, "batch": batch, "sample_rate": sr, "segment_s": seg / sr, **r}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,4")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
  parser.add_argument("--seconds", type=float, default=120.0, help="full-size separation mixture length (0: skip)")
  parser.add_argument("--sep_batch", type=int, default=4)
  parser.add_argument("--chunk_seconds", type=float, default=None, help="default: 4 s (uss-jax separate)")
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--rtf_recipes", default="",
                      help="';'-separated recipe[:variant] systems whose uss-jax separate RTF to measure on a "
                           "--rtf_seconds mixture, e.g. 'uss_resunet30:smoke;uss_resunet30;mae_resunet:frozen,smoke'")
  parser.add_argument("--train_recipes", default="",
                      help="';'-separated recipe[:variant] systems whose separator train step to time at --batches "
                           "(step time, examples/s, XLA temp memory), e.g. 'uss_resunet30;mae_resunet:frozen;"
                           "mae_resunet:updated'")
  parser.add_argument("--rtf_seconds", type=float, default=None, help="default: --seconds")
  parser.add_argument("--torch_python", default=None,
                      help="python of a benchmark-only env with torch + numpy: measures the PyTorch reference")
  args = parser.parse_args()

  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
  abstract = nnx.eval_shape(lambda: ResUNet30(rngs=nnx.Rngs(0)))
  print(f"ResUNet30 full size: {count_params(abstract):,} parameters (condition 2048)")
  ref = torch_reference(args.torch_python, args.seconds, args.sep_batch, args.batches, args.steps)
  if ref is None:
    print("PyTorch reference: not measured (no --torch_python)")
  else:
    errs = ", ".join(f"{k} {v:.1e}" for k, v in ref["rel_err"].items())
    print(f"PyTorch reference (torch {ref['torch']}, 2 threads, {ref['params']:,} parameters incl. the STFT "
          f"kernels): parity with tests/fixtures/parity/uss_resunet30, max |diff| / max |ref|: {errs}; its chunking "
          f"overlap-adds an identity model back to the input to {ref['chunking_identity_err']:.1e}; load {ref['load']}")
  ref_train = {t["batch"]: t for t in (ref or {}).get("train", [])}
  rows = []
  for b in [int(s) for s in args.batches.split(",") if s]:
    load0 = loadavg()
    first, med, loss = bench_train(b, args.steps)
    rows.append((b, first, med, b / med, ref_train.get(b, {}).get("step_s"), loss, f"{load0} -> {loadavg()}"))
  print("\ntrain step (fwd + bwd + AdamW amsgrad, L1 waveform loss), 2 s at 32 kHz:")
  print(f"{'batch':>5} | {'compile+1st (s)':>15} | {'jax step (s)':>12} | {'examples/s':>10} | "
        f"{'torch step (s)':>14} | {'jax/torch':>9} | load (jax)")
  for b, first, med, eps, tref, loss, load in rows:
    t_s = f"{tref:.2f}" if tref else "n/a"
    ratio = f"{med / tref:.2f}" if tref else "n/a"
    print(f"{b:>5} | {first:>15.1f} | {med:>12.2f} | {eps:>10.2f} | {t_s:>14} | {ratio:>9} | {load}"
          f"   (loss {loss:.4f})")
  recipe_rows = [bench_recipe_train(recipe, b, args.steps) | {"load": f"{load0} -> {loadavg()}"}
                 for recipe in [r for r in args.train_recipes.split(";") if r]
                 for b in [int(s) for s in args.batches.split(",") if s]
                 for load0 in [loadavg()]]
  if recipe_rows:
    print("\nrecipe separators' train step (fwd + bwd + AdamW amsgrad over the task's trainable parameters, L1):")
    print(f"{'recipe':<26} | {'batch':>5} | {'segment':>9} | {'params M':>8} | {'trained M':>9} | "
          f"{'compile (s)':>11} | {'step (s)':>8} | {'examples/s':>10} | {'temp GiB':>8} | {'MFU':>6} | load")
    for r in recipe_rows:
      mfu = "-" if np.isnan(r["mfu"]) else f"{r['mfu']:.1%}"
      print(f"{r['recipe']:<26} | {r['batch']:>5} | {r['segment_s']:>4g} s {r['sample_rate'] // 1000:>2}k | "
            f"{r['params_m']:>8.1f} | {r['trained_m']:>9.1f} | {r['compile_s']:>11.1f} | {r['step_s']:>8.2f} | "
            f"{r['examples_per_s']:>10.2f} | {r['temp_gib']:>8.2f} | {mfu:>6} | {r['load']}")
  table = []
  if args.seconds > 0:
    load0 = loadavg()
    r = bench_separation(args.seconds, args.sep_batch, args.chunk_seconds)
    table.append(("jax, full-size ResUNet30 (32 kHz)", r["seconds"], r["chunks"], r["best_s"], r["rtf_best"],
                  f"{load0} -> {loadavg()}"))
    if ref is not None and "separation" in ref:
      t = ref["separation"]
      table.append(("torch, full-size ResUNet30 (32 kHz)", t["seconds"], t["chunks"], t["best_s"], t["rtf_best"],
                    ref["load"]))
    elif ref is None:
      table.append(("torch, full-size ResUNet30", args.seconds, 0, float("nan"), float("nan"),
                    "not measured (no --torch_python)"))
  rtf_seconds = args.seconds if args.rtf_seconds is None else args.rtf_seconds
  for recipe in [r for r in args.rtf_recipes.split(";") if r]:
    load0 = loadavg()
    r = bench_recipe_rtf(recipe, rtf_seconds, args.sep_batch)
    table.append((f"jax, {recipe} ({r['sample_rate']} Hz)", r["seconds"], r["chunks"], r["best_s"], r["rtf_best"],
                  f"{load0} -> {loadavg()}"))
  if table:
    print(f"\nseparation (uss-jax separate path: 4 s chunks, 50 % Hann overlap-add, batch {args.sep_batch}; "
          f"RTF = wall s / audio s, best timed call after a first, compiling one for jax):")
    print(f"{'system':<40} | {'audio (s)':>9} | {'chunks':>6} | {'wall (s)':>8} | {'RTF':>6} | load")
    for name, sec, chunks, wall, rtf, load in table:
      print(f"{name:<40} | {sec:>9.0f} | {chunks:>6} | {wall:>8.1f} | {rtf:>6.3f} | {load}")
  if args.profile:
    profile(1)


if __name__ == "__main__":
  main()
