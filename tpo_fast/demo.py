"""``tpo-fast demo``: the whole method on a laptop-class CPU, with nothing downloaded.

The task (``tpo_fast.synthetic.search``): a 12-second video of four segments, each a pair of
colours (a cue over an answer); "which colour was under red ?" asks for the answer colour of
the segment whose cue is red, the other segments' answer colours are the wrong options.

Stages (each restartable: a stage whose outputs exist is skipped; ``--stage`` runs one):

1. ``data``    train and held-out splits (different seeds): videos, questions, and every
               localized question's segment cut out as a clip;
2. ``base``    a tiny Qwen2-VL-architecture model with a word-level tokenizer, SFT-warmed on
               the train split's *clips* (and the whole-video first/last questions): it reads
               frames but has never had to search a long video. Then the precondition is
               measured on the held-out localized questions: the base's accuracy from the clip
               alone vs from the whole video (``base/precondition.json``);
3. ``curate``  the base curates its own TPO pairs on the train videos with ``tpo-fast curate``:
               the question for a target is the generator's own, answers come from the real
               frame plans (chosen: the segment / the full video; rejected: its complement or
               an incomplete half / a 4x down-sampled video), rule filters, optionally TPO's
               judge (answered from the ground truth), a 5:5 localized:comprehensive mix. The
               pairs' quality is measured from the ground truth (``curate/pair_quality.json``);
4. ``tpo``     TPO (DPO + alpha * SFT on the chosen answers) from the base on the curated pairs,
               both answers scored against the whole video;
5. ``control`` (optional) SFT on the chosen answers of the same pairs, from the same base;
6. ``eval``    multiple-choice accuracy (option log-likelihood) of base vs TPO (vs control) on
               the held-out videos, whole video as input: a table, ``eval.json`` and
               ``eval.png`` (with the precondition and the pair quality beside them).

Everything lands in one run folder (``runs/demo`` by default). The settings are a
``DemoConfig`` read from ``configs/demo.yaml`` with ``key=value`` overrides through the package's
config loader; torch runs pinned to ``threads`` intra-op threads (default 1), so a run gives the
same numbers on any machine with the same software.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STAGES = ("data", "base", "curate", "tpo", "control", "eval")
CHANCE = 0.25  # four options


# The recipe is chosen on the dev seeds only; seeds 0, 1, 2 are the reported ones and are run
# once, with the recipe fixed (docs/experiment.md). The held-out split of seed s is s + 10_000.
DEV_SEEDS = (100, 102)
REPORTED_SEEDS = (0, 1, 2)
DISTRACTORS = ("solid", "cued")
COMPREHENSIVE_ASKS = ("one", "both")
FAMILIES = ("qwen2_vl",)


@dataclass
class DemoConfig:
    """The demo's settings: ``configs/demo.yaml`` read with ``key=value`` overrides through the
    package's loader (``demo_config``). Each stage's settings change only that stage and the
    ones after it (a restarted run keeps the stages whose outputs exist)."""

    out: str = "runs/demo"
    seed: int = 0
    family: str = "qwen2_vl"
    # torch's intra-op threads, pinned for the whole run: fp32 sums are split differently over
    # 1 and 2 threads, and this tiny model's TPO result moved with that (docs/experiment.md)
    threads: int = 1
    # data
    train_videos: int = 128
    heldout_videos: int = 128
    distractors: str = "solid"  # the other segments: solid colours, or "cued" (own cues)
    frames: int = 8  # frames a model sees per video or clip (2 per segment of the whole video)
    size: int = 16  # frame side in pixels: 2 x 2 visual tokens per 2-frame temporal patch
    # the base: a tiny model SFT-warmed on clips
    hidden: int = 64
    layers: int = 2
    token_budget: int = 512  # packed tokens per micro-batch (a pair is about 60 tokens)
    sft_epochs: int = 4
    sft_lr: float = 3e-3
    # curation
    # the policy's sampling temperature (0: greedy). Sampling (1.0) kept the comprehensive
    # answers on dev seed 100 but not on seeds 1, 2, 102 (docs/experiment.md, issue 30)
    temperature: float = 0.0
    # localized rejected: share `incomplete`, rest complement. 0: a segment is static, so its
    # incomplete half answers as the whole segment and every such pair was dropped as identical
    incomplete_fraction: float = 0.0
    downsample_factor: int = 4  # comprehensive rejected: every k-th frame of the full sample
    # comprehensive questions asked per video: "one" (first or last, drawn per video) or
    # "both" (first and last)
    comprehensive_asks: str = "both"
    judge: bool = False  # TPO's judge (here from the ground truth) filters the curated pairs
    mix_localized: float = 5.0  # localized : comprehensive pairs kept (TPO: 5:5)
    mix_comprehensive: float = 5.0
    # TPO
    tpo_epochs: int = 12
    # issue 30 (docs/experiment.md): lr 3e-3 and alpha 0.5 lost "which colour came first ?";
    # chosen on dev seeds 100 and 102
    tpo_lr: float = 5e-4
    beta: float = 0.5
    alpha: float = 2.0
    control: bool = False  # also train the SFT-on-chosen control
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.family in FAMILIES, f"family must be one of {FAMILIES}"),
            (self.distractors in DISTRACTORS, f"distractors must be one of {DISTRACTORS}"),
            (self.comprehensive_asks in COMPREHENSIVE_ASKS,
             f"comprehensive_asks must be one of {COMPREHENSIVE_ASKS}"),
            (self.threads >= 1, "threads must be >= 1"),
            (self.train_videos >= 1 and self.heldout_videos >= 1,
             "train_videos and heldout_videos must be >= 1"),
            (self.frames >= 2 and self.frames % 2 == 0,
             "frames must be even and >= 2 (2-frame temporal patches)"),
            (self.size >= 8 and self.size % 8 == 0, "size must be a multiple of 8"),
            (self.hidden >= 1 and self.layers >= 1, "hidden and layers must be >= 1"),
            (self.token_budget >= 1, "token_budget must be >= 1"),
            (self.sft_epochs >= 1 and self.tpo_epochs >= 1,
             "sft_epochs and tpo_epochs must be >= 1"),
            (self.sft_lr > 0 and self.tpo_lr > 0, "sft_lr and tpo_lr must be > 0"),
            (self.temperature >= 0, "temperature must be >= 0 (0: greedy)"),
            (0 <= self.incomplete_fraction <= 1, "incomplete_fraction must be in [0, 1]"),
            (self.downsample_factor >= 2, "downsample_factor must be >= 2"),
            (self.mix_localized >= 0 and self.mix_comprehensive >= 0
             and self.mix_localized + self.mix_comprehensive > 0,
             "mix_localized and mix_comprehensive must be >= 0, not both 0"),
            (self.beta > 0, "beta must be > 0"),
            (self.alpha >= 0, "alpha must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"demo config: {message}")

    @property
    def root(self) -> Path:
        return Path(self.out)

    @property
    def frame_pixels(self) -> int:  # Qwen-VL resize bounds: frames stay as they are
        return self.size * self.size


# the reduced run CI uses (a few minutes); without the judge: from 8 videos a weak base keeps
# too few pairs to train on
QUICK = {"train_videos": 8, "heldout_videos": 4, "sft_epochs": 1, "tpo_epochs": 1,
         "judge": False}


def demo_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                defaults: dict | None = None) -> DemoConfig:
    """A ``DemoConfig`` from a YAML file (or the defaults) with ``key=value`` overrides, read
    through the package's loader (``tpo_fast.config``: unknown keys named with the nearest
    one, values typed). ``defaults`` (e.g. ``QUICK``) replace the file's values and yield to
    the overrides."""
    from tpo_fast.config import build_config, read_config_tree

    tree = {**read_config_tree(path), **(defaults or {}), **read_config_tree(None, overrides)}
    return build_config(DemoConfig, tree)


def _log(message: str) -> None:
    print(f"[tpo-fast demo] {message}", file=sys.stderr, flush=True)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- stage 1: data -----------------------------------------------------------------------------
def stage_data(s: DemoConfig) -> dict:
    from tpo_fast.synthetic.search import generate_search_split

    paths, train_plans = {}, set()
    for split, n, seed in (("train", s.train_videos, s.seed),
                           ("heldout", s.heldout_videos, s.seed + 10_000)):
        folder = s.root / "data" / split
        if not (folder / "clips.jsonl").is_file():
            # no held-out video equals a train video
            made = generate_search_split(folder, n, seed, size=s.size, distractors=s.distractors,
                                         exclude=train_plans if split == "heldout" else None)
            train_plans = made["plans"]
        paths[split] = folder
    _log(f"data: {s.train_videos} train and {s.heldout_videos} held-out videos in "
         f"{s.root / 'data'}")
    return paths


# ---- stage 2: the base -------------------------------------------------------------------------
def demo_tokenizer(family: str):
    """The tiny word-level tokenizer, its vocabulary extended with every word the search task
    and the curation templates use (lower-cased)."""
    from tpo_fast.curate.llm import template_vocabulary
    from tpo_fast.models.tiny import tiny_tokenizer
    from tpo_fast.synthetic.search import search_vocabulary

    words = {w.lower() for w in search_vocabulary()} | template_vocabulary()
    return tiny_tokenizer(family, words=sorted(words), lowercase=True)


def _init_model(s: DemoConfig) -> Path:
    from tpo_fast.models.tiny import tiny_model

    folder = s.root / "init"
    if (folder / "config.json").is_file():
        return folder
    tokenizer = demo_tokenizer(s.family)
    model = tiny_model(s.family, tokenizer, seed=s.seed, hidden=s.hidden, layers=s.layers,
                       frame_size=s.size)
    model.config.video_min_pixels = model.config.video_max_pixels = s.frame_pixels
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _train(s: DemoConfig, name: str, model_path: Path, pairs: Path, overrides: list[str]
           ) -> Path:
    from tpo_fast.config import load_config
    from tpo_fast.train.loop import train

    final = s.root / name / "final"
    if (final / "config.json").is_file():
        return final
    cfg = load_config(None, [
        f"model.path={model_path}", "model.dtype=float32", f"data.train={pairs}",
        f"data.frames={s.frames}", f"data.token_budget={s.token_budget}",
        "data.skip_invalid=true",
        "deepspeed.zero_stage=0", "optim.global_batch_size=8", "optim.warmup_ratio=0.1",
        f"run.output_dir={s.root / name}", f"run.seed={s.seed}", "run.tensorboard=false",
        f"run.progress={str(s.progress).lower()}", *overrides])
    train(cfg, command=f"tpo-fast demo --stage {name}")
    return final


def warmup_pairs(train: Path) -> Path:
    """The warm-up set, in the evaluation's multiple-choice format ("B. red"): every localized
    train question with its *clip* as the video, and the whole-video first/last questions. The
    rejected side (unused by SFT) names the next option."""
    out = train / "warmup.jsonl"
    if out.is_file():
        return out
    rows = _jsonl(train / "clips.jsonl")
    rows += [q for q in _jsonl(train / "qa.jsonl") if q["span"] is None]
    lines = []
    for q in rows:
        wrong = (q["answer"] + 1) % len(q["options"])
        lines.append(json.dumps({"video": str((train / q["video"]).resolve()),
                                 "prompt": q["mc_prompt"], "chosen": q["answer_text"],
                                 "rejected": f"{'ABCD'[wrong]}. {q['options'][wrong]}",
                                 "qid": q["qid"], "task_type": q["task_type"]}))
    out.write_text("\n".join(lines) + "\n")
    return out


def stage_base(s: DemoConfig, data: dict) -> Path:
    init = _init_model(s)
    base = _train(s, "base", init, warmup_pairs(data["train"]), [
        "loss.dpo_weight=0", "loss.sft_weight=1", f"optim.lr={s.sft_lr}",
        f"optim.epochs={s.sft_epochs}"])
    _log(f"base: SFT-warmed on clips, tiny {s.family} in {base}")
    out = s.root / "base" / "precondition.json"
    if not out.is_file():
        clip = _evaluate(s, base, data["heldout"] / "clips.jsonl")
        full = _evaluate(s, base, data["heldout"] / "qa.jsonl")
        out.write_text(json.dumps(precondition(clip, full), indent=2))
    pre = json.loads(out.read_text())
    _log(f"precondition (held-out localized questions, {pre['n']}): base from the clip "
         f"{pre['base_clip']:.3f}, from the whole video {pre['base_full']:.3f} "
         f"(gap {pre['gap']:+.3f}; chance {CHANCE})")
    return base


def _evaluate(s: DemoConfig, model_path: Path, qa: Path) -> dict:
    """``tpo_fast.eval.evaluate`` of one model on a qa file (option log-likelihood, "B. red")."""
    from tpo_fast.curate.policy import load_video_llm
    from tpo_fast.eval import evaluate, read_questions

    model, tokenizer, _ = load_video_llm(str(model_path), None, "float32", "cpu")
    return evaluate(model, tokenizer, read_questions("synthetic", qa), method="loglik",
                    frames=s.frames, batch_size=16, answer_format="letter_text",
                    progress=s.progress)


def localized_accuracy(result: dict) -> tuple[float, int]:
    """(accuracy, count) over the localized questions of an ``evaluate`` result."""
    rows = [r for r in result["predictions"] if r["task_type"].startswith("localized/")]
    if not rows:
        return float("nan"), 0
    return sum(r["loglik"]["prediction"] == r["answer"] for r in rows) / len(rows), len(rows)


def precondition(clip: dict, full: dict) -> dict:
    """TPO's precondition from two ``evaluate`` results of the base on the same localized
    questions: shown only the relevant segment (``clip``) and the whole video (``full``)."""
    clip_acc, n_clip = localized_accuracy(clip)
    full_acc, n_full = localized_accuracy(full)
    if n_clip != n_full:
        raise ValueError(f"the clip and whole-video runs hold {n_clip} and {n_full} localized "
                         "questions; they must be the same questions")
    return {"base_clip": clip_acc, "base_full": full_acc, "gap": clip_acc - full_acc,
            "n": n_clip}


# ---- stage 3: curation ---------------------------------------------------------------------------
def _events_key(events: list[dict]) -> str:
    return json.dumps([[round(e["start"], 3), round(e["end"], 3), e["text"]] for e in events])


class SyntheticQuestions:
    """The demo's annotation-driven query backend: for a target of a synthetic video it returns
    one of the generator's own questions about that target, as the one-line multiple-choice
    prompt (``mc_prompt``; the evaluation's format): a localized question whose span is the
    target, or a comprehensive question for the whole video; "None" when there is none. Videos
    are recognised by their events. ``by_task`` maps a comprehensive query's task type to the
    question's ``task_type`` (other task types: one of the questions, by the query's seed). As
    TPO's judge it answers from the ground truth."""

    name = "synthetic-annotations"

    def __init__(self, manifest: Path, qa: Path, by_task: dict[str, str] | None = None):
        self.by_task = dict(by_task or {})
        by_video: dict[str, list[dict]] = {}
        for q in _jsonl(qa):
            by_video.setdefault(q["video"], []).append(q)
        self.questions: dict[str, list[dict]] = {}
        for entry in _jsonl(manifest):
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
        match = [q for q in pool if q["mc_prompt"] == ctx["question"]]
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
            if ctx.get("task") in self.by_task:
                pool = [q for q in pool if q["task_type"] == self.by_task[ctx["task"]]]
        return pool[seed % len(pool)]["mc_prompt"] if pool else "None"


