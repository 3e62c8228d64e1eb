"""Checkpoints as a user meets them: SIGKILL at any moment then the same command again -> bit-identical to an
uninterrupted run; SIGTERM (preemption) -> a checkpoint before exit."""

import pathlib
import re
import signal
import subprocess
import time

import numpy as np

from spine_utils import checkpoint_arrays, cli_args, cli_env, run_cli, summary, REPO


def _committed_steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_sigkill_then_resume_is_bit_identical(demo_tfds, tmp_path):
  steps = ["--config.total_steps=8", "--config.checkpoint_every=2"]
  straight = tmp_path / "straight"
  ref = run_cli(*cli_args("train", straight, demo_tfds, *steps))
  assert ref.returncode == 0, ref.stderr[-3000:]

  killed = tmp_path / "killed"
  proc = subprocess.Popen(cli_args("train", killed, demo_tfds, *steps), env=cli_env(), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and not any(s >= 4 for s in _committed_steps(killed)) and proc.poll() is None:
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = _committed_steps(killed)
  assert before and max(before) < 8

  resumed = run_cli(*cli_args("train", killed, demo_tfds, *steps))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert re.search(r"restored step \d+", resumed.stderr), resumed.stderr[-2000:]
  a, b = checkpoint_arrays(straight, 8), checkpoint_arrays(killed, 8)
  assert a.keys() == b.keys() and len(a) > 10
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert summary(ref)["train_loss"] == summary(resumed)["train_loss"]


def test_sigterm_writes_a_checkpoint_before_exit(demo_tfds, tmp_path):
  args = cli_args("train", tmp_path, demo_tfds, "--config.total_steps=100000", "--config.checkpoint_every=100000")
  proc = subprocess.Popen(args, env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = []
  for line in proc.stderr:  # absl logs every step's scalars ("[3] train/loss=...")
    seen.append(line)
    if re.search(r"\[3\] .*train/loss", line):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, "".join(seen[-20:]) + err[-3000:]
  steps = _committed_steps(tmp_path)
  assert steps and 3 <= steps[-1] < 100000
  info = summary(subprocess.CompletedProcess(args, 0, out, err))
  assert info["preempted"] is True and info["step"] == steps[-1]
