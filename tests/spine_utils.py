"""Shared helpers for the trainer tests: the tiny tagging config, a pre-built demo dataset, CLI subprocesses."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "uss_jax.main"]


def tiny_config(tfds_dir: str, **overrides):
  """configs/sed_cnn14.py:tiny with the dataset directory shared between tests."""
  sys.path.insert(0, str(REPO))
  from configs import sed_cnn14  # pylint: disable=import-outside-toplevel
  c = sed_cnn14.get_config("tiny")
  c.data.tfds_dir = tfds_dir
  return apply_overrides(c, **overrides)


def separation_config(demo_tfds: str, tagger_workdir: str, **overrides):
  """configs/uss_resunet30.py:tiny on the demo corpus with ``tagger_workdir`` as query net, fields overridden."""
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(REPO))
  from configs import uss_resunet30  # pylint: disable=import-outside-toplevel
  c = uss_resunet30.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  c.query.workdir = tagger_workdir
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def apply_overrides(config, **overrides):
  """Sets dotted fields (``apply_overrides(c, **{"data.clip_seconds": 1.0})``) on ``config`` and returns it."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def cli_env(**extra) -> dict[str, str]:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  env.update(extra)
  return env


def cli_args(command: str, workdir, tfds_dir, *flags: str, variant: str = "tiny") -> list[str]:
  return [*CLI, command, f"--config={REPO}/configs/sed_cnn14.py:{variant}", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}", *flags]


def run_cli(*args, timeout=300, **env) -> subprocess.CompletedProcess:
  return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=cli_env(**env), cwd=REPO)


def summary(proc: subprocess.CompletedProcess) -> dict:
  """The JSON line the CLI prints at the end."""
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  assert lines, f"no summary line; rc={proc.returncode}\nstdout={proc.stdout[-2000:]}\nstderr={proc.stderr[-4000:]}"
  return json.loads(lines[-1])


def checkpoint_arrays(workdir, step: int | None = None) -> dict[str, np.ndarray]:
  """All arrays of the ``state`` item of a checkpoint, flattened to {path: array}, read with orbax (no target)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(workdir) / "checkpoints"
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  step = steps[-1] if step is None else step
  path = directory / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata) or metadata
  tree_meta = getattr(metadata, "tree", metadata)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_meta)
  tree = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  flat = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, f"{prefix}/{k}")
    else:
      flat[prefix] = np.asarray(node)

  walk(tree, "")
  return flat
