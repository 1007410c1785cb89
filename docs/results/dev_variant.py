# The dev-seed recipe search of issue 30 (docs/experiment.md): run from the repository root,
# e.g. python docs/results/dev_variant.py runs/dev/s100_default t1l1 temperature=1.0 tpo_lr=0.001
"""Dev-seed recipe variant: reuse data/init/base/curate of a source run, train tpo (or control) with
demo overrides, evaluate only the new model. usage: variant.py SRC NAME [--control] key=value..."""
import json, os, sys, time
from pathlib import Path
from tpo_fast.demo import DemoSettings, stage_tpo, stage_control, _evaluate, summary_of

src, name, *rest = sys.argv[1:]
control = "--control" in rest
rest = [r for r in rest if r != "--control"]
root = Path("runs/dev") / name
root.mkdir(parents=True, exist_ok=True)
CURATE_KEYS = ("temperature", "mix_localized", "mix_comprehensive", "incomplete_fraction", "judge")
recurate = any(r.split("=")[0] in CURATE_KEYS for r in rest)
for sub in ("data", "init", "base") + (() if recurate else ("curate",)):
    if not (root / sub).exists():
        os.symlink((Path(src) / sub).resolve(), root / sub)
settings = json.loads((Path(src) / "demo_settings.json").read_text())
settings.update(out=str(root), progress=False)
fields = DemoSettings.__dataclass_fields__
for item in rest:
    k, v = item.split("=", 1)
    kind = type(getattr(DemoSettings(), k))
    settings[k] = v.lower() in ("1", "true") if kind is bool else kind(v)
s = DemoSettings(**settings)
(root / "demo_settings.json").write_text(json.dumps(settings, indent=2))
t = time.time()
from tpo_fast.demo import stage_curate
pairs = stage_curate(s, {"train": root / "data" / "train", "heldout": root / "data" / "heldout"}, root / "base" / "final") if recurate else root / "curate" / "pairs.jsonl"
model = stage_control(s, root / "base" / "final", pairs) if control else stage_tpo(s, root / "base" / "final", pairs)
t_train = time.time() - t
res = summary_of(_evaluate(s, model, root / "data" / "heldout" / "qa.jsonl")["loglik"])
res["train_s"] = t_train
(root / "variant_eval.json").write_text(json.dumps(res, indent=2))
rows = [json.loads(l) for l in (model.parent / "metrics.jsonl").read_text().splitlines()]
beta = s.beta
traj = [(r["step"], round(r["chosen_reward"] / beta, 2), round(r["rejected_reward"] / beta, 2)) for r in rows[:: max(1, len(rows)//8)]]
print(name, rest, {k: round(v, 3) for k, v in res.items() if isinstance(v, float)},
      {k: round(v, 3) for k, v in res["by_task_type"].items()}, "chosen/rejected dlogp:", traj, flush=True)
