#!/bin/bash
# A rehearsal, on this CPU machine, of the lent GPU machine's call: a fresh clone of this repo's
# HEAD, nothing of the project installed, `python3` an environment holding only the image's
# packages (benchmarks/gpu_image.txt, from the device tool's KINDS.md), the kit's wheels carried
# in .whl and installed by the kit's own `.gpu/install-on-device wheels` (into /tmp/site, as
# there), then `bash benchmarks/gpu_suite.sh BUDGET --dry-run` under a bare environment.
#
#   bash benchmarks/rehearse_gpu_suite.sh --python python3.12            # by hand (see below)
#   bash benchmarks/rehearse_gpu_suite.sh --from-venv .venv              # CI's variant
# Options: --env DIR (an environment to use as it is, or where to build one; default
#   .cache/rehearsal/env-*, rebuilt when gpu_image.txt or this script changes),
#   --python PY (build it with PY and `pip install -r benchmarks/gpu_image.txt`: the image's
#   versions; with Python 3.12 that is torch 2.11 cu130 from PyPI, ≈ 5 GB with its CUDA
#   libraries, ≈ 11 min here: no CPU build of torch for 3.12 is reachable from this machine),
#   --from-venv VENV (build it in seconds from VENV's python and packages: symlinks to the
#   distributions gpu_image.txt names and their requirements, nothing else, the few that VENV
#   lacks installed from the registry; VENV's versions, e.g. CPU torch 2.13 on Python 3.11),
#   --whl DIR (the kit's wheels as ../shared/gpu/make-carry made them, for Python 3.12, plus
#   torchcodec's: README "GPU suite"; default: built here for the environment's Python from
#   make-carry's own lists and torchcodec's pin, cached),
#   --budget S (default 300), --out DIR (default: a temp folder; $OUT of the call).
# Prints the suite's summary; exits with the suite's status (3: no kit, 4: no JSON written).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
env_dir="" python="" from_venv="" whl="" budget=300 out=""
while [ $# -gt 0 ]; do
  case $1 in
    --env) env_dir=$2; shift 2;; --python) python=$2; shift 2;;
    --from-venv) from_venv=$(cd "$2" && pwd); shift 2;; --whl) whl=$(cd "$2" && pwd); shift 2;;
    --budget) budget=$2; shift 2;; --out) out=$2; shift 2;;
    *) echo "unknown option $1"; exit 2;;
  esac
done
[ -n "$python$from_venv" ] || { echo "give --python PY or --from-venv VENV"; exit 2; }
kit=${GPU_KIT:-$root/../shared/gpu}
TORCHCODEC=torchcodec==0.15.0  # its release notes: "compatible with torch >= 2.11" (the image: 2.11); 2.9 MiB
[ -f "$kit/make-carry" ] && [ -f "$kit/install-on-device" ] || { echo "no kit at $kit"; exit 3; }
cache=$root/.cache/rehearsal
mkdir -p "$cache"
log=$cache/build.log
t0=$(date +%s)

# 1. the environment
stamp=$(cat "$root/benchmarks/gpu_image.txt" "$0" | sha256sum | cut -c1-16)  # rebuilt on change
build=1
if [ -n "$env_dir" ] && [ -x "$env_dir/bin/python3" ]; then
  build=0  # a given environment: used as it is
elif [ -z "$env_dir" ]; then
  env_dir=$cache/env-$([ -n "$from_venv" ] && echo venv || basename "$python")
  [ "$(cat "$env_dir/.complete" 2>/dev/null)" != "$stamp" ] || build=0
fi
if [ "$build" = 1 ]; then
  rm -rf "$env_dir"
  if [ -n "$from_venv" ]; then
    "$from_venv/bin/python" -m venv --without-pip "$env_dir"
    "$from_venv/bin/python" - "$root/benchmarks/gpu_image.txt" "$env_dir" > "$cache/missing" <<'EOF'
import os, re, sys, sysconfig
from importlib import metadata
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon

image, env = sys.argv[1], Path(sys.argv[2])
src = Path(sysconfig.get_paths()["purelib"])
dst = env / src.relative_to(sys.prefix)
names = [canon(re.split(r"[=<>!\[ ;]", line.strip())[0]) for line in open(image)
         if line.strip() and not line.startswith("#")]
dists = {canon(d.metadata["Name"]): d for d in metadata.distributions(path=[str(src)])}
todo, linked, missing = list(names), set(), []
while todo:
    name = todo.pop()
    if name in linked:
        continue
    if name not in dists:
        missing.append(name)
        continue
    linked.add(name)
    for req in map(Requirement, dists[name].requires or []):
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(canon(req.name))
tops = set()
for name in linked:
    for f in dists[name].files or []:
        if f.parts and f.parts[0] not in ("..", "__pycache__"):
            tops.add(f.parts[0])
for top in sorted(tops):
    if (src / top).exists() and not (dst / top).exists():
        (dst / top).symlink_to(src / top)
