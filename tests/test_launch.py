"""Tests of launch/: exact printed commands (--dry-run / DRY_RUN=1), argument errors, syntax, and real runs against
stand-ins for gcloud, srun and uss-jax.

Nothing here needs the network, gcloud, SLURM or an accelerator. Quoting is checked against an independent reference,
Python's POSIX shell lexer (`shlex.split`), and end to end by letting a real bash run the printed remote command. The
multi-process test runs real `jax.distributed` processes over 127.0.0.1 (gloo CPU collectives).
"""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_vm.sh", "slurm.sbatch", "local.sh", "gpu_env.sh", "host_setup.sh"]

# uss-jax arguments that need quoting: spaces, both quote characters, $, backquote, glob, an empty argument.
TRICKY = [
    "train",
    "--config=configs/uss_resunet30.py:smoke",
    "--workdir=gs://bucket/runs/a b",
    "--config.name=it's \"q\" $HOME `x` *",
    "--config.lr=1e-3",
    "",
]


def clean_env(**extra) -> dict:
  """The test process's environment without variables that change what the scripts print."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "USS_JAX_", "XLA_", "NCCL_", "JAX_")) and k not in ("DRY_RUN", "TMPDIR")}
  env.update(extra)
  return env


def run(script: str, *args: str, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                        env=clean_env() if env is None else env, timeout=timeout, **kw)


def write_exe(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(textwrap.dedent(text).lstrip())
  path.chmod(0o755)
  return path


# A stand-in for uss-jax: records its arguments and a few environment variables as JSON in $FAKE_OUT/<process>.json,
# then behaves as $FAKE_MODE says (exit 0; or process 1 fails with status 3 while the others would sleep 60 s).
FAKE_USS_JAX = f"""\
    #!{sys.executable}
    import json, os, sys, time
    args = sys.argv[1:]
    pid_flag = [a for a in args if a.startswith("--process_id=")]
    name = pid_flag[0].split("=", 1)[1] if pid_flag else "single"
    keep = ("JAX_PLATFORMS", "XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "TFDS_DATA_DIR", "XLA_PYTHON_CLIENT_MEM_FRACTION",
            "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
            "JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_PORT", "JAX_LOCAL_DEVICE_IDS", "VIRTUAL_ENV")
    record = {{"argv": args, "pid": os.getpid(), "env": {{k: os.environ[k] for k in keep if k in os.environ}}}}
    out = os.environ["FAKE_OUT"]
    with open(os.path.join(out, name + ".json"), "w") as f:
      json.dump(record, f)
    mode = os.environ.get("FAKE_MODE", "ok")
    if mode == "fail1":
      if name == "1":
        time.sleep(0.2)
        sys.exit(3)
      time.sleep(60)
      open(os.path.join(out, name + ".finished"), "w").close()
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


