r"""Co-embedding inference of a SoundWords run (seed 003): embed sentences and audio files, text -> audio search.

  uss-jax embed  --checkpoint RUN (--text "a dog barks" ["rain" ...] | --audio a.wav [b.flac ...]) [-o emb.npy]
  uss-jax search --checkpoint RUN --folder DIR --text "rain on a roof" [--top 5] [--recursive]

A run of the ``contrastive`` task (``uss_jax.tasks.contrastive``) is rebuilt from its directory alone: the
architecture spec, the tokenizer JSON and the clip length from ``system_context.json``, the ``model`` subtree of the
checkpoint (the optimizer is never read). Every embedding is L2-normalised (the space in which the contrastive loss
compares them, ``losses.l2_normalize``), so the dot product of two embeddings is their cosine similarity.

Audio of any rate, length and channel count: mono-mixed and resampled on the host to the run's rate with soxr
(``uss_jax.audio.streaming.read_blocks`` / ``resample_stream``, the readers of ``uss_jax.inference_files``), then cut
into windows of the training clip length ``clip_samples``: a file at most that long is one window, zero-padded at the
end as in training (``data_pipelines.pipelines.crop_or_pad``); a longer one is cut into consecutive windows, the last
one ending at the file's end (it overlaps its neighbour rather than being padded). A file's embedding is the
normalised mean of its windows' embeddings. Windows go through the jitted audio tower in fixed-size batches (one
compilation per run, whatever the files).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from uss_jax import io, runs
from uss_jax import text as text_lib
from uss_jax.audio import streaming
from uss_jax.commands import UsageError, _Parser
from uss_jax.models import registry
from uss_jax.models import soundwords as soundwords_lib
from uss_jax.train import checkpoint as checkpoint_lib

TASK = "contrastive"
DEFAULT_BATCH_SIZE = 8
# Extensions search reads from a folder (others are skipped): what libsndfile decodes.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64")


@dataclasses.dataclass
class SoundWordsRun:
  """A SoundWords run rebuilt for inference (``load_soundwords``).

  Attributes:
    workdir, step: the run directory and checkpoint step.
    config: the run's resolved config. context: its ``system_context.json``.
    graphdef, state: the split ``SoundWords`` model (eval mode) with the checkpoint's values.
    tokenizer: the run's ``TextTokenizer`` (its tokenizer JSON, ``max_tokens`` tokens).
    sample_rate: Hz of the audio tower (16000). clip_samples: the training clip length (samples).
    embedding_dim: D.
  """
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  context: dict[str, Any]
  graphdef: Any
  state: Any
  tokenizer: text_lib.TextTokenizer
  sample_rate: int
  clip_samples: int
  embedding_dim: int


def load_soundwords(path: str | os.PathLike, step: int | None = None) -> SoundWordsRun:
  """The SoundWords model of a ``contrastive`` run directory (or one of its ``checkpoints/<step>`` folders).

  Raises:
    FileNotFoundError: no such directory, no checkpoint (or not that step), no ``system_context.json``.
    ValueError: the run is not a ``contrastive`` (SoundWords) run, or its checkpoint does not fit the architecture of
      its context (the first differing variable is named).
  """
  workdir, step = runs.resolve_checkpoint(path, step)
  config = runs.read_config(workdir, step)
  if config.get("task") != TASK:
    raise ValueError(f"{workdir} is a {config.get('task')!r} run, not a SoundWords ({TASK!r}) run")
  context = registry.read_context(workdir)
  if not context or "soundwords" not in context:
    raise FileNotFoundError(f"{workdir} has no {registry.CONTEXT_FILE} with the SoundWords architecture (written "
                            "when the run was prepared)")
  tree = checkpoint_lib.restore_model_tree(os.path.join(workdir, "checkpoints", str(step), "state"))
  abstract = nnx.eval_shape(lambda: soundwords_lib.build_soundwords(context["soundwords"], rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  try:
    nnx.replace_by_pure_dict(state, tree)
  except (KeyError, ValueError, TypeError) as e:
    raise ValueError(f"{workdir} step {step}: the checkpoint's model does not match the SoundWords architecture "
                     f"of its context: {e}") from e
  for p, leaf in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(leaf, jax.ShapeDtypeStruct):
      raise ValueError(f"{workdir} step {step}: the checkpoint has no value for model variable "
                       f"{'/'.join(str(getattr(k, 'key', k)) for k in p)}")
  model = nnx.merge(graphdef, state)
  model.eval()
  graphdef, state = nnx.split(model)
  tokenizer = text_lib.TextTokenizer(context["tokenizer"], int(context["max_tokens"]))
  logging.info("loaded SoundWords %s step %d (%d-d)", workdir, step, model.embedding_dim)
  return SoundWordsRun(workdir=workdir, step=step, config=config, context=context, graphdef=graphdef, state=state,
                       tokenizer=tokenizer, sample_rate=int(context["sample_rate"]),
                       clip_samples=int(context["clip_samples"]), embedding_dim=int(model.embedding_dim))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _embed(graphdef, method: str, state, *args) -> jax.Array:
  """L2-normalised ``model.<method>(*args)`` (batch, D) float32."""
  from uss_jax import losses  # pylint: disable=import-outside-toplevel
  return losses.l2_normalize(getattr(nnx.merge(graphdef, state), method)(*args))


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def embed_texts(run: SoundWordsRun, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
  """Text-tower embeddings ``(len(texts), D)`` float32, unit norm, of sentences tokenised by the run's tokenizer.

  Texts are padded to batches of ``batch_size`` (one compilation).

  Raises:
    ValueError: no text, an empty (blank) text, or ``batch_size`` < 1.
  """
  texts = [texts] if isinstance(texts, str) else list(texts)
  if not texts:
    raise ValueError("no text to embed")
  for i, t in enumerate(texts):
    if not isinstance(t, str) or not t.strip():
      raise ValueError(f"text {i + 1} is empty")
  _check_batch_size(batch_size)
  ids, mask = run.tokenizer(texts)
  out = []
  for start in range(0, len(texts), batch_size):
    b_ids, b_mask = _pad_rows(ids[start:start + batch_size], batch_size), _pad_rows(mask[start:start + batch_size],
                                                                                    batch_size)
    emb = _embed(run.graphdef, "embed_text", run.state, jnp.asarray(b_ids), jnp.asarray(b_mask))
    out.append(np.asarray(emb)[:min(batch_size, len(texts) - start)])
  return _finite(np.concatenate(out), "text embeddings")


def audio_windows(waveform: np.ndarray, clip_samples: int) -> np.ndarray:
  """The windows ``(windows, clip_samples)`` of a mono waveform ``(samples,)`` (module docstring: one zero-padded
  window when ``samples <= clip_samples``, else consecutive windows, the last ending at the last sample).

  Raises:
    ValueError: an empty or non-1-D waveform.
  """
  x = np.asarray(waveform, np.float32)
  if x.ndim != 1 or not len(x):
    raise ValueError(f"waveform must be (samples,) with samples > 0, got shape {x.shape}")
  if len(x) <= clip_samples:
    return np.pad(x, (0, clip_samples - len(x)))[None]
  starts = list(range(0, len(x) - clip_samples + 1, clip_samples))
  if starts[-1] + clip_samples < len(x):
    starts.append(len(x) - clip_samples)
  return np.stack([x[s:s + clip_samples] for s in starts])


def read_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
  """A whole audio file as ``(samples,)`` float32 mono at ``sample_rate`` Hz (soxr HQ when the rate differs).

  Raises:
    FileNotFoundError / ValueError: missing, not audio, empty, NaN / inf samples (``streaming.read_blocks``).
  """
  blocks, sr, _ = streaming.read_blocks(path, "audio")
  parts = list(streaming.resample_stream(blocks, sr, sample_rate))
  x = np.concatenate(parts) if parts else np.zeros(0, np.float32)
  if not len(x):
    raise ValueError(f"audio {os.fspath(path)} has no samples")
  return x


def embed_waveforms(run: SoundWordsRun, waveforms: Sequence[np.ndarray],
                    batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
  """Audio-tower embeddings ``(len(waveforms), D)`` float32, unit norm, of mono waveforms at ``run.sample_rate``:
  each the normalised mean of its windows' embeddings (``audio_windows``).

  Raises:
    ValueError: no waveform, an empty one, or ``batch_size`` < 1.
  """
  if not len(waveforms):
    raise ValueError("no audio to embed")
  _check_batch_size(batch_size)
  windows = [audio_windows(w, run.clip_samples) for w in waveforms]
  owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(windows)])
  flat = np.concatenate(windows)
  out = []
  for start in range(0, len(flat), batch_size):
    batch = _pad_rows(flat[start:start + batch_size], batch_size)
    out.append(np.asarray(_embed(run.graphdef, "embed_audio", run.state, jnp.asarray(batch)))[
        :min(batch_size, len(flat) - start)])
  per_window = np.concatenate(out)
  sums = np.zeros((len(windows), per_window.shape[1]), np.float64)
  np.add.at(sums, owner, per_window)
  return _finite(_normalize(sums), "audio embeddings")


def embed_audio_files(run: SoundWordsRun, paths: Sequence[str | os.PathLike],
                      batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
  """``embed_waveforms`` of audio files (any format soundfile reads, any rate and channel count) -> ``(files, D)``.

  Raises:
    FileNotFoundError / ValueError: a missing or unreadable file (named), as ``read_audio``.
  """
  return embed_waveforms(run, [read_audio(p, run.sample_rate) for p in paths], batch_size)


def audio_files(folder: str | os.PathLike, recursive: bool = False) -> list[str]:
  """The audio files of ``folder`` (by extension, ``AUDIO_EXTENSIONS``), sorted; hidden files skipped.

  Raises:
    FileNotFoundError: no such folder. ValueError: not a folder, or no audio file in it.
  """
  folder = os.fspath(folder)
  if not os.path.exists(folder):
    raise FileNotFoundError(f"folder not found: {folder}")
  if not os.path.isdir(folder):
    raise ValueError(f"{folder} is not a folder")
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
    found += [os.path.join(root, f) for f in files
              if not f.startswith(".") and os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS]
  if not found:
    raise ValueError(f"no audio file ({', '.join(AUDIO_EXTENSIONS)}) in {folder}"
                     f"{'' if recursive else ' (subfolders need --recursive)'}")
  return sorted(found)


def search(run: SoundWordsRun, text: str, files: Sequence[str], top: int = 5,
           batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, Any]]:
  """Text -> audio retrieval: the ``top`` files most similar (cosine of the co-embeddings) to ``text``.

  Returns:
    ``[{'rank': 1.., 'file': path, 'score': cosine in [-1, 1]}, ...]``, best first (ties: file order), at most
    ``len(files)`` entries.

  Raises:
    ValueError: an empty text, ``top`` < 1, no file; FileNotFoundError / ValueError: an unreadable file.
  """
  if top < 1:
    raise ValueError(f"--top must be >= 1, got {top}")
  if not files:
    raise ValueError("no audio file to search")
  query = embed_texts(run, [text], batch_size)[0]
  items = embed_audio_files(run, files, batch_size)
  scores = items @ query
  order = np.argsort(-scores, kind="stable")[:top]
  return [{"rank": r + 1, "file": files[i], "score": round(float(scores[i]), 6)} for r, i in enumerate(order)]


def _check_batch_size(batch_size: int) -> None:
  if batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {batch_size}")


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return x if len(x) == rows else np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def _finite(x: np.ndarray, what: str) -> np.ndarray:
  if not np.all(np.isfinite(x)):
    raise FloatingPointError(f"{what} hold NaN or inf (a diverged run?)")
  return x


# ---- the commands ----


def embed_parser() -> argparse.ArgumentParser:
  """The ``uss-jax embed`` command line."""
  p = _Parser(prog="uss-jax embed", description=(
      "Embed sentences or audio files into the co-embedding space of a SoundWords run (unit-norm vectors)."))
  p.add_argument("--checkpoint", required=True, metavar="RUN", help="a SoundWords (contrastive task) run directory")
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument("--text", nargs="+", metavar="TEXT", help="one or more sentences")
  what.add_argument("--audio", nargs="+", metavar="AUDIO", help="one or more audio files (any rate / length)")
  p.add_argument("-o", "--output", metavar="NPY", help="save the (n, D) float32 embeddings to this .npy file "
                                                        "(default: print them in the JSON line)")
  p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
  p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per device call (default: 8)")
  return p


def run_embed(argv: list[str]) -> dict[str, Any]:
  """``uss-jax embed ARGS``; returns the JSON summary (with ``embeddings`` as lists unless ``-o``)."""
  args = embed_parser().parse_args(argv)
  if args.output and not args.output.endswith(".npy"):
    raise UsageError(f"embed: -o/--output must end in .npy, got {args.output}")
  if args.batch_size < 1:
    raise UsageError(f"embed: --batch-size must be >= 1, got {args.batch_size}")
  if args.text is not None:
    for i, t in enumerate(args.text):
      if not t.strip():
        raise UsageError(f"embed: --text {i + 1} is empty")
  for a in args.audio or ():
    streaming.audio_info(a, "audio")  # fail fast, before the model loads
  run = load_soundwords(args.checkpoint, args.step)
  if args.text is not None:
    emb, items, kind = embed_texts(run, args.text, args.batch_size), list(args.text), "text"
  else:
    emb, items, kind = embed_audio_files(run, args.audio, args.batch_size), list(args.audio), "audio"
  summary = {"command": "embed", "checkpoint": run.workdir, "step": run.step, "kind": kind, "items": items,
             "shape": list(emb.shape)}
  if args.output:
    _save_npy(args.output, emb)
    summary["output"] = args.output
  else:
    summary["embeddings"] = [[round(float(v), 6) for v in row] for row in emb]
  return summary


def search_parser() -> argparse.ArgumentParser:
  """The ``uss-jax search`` command line."""
  p = _Parser(prog="uss-jax search", description=(
      "Text -> audio retrieval with a SoundWords run: rank the audio files of a folder by their similarity to a "
      "sentence."))
  p.add_argument("--checkpoint", required=True, metavar="RUN", help="a SoundWords (contrastive task) run directory")
  p.add_argument("--folder", required=True, metavar="DIR", help="folder of audio files")
  p.add_argument("--text", required=True, metavar="TEXT", help="the sentence describing the sound")
  p.add_argument("--top", type=int, default=5, help="how many files to list (default: 5)")
  p.add_argument("--recursive", action="store_true", help="also search the subfolders")
  p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
  p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per device call (default: 8)")
  return p


def run_search(argv: list[str]) -> dict[str, Any]:
  """``uss-jax search ARGS``; returns the JSON summary with ``results`` (rank, file, score)."""
  args = search_parser().parse_args(argv)
  if args.top < 1:
    raise UsageError(f"search: --top must be >= 1, got {args.top}")
  if args.batch_size < 1:
    raise UsageError(f"search: --batch-size must be >= 1, got {args.batch_size}")
  if not args.text.strip():
    raise UsageError("search: --text is empty")
  files = audio_files(args.folder, args.recursive)
  run = load_soundwords(args.checkpoint, args.step)
  results = search(run, args.text, files, args.top, args.batch_size)
  return {"command": "search", "checkpoint": run.workdir, "step": run.step, "text": args.text,
          "files": len(files), "results": results}


def _save_npy(path: str, array: np.ndarray) -> None:
  import io as _bytes_io  # pylint: disable=import-outside-toplevel
  buf = _bytes_io.BytesIO()
  np.save(buf, np.asarray(array, np.float32))
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"-o/--output: folder {directory} does not exist")
  io.write_bytes_atomic(path, buf.getvalue())
