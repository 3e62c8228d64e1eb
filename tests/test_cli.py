"""Bad input at the command line ends with one clear line and a non-zero exit, never a traceback."""

import pytest

from spine_utils import CLI, REPO, run_cli


def _assert_clean_error(proc, *needles):
  assert proc.returncode != 0
  text = proc.stderr + proc.stdout
  assert "Traceback" not in text, text[-3000:]
  for n in needles:
    assert n in text, text[-3000:]


def test_missing_config_file(tmp_path):
  proc = run_cli(*CLI, "train", "--config=configs/does_not_exist.py", f"--workdir={tmp_path}")
  _assert_clean_error(proc, "does_not_exist.py")


def test_unknown_config_field(tmp_path):
  proc = run_cli(*CLI, "train", f"--config={REPO}/configs/sed_cnn14.py:tiny", f"--workdir={tmp_path}",
                 "--config.optimizer.learning_rat=0.1")
  _assert_clean_error(proc, "learning_rat")


def test_unknown_variant_and_missing_workdir(tmp_path):
  proc = run_cli(*CLI, "train", f"--config={REPO}/configs/sed_cnn14.py:huge", f"--workdir={tmp_path}")
  _assert_clean_error(proc, "huge")
  proc = run_cli(*CLI, "train", f"--config={REPO}/configs/sed_cnn14.py:tiny")
  _assert_clean_error(proc, "--workdir is required")
  proc = run_cli(*CLI, "fly", f"--config={REPO}/configs/sed_cnn14.py:tiny", f"--workdir={tmp_path}")
  _assert_clean_error(proc, "expected one command")


def test_nonexistent_data_dir(tmp_path):
  proc = run_cli(*CLI, "train", f"--config={REPO}/configs/sed_cnn14.py:tiny", f"--workdir={tmp_path}",
                 f"--config.data.audio_dir={tmp_path}/no_such_dir")
  _assert_clean_error(proc, "uss-jax: error:", "no_such_dir")


def test_eval_without_checkpoint(demo_tfds, tmp_path):
  proc = run_cli(*CLI, "eval", f"--config={REPO}/configs/sed_cnn14.py:tiny", f"--workdir={tmp_path}",
                 f"--config.data.tfds_dir={demo_tfds}")
  _assert_clean_error(proc, "uss-jax: error:", "no checkpoint")


def test_corrupt_wav_is_skipped_and_counted(tmp_path):
  import csv
  import shutil
  from configs import common
  audio = tmp_path / "audio"
  audio.mkdir()
  rows = list(csv.DictReader(open(common.DEMO_CSV)))[:12]
  for r in rows:
    shutil.copy(f"{common.DEMO_AUDIO_DIR}/{r['filename']}", audio / r["filename"])
  (audio / rows[0]["filename"]).write_bytes(b"RIFF\x00\x00not really audio")
  csv_path = tmp_path / "meta.csv"
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  proc = run_cli(*CLI, "train", f"--config={REPO}/configs/sed_cnn14.py:tiny", f"--workdir={tmp_path / 'run'}",
                 f"--config.data.audio_dir={audio}", f"--config.data.csv_path={csv_path}",
                 "--config.total_steps=1", "--config.batch_size=2", "--config.eval_batch_size=2")
  assert "Traceback" not in proc.stderr
  assert rows[0]["filename"] in proc.stderr  # the skipped file is named in the warning
  if proc.returncode:
    pytest.fail(proc.stderr[-3000:])