def names_only_answer(text: str, options: list[str], answer: int) -> bool:
    """True when ``text`` contains the right option (as whole words) and no other option that
    is not part of the right one."""
    padded = f" {' '.join(text.lower().split())} "

    def has(option: str) -> bool:
        return f" {' '.join(option.lower().split())} " in padded

    right = options[answer]
    return has(right) and not any(has(o) and o not in right for i, o in enumerate(options)
                                  if i != answer)


def pair_quality(pairs: list[dict], questions: list[dict]) -> dict:
    """How good the curated pairs are, from the ground truth: the share whose chosen answer is
    right and rejected answer wrong (``good``), and the shares with the chosen right and with
    the rejected wrong, overall and per pair type. ``pairs`` are ``pairs.jsonl`` rows (prompt,
    chosen, rejected, type, video); ``questions`` the split's ``qa.jsonl`` rows (each matched by
    its video's file name and its ``mc_prompt``)."""
    by_key = {(Path(q["video"]).name, q["mc_prompt"]): q for q in questions}
    tally: dict[str, list[int]] = {}
    for p in pairs:
        q = by_key.get((Path(p["video"]).name, p["prompt"]))
        if q is None:
            raise KeyError(f"pair {p.get('id', '?')}: no question {p['prompt']!r} for "
                           f"{p['video']}")
        chosen_ok = names_only_answer(p["chosen"], q["options"], q["answer"])
        rejected_ok = names_only_answer(p["rejected"], q["options"], q["answer"])
        for key in ("all", p["type"]):
            t = tally.setdefault(key, [0, 0, 0, 0])
            t[0] += 1
            t[1] += chosen_ok and not rejected_ok
            t[2] += chosen_ok
            t[3] += not rejected_ok
    out = {}
    for key, (n, good, chosen_right, rejected_wrong) in tally.items():
        out[key] = {"n": n, "good": good / n, "chosen_right": chosen_right / n,
                    "rejected_wrong": rejected_wrong / n}
    return out or {"all": {"n": 0, "good": float("nan"), "chosen_right": float("nan"),
                           "rejected_wrong": float("nan")}}


