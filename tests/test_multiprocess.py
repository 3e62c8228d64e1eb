"""Two processes with jax.distributed on loopback train the same global batches as one process."""

import socket
import subprocess

import numpy as np

from spine_utils import checkpoint_arrays, cli_args, cli_env, run_cli, summary, REPO


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(demo_tfds, tmp_path):
  flags = ["--config.total_steps=3", "--config.checkpoint_every=3", "--config.eval_every=3"]
  port = _free_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      cli_args("train", multi, demo_tfds, *flags, "--num_cpu_devices=2", f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}"),
      env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  single = run_cli(*cli_args("train", tmp_path / "single", demo_tfds, *flags, "--num_cpu_devices=4"))
  assert single.returncode == 0, single.stderr[-4000:]

  multi_summary = summary(subprocess.CompletedProcess([], 0, outs[0][0], outs[0][1]))
  assert "4 devices" in outs[0][1] and "2 processes" in outs[0][1]
  one = summary(single)
  np.testing.assert_allclose(multi_summary["train_loss"], one["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(multi_summary["mAP"], one["mAP"], rtol=1e-5)
  a, b = checkpoint_arrays(multi, 3), checkpoint_arrays(tmp_path / "single", 3)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
