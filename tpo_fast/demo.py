"""``tpo-fast demo``: the whole method on a laptop-class CPU, with nothing downloaded.

Stages (each restartable: a stage whose outputs exist is skipped; ``--stage`` runs one):

1. ``data``    synthetic temporal-grounding videos with known events (train and held-out splits,
               different seeds), their questions, and SFT pairs (``tpo_fast.synthetic``);
2. ``base``    a tiny Qwen2-VL-architecture model with a word-level tokenizer covering the data,
               SFT-warmed on the train split's open questions into a weak base;
3. ``curate``  the base model curates its own TPO pairs on the train videos: questions per
               target, answers from the real frame plans (chosen: the segment / the full video;
               rejected: its complement or an incomplete half / a down-sampled video), rule
               filters and TPO's judge (answered from the ground truth), a 5:5
               localized:comprehensive mix (``tpo_fast.curate``);
4. ``tpo``     TPO (DPO + α·SFT on the chosen answers) from the base on the curated pairs;
5. ``control`` (optional) SFT on the chosen answers of the same pairs, from the same base;
6. ``eval``    multiple-choice accuracy of base vs TPO (vs control) on the held-out split, by
               option log-likelihood: a table, ``eval.json`` and ``eval.png``.

Everything lands in one run folder (``runs/demo`` by default).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STAGES = ("data", "base", "curate", "tpo", "control", "eval")
FRAME_PIXELS = 32 * 32  # Qwen-VL resize bound: the 32 x 32 synthetic frames stay as they are


@dataclass
class DemoSettings:
    out: str = "runs/demo"
    seed: int = 0
    family: str = "qwen2_vl"
    train_videos: int = 48
    heldout_videos: int = 24
    frames: int = 8
    hidden: int = 64
    layers: int = 2
    # SFT warm-up (the weak base)
    sft_epochs: int = 4
    sft_lr: float = 3e-3
    # TPO
    tpo_epochs: int = 3
    tpo_lr: float = 1e-3
    beta: float = 0.5
    alpha: float = 0.5
    temperature: float = 1.0  # the policy's sampling temperature in curation (0: greedy)
    judge: bool = True  # TPO's judge (here from the ground truth) filters the curated pairs
    control: bool = False  # also train the SFT-on-chosen control
    progress: bool = True

    @property
    def root(self) -> Path:
        return Path(self.out)


def _log(message: str) -> None:
    print(f"[tpo-fast demo] {message}", file=sys.stderr, flush=True)


# ---- stage 1: data -----------------------------------------------------------------------------
def stage_data(s: DemoSettings) -> dict:
    from tpo_fast.synthetic import generate_split

    paths = {}
    for split, n, seed in (("train", s.train_videos, s.seed),
                           ("heldout", s.heldout_videos, s.seed + 10_000)):
        folder = s.root / "data" / split
        if not (folder / "qa.jsonl").is_file():
            generate_split(folder, n, seed)
        paths[split] = folder
    _log(f"data: {s.train_videos} train and {s.heldout_videos} held-out videos in "
         f"{s.root / 'data'}")
    return paths


# ---- stage 2: the weak base ----------------------------------------------------------------------
def demo_tokenizer(family: str):
    """The tiny word-level tokenizer, its vocabulary extended with every word the synthetic data
    and the curation templates use (lower-cased)."""
    from tpo_fast.curate.llm import template_vocabulary
    from tpo_fast.models.tiny import tiny_tokenizer
    from tpo_fast.synthetic import vocabulary

    letters = {"a", "b", "c", "d", "e"}  # the multiple-choice answers ("B. red")
    return tiny_tokenizer(family, words=sorted(set(vocabulary()) | template_vocabulary() | letters),
                          lowercase=True)


def _init_model(s: DemoSettings) -> Path:
    from tpo_fast.models.tiny import tiny_model

    folder = s.root / "init"
    if (folder / "config.json").is_file():
        return folder
    tokenizer = demo_tokenizer(s.family)
    model = tiny_model(s.family, tokenizer, seed=s.seed, hidden=s.hidden, layers=s.layers)
    model.config.video_min_pixels = model.config.video_max_pixels = FRAME_PIXELS
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _train(s: DemoSettings, name: str, model_path: Path, pairs: Path, overrides: list[str]
           ) -> Path:
    from tpo_fast.config import load_config
    from tpo_fast.train.loop import train

    final = s.root / name / "final"
    if (final / "config.json").is_file():
        return final
    cfg = load_config(None, [
        f"model.path={model_path}", "model.dtype=float32", f"data.train={pairs}",
        f"data.frames={s.frames}", "data.token_budget=4096", "data.skip_invalid=true",
        "deepspeed.zero_stage=0", "optim.global_batch_size=8", "optim.warmup_ratio=0.1",
        f"run.output_dir={s.root / name}", f"run.seed={s.seed}", "run.tensorboard=false",
        f"run.progress={str(s.progress).lower()}", *overrides])
    train(cfg, command=f"tpo-fast demo --stage {name}")
    return final


def sft_pairs(train: Path) -> Path:
    """The warm-up set: every train question twice, as an open question (the generator's
    ``sft.jsonl``: chosen = the right answer, rejected = a wrong one) and as multiple choice in
    the evaluation's format (chosen = "B. red", rejected = another option)."""
    from tpo_fast.eval import read_questions
    from tpo_fast.eval.scoring import answer_texts, format_prompt

    out = train / "sft_open_and_mc.jsonl"
    if out.is_file():
        return out
    lines = (train / "sft.jsonl").read_text().splitlines()
    for q in read_questions("synthetic", train / "qa.jsonl"):
        answers = answer_texts(q, "letter_text")
        wrong = (q.answer + 1) % len(answers)
        lines.append(json.dumps({"video": str(Path(q.video).resolve()), "prompt": format_prompt(q),
                                 "chosen": answers[q.answer], "rejected": answers[wrong]}))
    out.write_text("\n".join(lines) + "\n")
    return out


