r"""Compile time and XLA temporary memory of the trainer's train step with / without ``config.remat`` and
``config.scan_layers``: ViT-B AudioMAE pretraining (``configs/audiomae.py``, paper size: 1024 x 128 fbank, ViT-B/16
encoder + 16-block Swin decoder) and SoundBeam (``configs/soundbeam.py``, paper size, 6 s mixtures).

Each row is the trainer's own jitted step (``uss_jax.train.trainer.build_run``: the task's loss, AdamW / Adam, state
donated, traced inside ``uss_jax.nn.partitioning.context``) lowered with the abstract sharded state and one real batch
of the embedded demo corpus, then compiled; nothing is executed, so a full-size model costs only its compile.
``temp`` is ``compiled.memory_analysis().temp_size_in_bytes``: XLA's temporary buffers of the step (activations kept
for the backward pass plus workspace), the quantity remat trades for recomputation; ``args`` is the state + batch.
``scan`` says whether ``scan_layers`` actually scanned (blocks whose static settings differ, e.g. per-block drop-path
rates or alternating Swin shifts, run unrolled with a warning). Prints a markdown table; asserts nothing.

Usage:
  python benchmarks/remat_scan.py [--recipes audiomae,soundbeam] [--batch 4] [--rows none,full,dots,scan,full+scan]
      [--variant tiny]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain reads absl flags

import jax  # noqa: E402

from uss_jax.nn import partitioning  # noqa: E402
from uss_jax.train import sharding as sh  # noqa: E402
from uss_jax.train import trainer  # noqa: E402

ROWS = {"none": ("none", False), "full": ("full", False), "dots": ("dots", False), "scan": ("none", True),
        "full+scan": ("full", True)}


def recipe_config(name: str, tfds_dir: str, batch: int, variant: str = ""):
  """The config of ``name`` (paper size unless ``variant``) on the demo corpus with ``batch`` examples per step."""
  if name == "audiomae":
    from configs import audiomae  # pylint: disable=import-outside-toplevel
    c = audiomae.get_config(variant)
  elif name == "soundbeam":
    from configs import soundbeam  # pylint: disable=import-outside-toplevel
    c = soundbeam.get_config(variant)
    c.data.eval_mixtures = batch
  else:
    raise ValueError(f"unknown recipe {name!r}")
  c.data.tfds_dir = tfds_dir
  c.batch_size = c.eval_batch_size = batch
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  return c


def measure(name: str, row: str, tfds_dir: str, workdir: str, batch: int, variant: str = "") -> dict:
  remat, scan = ROWS[row]
  config = recipe_config(name, tfds_dir, batch, variant)
  config.remat, config.scan_layers = remat, scan
  mesh = sh.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  run = trainer.build_run(config, workdir, mesh=mesh)
  local = next(run.task.train_iterator(0, 1))
  batch_arrays = sh.make_global_batch(local, run.batch_sharding)
  partitioning._SCAN_WARNED.clear()  # pylint: disable=protected-access
  scans = []
  inner = partitioning._scan_blocks  # pylint: disable=protected-access

  def counting(graphdef, blocks, x, rngs):
    scans.append(len(blocks))
    return inner(graphdef, blocks, x, rngs)

  partitioning._scan_blocks = counting  # pylint: disable=protected-access
  t0 = time.perf_counter()
  lowered = run.train_step.lower(run.abstract_sharded_state(), batch_arrays)
  t1 = time.perf_counter()
  partitioning._scan_blocks = inner  # pylint: disable=protected-access
  compiled = lowered.compile()
  t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  return {"recipe": name, "row": row, "remat": remat, "scan_layers": scan, "scanned": "+".join(map(str, scans)),
          "trace_s": t1 - t0, "compile_s": t2 - t1,
          "temp_gib": mem.temp_size_in_bytes / 2**30, "args_gib": mem.argument_size_in_bytes / 2**30,
          "unrolled": sorted(partitioning._SCAN_WARNED)}  # pylint: disable=protected-access


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--recipes", default="audiomae,soundbeam")
  p.add_argument("--rows", default="none,full,dots,scan,full+scan")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--variant", default="", help="config variant (default: paper size; 'tiny' to check the script)")
  args = p.parse_args()
  tmp = tempfile.mkdtemp(prefix="remat_scan_")
  results = []
  for name in args.recipes.split(","):
    for row in args.rows.split(","):
      if name == "soundbeam" and "scan" in row:
        continue  # the TCN blocks differ in dilation: nothing to scan
      r = measure(name, row, os.path.join(tmp, f"tfds_{name}"), os.path.join(tmp, f"{name}_{row}"), args.batch,
                  args.variant)
      results.append(r)
      print(r, flush=True)
  print(f"\n{datetime.date.today()}, {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores), jax {jax.__version__}, batch {args.batch}, variant {args.variant or 'paper'}, one device\n")
  print("| recipe | remat | scan_layers | blocks scanned | trace (s) | compile (s) | XLA temp (GiB) | state + batch (GiB) |")
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['recipe']} | {r['remat']} | {r['scan_layers']} | {r['scanned'] or '-'} | "
          f"{r['trace_s']:.1f} | {r['compile_s']:.1f} | {r['temp_gib']:.3f} | {r['args_gib']:.3f} |")
  base = {r["recipe"]: r for r in results if r["row"] == "none"}
  for r in results:
    if r["row"] != "none" and r["recipe"] in base:
      b = base[r["recipe"]]
      print(f"{r['recipe']} {r['row']}: temp x{r['temp_gib'] / max(b['temp_gib'], 1e-12):.2f}, "
            f"compile x{r['compile_s'] / max(b['compile_s'], 1e-12):.2f}")


if __name__ == "__main__":
  main()
