#!/usr/bin/env bash
# Run uss-jax on this machine's CPU: one process (optionally with N fake devices), or P processes that find each other
# over 127.0.0.1 exactly as the hosts of a pod do over the network. See launch/README.md.
set -euo pipefail

readonly PROG="launch/local.sh"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR

usage() {
  cat <<'EOF'
Usage: launch/local.sh [--devices N] [--processes P] [--port PORT] [--log-dir DIR] [--dry-run] -- <uss-jax args>

Runs uss-jax on the local CPU (JAX_PLATFORMS=cpu).

  --devices N     fake CPU devices per process: appends --xla_force_host_platform_device_count=N to XLA_FLAGS.
                  Without it each process has one CPU device.
  --processes P   number of processes (default 1). With P > 1 every process gets
                  --coordinator_address=127.0.0.1:PORT --num_processes=P --process_id=i (i = 0..P-1) appended to the
                  uss-jax arguments; process 0 hosts the coordinator. The script waits for all of them; as soon as one
                  fails it stops the others and exits with that process's status.
  --port PORT     coordinator port on 127.0.0.1 (default: a free port chosen by the OS).
  --log-dir DIR   with P > 1: write process i's stdout+stderr to DIR/process_i.log instead of the terminal.
  --dry-run       print the command(s), one line per process, instead of running them.
  -h, --help      show this help.

Environment:
  USS_JAX_BIN     the uss-jax executable (default: uss-jax on PATH, else <repo>/.venv/bin/uss-jax).
  XLA_FLAGS       kept; the device-count flag is appended (the last occurrence wins in XLA).

Examples:
  launch/local.sh -- train --config=configs/uss_resunet30.py:smoke --workdir=/tmp/w
  launch/local.sh --devices 8 -- train --config=configs/uss_resunet30.py:smoke --workdir=/tmp/w --config.mesh.fsdp=2
  launch/local.sh --processes 2 --devices 4 -- train --config=configs/uss_resunet30.py:smoke --workdir=/tmp/w
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

is_positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

devices=""
processes=1
port=""
log_dir=""
dry_run=0

set_option() {  # name value
  case "$1" in
    --devices) is_positive_int "$2" || die "--devices needs a positive integer, got '$2'"; devices="$2" ;;
    --processes) is_positive_int "$2" || die "--processes needs a positive integer, got '$2'"; processes="$2" ;;
    --port)
      { is_positive_int "$2" && (($2 <= 65535)); } || die "--port needs an integer in 1..65535, got '$2'"
      port="$2" ;;
    --log-dir) [[ -n "$2" ]] || die "--log-dir needs a directory"; log_dir="$2" ;;
  esac
}

while (($#)); do
  case "$1" in
    --devices | --processes | --port | --log-dir)
      (($# >= 2)) || die "$1 needs a value"
      set_option "$1" "$2"
      shift 2 ;;
    --devices=* | --processes=* | --port=* | --log-dir=*)
      set_option "${1%%=*}" "${1#*=}"
      shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (uss-jax arguments go after --)" ;;
  esac
done
(($#)) || die "missing uss-jax arguments after -- (e.g. -- train --config=configs/<recipe>.py --workdir=DIR)"
uss_args=("$@")

if ((processes > 1)); then
  for arg in "${uss_args[@]}"; do
    case "$arg" in
      --coordinator_address | --coordinator_address=* | --num_processes | --num_processes=* | --process_id | --process_id=*)
        die "'$arg': $PROG sets --coordinator_address/--num_processes/--process_id itself when --processes > 1" ;;
    esac
  done
  if [[ -z "$port" ]]; then
    # Ask the OS for a free port; fall back to a random one in the dynamic range.
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
      2>/dev/null || echo $((49152 + RANDOM % 16000)))"
  fi
elif [[ -n "$log_dir" ]]; then
  die "--log-dir needs --processes > 1 (a single process writes to the terminal)"
fi

if [[ -n "${USS_JAX_BIN:-}" ]]; then
  bin="$USS_JAX_BIN"
elif command -v uss-jax >/dev/null 2>&1; then
  bin="uss-jax"
elif [[ -x "$REPO_DIR/.venv/bin/uss-jax" ]]; then
  bin="$REPO_DIR/.venv/bin/uss-jax"
elif ((dry_run)); then
  bin="uss-jax"
else
  die "uss-jax not found: run 'launch/host_setup.sh cpu' and activate .venv, or set USS_JAX_BIN"
fi

# The environment every process gets: CPU only, and N fake devices when asked for.
env_cmd=(env)
if [[ -n "$devices" ]]; then
  if [[ -n "${JAX_NUM_CPU_DEVICES:-}" ]]; then
    # jax_num_cpu_devices overrides the XLA flag, so drop it rather than run with the wrong device count.
    echo "$PROG: note: unsetting JAX_NUM_CPU_DEVICES=$JAX_NUM_CPU_DEVICES for --devices $devices" >&2
    env_cmd+=(-u JAX_NUM_CPU_DEVICES)
  fi
  env_cmd+=(JAX_PLATFORMS=cpu "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices")
else
  env_cmd+=(JAX_PLATFORMS=cpu)
fi

# Command line of process $1.
process_cmd() {
  cmd=("${env_cmd[@]}" "$bin" "${uss_args[@]}")
  if ((processes > 1)); then
    cmd+=("--coordinator_address=127.0.0.1:$port" "--num_processes=$processes" "--process_id=$1")
  fi
}

if ((dry_run)); then
  for ((i = 0; i < processes; i++)); do
    process_cmd "$i"
    quote "${cmd[@]}"
  done
  exit 0
fi

if ((processes == 1)); then
  process_cmd 0
  exec "${cmd[@]}"
fi

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 3))); then
  die "--processes > 1 needs bash >= 4.3 (wait -n); this is bash $BASH_VERSION"
fi
[[ -z "$log_dir" ]] || mkdir -p "$log_dir"

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((i = 0; i < processes; i++)); do
  process_cmd "$i"
  if [[ -n "$log_dir" ]]; then
    "${cmd[@]}" >"$log_dir/process_$i.log" 2>&1 &
  else
    "${cmd[@]}" &
  fi
  pids+=("$!")
done
echo "$PROG: started $processes processes (pids ${pids[*]}), coordinator 127.0.0.1:$port" >&2

# Wait for all; the first failure stops the rest (they would otherwise block in a collective until jax's heartbeat
# timeout) and becomes this script's exit status.
use_p=0
if ((BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1))); then use_p=1; fi
for ((n = 0; n < processes; n++)); do
  finished=""
  status=0
  if ((use_p)); then
    wait -n -p finished || status=$?
  else
    wait -n || status=$?
  fi
  if ((status != 0)); then
    who="a process"
    for ((i = 0; i < processes; i++)); do
      if [[ "${pids[i]}" == "$finished" ]]; then who="process $i (pid $finished)"; fi
    done
    echo "$PROG: $who exited with status $status; stopping the others" >&2
    stop_all
    wait || true
    exit "$status"
  fi
done
echo "$PROG: all $processes processes finished successfully" >&2
