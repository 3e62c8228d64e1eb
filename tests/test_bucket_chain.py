"""The tagging -> anchors -> separation chain with the workdir (and the dataset) on a non-local filesystem, run by two
processes.

The filesystem is the fake bucket of ``tests/fake_bucket.py``: ``testbucket://...`` URLs served through epath's
registered path class (as ``gs://`` is served through its GCS backend), backed by a folder that plays the bucket; code
that bypassed ``uss_jax.io`` would write into a local ``./testbucket:/`` folder or fail on the scheme. Two processes
(``jax.distributed`` on loopback, one CPU device each, so every global batch spans both) run this file as a worker:
a 2-step separation run, evaluated at step 2, whose query net is the session's 2-step tagging run copied into the
bucket (read from there; training it again in the two processes would repeat what the separation run already checks,
two processes writing one run's checkpoints to the bucket, at ~1 min of compilation). Anchor
mining is cut into 16-clip chunks, so each process mines and writes its own chunks and reads the other's; class
embeddings and the eval set are written by process 0 and read by process 1.

The parent checks, against the bucket's backing folder read directly (the independent reference):
* every artifact is where it should be: both runs' checkpoints (state + config), the anchor index of each split
  (metadata and all chunks, of both processes), ``class_embeddings.npz``, ``eval_set.npz``, ``system_context.json``,
  the eval CSV / plot / example WAVs; no temporary ``.tmp-`` file is left;
* nothing leaked into a local ``testbucket:`` folder (in the workers' working directory or the repository);
* each process read the same bytes that the other process wrote (SHA-256 of every stored set, as read through
  ``uss_jax.io`` by each worker, equals the digest of the backing file), and the class table that process 1 loaded
  equals the mean of the query net's embeddings recomputed here from the anchor index (numpy reference);
* ``Separator.from_workdir('testbucket://...')`` in a fresh process uses that table for its class queries.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
TAGGER = "testbucket://runs/tagger"
SEPARATION = "testbucket://runs/separation"
DATA = "testbucket://data/tfds"
CHUNK = 16  # clips per anchor chunk: several chunks per split, alternating between the two processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _worker(port: int, process_id: int) -> None:
  """One of the two processes: the whole chain on ``testbucket://``, then a JSON line of what it read."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_num_cpu_devices", 1)
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.FLAGS.mark_as_parsed()
  sys.path.insert(0, str(HERE))
  from spine_utils import separation_config  # pylint: disable=import-outside-toplevel
  from uss_jax import io  # pylint: disable=import-outside-toplevel
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel

  config = separation_config(DATA, TAGGER, total_steps=2, eval_every=2, checkpoint_every=2)
  config.data.mining_chunk_size = CHUNK
  sep = trainer.train_and_evaluate(config, SEPARATION)

  digests = {}
  for split in ("train", "test"):
    folder = io.join(SEPARATION, "anchors", split)
    for name in io.listdir(folder):
      digests[f"anchors/{split}/{name}"] = _sha(io.read_bytes(io.join(folder, name)))
  for name in ("class_embeddings.npz", "eval_set.npz", "system_context.json"):
    digests[name] = _sha(io.read_bytes(io.join(SEPARATION, name)))
  table = io.load_npz(io.join(SEPARATION, "class_embeddings.npz"))["embeddings"]
  print(json.dumps({"process": process_id, "devices": jax.device_count(),
                    "sep_step": sep["step"], "sdri": sep["eval"].get("SDRi_oracle"), "digests": digests,
                    "table": np.asarray(table, np.float64).tolist()}), flush=True)


def _files(root: pathlib.Path) -> dict[str, pathlib.Path]:
  return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}


def _reference_class_table(bucket: pathlib.Path) -> tuple[np.ndarray, int]:
  """The class-average query recomputed from the bucket's files: the tagging run's Cnn14 (restored from its
  checkpoint) embeds each training anchor segment of the mined index; mean per class (numpy)."""
  import jax  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from data_pipelines import anchors as anchors_lib, mixing  # pylint: disable=import-outside-toplevel
  from uss_jax.tasks import separation  # pylint: disable=import-outside-toplevel

  sep_dir = bucket / "runs" / "separation"
  index = anchors_lib.load_anchor_index(str(sep_dir / "anchors" / "train"))
  names = json.loads((sep_dir / "system_context.json").read_text())["class_names"]
  query_net, _ = separation.load_query_net(str(bucket / "runs" / "tagger"))
  (info,) = (bucket / "data" / "tfds").rglob("dataset_info.json")
  source = tfds.builder_from_directory(str(info.parent)).as_data_source("train")
  meta = json.loads((sep_dir / "anchors" / "train" / anchors_lib.METADATA_FILENAME).read_text())
  seg = int(meta["segment_samples"])
  segments = np.stack([mixing.anchor_crop(source[int(c)]["waveform"], int(s), seg)
                       for c, s in zip(index.clip, index.start)]).astype(np.float32)
  emb = np.asarray(jax.jit(lambda x: query_net(x)["embedding"])(segments), np.float64)
  table = np.zeros((len(names), emb.shape[-1]))
  for k in range(len(names)):
    rows = np.flatnonzero(index.label == k)
    if len(rows):
      table[k] = emb[rows].mean(0)
  return table, len(index.clip)