@pytest.fixture
def fake_uss_jax(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  bindir = tmp_path / "bin"
  bindir.mkdir()
  exe = write_exe(bindir / "uss-jax", FAKE_USS_JAX)
  return exe, out


def records(out: pathlib.Path) -> dict:
  return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


# ---------------------------------------------------------------------------------------------------------------------
# All scripts


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
  result = subprocess.run(["shellcheck", *(str(LAUNCH / s) for s in SCRIPTS)], capture_output=True, text=True,
                          cwd=REPO)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_and_executable(script):
  path = LAUNCH / script
  assert os.access(path, os.X_OK)
  text = path.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "set -euo pipefail" in text


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero(script):
  result = run(script, "--help")
  assert result.returncode == 0, result.stderr
  assert "Usage" in result.stdout


@pytest.mark.parametrize("script,args", [
    ("tpu_vm.sh", ["--tpu", "t", "--zone", "z", "--bogus", "--", "train"]),
    ("slurm.sbatch", ["--bogus", "train"]),
    ("local.sh", ["--bogus", "--", "train"]),
    ("gpu_env.sh", ["--bogus"]),
    ("host_setup.sh", ["cpu", "--bogus", "--dry-run"]),
])
def test_unknown_flag_fails_with_message(script, args):
  result = run(script, *args)
  assert result.returncode != 0
  assert "error" in result.stderr and "'--bogus'" in result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize("script,args,message", [
    ("tpu_vm.sh", ["--zone", "z", "--", "train"], "missing --tpu"),
    ("tpu_vm.sh", ["--tpu", "t", "--", "train"], "missing --zone"),
    ("tpu_vm.sh", ["--tpu", "t", "--zone"], "--zone needs a value"),
    ("tpu_vm.sh", ["--tpu", "t", "--zone", "z"], "nothing to do"),
    ("tpu_vm.sh", ["--tpu", "t", "--zone", "z", "--env", "1X=2", "--", "train"], "--env needs NAME=VALUE"),
    ("slurm.sbatch", [], "missing uss-jax arguments"),
    ("slurm.sbatch", ["train"], "not inside a Slurm job"),
    ("local.sh", [], "missing uss-jax arguments"),
    ("local.sh", ["--processes", "0", "--", "train"], "positive integer"),
    ("local.sh", ["--devices", "x", "--", "train"], "positive integer"),
    ("local.sh", ["--port", "70000", "--", "train"], "1..65535"),
    ("local.sh", ["--processes", "2", "--", "train", "--process_id=1"], "sets --coordinator_address"),
    ("gpu_env.sh", [], "source this file"),
    ("host_setup.sh", ["--dry-run"], "missing the accelerator"),
    ("host_setup.sh", ["tpu", "gpu", "--dry-run"], "accelerator given twice"),
    ("host_setup.sh", ["cpu", "--python", "/bin/false", "--dry-run"], "not a working Python >= 3.11"),
])
def test_missing_or_bad_arguments(script, args, message):
  result = run(script, *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert result.stdout == ""


# ---------------------------------------------------------------------------------------------------------------------
# tpu_vm.sh


def test_tpu_dry_run_exact_command():
  result = run("tpu_vm.sh", "--tpu", "my-pod", "--zone", "us-central2-b", "--dry-run", "--",
               "train", "--config=configs/uss_resunet30.py", "--workdir=gs://b/w", "--config.name=a b")
  assert result.returncode == 0, result.stderr
  assert result.stdout == (
      "gcloud compute tpus tpu-vm ssh my-pod --zone=us-central2-b --worker=all --command "
      "'cd uss_jax && . .venv/bin/activate && uss-jax train --config=configs/uss_resunet30.py --workdir=gs://b/w "
      "'\\''--config.name=a b'\\'''\n")


def test_tpu_dry_run_quoting_round_trips_through_two_shells():
  result = run("tpu_vm.sh", "--tpu", "my-pod", "--zone", "europe-west4-a", "--project", "proj-1",
               "--env", "TFDS_DATA_DIR=gs://b/tfds dir", "--dry-run", "--", *TRICKY)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 1
  argv = shlex.split(lines[0])  # the local shell
  assert argv[:-1] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone=europe-west4-a",
                       "--project=proj-1", "--worker=all", "--command"]
  remote = shlex.split(argv[-1])  # the worker's shell
  assert remote == ["cd", "uss_jax", "&&", ".", ".venv/bin/activate", "&&",
                    "env", "TFDS_DATA_DIR=gs://b/tfds dir", "uss-jax", *TRICKY]


def test_tpu_dry_run_copy_setup_and_options():
  if shutil.which("git") is None or subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                                                   capture_output=True).returncode != 0:
    pytest.skip("not a git checkout")
  rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                       check=True).stdout.strip()
  env = clean_env(TMPDIR="/scratch")
  result = run("tpu_vm.sh", "--tpu=pod", "--zone=z1", "--worker=0", "--remote-dir=~/code/uss", "--venv=env",
               "--gcloud-arg=--internal-ip", "--copy", "--setup", "--dry-run", "--", "eval", "--workdir=gs://b/w",
               env=env)
  assert result.returncode == 0, result.stderr
  common = "--zone=z1 --worker=0 --internal-ip"
  archive = f"uss_jax-{rev}.tar.gz"
  assert result.stdout.splitlines() == [
      f"git -C {REPO} archive --format=tar.gz --output=/scratch/{archive} HEAD",
      f"gcloud compute tpus tpu-vm scp /scratch/{archive} pod:{archive} {common}",
      f"gcloud compute tpus tpu-vm ssh pod {common} --command "
      f"'mkdir -p code/uss && tar -xzf {archive} -C code/uss && rm -f {archive}'",
      f"gcloud compute tpus tpu-vm ssh pod {common} --command 'cd code/uss && bash launch/host_setup.sh tpu --venv env'",
      f"gcloud compute tpus tpu-vm ssh pod {common} --command "
      "'cd code/uss && . env/bin/activate && uss-jax eval --workdir=gs://b/w'",
  ]


