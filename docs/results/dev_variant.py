# The dev-seed recipe search of issue 30 (docs/experiment.md): run from the repository root,
# e.g. python docs/results/dev_variant.py runs/dev/s100 s100_both comprehensive_asks=both
"""Dev-seed recipe variant: reuse data/init/base (and curate, unless a curation key changes) of
a source run, train tpo (or control) with demo overrides, evaluate only the new model.
usage: dev_variant.py SRC NAME [--control] [--curate-only] key=value..."""
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tpo_fast.config import build_config, read_config_tree
from tpo_fast.demo import (
    DemoConfig,
    _evaluate,
    _jsonl,
    pair_quality,
    rejected_names_first,
    stage_control,
    stage_curate,
    stage_tpo,
    summary_of,
)

src, name, *rest = sys.argv[1:]
control, curate_only = "--control" in rest, "--curate-only" in rest
rest = [r for r in rest if not r.startswith("--")]
root = Path("runs/dev") / name
root.mkdir(parents=True, exist_ok=True)
CURATE_KEYS = ("temperature", "mix_localized", "mix_comprehensive", "incomplete_fraction", "judge",
               "downsample_factor", "comprehensive_asks")
recurate = any(r.split("=")[0] in CURATE_KEYS for r in rest)
for sub in ("data", "init", "base") + (() if recurate else ("curate",)):
    if not (root / sub).exists():
        os.symlink((Path(src) / sub).resolve(), root / sub)
settings = json.loads((Path(src) / "demo_settings.json").read_text())
settings.update(out=str(root), progress=False)
s = build_config(DemoConfig, {**settings, **read_config_tree(None, rest)})
torch.set_num_threads(s.threads)
(root / "demo_settings.json").write_text(json.dumps(asdict(s), indent=2))
t = time.time()
train = root / "data" / "train"
pairs = stage_curate(s, {"train": train, "heldout": root / "data" / "heldout"},
                     root / "base" / "final") if recurate else root / "curate" / "pairs.jsonl"
rows, qa = _jsonl(pairs), _jsonl(train / "qa.jsonl")
by_key = {(Path(q["video"]).name, q["mc_prompt"]): q["task_type"] for q in qa}
tasks = {}
for p in rows:
    k = by_key[(Path(p["video"]).name, p["prompt"])]
    tasks[k] = tasks.get(k, 0) + 1
print(name, "pairs by task", tasks, "rejected names first", rejected_names_first(rows, qa),
      "quality", {k: round(v["good"], 2) for k, v in pair_quality(rows, qa).items()}, flush=True)
if curate_only:
    sys.exit(0)
model = stage_control(s, root / "base" / "final", pairs) if control else stage_tpo(
    s, root / "base" / "final", pairs)
t_train = time.time() - t
res = summary_of(_evaluate(s, model, root / "data" / "heldout" / "qa.jsonl")["loglik"])
res["train_s"] = t_train
(root / "variant_eval.json").write_text(json.dumps(res, indent=2))
metrics = [json.loads(l) for l in (model.parent / "metrics.jsonl").read_text().splitlines()]
traj = [(r["step"], round(r["chosen_reward"] / s.beta, 2), round(r["rejected_reward"] / s.beta, 2))
        for r in metrics[:: max(1, len(metrics) // 8)]] if not control else []
print(name, rest, {k: round(v, 3) for k, v in res.items() if isinstance(v, float)},
      {k: round(v, 3) for k, v in res["by_task_type"].items()}, "chosen/rejected dlogp:", traj,
      flush=True)
