r"""The dashed-option commands of ``uss-jax`` (argparse, parsed before absl): separate / extract, info, convert, and
the co-embedding commands embed / search (``uss_jax.retrieval``).

  uss-jax separate --checkpoint RUN (--mixture IN -o OUT | --mixture-list FILES.txt --out-dir DIR)
                   (--query-audio A [B ...] | --enrollment A [B ...] | --query-class NAME | --query-text "...")
                   [--query-checkpoint RUN2] [--suppressed OUT2] [--plot P] [--stream] [--step N]
                   [--chunk-seconds S] [--batch-size B] [--subtype PCM_16]
  uss-jax extract ...                              (the same command, the target sound extraction name)
  uss-jax info --checkpoint RUN [--step N]         model, rates, query kinds, outputs, classes, steps, last eval
  uss-jax convert --from SOURCE --checkpoint FILE -o RUN [--query-net Cnn14.pth] [--class-labels CSV] [--head H]
  uss-jax embed --checkpoint SOUNDWORDS_RUN (--text "..." [...] | --audio A [B ...]) [-o EMB.npy]
  uss-jax search --checkpoint SOUNDWORDS_RUN --folder DIR --text "rain on a roof" [--top 5] [--recursive]

Every command prints one JSON summary line on success; bad input ends with one ``uss-jax: error: ...`` line and
exit status 2 (USS_JAX_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable


class UsageError(Exception):
  """A problem with the command line or inputs, reported as one line without a traceback."""


class _Parser(argparse.ArgumentParser):
  """argparse with the house's one-line errors (raised as UsageError instead of usage text + exit)."""

  def error(self, message: str):
    raise UsageError(f"{self.prog.replace('uss-jax ', '')}: {message}")


def one_line(e: BaseException) -> str:
  text = str(e).replace("\\'", "'").replace("\\n", " ").replace("\n", " ").strip().strip("'\"")
  return " ".join(text.split()) or type(e).__name__


# ---- separate / extract ----


def separate_parser(prog: str = "uss-jax separate") -> argparse.ArgumentParser:
  """The ``uss-jax separate`` / ``extract`` command line."""
  p = _Parser(prog=prog, description=(
      "Separate (extract) the source described by a query from audio files of any length and sample rate with any "
      "separation / extraction run of the project or a converted public checkpoint (uss_jax.inference)."))
  p.add_argument("--checkpoint", required=True, metavar="RUN",
                 help="run directory (or one of its checkpoints/<step> folders)")
  inputs = p.add_mutually_exclusive_group(required=True)
  inputs.add_argument("--mixture", metavar="AUDIO", help="input file (any soundfile format; mono-mixed)")
  inputs.add_argument("--mixture-list", metavar="TXT", help="a text file naming one input file per line")
  query = p.add_mutually_exclusive_group(required=True)
  query.add_argument("--query-audio", nargs="+", metavar="AUDIO",
                     help="query recordings of the target source (their embeddings are averaged)")
  query.add_argument("--enrollment", nargs="+", metavar="AUDIO",
                     help="enrollment recordings of the target (target sound extraction's name for an audio query)")
  query.add_argument("--query-class", metavar="NAME", help="a class of the run (see uss-jax info)")
  query.add_argument("--query-text", metavar="TEXT", help="a sentence describing the target (text-queried runs)")
  p.add_argument("--query-checkpoint", metavar="RUN2",
                 help="compute the condition with this run's query encoder (same condition space required)")
  p.add_argument("--query-step", type=int, help="checkpoint step of --query-checkpoint (default: latest)")
  p.add_argument("-o", "--output", metavar="AUDIO",
                 help="output file (with --mixture): mono, at the mixture's rate and length, 32-bit float unless "
                      "--subtype")
  p.add_argument("--out-dir", metavar="DIR", help="output folder (with --mixture-list): <stem>.wav per input")
  p.add_argument("--suppressed", metavar="AUDIO",
                 help="also write the 'suppressed' output (everything but the target; SoundFilter runs)")
  p.add_argument("--plot", metavar="PNG", help="also write mixture / result spectrograms to this PNG")
  p.add_argument("--stream", action="store_true",
                 help="run an online (streaming) system chunk by chunk with carried state; report the real-time factor")
  p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
  p.add_argument("--chunk-seconds", type=float, help="chunk length (default: 2 x the training segment)")
  p.add_argument("--batch-size", type=int, default=8, help="chunks per device call (default: 8)")
  p.add_argument("--subtype", help="soundfile subtype of the output, e.g. PCM_16 (default: FLOAT where available)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar with --mixture-list")
  return p