def stage_base(s: DemoSettings, data: dict) -> Path:
    init = _init_model(s)
    base = _train(s, "base", init, sft_pairs(data["train"]), [
        "loss.dpo_weight=0", "loss.sft_weight=1", f"optim.lr={s.sft_lr}",
        f"optim.epochs={s.sft_epochs}"])
    _log(f"base: SFT-warmed tiny {s.family} in {base}")
    return base


# ---- stage 3: curation ---------------------------------------------------------------------------
def _events_key(events: list[dict]) -> str:
    return json.dumps([[round(e["start"], 3), round(e["end"], 3), e["text"]] for e in events])


class SyntheticQuestions:
    """The demo's annotation-driven query backend: for a target of a synthetic video it returns
    one of the generator's own questions about that target (same phrasing as the held-out
    questions): a localized question whose span is the target, or a comprehensive question for
    the whole video; "None" when there is none. Videos are recognised by their events."""

    name = "synthetic-annotations"

    def __init__(self, manifest: Path, qa: Path):
        by_video: dict[str, list[dict]] = {}
        for line in qa.read_text().splitlines():
            q = json.loads(line)
            by_video.setdefault(q["video"], []).append(q)
        self.questions: dict[str, list[dict]] = {}
        for line in manifest.read_text().splitlines():
            entry = json.loads(line)
            self.questions[_events_key(entry["events"])] = by_video.get(entry["video"], [])

    def complete(self, requests) -> list:
        from tpo_fast.curate.llm import LLMResult

        return [LLMResult(r.id, self._judge(r.context) if r.context["purpose"] == "judge"
                          else self._one(r.context, r.seed)) for r in requests]

    def _judge(self, ctx: dict) -> str:
        """TPO's three checks from the ground truth: the question is one of the generator's
        (consistent), the chosen answer names the right option and no other (correct), and the
        rejected one does not (better)."""
        pool = self.questions.get(_events_key(ctx.get("events", [])), [])
        match = [q for q in pool if q["question"] == ctx["question"]]
        if not match:
            return json.dumps({"chosen_better": False, "consistent": False,
                               "chosen_correct": False, "reason": "unknown question"})
        q = match[0]
        chosen_ok = names_only_answer(ctx["chosen"], q["options"], q["answer"])
        rejected_ok = names_only_answer(ctx["rejected"], q["options"], q["answer"])
        return json.dumps({"chosen_better": chosen_ok and not rejected_ok, "consistent": True,
                           "chosen_correct": chosen_ok,
                           "reason": f"chosen {'right' if chosen_ok else 'wrong'}, rejected "
                                     f"{'right' if rejected_ok else 'wrong'}"})

    def _one(self, ctx: dict, seed: int) -> str:
        pool = self.questions.get(_events_key(ctx.get("events", [])), [])
        if ctx["kind"] == "localized":
            pool = [q for q in pool if q["span"] and abs(q["span"][0] - ctx["t0"]) < 1e-3
                    and abs(q["span"][1] - ctx["t1"]) < 1e-3]
        else:
            pool = [q for q in pool if q["span"] is None]
        return pool[seed % len(pool)]["question"] if pool else "None"


