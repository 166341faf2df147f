#!/usr/bin/env bash
# Install the peers we measure and test against, in a virtual environment of their own
# (.venv-peers), apart from .venv:
#   - Triton's perf_analyzer (the C++ load generator, shipped in the manylinux wheel of
#     tritonclient up to 2.51 that runs on Debian bookworm's glibc 2.36; later wheels need
#     glibc 2.38 or ship none) and the CUDA runtime library it links against (it runs on
#     the CPU, but libcudart.so.12 must load);
#   - PyTriton (a real tritonserver with Python models), which needs numpy < 2 and a Python
#     whose stdlib matches the libpython its backend stub links: Debian's python3.11, not a
#     pyenv build of another patch release.
# Idempotent: does nothing when the stamp is newer than this script. Debian packages
# (libb64-0d, python3-venv) are installed when missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PEERS_VENV:-.venv-peers}
STAMP="$VENV/.installed"
PYTRITON=nvidia-pytriton==0.7.0
TRITONCLIENT_EXTRAS="tritonclient[all]==2.51.0"
CUDART=nvidia-cuda-runtime-cu12==12.9.79
# The peers serve our ONNX models through ONNX Runtime inside a PyTriton function.
ONNXRUNTIME=onnxruntime==1.31.1

if [ -f "$STAMP" ] && [ "$STAMP" -nt "$0" ]; then
  exit 0
fi

need_apt=()
[ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ] || need_apt+=(libb64-0d)
[ -x /usr/bin/python3.11 ] || need_apt+=(python3.11)
/usr/bin/python3.11 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3.11-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: ${need_apt[*]} missing and cannot apt-get here; perf_analyzer / PyTriton unavailable" >&2
    exit 0
  fi
  echo "installing ${need_apt[*]} from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

rm -rf "$VENV"
/usr/bin/python3.11 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The manylinux wheel of tritonclient carries bin/perf_analyzer; --only-binary picks it.
"$VENV/bin/python" -m pip install --quiet --only-binary=:all: \
  "$PYTRITON" "$TRITONCLIENT_EXTRAS" "$CUDART" "$ONNXRUNTIME"
"$VENV/bin/perf_analyzer" --version >/dev/null 2>&1 || {
  # perf_analyzer prints its usage and exits 1 on --version in 2.51; what matters is that
  # it loads (libb64, libcudart): a missing library exits 127.
  lib=$("$VENV/bin/python" -c 'import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], "lib"))')
  LD_LIBRARY_PATH="$lib" "$VENV/bin/perf_analyzer" --version >/dev/null 2>&1 || [ $? -ne 127 ]
}
touch "$STAMP"