def test_chain_on_a_bucket_with_two_processes(demo_tfds, tagger_workdir, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(HERE))
  import fake_bucket  # pylint: disable=import-outside-toplevel
  from spine_utils import cli_env  # pylint: disable=import-outside-toplevel

  bucket = tmp_path / "bucket"
  shutil.copytree(demo_tfds, bucket / "data" / "tfds")  # the dataset is read from the bucket too
  shutil.copytree(tagger_workdir, bucket / "runs" / "tagger")  # and the query net's run
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  port = _free_port()
  env = fake_bucket.env(bucket, cli_env())
  procs = [subprocess.Popen([sys.executable, str(pathlib.Path(__file__).resolve()), str(port), str(i)], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  reports = [json.loads([l for l in out.splitlines() if l.startswith("{")][-1]) for out, _ in outs]

  # Nothing leaked into a local folder named after the scheme.
  for where in (cwd, REPO, HERE):
    assert not list(where.glob("testbucket*")), f"a local testbucket: folder appeared in {where}"
  assert not any(cwd.iterdir()), sorted(map(str, cwd.iterdir()))

  files = _files(bucket)
  assert not [f for f in files if ".tmp-" in f], [f for f in files if ".tmp-" in f]
  ckpt = bucket / "runs" / "separation" / "checkpoints" / "2"
  assert (ckpt / "state").is_dir() and any((ckpt / "state").rglob("*"))
  assert json.loads((ckpt / "config" / "metadata").read_text())["total_steps"] == 2
  sep = "runs/separation/"
  for name in ("class_embeddings.npz", "eval_set.npz", "system_context.json", "eval_step2_per_class.csv",
               "eval_step2_sdri.png"):
    assert sep + name in files, name
  assert any(f.startswith(sep + "examples/") and f.endswith(".wav") for f in files)
  assert any("events.out.tfevents" in f for f in files if f.startswith(sep))  # process 0's TensorBoard writer

  # Anchor index: metadata + every chunk of both splits; the chunks alternate between the processes.
  for split in ("train", "test"):
    meta = json.loads((bucket / sep / "anchors" / split / "anchors.json").read_text())
    chunks = sorted(f for f in files if f.startswith(f"{sep}anchors/{split}/chunk_"))
    assert meta["chunk_size"] == CHUNK and len(chunks) == meta["num_chunks"] >= 2, (split, meta, chunks)

  # Each process read what the other wrote: digests through uss_jax.io equal the backing files' digests.
  for r in reports:
    assert r["devices"] == 2 and r["sep_step"] == 2, r
    assert r["sdri"] is not None and np.isfinite(r["sdri"]), r
    direct = {k: _sha(files[sep + k].read_bytes()) for k in r["digests"]}
    assert r["digests"] == direct, r["process"]
    assert len([k for k in r["digests"] if "/chunk_" in k]) == sum("/chunk_" in f for f in files)

  # The table process 1 loaded (written by process 0) is the class-average embedding, recomputed here.
  fake_bucket.register(bucket)  # this process reads the bucket's files directly (backing paths) below
  want, rows = _reference_class_table(bucket)
  assert rows > 0
  np.testing.assert_allclose(np.array(reports[1]["table"]), want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.array(reports[0]["table"]), np.array(reports[1]["table"]))

  # A fresh process (this one) separates with the run straight from the bucket: its class query is that table's row.
  from uss_jax.inference import Separator  # pylint: disable=import-outside-toplevel
  separator = Separator.from_workdir(SEPARATION)
  k = int(np.flatnonzero(np.abs(want).sum(1) > 0)[0])
  name = separator.class_names[k]
  np.testing.assert_allclose(separator.class_condition(name), np.array(reports[1]["table"])[k], rtol=1e-6)
  mixture = 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
  out = separator.separate(mixture, 16000, separator.class_condition(name))
  assert out.shape == mixture.shape and np.all(np.isfinite(out)) and np.abs(out).max() > 0


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]))