def curation_manifest(train: Path) -> Path:
    """The train split's manifest with each video's localized question spans as its segments
    (the localized targets), so curated questions cover what the held-out questions ask."""
    spans: dict[str, set] = {}
    for q in _jsonl(train / "qa.jsonl"):
        if q["span"]:
            spans.setdefault(q["video"], set()).add(tuple(q["span"]))
    out = train / "curate_manifest.jsonl"
    lines = []
    for entry in _jsonl(train / "manifest.jsonl"):
        entry["segments"] = sorted(spans.get(entry["video"], []))
        entry["captions"] = entry["events"]  # the ground truth doubles as the captions
        lines.append(json.dumps(entry))
    out.write_text("\n".join(lines) + "\n")
    return out


# How the curation asks the comprehensive questions. "one": one task type drawn per target
# (the questions backend picks first or last by the query's seed); "both": every video is asked
# two task types, which the backend maps to its two questions (COMPREHENSIVE_BY_TASK).
CURATION_ASKS = {
    "one": ["queries.tasks_per_target=1"],
    "both": ["queries.tasks_per_target=0", "queries.localized_tasks=[spatial]",
             "queries.comprehensive_tasks=[temporal, summarisation]"],
}
COMPREHENSIVE_BY_TASK = {"temporal": "comprehensive/first", "summarisation": "comprehensive/last"}