def names_only_answer(text: str, options: list[str], answer: int) -> bool:
    """True when ``text`` contains the right option (as whole words) and no other option that
    is not part of the right one."""
    padded = f" {' '.join(text.lower().split())} "

    def has(option: str) -> bool:
        return f" {' '.join(option.lower().split())} " in padded

    right = options[answer]
    return has(right) and not any(has(o) and o not in right for i, o in enumerate(options)
                                  if i != answer)


def curation_manifest(train: Path) -> Path:
    """The train split's manifest with each video's localized question spans as its segments
    (the localized targets), so curated questions cover what the held-out questions ask."""
    spans: dict[str, set] = {}
    for line in (train / "qa.jsonl").read_text().splitlines():
        q = json.loads(line)
        if q["span"]:
            spans.setdefault(q["video"], set()).add(tuple(q["span"]))
    out = train / "curate_manifest.jsonl"
    lines = []
    for line in (train / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        entry["segments"] = sorted(spans.get(entry["video"], []))
        entry["captions"] = entry["events"]  # the ground truth doubles as the captions
        lines.append(json.dumps(entry))
    out.write_text("\n".join(lines) + "\n")
    return out


def stage_curate(s: DemoSettings, data: dict, base: Path) -> Path:
    from tpo_fast.curate.config import load_curate_config
    from tpo_fast.curate.pipeline import format_report, run_curation

    out = s.root / "curate"
    pairs = out / "pairs.jsonl"
    if pairs.is_file():
        return pairs
    train = data["train"]
    sample = str(s.temperature > 0).lower()
    cfg = load_curate_config(None, [
        f"input.videos={curation_manifest(train)}", "policy.kind=hf",
        f"policy.path={base}", "policy.dtype=float32", "policy.device=cpu",
        "policy.batch_size=16", "policy.max_new_tokens=16", f"policy.do_sample={sample}",
        f"policy.temperature={s.temperature}", "query.kind=annotation",
        "judge.kind=annotation", "captions.source=given", "queries.tasks_per_target=1",
        f"responses.frames={s.frames}",
        "responses.downsample_factor=4", "filter.rules=[empty, identical]",
        f"filter.judge={str(s.judge).lower()}", f"run.output_dir={out}", f"run.seed={s.seed}",
        f"run.progress={str(s.progress).lower()}"])
    annotations = SyntheticQuestions(train / "manifest.jsonl", train / "qa.jsonl")
    summary = run_curation(cfg, query_llm=annotations, judge_llm=annotations)
    _log("curate:\n" + format_report(summary))
    if not pairs.read_text().strip():
        raise ValueError(f"curation kept no pairs (reasons in {out / 'dropped.jsonl'}); e.g. "
                         "with temperature=0 a base that ignores the video answers alike from "
                         "every frame plan")
    return pairs


# ---- stages 4-5: TPO and the SFT control ---------------------------------------------------------
def stage_tpo(s: DemoSettings, base: Path, pairs: Path) -> Path:
    final = _train(s, "tpo", base, pairs, [
        f"loss.beta={s.beta}", f"loss.sft_weight={s.alpha}", "loss.reference=model",
        f"optim.lr={s.tpo_lr}", f"optim.epochs={s.tpo_epochs}"])
    _log(f"tpo: trained in {final}")
    return final


def stage_control(s: DemoSettings, base: Path, pairs: Path) -> Path:
    final = _train(s, "control", base, pairs, [
        "loss.dpo_weight=0", "loss.sft_weight=1", f"optim.lr={s.tpo_lr}",
        f"optim.epochs={s.tpo_epochs}"])
    _log(f"control: SFT on the chosen answers in {final}")
    return final


# ---- stage 6: evaluation -------------------------------------------------------------------------
def stage_eval(s: DemoSettings, data: dict, models: dict[str, Path]) -> dict:
    from tpo_fast.curate.policy import load_video_llm
    from tpo_fast.eval import evaluate, read_questions

    questions = read_questions("synthetic", data["heldout"] / "qa.jsonl")
    results = {}
    for name, path in models.items():
        model, tokenizer, _ = load_video_llm(str(path), None, "float32", "cpu")
        out = evaluate(model, tokenizer, questions, method="loglik", frames=s.frames,
                       batch_size=16, answer_format="letter_text", progress=s.progress)
        results[name] = summary_of(out["loglik"])
    (s.root / "eval.json").write_text(json.dumps(results, indent=2))
    print(format_comparison(results))
    _plot(results, s.root / "eval.png")
    return results


def summary_of(loglik: dict) -> dict:
    """Overall, localized and comprehensive accuracy (task types are "<group>/<kind>")."""
    groups: dict[str, list[int]] = {}
    for task, row in loglik["by_task_type"].items():
        tally = groups.setdefault(task.split("/")[0], [0, 0])
        tally[0] += row["correct"]
        tally[1] += row["total"]
    out = {"overall": loglik["accuracy"], "n": loglik["total"]}
    for group, (correct, total) in sorted(groups.items()):
        out[group] = correct / total if total else float("nan")
    out["by_task_type"] = {k: v["accuracy"] for k, v in loglik["by_task_type"].items()}
    return out


def format_comparison(results: dict) -> str:
    names = list(results)
    keys = ["overall", "localized", "comprehensive"]
    keys += sorted({k for r in results.values() for k in r["by_task_type"]})
    width = max(len(k) for k in keys) + 2
    lines = ["held-out accuracy (multiple choice, option log-likelihood)",
             "".ljust(width) + "".join(n.rjust(13) for n in names)]
    for key in keys:
        cells = [results[n].get(key, results[n]["by_task_type"].get(key, float("nan")))
                 for n in names]
        lines.append(key.ljust(width) + "".join(f"{c:13.3f}" for c in cells))
    lines.append(f"({results[names[0]]['n']} questions)")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["overall", "localized", "comprehensive"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / max(1, len(results))
    for k, (name, res) in enumerate(results.items()):
        values = [res.get(g, float("nan")) for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], values, width, label=name)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(groups))], groups)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- driver --------------------------------------------------------------------------------------