def test_tpu_setup_only_needs_no_uss_jax_arguments():
  result = run("tpu_vm.sh", "--tpu", "t", "--zone", "z", "--setup", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert result.stdout == ("gcloud compute tpus tpu-vm ssh t --zone=z --worker=all --command "
                           "'cd uss_jax && bash launch/host_setup.sh tpu --venv .venv'\n")


def test_tpu_runs_gcloud_and_remote_shell_delivers_arguments(tmp_path, fake_uss_jax):
  """Not a dry run: a fake gcloud on PATH runs --command in bash inside a fake worker home with a fake venv."""
  exe, out = fake_uss_jax
  home = tmp_path / "home"
  venv_bin = home / "uss_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(f'export VIRTUAL_ENV=fake-venv\nexport PATH="{exe.parent}:$PATH"\n')
  gcloud_dir = tmp_path / "gcloud_bin"
  gcloud_dir.mkdir()
  log = tmp_path / "gcloud.log"
  write_exe(gcloud_dir / "gcloud", f"""\
      #!{sys.executable}
      import json, subprocess, sys
      args = sys.argv[1:]
      with open({str(log)!r}, "a") as f:
        f.write(json.dumps(args) + "\\n")
      if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        sys.exit(subprocess.call(["bash", "-c", args[args.index("--command") + 1]], cwd={str(home)!r}))
      sys.exit(1)
  """)
  env = clean_env(FAKE_OUT=str(out), PATH=f"{gcloud_dir}:{os.environ['PATH']}")
  result = run("tpu_vm.sh", "--tpu", "my-pod", "--zone", "us-central2-b", "--env", "TFDS_DATA_DIR=gs://b/t d",
               "--", *TRICKY, env=env)
  assert result.returncode == 0, result.stderr
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  assert len(calls) == 1 and calls[0][:8] == ["compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone=us-central2-b",
                                              "--worker=all", "--command"]
  got = records(out)["single"]
  assert got["argv"] == TRICKY
  assert got["env"]["TFDS_DATA_DIR"] == "gs://b/t d"
  assert got["env"]["VIRTUAL_ENV"] == "fake-venv"


def test_tpu_propagates_remote_failure(tmp_path):
  gcloud_dir = tmp_path / "gcloud_bin"
  gcloud_dir.mkdir()
  write_exe(gcloud_dir / "gcloud", "#!/bin/sh\nexit 7\n")
  env = clean_env(PATH=f"{gcloud_dir}:{os.environ['PATH']}")
  result = run("tpu_vm.sh", "--tpu", "t", "--zone", "z", "--", "train", env=env)
  assert result.returncode == 7


# ---------------------------------------------------------------------------------------------------------------------
# slurm.sbatch


def sbatch_header() -> dict:
  """The #SBATCH options, which must come before the first command for sbatch to read them."""
  options = {}
  for line in (LAUNCH / "slurm.sbatch").read_text().splitlines()[1:]:
    if not line.startswith("#"):
      break
    if line.startswith("#SBATCH "):
      key, _, value = line[len("#SBATCH "):].partition("=")
      options[key] = value
  return options


def test_sbatch_header_one_process_per_gpu():
  header = sbatch_header()
  assert header["--ntasks-per-node"] == header["--gpus-per-node"] == "8"
  assert "--gpus-per-task" not in header  # would hide the node's other GPUs from jax's SLURM_LOCALID choice
  assert int(header["--cpus-per-task"]) >= 1


def test_slurm_dry_run_exact_command():
  env = clean_env(DRY_RUN="1", SLURM_CPUS_PER_TASK="16")
  result = run("slurm.sbatch", "train", "--config=configs/uss_resunet30.py", "--config.name=a b", env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout == ("srun --kill-on-bad-exit=1 --cpus-per-task=16 uss-jax train "
                           "--config=configs/uss_resunet30.py '--config.name=a b'\n")
  result = run("slurm.sbatch", *TRICKY, env=clean_env(DRY_RUN="1"))
  assert shlex.split(result.stdout) == ["srun", "--kill-on-bad-exit=1", "uss-jax", *TRICKY]


def test_slurm_runs_srun_and_leaves_jax_cluster_variables_alone(tmp_path, fake_uss_jax):
  exe, out = fake_uss_jax
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV={venv}\nexport PATH="{exe.parent}:$PATH"\n')
  srun_dir = tmp_path / "srun_bin"
  srun_dir.mkdir()
  srun_log = tmp_path / "srun.json"
  # A fake srun: records its options, then runs the command once (as task 0 would).
  write_exe(srun_dir / "srun", f"""\
      #!{sys.executable}
      import json, os, sys
      args = sys.argv[1:]
      json.dump(args, open({str(srun_log)!r}, "w"))
      command = args[next(i for i, a in enumerate(args) if not a.startswith("--")):]
      os.execvp(command[0], command)
  """)
  slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "16",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_CPUS_PER_TASK": "12", "SLURM_SUBMIT_DIR": str(REPO)}
  env = clean_env(FAKE_OUT=str(out), USS_JAX_VENV=str(venv), PATH=f"{srun_dir}:{os.environ['PATH']}", **slurm)
  result = run("slurm.sbatch", *TRICKY, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert json.loads(srun_log.read_text()) == ["--kill-on-bad-exit=1", "--cpus-per-task=12", "uss-jax", *TRICKY]
  got = records(out)["single"]
  assert got["argv"] == TRICKY
  for key in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"):
    assert got["env"][key] == slurm[key]
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_PORT", "JAX_LOCAL_DEVICE_IDS"):
    assert key not in got["env"]
  assert got["env"]["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true"  # from gpu_env.sh
  assert got["env"]["VIRTUAL_ENV"] == str(venv)


# ---------------------------------------------------------------------------------------------------------------------
# local.sh


def test_local_dry_run_single_process():
  env = clean_env(USS_JAX_BIN="uss-jax")
  result = run("local.sh", "--dry-run", "--", "train", "--config=configs/uss_resunet30.py:smoke", env=env)
  assert result.stdout == "env JAX_PLATFORMS=cpu uss-jax train --config=configs/uss_resunet30.py:smoke\n"
  result = run("local.sh", "--devices", "8", "--dry-run", "--", *TRICKY, env=env)
  assert result.returncode == 0, result.stderr
  assert shlex.split(result.stdout) == ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=8",
                                        "uss-jax", *TRICKY]


def test_local_dry_run_processes_share_one_coordinator():
  env = clean_env(USS_JAX_BIN="uss-jax", XLA_FLAGS="--xla_cpu_enable_fast_math=false", JAX_NUM_CPU_DEVICES="2")
  result = run("local.sh", "--processes=3", "--devices=4", "--port=23456", "--dry-run", "--", "train",
               "--config.name=a b", env=env)
  assert result.returncode == 0, result.stderr
  prefix = ("env -u JAX_NUM_CPU_DEVICES JAX_PLATFORMS=cpu "
            "'XLA_FLAGS=--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=4' "
            "uss-jax train '--config.name=a b' --coordinator_address=127.0.0.1:23456 --num_processes=3")
  assert result.stdout.splitlines() == [f"{prefix} --process_id={i}" for i in range(3)]


def test_local_dry_run_picks_one_free_loopback_port():
  result = run("local.sh", "--processes", "2", "--dry-run", "--", "train", env=clean_env(USS_JAX_BIN="uss-jax"))
  coordinators = {[a for a in shlex.split(line) if a.startswith("--coordinator_address=")][0]
                  for line in result.stdout.splitlines()}
  assert len(coordinators) == 1
  host, port = coordinators.pop().split("=", 1)[1].rsplit(":", 1)
  assert host == "127.0.0.1" and 1 <= int(port) <= 65535


def test_local_runs_processes_and_waits_for_all(tmp_path, fake_uss_jax):
  exe, out = fake_uss_jax
  env = clean_env(USS_JAX_BIN=str(exe), FAKE_OUT=str(out))
  result = run("local.sh", "--processes", "3", "--devices", "2", "--port", "23457", "--log-dir",
               str(tmp_path / "logs"), "--", *TRICKY, env=env)
  assert result.returncode == 0, result.stderr
  got = records(out)
  assert sorted(got) == ["0", "1", "2"]
  for i in range(3):
    assert got[str(i)]["argv"] == [*TRICKY, "--coordinator_address=127.0.0.1:23457", "--num_processes=3",
                                   f"--process_id={i}"]
    assert got[str(i)]["env"]["JAX_PLATFORMS"] == "cpu"
    assert got[str(i)]["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [f"process_{i}.log" for i in range(3)]


def test_local_single_process_exit_status(fake_uss_jax):
  exe, out = fake_uss_jax
  result = run("local.sh", "--", "train", env=clean_env(USS_JAX_BIN=str(exe), FAKE_OUT=str(out), FAKE_EXIT="5"))
  assert result.returncode == 5
  assert records(out)["single"]["argv"] == ["train"]


def test_local_first_failure_stops_the_others(fake_uss_jax):
  """Process 1 exits with 3; processes 0 and 2 would sleep 60 s and then leave a .finished file."""
  exe, out = fake_uss_jax
  env = clean_env(USS_JAX_BIN=str(exe), FAKE_OUT=str(out), FAKE_MODE="fail1")
  result = run("local.sh", "--processes", "3", "--port", "23458", "--", "train", env=env, timeout=50)
  assert result.returncode == 3
  assert "process 1" in result.stderr and "status 3" in result.stderr
  assert not list(out.glob("*.finished"))
  for name, record in records(out).items():
    with pytest.raises(ProcessLookupError):
      os.kill(record["pid"], 0)


def test_uss_jax_defines_the_flags_local_sh_appends():
  """The contract with uss_jax/main.py: the three absl flags exist (checked in a subprocess: own flag registry)."""
  probe = ("import importlib.util, sys\n"
           "if importlib.util.find_spec('uss_jax.main') is None: sys.exit(77)\n"
           "import uss_jax.main\n"
           "from absl import flags\n"
           "print(sorted(n for n in ('coordinator_address', 'num_processes', 'process_id') if n in flags.FLAGS))")
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=clean_env())
  if result.returncode == 77:
    pytest.skip("uss_jax/main.py not present")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "['coordinator_address', 'num_processes', 'process_id']"


@pytest.mark.slow
def test_local_two_real_jax_processes(tmp_path):
  """The printed flags and environment really bring up jax.distributed on the CPU: 2 processes x 2 fake devices.

  The bring-up takes ~4 s; on a loaded 2-core CI machine it once did not finish in 110 s after both Gloo ranks had
  connected. The stand-in therefore gives jax finite timeouts (a stuck barrier becomes an error in its log), each
  process logs to --log-dir and marks the stages it passed, and a failure prints both, so a stall names its stage.
  """
  out = tmp_path / "out"
  out.mkdir()
  logs = tmp_path / "logs"
  exe = write_exe(tmp_path / "jax_proc", f"""\
      #!{sys.executable}
      import json, sys
      args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
      pid = int(args["process_id"])
      def stage(name):
        open({str(out)!r} + "/%d.%s" % (pid, name), "w").close()
      import jax
      import numpy as np
      from jax.experimental import multihost_utils
      stage("imported")
      jax.distributed.initialize(args["coordinator_address"], int(args["num_processes"]), pid,
                                 initialization_timeout=120, heartbeat_timeout_seconds=60,
                                 shutdown_timeout_seconds=60)
      stage("initialized")
      gathered = multihost_utils.process_allgather(np.array([jax.process_index(), jax.local_device_count()]))
      result = dict(index=jax.process_index(), count=jax.process_count(), local=jax.local_device_count(),
                    total=jax.device_count(), platform=jax.default_backend(), gathered=np.asarray(gathered).tolist())
      json.dump(result, open({str(out)!r} + "/%d.json" % jax.process_index(), "w"))
      jax.distributed.shutdown()
      stage("shut_down")
  """)

  def report() -> str:
    stages = sorted(p.name for p in out.iterdir())
    text = "".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("*.log")))
    return f"stages reached: {stages}\n{text}"

  try:
    result = run("local.sh", "--processes", "2", "--devices", "2", "--log-dir", str(logs), "--", "train",
                 env=clean_env(USS_JAX_BIN=str(exe)), timeout=300)
  except subprocess.TimeoutExpired:
    pytest.fail("local.sh did not finish in 300 s\n" + report())
  assert result.returncode == 0, result.stderr[-2000:] + "\n" + report()
  got = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
  assert sorted(got) == ["0", "1"], report()
  for i in range(2):
    assert got[str(i)] == dict(index=i, count=2, local=2, total=4, platform="cpu", gathered=[[0, 2], [1, 2]])
    assert (out / f"{i}.shut_down").exists(), report()


# ---------------------------------------------------------------------------------------------------------------------
# gpu_env.sh


def sourced(script: str, env: dict) -> dict:
  result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=REPO, check=True)
  return json.loads(result.stdout)