def stage_curate(s: DemoConfig, data: dict, base: Path) -> Path:
    from tpo_fast.curate.config import load_curate_config
    from tpo_fast.curate.pipeline import format_report, run_curation

    out = s.root / "curate"
    pairs = out / "pairs.jsonl"
    train = data["train"]
    if not pairs.is_file():
        sample = str(s.temperature > 0).lower()
        cfg = load_curate_config(None, [
            f"input.videos={curation_manifest(train)}", "policy.kind=hf",
            f"policy.path={base}", "policy.dtype=float32", "policy.device=cpu",
            "policy.batch_size=16", "policy.max_new_tokens=6", f"policy.do_sample={sample}",
            f"policy.temperature={s.temperature if s.temperature > 0 else 1.0}",
            "query.kind=annotation", "judge.kind=annotation", "captions.source=given",
            *CURATION_ASKS[s.comprehensive_asks], f"responses.frames={s.frames}",
            f"responses.downsample_factor={s.downsample_factor}",
            f"responses.incomplete_fraction={s.incomplete_fraction}",
            f"mix.localized={s.mix_localized}", f"mix.comprehensive={s.mix_comprehensive}",
            "filter.rules=[empty, identical]", f"filter.judge={str(s.judge).lower()}",
            f"run.output_dir={out}", f"run.seed={s.seed}",
            f"run.progress={str(s.progress).lower()}"])
        annotations = SyntheticQuestions(train / "manifest.jsonl", train / "qa.jsonl",
                                         by_task=COMPREHENSIVE_BY_TASK)
        summary = run_curation(cfg, query_llm=annotations, judge_llm=annotations)
        _log("curate:\n" + format_report(summary))
    rows = _jsonl(pairs)
    if not rows:
        raise ValueError(f"curation kept no pairs (reasons in {out / 'dropped.jsonl'}); a base "
                         "that answers alike from every frame plan gives only identical pairs")
    quality_path = out / "pair_quality.json"
    if not quality_path.is_file():
        quality_path.write_text(json.dumps(pair_quality(rows, _jsonl(train / "qa.jsonl")),
                                           indent=2))
    quality = json.loads(quality_path.read_text())
    _log("pair quality (chosen right and rejected wrong): " + ", ".join(
        f"{k} {v['good']:.2f} of {v['n']}" for k, v in quality.items()))
    return pairs