def run_demo(s: DemoSettings, stage: str = "all") -> dict:
    if stage not in ("all", *STAGES):
        raise ValueError(f"unknown stage {stage!r}; choose from all, {', '.join(STAGES)}")
    if stage == "control" and not s.control:
        raise ValueError("the control stage runs with --control (settings control=true)")
    s.root.mkdir(parents=True, exist_ok=True)
    (s.root / "demo_settings.json").write_text(json.dumps(asdict(s), indent=2))
    start = time.perf_counter()
    want = (lambda name: stage in ("all", name))
    data = stage_data(s)  # every later stage needs its paths; existing files are kept
    if stage == "data":
        return {"data": {k: str(v) for k, v in data.items()}}
    base = stage_base(s, data) if want("base") else s.root / "base" / "final"
    if stage == "base":
        return {"base": str(base)}
    pairs = stage_curate(s, data, base) if want("curate") else s.root / "curate" / "pairs.jsonl"
    if stage == "curate":
        return {"pairs": str(pairs)}
    tpo = stage_tpo(s, base, pairs) if want("tpo") else s.root / "tpo" / "final"
    control = None
    if s.control and want("control"):
        control = stage_control(s, base, pairs)
    elif s.control:
        control = s.root / "control" / "final"
    if stage in ("tpo", "control"):
        return {"tpo": str(tpo), "control": str(control) if control else None}
    models = {"base": base, "tpo": tpo}
    if control is not None:
        models["sft_control"] = control
    results = stage_eval(s, data, models)
    _log(f"done in {time.perf_counter() - start:.0f} s; results in {s.root / 'eval.json'}, "
         f"plot {s.root / 'eval.png'}")
    return results


# ---- the experiment: several seeds -------------------------------------------------------------
def experiment_report(root: str | Path) -> dict:
    """Mean and spread over the seed folders under ``root`` (each a finished demo run with its
    ``eval.json``): overall, localized and comprehensive accuracy per model. Writes
    ``root/summary.json`` and returns it."""
    import statistics

    runs = sorted(p.parent for p in Path(root).glob("*/eval.json"))
    if not runs:
        raise FileNotFoundError(f"no finished demo runs (*/eval.json) under {root}")
    per_run = {r.name: json.loads((r / "eval.json").read_text()) for r in runs}
    models = list(next(iter(per_run.values())))
    summary = {"runs": list(per_run), "models": {}}
    for model in models:
        row = {}
        for key in ("overall", "localized", "comprehensive"):
            values = [res[model][key] for res in per_run.values() if model in res]
            row[key] = {"mean": statistics.fmean(values),
                        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "values": values}
        summary["models"][model] = row
    (Path(root) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_report(summary: dict) -> str:
    lines = [f"held-out accuracy over {len(summary['runs'])} seed(s) (mean ± sd)",
             f"{'model':14s}{'overall':>18s}{'localized':>18s}{'comprehensive':>18s}"]
    for model, row in summary["models"].items():
        cells = "".join(f"{row[k]['mean']:11.3f} ± {row[k]['sd']:.3f}"
                        for k in ("overall", "localized", "comprehensive"))
        lines.append(f"{model:14s}{cells}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tpo_fast.demo report runs/experiment
    if len(sys.argv) != 3 or sys.argv[1] != "report":
        sys.exit("usage: python -m tpo_fast.demo report RUNS_FOLDER")
    print(format_report(experiment_report(sys.argv[2])))