def run_separate(argv: list[str], prog: str = "uss-jax separate") -> dict:
  """``uss-jax separate ARGS``; returns the JSON summary."""
  args = separate_parser(prog).parse_args(argv)
  name = prog.split()[-1]
  if args.batch_size < 1:
    raise UsageError(f"{name}: --batch-size must be >= 1, got {args.batch_size}")
  if args.mixture is not None and not args.output:
    raise UsageError(f"{name}: --mixture needs -o/--output")
  if args.mixture_list is not None and not args.out_dir:
    raise UsageError(f"{name}: --mixture-list needs --out-dir")
  if args.mixture_list is not None and (args.output or args.plot):
    raise UsageError(f"{name}: -o / --plot go with --mixture; --mixture-list writes into --out-dir")
  if args.query_step is not None and not args.query_checkpoint:
    raise UsageError(f"{name}: --query-step needs --query-checkpoint")
  from uss_jax import inference, runs  # pylint: disable=import-outside-toplevel

  audio = args.query_audio or args.enrollment
  # Fail fast on bad input, before the model is loaded.
  if args.mixture is not None:
    inference.output_format(args.output, args.subtype)
    if args.suppressed:
      inference.output_format(args.suppressed, args.subtype)
    inference.check_mixture(args.mixture)
    mixtures = None
  else:
    mixtures = inference.read_mixture_list(args.mixture_list)
    for m in mixtures:
      inference.check_mixture(m)
  for q in audio or ():
    inference.audio_info(q, "query")
  workdir, step = runs.resolve_checkpoint(args.checkpoint, args.step)
  separator = inference.Separator.from_workdir(workdir, step=step)
  query_sep = (inference.Separator.from_workdir(args.query_checkpoint, step=args.query_step)
               if args.query_checkpoint else None)
  extra = {}
  if args.suppressed:
    if "suppressed" not in separator.outputs:
      raise UsageError(f"{name}: --suppressed: {workdir} has no 'suppressed' output (outputs: "
                       f"{', '.join(separator.outputs)})")
    extra["suppressed"] = args.suppressed
  if args.stream:
    try:
      separator.require_online()
    except ValueError as e:
      raise UsageError(f"{name}: {e}") from e
    if args.chunk_seconds is not None:
      raise UsageError(f"{name}: --chunk-seconds does not apply with --stream (the system's own chunk is used)")
  if mixtures is None:
    summary = inference.separate_file(
        separator, args.mixture, args.output, query_audio=audio, query_class=args.query_class,
        query_text=args.query_text, query_separator=query_sep, extra_outputs=extra,
        chunk_seconds=args.chunk_seconds, batch_size=args.batch_size, subtype=args.subtype, plot=args.plot,
        online=args.stream)
    return {"command": name, **summary}
  condition, query = separator.condition(audio=audio, class_name=args.query_class, text=args.query_text,
                                         query_separator=query_sep)
  results = inference.separate_many(
      separator, mixtures, args.out_dir, condition, extra_outputs=list(extra), chunk_seconds=args.chunk_seconds,
      batch_size=args.batch_size, subtype=args.subtype, progress=not args.no_progress, online=args.stream)
  total = sum(r["seconds"] for r in results)
  wall = sum(r["separate_s"] for r in results)
  return {"command": name, "checkpoint": separator.description, "step": separator.step, "query": query,
          "files": len(results), "out_dir": args.out_dir, "seconds": round(total, 3), "separate_s": round(wall, 3),
          "real_time_factor": round(wall / max(total, 1e-9), 4),
          "outputs": [r["output"] for r in results]}


# ---- info ----


def run_info(argv: list[str]) -> dict:
  p = _Parser(prog="uss-jax info", description="What a separation / extraction run is and which queries it takes.")
  p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory")
  p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
  args = p.parse_args(argv)
  from uss_jax import runs  # pylint: disable=import-outside-toplevel
  return {"command": "info", **runs.run_info(args.checkpoint, args.step)}


# ---- convert ----


def run_convert(argv: list[str]) -> dict:
  from uss_jax.convert import runs as convert_runs  # pylint: disable=import-outside-toplevel

  p = _Parser(prog="uss-jax convert", description=(
      "Turn a public PyTorch checkpoint into a run directory that separate / eval / info / fine-tuning accept "
      "(pickle-free: safetensors / npz, or torch.load(weights_only=True) when torch is installed)."))
  p.add_argument("--from", dest="source", required=True, choices=convert_runs.SOURCES, metavar="SOURCE",
                 help=f"checkpoint family: {', '.join(convert_runs.SOURCES)}")
  p.add_argument("--checkpoint", required=True, metavar="FILE", help="the public checkpoint file")
  p.add_argument("-o", "--output", required=True, metavar="RUN", help="run directory to write")
  p.add_argument("--query-net", metavar="FILE", help="bytedance-uss: the PANNs Cnn14 file of the query net")
  p.add_argument("--class-labels", metavar="CSV",
                 help="bytedance-uss: AudioSet class_labels_indices.csv, for one-hot class queries")
  p.add_argument("--head", choices=("clip", "decision_max"), help="panns: the Cnn14 head (default decision_max)")
  p.add_argument("--overwrite", action="store_true", help="replace a run already in -o")
  args = p.parse_args(argv)
  result = convert_runs.convert(args.source, args.checkpoint, args.output, query_net=args.query_net,
                                class_labels=args.class_labels, head=args.head, overwrite=args.overwrite)
  return {"command": "convert", **result}


# ---- dispatch ----


def _retrieval(name: str) -> Callable[[list[str]], dict]:
  def run(argv: list[str]) -> dict:
    from uss_jax import retrieval  # pylint: disable=import-outside-toplevel
    return getattr(retrieval, f"run_{name}")(argv)
  return run


COMMANDS: dict[str, Callable[[list[str]], dict]] = {
    "separate": run_separate,
    "extract": lambda argv: run_separate(argv, prog="uss-jax extract"),
    "info": run_info,
    "convert": run_convert,
    "embed": _retrieval("embed"),
    "search": _retrieval("search"),
}


class _QuietOrbaxWarnings(logging.Filter):
  """Drops orbax's warnings below ERROR (e.g. "Metadata file does not exist" when reading a step's state)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or "/orbax/" not in record.pathname


def main(command: str, argv: list[str]) -> None:
  """Runs a dashed-option command and exits (0; 2 with one ``uss-jax: error: ...`` line on bad input)."""
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _QuietOrbaxWarnings) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietOrbaxWarnings())
  try:
    summary = COMMANDS[command](argv)
    print(json.dumps(summary, default=float))
    sys.exit(0)
  except (UsageError, OSError, ValueError, KeyError, TypeError, FloatingPointError, ImportError) as e:
    if os.environ.get("USS_JAX_DEBUG"):
      raise
    print(f"uss-jax: error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)