# ---- stages 4-5: TPO and the SFT control ---------------------------------------------------------
def stage_tpo(s: DemoConfig, base: Path, pairs: Path) -> Path:
    final = _train(s, "tpo", base, pairs, [
        f"loss.beta={s.beta}", f"loss.sft_weight={s.alpha}", "loss.reference=model",
        f"optim.lr={s.tpo_lr}", f"optim.epochs={s.tpo_epochs}"])
    _log(f"tpo: trained in {final}")
    return final


def stage_control(s: DemoConfig, base: Path, pairs: Path) -> Path:
    final = _train(s, "control", base, pairs, [
        "loss.dpo_weight=0", "loss.sft_weight=1", f"optim.lr={s.tpo_lr}",
        f"optim.epochs={s.tpo_epochs}"])
    _log(f"control: SFT on the chosen answers in {final}")
    return final


# ---- stage 6: evaluation -------------------------------------------------------------------------
def stage_eval(s: DemoConfig, data: dict, models: dict[str, Path]) -> dict:
    results = {name: summary_of(_evaluate(s, path, data["heldout"] / "qa.jsonl")["loglik"])
               for name, path in models.items()}
    results["precondition"] = json.loads((s.root / "base" / "precondition.json").read_text())
    results["pair_quality"] = json.loads((s.root / "curate" / "pair_quality.json").read_text())
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


