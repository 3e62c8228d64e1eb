#!/usr/bin/env bash
# Environment for NVIDIA GPU hosts. Source it before uss-jax (launch/slurm.sbatch does):
#
#   source launch/gpu_env.sh            # sets the variables below in the current shell
#   launch/gpu_env.sh --print           # prints them as `export` lines (executing it changes nothing)
#   launch/gpu_env.sh --help
#
# Everything here only adds to what is already set: a flag already present in XLA_FLAGS (with any value) and a
# variable already set keep the caller's value, and sourcing twice adds nothing twice. When sourced, this file does
# not change the shell's options (no `set -e` leaks into an interactive shell).
#
# What is set, and why:
#
#   XLA_FLAGS += --xla_gpu_enable_latency_hiding_scheduler=true
#       Lets XLA's scheduler overlap the asynchronous collectives of sharded training (gradient all-reduce,
#       FSDP all-gather / reduce-scatter) with compute. JAX's "GPU performance tips" list it as the first
#       communication flag (default false there; also required for auto-PGLE, JAX_ENABLE_PGLE=true), and NVIDIA's
#       JAX-Toolbox containers set it by default. Multi-device only; harmless on one GPU.
#
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.90 (unless set)
#       jax preallocates 75 % of each GPU by default (JAX docs, "GPU memory allocation"); NVIDIA's JAX/XLA
#       performance guide uses 0.9 (or 0.8) for training, leaving the rest to cuDNN / NCCL workspaces.
#       Lower it if other processes share the GPU.
#
#   Opt-in, USS_JAX_NCCL_SINGLE_HOST=1: NCCL_LL128_BUFFSIZE=-2 NCCL_LL_BUFFSIZE=-2 NCCL_PROTO=SIMPLE,LL,LL128
#       JAX's "GPU performance tips" ("NCCL flags") report these may speed up single-host multi-GPU communication
#       and do not seem useful across hosts, so they are off by default.
#
# Deliberately not set: collective combine thresholds (--xla_gpu_*_combine_threshold_bytes; tune per model from a
# profile), --xla_gpu_enable_triton_gemm / command-buffer flags (version- and model-dependent), CUDA_DEVICE_MAX_CONNECTIONS
# (NVIDIA advises against it on Blackwell), NCCL_SOCKET_IFNAME / NCCL_IB_* (site-specific: ask your cluster's docs).
# Every flag above is accepted by the XLA of jax 0.10.2 (tests/test_launch.py checks XLA does not reject it).

# Appends "--name=value" to XLA_FLAGS unless a "--name=" is already there.
_uss_jax_add_xla_flag() {
  case " ${XLA_FLAGS:-} " in
    *" ${1%%=*}="*) ;;
    *) XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$1" ;;
  esac
}

_uss_jax_gpu_env() {
  _uss_jax_add_xla_flag --xla_gpu_enable_latency_hiding_scheduler=true
  export XLA_FLAGS
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
  if [ "${USS_JAX_NCCL_SINGLE_HOST:-0}" = 1 ]; then
    export NCCL_LL128_BUFFSIZE="${NCCL_LL128_BUFFSIZE:--2}"
    export NCCL_LL_BUFFSIZE="${NCCL_LL_BUFFSIZE:--2}"
    export NCCL_PROTO="${NCCL_PROTO:-SIMPLE,LL,LL128}"
  fi
}

if [[ "${BASH_SOURCE[0]:-}" != "${0}" ]]; then
  # Sourced.
  _uss_jax_gpu_env
  unset -f _uss_jax_add_xla_flag _uss_jax_gpu_env
else
  # Executed: --help or --print; the caller's environment cannot be changed from here.
  set -euo pipefail
  case "${1:-}" in
    -h | --help)
      cat <<'EOF'
Usage: source launch/gpu_env.sh      set the GPU environment (XLA_FLAGS, XLA_PYTHON_CLIENT_MEM_FRACTION, opt-in NCCL_*)
       launch/gpu_env.sh --print     print it as export lines (e.g. eval "$(launch/gpu_env.sh --print)")
       launch/gpu_env.sh --help      this help; the comments at the top of the file say why each setting is there.
EOF
      exit 0 ;;
    --print)
      (($# == 1)) || { echo "launch/gpu_env.sh: error: --print takes no further arguments" >&2; exit 2; }
      _uss_jax_gpu_env
      for name in XLA_FLAGS XLA_PYTHON_CLIENT_MEM_FRACTION NCCL_LL128_BUFFSIZE NCCL_LL_BUFFSIZE NCCL_PROTO; do
        if [[ -n "${!name+x}" ]]; then
          printf 'export %s=%q\n' "$name" "${!name}"
        fi
      done
      exit 0 ;;
    "")
      echo "launch/gpu_env.sh: error: source this file (source launch/gpu_env.sh), or run it with --print or --help" >&2
      exit 2 ;;
    *)
      echo "launch/gpu_env.sh: error: unknown argument '$1'" >&2
      echo "Run 'launch/gpu_env.sh --help' for usage." >&2
      exit 2 ;;
  esac
fi
