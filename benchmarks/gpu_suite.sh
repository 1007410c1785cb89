#!/bin/bash
# The lent GPU machine's one command (see benchmarks/gpu_suite.py for the steps and caps):
#   bash benchmarks/gpu_suite.sh BUDGET_SECONDS [--steps ...]
# in a call that carries .gpu and .whl (../shared/gpu/make-carry fills them): the carried wheels
# go to /tmp/site first. Results: $OUT/gpu_suite.json, its log and the benchmarks' JSON.
set -u
cd "$(dirname "$0")/.."
if [ -f .gpu/install-on-device ] && [ -d .whl ]; then
  . .gpu/install-on-device || echo "gpu_suite: the wheel install failed; running without them"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m benchmarks.gpu_suite "$@"