def _models(results: dict) -> list[str]:
    return [k for k in results if k not in ("precondition", "pair_quality")]


def format_comparison(results: dict) -> str:
    names = _models(results)
    keys = ["overall", "localized", "comprehensive"]
    keys += sorted({k for n in names for k in results[n]["by_task_type"]})
    width = max(len(k) for k in keys) + 2
    lines = ["held-out accuracy (multiple choice, option log-likelihood, whole video; chance "
             f"{CHANCE})", "".ljust(width) + "".join(n.rjust(13) for n in names)]
    for key in keys:
        cells = [results[n].get(key, results[n]["by_task_type"].get(key, float("nan")))
                 for n in names]
        lines.append(key.ljust(width) + "".join(f"{c:13.3f}" for c in cells))
    lines.append(f"({results[names[0]]['n']} questions)")
    pre, quality = results.get("precondition"), results.get("pair_quality")
    if pre:
        lines.append(f"precondition: the base on held-out localized questions from the clip "
                     f"{pre['base_clip']:.3f}, from the whole video {pre['base_full']:.3f}")
    if quality:
        lines.append("curated pairs with the chosen answer right and the rejected one wrong: "
                     + ", ".join(f"{k} {v['good']:.2f} of {v['n']}" for k, v in quality.items()))
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _models(results)
    groups = ["overall", "localized", "comprehensive"]
    fig, (ax, side) = plt.subplots(1, 2, figsize=(9, 3.4), width_ratios=[3, 2])
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        values = [results[name].get(g, float("nan")) for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], values, width, label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))], groups)
    ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylabel("held-out accuracy (whole video)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    pre, quality = results.get("precondition"), results.get("pair_quality")
    bars = {}
    if pre:
        bars["base\nclip"], bars["base\nwhole"] = pre["base_clip"], pre["base_full"]
    if quality:
        bars["good\npairs"] = quality["all"]["good"]
    side.bar(list(bars), list(bars.values()), color=["tab:green", "tab:red", "tab:purple"][
        :len(bars)])
    side.axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
    side.set_ylim(0, 1)
    side.set_title("precondition (localized) and pair quality", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- driver --------------------------------------------------------------------------------------
def run_demo(s: DemoConfig, stage: str = "all") -> dict:
    """Run ``stage`` (or every stage) of the demo with torch pinned to ``s.threads`` intra-op
    threads (restored afterwards), so the result does not depend on the machine's cores."""
    import torch

    if stage not in ("all", *STAGES):
        raise ValueError(f"unknown stage {stage!r}; choose from all, {', '.join(STAGES)}")
    if stage == "control" and not s.control:
        raise ValueError("the control stage runs with --control (settings control=true)")
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        return _run_stages(s, stage)
    finally:
        torch.set_num_threads(threads)


def _run_stages(s: DemoConfig, stage: str) -> dict:
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
        models["control"] = control
    results = stage_eval(s, data, models)
    _log(f"done in {time.perf_counter() - start:.0f} s; results in {s.root / 'eval.json'}, "
         f"plot {s.root / 'eval.png'}")
    return results


# ---- diagnosis: the pairs' log-probs before and after training -------------------------------
def pair_logps(s: DemoConfig, model_path: Path, pairs: Path, out: Path) -> list[dict]:
    """Every pair of ``pairs`` with ``ref_logps`` = [chosen, rejected] summed log-probs under
    ``model_path`` (the trainer's packed scorer, the settings' frames), written to ``out``."""
    from tpo_fast.config import load_config
    from tpo_fast.train.ref_logps import compute_ref_logps

    if not out.is_file():
        cfg = load_config(None, [
            f"model.path={model_path}", "model.dtype=float32", f"data.train={pairs}",
            f"data.frames={s.frames}", f"data.token_budget={s.token_budget}",
            "data.skip_invalid=true", f"run.seed={s.seed}"])
        compute_ref_logps(cfg, out=str(out), device="cpu", progress=False)
    return _jsonl(out)


def logp_shift(before: list[dict], after: list[dict]) -> dict:
    """Per pair type ("all" too): the mean change of the chosen and of the rejected answers'
    summed log-probs from ``before`` to ``after`` (``pair_logps`` rows of the same pairs, matched
    by ``id``), the share of pairs whose chosen log-prob fell, and the mean log-probs before."""
    old = {r["id"]: r for r in before if "ref_logps" in r}
    tally: dict[str, list[float]] = {}
    for r in after:
        if "ref_logps" not in r or r["id"] not in old:
            continue
        (c0, r0), (c1, r1) = old[r["id"]]["ref_logps"], r["ref_logps"]
        for key in ("all", r.get("type", "all")):
            t = tally.setdefault(key, [0, 0.0, 0.0, 0, 0.0, 0.0])
            t[0] += 1
            t[1] += c1 - c0
            t[2] += r1 - r0
            t[3] += c1 < c0
            t[4] += c0
            t[5] += r0
    return {k: {"n": n, "chosen_shift": dc / n, "rejected_shift": dr / n,
                "chosen_fell": fell / n, "chosen_before": c0 / n, "rejected_before": r0 / n}
            for k, (n, dc, dr, fell, c0, r0) in tally.items()}


def rejected_names_first(pairs: list[dict], questions: list[dict]) -> dict:
    """Per pair type: the share of pairs whose rejected answer names the colour that came first
    in the video (the answer of its "comprehensive/first" question; ``questions`` are the
    split's ``qa.jsonl`` rows, matched by the video's file name)."""
    first = {Path(q["video"]).name: q for q in questions
             if q["task_type"] == "comprehensive/first"}
    tally: dict[str, list[int]] = {}
    for p in pairs:
        q = first.get(Path(p["video"]).name)
        if q is None:
            raise KeyError(f"pair {p.get('id', '?')}: no first-colour question for {p['video']}")
        t = tally.setdefault(p["type"], [0, 0])
        t[0] += 1
        t[1] += names_only_answer(p["rejected"], q["options"], q["answer"])
    return {k: {"n": n, "share": hits / n} for k, (n, hits) in tally.items()}


def diagnose(run: str | Path) -> dict:
    """``logp_shift`` of every trained model of a finished demo run (tpo, control) against its
    base on the run's curated pairs, and ``rejected_names_first`` of the pairs, written to
    ``<run>/logp_shift.json``."""
    root = Path(run)
    s = DemoConfig(**{**json.loads((root / "demo_settings.json").read_text()),
                        "out": str(root), "progress": False})
    pairs = root / "curate" / "pairs.jsonl"
    scores = root / "diagnose"
    scores.mkdir(exist_ok=True)
    before = pair_logps(s, root / "base" / "final", pairs, scores / "base.jsonl")
    out = {"rejected_names_first": rejected_names_first(
        _jsonl(pairs), _jsonl(root / "data" / "train" / "qa.jsonl"))}
    for name in ("tpo", "control"):
        if (root / name / "final" / "config.json").is_file():
            out[name] = logp_shift(before, pair_logps(s, root / name / "final", pairs,
                                                      scores / f"{name}.jsonl"))
    (root / "logp_shift.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


# ---- the experiment: several seeds -------------------------------------------------------------
SPLITS = ("overall", "localized", "comprehensive")


def experiment_summary(per_seed_eval: dict[str, dict]) -> dict:
    """The experiment's summary from each seed's ``eval.json``: ``{"seeds", "per_seed": {seed:
    {model: {split: acc}}}, "mean": {...}, "sd": {...}}`` with models base, tpo, control
    (those present), splits overall/localized/comprehensive, and ``base_clip``/``base_full``
    (the precondition) and ``pair_quality`` (share of good pairs) as one-value entries."""
    import statistics

    per_seed = {}
    for seed, res in per_seed_eval.items():
        row = {m: {k: res[m][k] for k in SPLITS} for m in ("base", "tpo", "control") if m in res}
        row["base_clip"] = res["precondition"]["base_clip"]
        row["base_full"] = res["precondition"]["base_full"]
        row["pair_quality"] = res["pair_quality"]["all"]["good"]
        per_seed[seed] = row
    seeds = list(per_seed)
    first = per_seed[seeds[0]]
    mean, sd = {}, {}

    def stats(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    for key, value in first.items():
        if isinstance(value, dict):
            mean[key], sd[key] = {}, {}
            for split in SPLITS:
                mean[key][split], sd[key][split] = stats([per_seed[s][key][split]
                                                          for s in seeds])
        else:
            mean[key], sd[key] = stats([per_seed[s][key] for s in seeds])
    return {"seeds": seeds, "per_seed": per_seed, "mean": mean, "sd": sd}


def experiment_report(root: str | Path, out: str | Path | None = None) -> dict:
    """``experiment_summary`` of the seed folders under ``root`` (each a finished demo run with
    its ``eval.json``, named ``seed<N>``), written to ``out`` (default ``root/summary.json``)."""
    runs = sorted(p.parent for p in Path(root).glob("*/eval.json"))
    if not runs:
        raise FileNotFoundError(f"no finished demo runs (*/eval.json) under {root}")
    summary = experiment_summary({r.name.removeprefix("seed"): json.loads(
        (r / "eval.json").read_text()) for r in runs})
    Path(out or Path(root) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_report(summary: dict) -> str:
    mean, sd = summary["mean"], summary["sd"]
    lines = [f"held-out accuracy over seeds {', '.join(summary['seeds'])} (mean ± sd)",
             f"{'model':10s}{'overall':>16s}{'localized':>16s}{'comprehensive':>16s}"]
    for model in ("base", "tpo", "control"):
        if model in mean:
            cells = "".join(f"{mean[model][k]:9.3f} ± {sd[model][k]:.3f}" for k in SPLITS)
            lines.append(f"{model:10s}{cells}")
    for key in ("base_clip", "base_full", "pair_quality"):
        lines.append(f"{key:14s}{mean[key]:.3f} ± {sd[key]:.3f}")
    return "\n".join(lines)


USAGE = """usage: tpo-fast demo [CONFIG.yaml] [key=value ...] [--stage STAGE] [--quick]
                     [--out DIR] [--seed N] [--control] [--no-progress]
       python -m tpo_fast.demo report RUNS_FOLDER [OUT.json]
       python -m tpo_fast.demo diagnose RUN_FOLDER      (the pairs' log-prob shifts)"""


def parse_demo_args(argv: list[str]) -> tuple[DemoConfig, str]:
    """``tpo-fast demo`` arguments -> (config, stage). A first argument without ``=`` is the
    YAML file; ``--out/--seed/--control/--no-progress`` are the keys out, seed, control,
    progress (after the file, before the ``key=value`` overrides)."""
    import argparse

    parser = argparse.ArgumentParser(prog="tpo-fast demo", usage=USAGE.splitlines()[0][7:],
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                        help="a demo config (configs/demo.yaml) and overrides of its keys "
                             "(DemoConfig in tpo_fast/demo.py), e.g. seed=100 beta=1.0")
    parser.add_argument("--stage", default="all", choices=("all", *STAGES))
    parser.add_argument("--quick", action="store_true", help="a reduced run (CI)")
    parser.add_argument("--out", help="the run folder (key out)")
    parser.add_argument("--seed", type=int, help="key seed")
    parser.add_argument("--control", action="store_true",
                        help="also train SFT on the chosen answers (key control)")
    parser.add_argument("--no-progress", action="store_true", help="key progress=false")
    args = parser.parse_intermixed_args(argv)
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    flags = {"out": args.out, "seed": args.seed, "control": True if args.control else None,
             "progress": False if args.no_progress else None}
    defaults = {**(QUICK if args.quick else {}), **{k: v for k, v in flags.items()
                                                     if v is not None}}
    return demo_config(path, items, defaults), args.stage


def demo_main(argv: list[str]) -> int:
    """``tpo-fast demo ...``: bad input (a config error, an unknown key) is one clear line."""
    try:
        config, stage = parse_demo_args(argv)
        run_demo(config, stage)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"tpo-fast demo: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from tpo_fast.train.loop import TrainingError

        if not isinstance(exc, TrainingError):
            raise
        print(f"tpo-fast demo: error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "diagnose":
        print(json.dumps(diagnose(sys.argv[2]), indent=2))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "report":
        print(format_report(experiment_report(sys.argv[2], sys.argv[3] if len(sys.argv) == 4
                                              else None)))
    else:
        sys.exit(USAGE)