print(" ".join(sorted(set(missing))))
EOF
    # pip into the new environment (it has none: symlinked packages must never be uninstalled
    # by a resolver, so --no-deps, the missing ones' own requirements named here)
    missing=$(cat "$cache/missing")
    extra=""; case " $missing " in *" pytest-xdist "*) extra="execnet";; esac
    if [ -n "$missing" ]; then
      "$from_venv/bin/python" -m pip --python "$env_dir/bin/python3" install -q --no-deps \
        $missing $extra >> "$log" 2>&1
    fi
  else
    "$python" -m venv "$env_dir"
    "$env_dir/bin/python3" -m pip install -q -r "$root/benchmarks/gpu_image.txt" >> "$log" 2>&1
  fi
  echo "$stamp" > "$env_dir/.complete"
fi
pyver=$("$env_dir/bin/python3" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
t_env=$(date +%s)

# 2. the kit's wheels, for the environment's Python, from make-carry's own lists
if [ -z "$whl" ]; then
  whl=$cache/whl-$pyver
  if [ ! -f "$whl/.complete" ]; then
    rm -rf "$whl" && mkdir -p "$whl"
    small=$(sed -n '/^small="/,/"/p' "$kit/make-carry" | tr -d '"' | sed 's/^small=//')
    fa4=$(sed -n '/^fa4="/,/"/p' "$kit/make-carry" | tr -d '"' | sed 's/^fa4=//')
    ds=$(grep -o 'deepspeed==[0-9.]*' "$kit/make-carry" | head -1)
    plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
    "$env_dir/bin/python3" -m pip --version > /dev/null 2>&1 && pip=("$env_dir/bin/python3" -m pip) \
      || pip=(python3 -m pip)
    # one at a time: a pin with no wheel for this Python (av 19 is cp312-abi3) takes the
    # newest wheel that has one, written to $whl/SUBSTITUTED
    for spec in $small $fa4; do
      "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version "$pyver" \
        --implementation cp $plat --pre -d "$whl" "$spec" >> "$log" 2>&1 || {
        "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version "$pyver" \
          --implementation cp $plat --pre -d "$whl" "${spec%%==*}" >> "$log" 2>&1
        echo "$spec" >> "$whl/SUBSTITUTED"; }
    done
    "${pip[@]}" download -q --no-deps --no-binary=:all: -d "$cache/sdist" "$ds" >> "$log" 2>&1
    DS_BUILD_OPS=0 "${pip[@]}" wheel -q --no-deps -w "$whl" "$cache/sdist/${ds/==/-}.tar.gz" >> "$log" 2>&1
    touch "$whl/.complete"
  fi
  # torchcodec's wheel, carried beside the kit's (README "GPU suite"; the image lacks it)
  if ! ls "$whl"/torchcodec-*.whl > /dev/null 2>&1; then
    "$env_dir/bin/python3" -m pip --version > /dev/null 2>&1 && pip=("$env_dir/bin/python3" -m pip) \
      || pip=(python3 -m pip)
    "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version "$pyver" \
      --implementation cp --platform manylinux_2_28_x86_64 -d "$whl" "$TORCHCODEC" >> "$log" 2>&1
  fi
fi
t_whl=$(date +%s)

# 3. the clone, with what a call carries
work=$(mktemp -d /tmp/tpo_rehearsal.XXXXXX)
git clone -q "$root" "$work/clone"
mkdir -p "$work/clone/.gpu" "$work/clone/.whl"
cp "$kit/install-on-device" "$work/clone/.gpu/"
cp "$whl"/*.whl "$work/clone/.whl/"
out=${out:-$work/out}
mkdir -p "$out"

# 4. the call, in a bare environment: the environment's python3 first on PATH, nothing else
set +e
(cd "$work/clone" && env -i HOME="$HOME" PATH="$env_dir/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
   OUT="$out" bash benchmarks/gpu_suite.sh "$budget" --dry-run)
rc=$?
set -e
t_end=$(date +%s)
[ -f "$out/gpu_suite.json" ] || { echo "rehearsal: no $out/gpu_suite.json"; exit 4; }
"$env_dir/bin/python3" - "$out/gpu_suite.json" "$((t_env - t0))" "$((t_whl - t_env))" \
  "$((t_end - t_whl))" "$([ -f "$whl/SUBSTITUTED" ] && echo "$whl/SUBSTITUTED")" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
e = s["environment"]
print(json.dumps({
    "rehearsal": {"env_s": int(sys.argv[2]), "wheels_s": int(sys.argv[3]),
                  "call_s": int(sys.argv[4])},
    "python": e["python"], "versions": e["versions"], "commit": e["commit"],
    "substituted": open(sys.argv[5]).read().split() if sys.argv[5] else [],
    "imports": s["imports"], "setup_s": s["setup_s"], "wall_s": round(s["wall_s"], 1),
    "all_ok": s["all_ok"], "complete": s["complete"],
    "steps": {k: v.get("skipped") or (("ok " if v["ok"] else "FAILED ") + f"{v['wall_s']:.0f} s")
              for k, v in s["steps"].items()}}, indent=1))
EOF
echo "rehearsal: clone and results in $work (out: $out)"
exit $rc