DUMP = (f"{sys.executable} -c 'import json, os; print(json.dumps({{k: v for k, v in os.environ.items() "
        "if k.startswith((\"XLA_\", \"NCCL_\"))}))'")


def test_gpu_env_sourced_adds_flags_once_and_keeps_shell_options():
  got = sourced("set +e; o1=$(set -o); source launch/gpu_env.sh; source launch/gpu_env.sh; o2=$(set -o); "
                f"[[ $o1 == \"$o2\" ]] || exit 9; {DUMP}", clean_env())
  assert got == {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true",
                 "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.90"}


def test_gpu_env_keeps_caller_values_and_nccl_is_opt_in():
  env = clean_env(XLA_FLAGS="--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=false",
                  XLA_PYTHON_CLIENT_MEM_FRACTION="0.5", USS_JAX_NCCL_SINGLE_HOST="1")
  got = sourced(f"source launch/gpu_env.sh; {DUMP}", env)
  assert got == {"XLA_FLAGS": "--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=false",
                 "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "NCCL_LL128_BUFFSIZE": "-2", "NCCL_LL_BUFFSIZE": "-2",
                 "NCCL_PROTO": "SIMPLE,LL,LL128"}
  printed = run("gpu_env.sh", "--print", env=env)
  assert printed.returncode == 0, printed.stderr
  got = sourced(f"eval \"$(launch/gpu_env.sh --print)\"; {DUMP}", env)
  assert got["NCCL_PROTO"] == "SIMPLE,LL,LL128" and got["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"


def test_gpu_env_flags_are_known_to_xla():
  """XLA aborts on an unknown flag in XLA_FLAGS (the negative control shows it), so a clean start proves each exists."""
  flags = sourced(f"source launch/gpu_env.sh; {DUMP}", clean_env())["XLA_FLAGS"]
  probe = [sys.executable, "-c", "import jax, jax.numpy as jnp; print(float(jnp.ones(3).sum()))"]
  good = subprocess.run(probe, capture_output=True, text=True, env=clean_env(XLA_FLAGS=flags, JAX_PLATFORMS="cpu"))
  assert good.returncode == 0 and good.stdout.strip() == "3.0", good.stderr[-2000:]
  bad = subprocess.run(probe, capture_output=True, text=True,
                       env=clean_env(XLA_FLAGS=flags + " --xla_gpu_no_such_flag=true", JAX_PLATFORMS="cpu"))
  assert bad.returncode != 0 and "xla_gpu_no_such_flag" in bad.stderr


# ---------------------------------------------------------------------------------------------------------------------
# host_setup.sh


@pytest.mark.parametrize("accel,extra,plugin", [("cpu", [], []), ("tpu", ["jax[tpu]"], ["libtpu"]),
                                                ("gpu", ["jax[cuda12]"], ["jax-cuda12-plugin"])])
def test_host_setup_dry_run_commands(tmp_path, accel, extra, plugin):
  venv = tmp_path / "new venv"
  result = run("host_setup.sh", accel, "--venv", str(venv), "--python", sys.executable, "--dry-run")
  assert result.returncode == 0, result.stderr
  py = f"{venv}/bin/python"
  check = "import importlib.metadata as m, sys; [print(d, m.version(d)) for d in sys.argv[1:]]"
  assert [shlex.split(line) for line in result.stdout.splitlines()] == [
      [sys.executable, "-m", "venv", str(venv)],
      [py, "-m", "pip", "install", "--upgrade", "pip"],
      [py, "-m", "pip", "install", "-e", str(REPO), *extra, "-c", f"{REPO}/constraints.txt"],
      [py, "-c", check, "jax", "jaxlib", *plugin],
  ]


def test_host_setup_reuses_venv_and_test_extras(tmp_path):
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "python").symlink_to(sys.executable)
  result = run("host_setup.sh", "--test", "--no-check", "cuda13", f"--venv={venv}", f"--python={sys.executable}",
               "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "reusing" in result.stderr
  assert result.stdout.splitlines() == [
      f"{venv}/bin/python -m pip install --upgrade pip",
      f"{venv}/bin/python -m pip install -e '{REPO}[test]' 'jax[cuda13]' -c {REPO}/constraints.txt",
  ]
