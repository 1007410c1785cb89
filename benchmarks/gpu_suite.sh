#!/bin/bash
# The lent GPU machine's one command (see benchmarks/gpu_suite.py for the steps and caps):
#   bash benchmarks/gpu_suite.sh BUDGET_SECONDS [--steps ...] [--dry-run]
# in a call that carries .gpu and .whl (../shared/gpu/make-carry fills them). Nothing of this
# project is installed there: the carried wheels go to /tmp/site (the kit's `wheels` step), the
# clone itself is on PYTHONPATH (tpo_fast/__init__.py maps kernels/ to tpo_fast.kernels) and
# tpo_fast._C is built in place here (the image has a compiler, ninja and pybind11). The time
# this set-up takes is passed on and counted against the budget. Results: $OUT/gpu_suite.json
# (rewritten after every step), its log and the benchmarks' JSON.
set -u
start=$(date +%s.%N)
cd "$(dirname "$0")/.."
if [ -f .gpu/install-on-device ] && [ -d .whl ]; then
  # `wheels` explicitly: sourced without arguments, the kit would read this script's own "$1"
  . .gpu/install-on-device wheels || echo "gpu_suite: the wheel install failed; running without them"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# torchcodec (the "torchcodec" decoder; its wheel carried in .whl, README "GPU suite") loads
# FFmpeg 4-8 by plain sonames (libavcodec.so.62 ...). Where the image has no FFmpeg, link the
# FFmpeg 8 that the carried PyAV wheel bundles (av.libs/, hashed names) under those names.
ff=/tmp/tpo_fast_cache/ffmpeg
if ! ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so\.' && [ -d /tmp/site/av.libs ]; then
  mkdir -p "$ff"
  for lib in avutil avcodec avformat avdevice avfilter swscale swresample; do
    for f in /tmp/site/av.libs/lib$lib-*.so.*; do
      [ -e "$f" ] || continue
      major=$(basename "$f" | sed -E 's/.*\.so\.([0-9]+).*/\1/')
      ln -sf "$f" "$ff/lib$lib.so.$major"
    done
  done
  export LD_LIBRARY_PATH="$ff${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# Triton's and Inductor's caches under /tmp: they survive between calls while the machine is warm
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/tpo_fast_cache/triton}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/tpo_fast_cache/inductor}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/tpo_fast_cache/torch_extensions}
mkdir -p "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR" "$TORCH_EXTENSIONS_DIR"
# tpo_fast._C in place (build/ and the .so are ignored by git); a failure leaves the numpy packer
python3 setup.py -q build_ext --inplace --build-temp /tmp/tpo_fast_cache/build > /tmp/tpo_fast_cache/build_ext.log 2>&1 \
  || { echo "gpu_suite: building tpo_fast._C failed (the numpy packer runs instead):"; tail -5 /tmp/tpo_fast_cache/build_ext.log; }
export GPU_SUITE_SETUP_S=$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start")
exec python3 -m benchmarks.gpu_suite "$@"
