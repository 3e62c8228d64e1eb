"""SoundWords (seed 003): the global-batch contrastive loss against numpy on 1 device, 8 devices and 2 processes,
recall@K and its chance level against numpy, the pretrained MiniLM in the text tower, a tiny training run whose loss
falls, and the ``uss-jax embed`` / ``search`` commands on that run."""

import functools
import json
import math
import pathlib
import re
import shutil
import socket
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from spine_utils import REPO, apply_overrides, cli_env, run_cli
from uss_jax import losses, metrics
from uss_jax.models import bert as bert_lib
from uss_jax.models import soundwords as soundwords_lib
from uss_jax.tasks import contrastive

VOCAB = 64
DIM = 12  # != the global batch (16), so that the gathered embeddings are recognisable in the compiled step
SPEC = {"embedding_dim": DIM, "audio": {"size": "tiny", "width": 4, "stages": [1]},
        "text": {"pooling": "mean", "bert": {**bert_lib.BERT_TINY.to_dict(), "vocab_size": VOCAB,
                                             "num_hidden_layers": 1}}}


# ---- references ----


def _np_logsumexp(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_contrastive_loss(audio, text, log_t):
  """½ (CE over rows + CE over columns) of cos(a_i, t_j) / T with the pairs on the diagonal, float64."""
  a = np.asarray(audio, np.float64)
  t = np.asarray(text, np.float64)
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  t = t / np.linalg.norm(t, axis=1, keepdims=True)
  logits = a @ t.T / math.exp(float(log_t))
  a2t = -np.diag(logits - _np_logsumexp(logits, 1))
  t2a = -np.diag(logits - _np_logsumexp(logits, 0))
  return float(np.mean(0.5 * (a2t + t2a)))


def np_recall(query, items, relevant, k):
  """Fraction of queries with a relevant item among their k most cosine-similar items (argsort, no ties)."""
  q = query / np.linalg.norm(query, axis=1, keepdims=True)
  v = items / np.linalg.norm(items, axis=1, keepdims=True)
  top = np.argsort(-(q @ v.T), axis=1)[:, :k]
  return float(np.mean([relevant[i, top[i]].any() for i in range(len(q))]))


def np_chance(relevant, k):
  """Hypergeometric: 1 - P(none of the r relevant of n items among k uniformly drawn), averaged over queries."""
  n = relevant.shape[1]
  out = []
  for r in relevant.sum(1):
    miss = 1.0
    for i in range(k):
      miss *= max(n - r - i, 0) / (n - i)
    out.append(1.0 - miss)
  return float(np.mean(out))


# ---- the loss over the global batch ----


def _batch(n=16, samples=2400, tokens=10, seed=0):
  rng = np.random.default_rng(seed)
  gains = rng.uniform(0.05, 1.0, size=(n, 1))
  audio = (rng.standard_normal((n, samples)) * gains).astype(np.float32)
  ids = rng.integers(5, VOCAB, size=(n, tokens)).astype(np.int32)
  lengths = rng.integers(3, tokens + 1, size=n)
  mask = (np.arange(tokens)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask > 0, ids, 0).astype(np.int32)
  ids[:, 0] = 2  # [CLS]
  return {"audio": audio, "token_ids": ids, "attention_mask": mask}


def _step(batch):
  """The task's loss of a freshly initialised tiny SoundWords in train mode (BatchNorm on batch statistics), plus
  the embeddings it compared and the log temperature; built inside the jitted function, so that any mesh runs it."""
  model = soundwords_lib.build_soundwords(SPEC, rngs=nnx.Rngs(0))
  model.train()
  loss, aux = contrastive.soundwords_loss(model, batch, None)
  return (loss, aux["temperature"], model.embed_audio(batch["audio"]),
          model.embed_text(batch["token_ids"], batch["attention_mask"]))


def _run_on(devices, batch):
  """``(compiled step, its outputs as numpy)`` with the batch sharded over ``devices``."""
  mesh = jax.make_mesh((len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, P("data"))
  placed = {k: jax.device_put(v, rows) for k, v in batch.items()}
  compiled = jax.jit(_step, in_shardings=(rows,)).lower(placed).compile()
  return compiled, [np.asarray(x) for x in compiled(placed)]


@functools.lru_cache(maxsize=None)
def _one_device():
  return _run_on(jax.devices()[:1], _batch())[1]


def test_contrastive_loss_matches_numpy():
  rng = np.random.default_rng(1)
  a, t = rng.standard_normal((12, 8)), rng.standard_normal((12, 8))
  t[:4] = a[:4] + 0.1 * t[:4]  # some well-aligned pairs
  for log_t in (np.log(0.1), 0.3):
    got = losses.symmetric_contrastive_loss(jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32),
                                            jnp.float32(log_t))
    np.testing.assert_allclose(float(got), np_contrastive_loss(a, t, log_t), rtol=1e-5)


def test_global_loss_one_vs_eight_devices():
  loss1, temp1, a1, t1 = _one_device()
  compiled8, (loss8, _, a8, t8) = _run_on(jax.devices()[:8], _batch())
  assert float(temp1) == pytest.approx(0.1, rel=1e-6)  # seed 003: initial temperature 0.1
  # The loss is the one of the global similarity matrix (not a mean of per-device losses) ...
  np.testing.assert_allclose(float(loss1), np_contrastive_loss(a1, t1, np.log(0.1)), rtol=1e-5)
  per_device = np.mean([np_contrastive_loss(a1[i:i + 2], t1[i:i + 2], np.log(0.1)) for i in range(0, 16, 2)])
  assert abs(per_device - float(loss1)) > 0.1  # ... which would be far off
  # ... and the same on 8 devices, where the embeddings of the other devices are gathered inside the step.
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
  np.testing.assert_allclose(a8, a1, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(t8, t1, rtol=1e-4, atol=1e-5)
  gathered = re.findall(r"= f32\[(\d+),(\d+)\]\S* all-gather\(", compiled8.as_text())
  assert {(16, DIM), (DIM, 16)} & {(int(a), int(b)) for a, b in gathered}, gathered  # the (global batch, D) gather


_WORKER = r'''
import sys
import jax
pid, port = int(sys.argv[1]), int(sys.argv[2])
jax.config.update("jax_num_cpu_devices", 1)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
sys.path.insert(0, sys.argv[3])
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import test_soundwords as t
mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rows = NamedSharding(mesh, P("data"))
batch = t._batch()
local = {k: v[pid * 8:(pid + 1) * 8] for k, v in batch.items()}
placed = {k: jax.make_array_from_process_local_data(rows, v) for k, v in local.items()}
loss = jax.jit(t._step, in_shardings=(rows,))(placed)[0]
print("LOSS", repr(float(loss)), jax.process_count(), jax.device_count(), flush=True)
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_global_loss_two_processes(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(REPO / "tests")], env=cli_env(),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=180) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  lines = [l.split() for out, _ in outs for l in out.splitlines() if l.startswith("LOSS")]
  assert len(lines) == 2 and all(l[2:] == ["2", "2"] for l in lines)
  loss1 = _one_device()[0]
  for l in lines:
    np.testing.assert_allclose(float(l[1]), float(loss1), rtol=1e-5)


# ---- recall@K ----


def test_recall_and_chance_against_numpy():
  rng = np.random.default_rng(3)
  caption_id = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9])  # clips cut from one recording share one
  texts = rng.standard_normal((10, 6))
  audio = texts[caption_id] + 1.5 * rng.standard_normal((len(caption_id), 6))
  out = contrastive.retrieval_summary(audio, texts[caption_id], caption_id)
  relevant = np.arange(10)[:, None] == caption_id[None]  # (captions, clips)
  for k in (1, 5, 10):
    assert out[f"t2a_r{k}"] == pytest.approx(np_recall(texts, audio, relevant, k))
    assert out[f"a2t_r{k}"] == pytest.approx(np_recall(audio, texts, relevant.T, k))
    assert out[f"t2a_chance_r{k}"] == pytest.approx(np_chance(relevant, k))
    assert out[f"a2t_chance_r{k}"] == pytest.approx(np_chance(relevant.T, k))
  assert out["a2t_chance_r1"] == pytest.approx(0.1) and out["a2t_chance_r10"] == pytest.approx(1.0)
  assert 0 < out["t2a_r1"] < out["t2a_r5"] < 1
  # metrics.recall_at_k itself, integer ground truth
  assert metrics.recall_at_k(audio, texts, 5, ground_truth=caption_id) == pytest.approx(
      np_recall(audio, texts, relevant.T, 5))


# ---- the pretrained text tower in a fresh train state ----


def test_minilm_loaded_into_text_tower(demo_tfds, tmp_path):
  """``initialize_state`` puts all-MiniLM-L6-v2 into the text tower: its sentence vectors equal the torch fixture."""
  from configs import soundwords  # pylint: disable=import-outside-toplevel
  from uss_jax import text as text_lib  # pylint: disable=import-outside-toplevel
  try:
    text_lib.minilm_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  ref = np.load(REPO / "tests" / "fixtures" / "parity" / "minilm_l6" / "reference.npz")
  config = apply_overrides(soundwords.get_config("tiny"), **{
      "data.tfds_dir": demo_tfds, "text.checkpoint": "minilm", "text.freeze": "bert", "text.pooling": "mean",
      "text.max_tokens": int(ref["input_ids"].shape[1])})
  task = contrastive.ContrastiveTask(config, str(tmp_path))
  task.prepare()
  graphdef, state = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
  state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), state)  # a fresh state (values do not matter here)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  filled = task.initialize_state({"model": state}, {"model": jax.tree.map(lambda _: device, state)})
  model = nnx.merge(graphdef, filled["model"])
  ids, mask = task.tokenizer([t.decode("utf-8") for t in ref["texts"]])
  np.testing.assert_array_equal(ids, ref["input_ids"])
  got = np.asarray(model.text_tower.sentence_embedding(jnp.asarray(ids), jnp.asarray(mask)))
  assert np.max(np.abs(got - ref["mean_pooled"])) <= 1e-4 * np.max(np.abs(ref["mean_pooled"]))
  # freeze='bert': the audio tower, the text FC and the temperature train; the BERT does not
  trained = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, task.trainable))]
  assert not any("bert" in p for p in trained)
  assert any(p.startswith("text_tower/projection") for p in trained) and "log_temperature" in trained
  assert any(p.startswith("audio_tower/") for p in trained)


# ---- a tiny run, then embed / search on it ----

STEPS = 25


@pytest.fixture(scope="session")
def tiny_run(demo_tfds, tmp_path_factory):
  from configs import soundwords  # pylint: disable=import-outside-toplevel
  from uss_jax.train import sharding, trainer  # pylint: disable=import-outside-toplevel
  config = apply_overrides(soundwords.get_config("tiny"), **{
      "data.tfds_dir": demo_tfds, "total_steps": STEPS, "log_every": 5, "eval_every": STEPS,
      "checkpoint_every": STEPS, "optimizer.learning_rate": 5e-3, "schedule.warmup_steps": 0})
  workdir = tmp_path_factory.mktemp("soundwords")
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])  # one device: the 8-device case is tested above
  return workdir, trainer.train_and_evaluate(config, str(workdir), mesh=mesh)


def test_tiny_training_loss_falls_and_evaluates(tiny_run):
  _, result = tiny_run
  history = [loss for _, loss in result["history"]]
  assert result["step"] == STEPS and len(history) == STEPS // 5
  assert history[0] == pytest.approx(np.log(8), abs=0.2)  # batch of 8: ln 8 at the start
  assert history[-1] < history[0] - 0.25 and np.mean(history[-2:]) < np.mean(history[:2]) - 0.2
  ev = result["eval"]
  for d in ("t2a", "a2t"):
    for k in (1, 5, 10):
      assert 0.0 <= ev[f"{d}_r{k}"] <= 1.0 and 0.0 < ev[f"{d}_chance_r{k}"] <= 1.0
  assert ev["num_captions"] <= ev["num_clips"]


def test_embed_and_search_commands(tiny_run, tmp_path, capsys):
  from uss_jax import commands, retrieval  # pylint: disable=import-outside-toplevel
  workdir, _ = tiny_run
  demo = REPO / "data" / "demo" / "audio"
  files = sorted(demo.glob("*.flac"))[:5]
  folder = tmp_path / "clips"
  folder.mkdir()
  for f in files:
    shutil.copy(f, folder / f.name)
  (folder / "notes.txt").write_text("not audio")

  texts = retrieval.run_embed(["--checkpoint", str(workdir), "--text", "a cow moos", "rain falls"])
  emb = np.asarray(texts["embeddings"])
  assert texts["shape"] == [2, 64] and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  out = tmp_path / "audio.npy"
  retrieval.run_embed(["--checkpoint", str(workdir), "--audio", *map(str, files[:2]), "-o", str(out)])
  audio = np.load(out)
  assert audio.shape == (2, 64) and audio.dtype == np.float32

  # the library against the model run by hand: windows -> tower -> mean -> normalise
  run = retrieval.load_soundwords(workdir)
  model = nnx.merge(run.graphdef, run.state)
  x = retrieval.read_audio(files[0], 16000)
  windows = retrieval.audio_windows(x, run.clip_samples)
  assert len(windows) == -(-len(x) // run.clip_samples) and np.array_equal(windows[-1], x[-run.clip_samples:])
  by_hand = np.asarray(losses.l2_normalize(model.embed_audio(jnp.asarray(windows)))).mean(0)
  np.testing.assert_allclose(audio[0], by_hand / np.linalg.norm(by_hand), atol=1e-5)

  found = retrieval.run_search(["--checkpoint", str(workdir), "--folder", str(folder), "--text", "a cow moos",
                                "--top", "3"])
  assert found["files"] == 5 and [r["rank"] for r in found["results"]] == [1, 2, 3]
  all_audio = retrieval.embed_audio_files(run, [str(folder / f.name) for f in files])
  query = retrieval.embed_texts(run, ["a cow moos"])[0]
  want = [files[i].name for i in np.argsort(-(all_audio @ query))[:3]]
  assert [pathlib.Path(r["file"]).name for r in found["results"]] == want

  with pytest.raises(commands.UsageError, match="--top must be >= 1"):
    retrieval.run_search(["--checkpoint", str(workdir), "--folder", str(folder), "--text", "x", "--top", "0"])
  with pytest.raises(commands.UsageError, match="one of the arguments --text --audio is required"):
    retrieval.run_embed(["--checkpoint", str(workdir)])
  # the dispatcher prints one JSON line (exit 0) ...
  with pytest.raises(SystemExit) as exit_info:
    commands.main("embed", ["--checkpoint", str(workdir), "--text", "a cow moos"])
  assert exit_info.value.code == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  np.testing.assert_allclose(printed["embeddings"][0], emb[0], atol=1e-5)
  # ... and the real entry point ends bad input with one line and exit status 2
  bad = run_cli(sys.executable, "-m", "uss_jax.main", "search", "--checkpoint", str(workdir), "--folder",
                str(tmp_path / "missing"), "--text", "rain")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      f"uss-jax: error: folder not found: {tmp_path / 'missing'}"]
