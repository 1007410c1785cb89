"""``tpo-fast curate``: TPO preference pairs from raw videos, by self-training.

Stages, each an append-only JSONL file per rank under ``<output_dir>/stages/`` keyed by a stable
id (a re-run skips ids already there; a crash loses at most the batch in flight)::

    videos     probe every video of this rank's shard          id: video id
    captions   given, or the policy captions N windows          id: video id
    queries    one question per target per task (or "None")     id: <video>#L<k>:<task> | #C:<task>
    responses  the policy answers from the chosen and the       id: query id
               rejected frame plans
    judged     rules, then the LLM judge (TPO's three checks)   id: query id

Every rank then writes ``done.rank<r>-of-<w>.json``; whichever rank finds all of them merges:
the kept pairs are mixed localized:comprehensive to the target size and written to
``pairs.jsonl`` (with provenance) and ``summary.json`` (counts per stage, drop reasons, mix,
time). ``merge_only`` re-runs just that step.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tpo_fast.curate.config import CurateConfig, curate_config_to_dict
from tpo_fast.curate.filters import rule_reasons
from tpo_fast.curate.llm import LLMBackend, LLMRequest, build_llm
from tpo_fast.curate.manifest import Span, VideoEntry, read_inputs, shard
from tpo_fast.curate.mix import mix_pairs
from tpo_fast.curate.policy import Policy, PolicyRequest, build_policy
from tpo_fast.curate.store import StageWriter, read_stage, shard_path
from tpo_fast.curate.targets import Target, make_targets, stable_seed
from tpo_fast.curate.tasks import JUDGE_CHECKS, judge_messages, parse_judgement, parse_question
from tpo_fast.curate.tasks import query_messages as build_query_messages

STAGES = ("videos", "captions", "queries", "responses", "judged")
_SHOWN = 20  # problems and failures kept in the report, per kind


@dataclass
class StageReport:
    total: int = 0  # items of this rank's shard
    resumed: int = 0  # already done by an earlier run
    done: int = 0  # done in this run
    failed: int = 0  # failed in this run (not recorded: a re-run retries them)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Stage:
    """One stage's work: items keyed by id, and a function turning a batch into records.

    ``process`` returns one record per item; a record holding ``"error"`` is a failure."""

    name: str
    items: list[tuple[str, object]]
    batch_size: int
    process: Callable[[list], list[dict]]


class Curator:
    """Runs the pipeline for one rank. Backends may be injected (tests); otherwise they are
    built from the config when first needed."""

    def __init__(self, cfg: CurateConfig, *, policy: Policy | None = None,
                 query_llm: LLMBackend | None = None, judge_llm: LLMBackend | None = None):
        self.cfg = cfg
        self.rank, self.world = cfg.rank_world()
        self.out = Path(cfg.run.output_dir)
        self.stage_dir = self.out / "stages"
        self._policy, self._query_llm, self._judge_llm = policy, query_llm, judge_llm
        self.reports: dict[str, StageReport] = {}
        self.problems: list[str] = []  # manifest lines and videos left out

    # ---- backends (built lazily: a resumed run with nothing left to do loads no model) ------
    @property
    def policy(self) -> Policy:
        if self._policy is None:
            self._policy = build_policy(self.cfg.policy, self.cfg.decode)
        return self._policy

    @property
    def query_llm(self) -> LLMBackend:
        if self._query_llm is None:
            self._query_llm = build_llm(self.cfg.query, self._policy_if_needed(self.cfg.query))
        return self._query_llm

    @property
    def judge_llm(self) -> LLMBackend:
        if self._judge_llm is None:
            self._judge_llm = build_llm(self.cfg.judge, self._policy_if_needed(self.cfg.judge))
        return self._judge_llm

    def _policy_if_needed(self, llm_cfg) -> Policy | None:
        return self.policy if llm_cfg.kind == "policy" else None

    # ---- driver ------------------------------------------------------------------------------
    def run(self) -> dict | None:
        """Run this rank's stages, then merge if every rank is done; returns the summary (None
        when other ranks are still running)."""
        start = time.perf_counter()
        # A marker from an earlier run must not let another rank merge while this one works.
        (self.out / f"done.rank{self.rank}-of-{self.world}.json").unlink(missing_ok=True)
        entries = self._entries()
        infos = self._run(self._videos_stage(entries))
        captions = self._run(self._captions_stage(entries, infos))
        queries = self._run(self._queries_stage(entries, infos, captions))
        responses = self._run(self._responses_stage(entries, infos, queries))
        self._run(self._judge_stage(entries, queries, responses, captions))
        self._write_rank_report(time.perf_counter() - start)
        if all(self._rank_done(r) for r in range(self.world)):
            return merge(self.cfg)
        return None

    def _entries(self) -> list[VideoEntry]:
        c = self.cfg.input
        entries, problems = read_inputs(c.videos, c.video_root, c.extensions, c.limit)
        self.problems += [f"manifest: {p}" for p in problems]
        return shard(entries, self.rank, self.world)

    def _run(self, stage: Stage) -> dict[str, dict]:
        """Process the stage's items not yet recorded, in batches; every record of the stage's
        items (old and new) by id."""
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        done = read_stage(self.stage_dir, stage.name)
        ids = {i for i, _ in stage.items}
        todo = [(i, item) for i, item in stage.items if i not in done]
        report = self.reports[stage.name] = StageReport(total=len(stage.items),
                                                        resumed=len(ids & set(done)))
        path = shard_path(self.stage_dir, stage.name, self.rank, self.world)
        with StageWriter(path) as writer, tqdm(
                total=len(stage.items), initial=report.resumed, desc=f"{stage.name:>9}",
                disable=not self.cfg.run.progress, leave=True) as bar:
            for k in range(0, len(todo), stage.batch_size):
                batch = [item for _, item in todo[k:k + stage.batch_size]]
                records = stage.process(batch)
                good = [r for r in records if "error" not in r]
                writer.append(good)
                done.update((r["id"], r) for r in good)
                report.done += len(good)
                self._note_failures(report, [r for r in records if "error" in r])
                bar.update(len(batch))
        report.seconds = round(time.perf_counter() - t0, 3)
        return {i: done[i] for i in ids if i in done}

    def _note_failures(self, report: StageReport, failed: list[dict]) -> None:
        report.failed += len(failed)
        room = _SHOWN - len(report.failures)
        report.failures += [f"{r['id']}: {r['error']}" for r in failed[:max(room, 0)]]

    # ---- stage: videos ---------------------------------------------------------------------
    def _videos_stage(self, entries: list[VideoEntry]) -> Stage:
        def process(batch: list[VideoEntry]) -> list[dict]:
            from tpo_fast.video import VideoDecodeError, probe

            out = []
            for entry in batch:
                try:
                    info = probe(entry.path)
                    out.append({"id": entry.id, "video": str(entry.path),
                                "info": _info_dict(info)})
                except VideoDecodeError as exc:
                    self.problems.append(f"video {entry.source} ({entry.path}): {exc}")
                    out.append({"id": entry.id, "error": f"unreadable video: {exc}"})
            return out

        return Stage("videos", [(e.id, e) for e in entries], 16, process)

    # ---- stage: captions -------------------------------------------------------------------
    def _captions_stage(self, entries: list[VideoEntry], infos: dict) -> Stage:
        c = self.cfg.captions

        def process(batch: list[VideoEntry]) -> list[dict]:
            out, asks = [], []
            for entry in batch:
                duration = infos[entry.id]["info"]["duration"]
                if entry.captions is not None and c.source in ("auto", "given"):
                    spans = [Span(s.start, min(s.end, duration), s.text) for s in entry.captions]
                    out.append(_caption_record(entry.id, spans, "given"))
                elif c.source == "given":
                    out.append({"id": entry.id, "error": "captions.source=given but the "
                                                         "manifest gives no captions"})
                else:
                    asks.append(entry)
            return out + self._policy_captions(asks, infos)

        return Stage("captions", [(e.id, e) for e in entries if e.id in infos],
                     max(1, self.cfg.policy.batch_size // self.cfg.captions.windows), process)

    def _policy_captions(self, entries: list[VideoEntry], infos: dict) -> list[dict]:
        """Caption records from the policy: one answer per window of each video."""
        windows = {entry.id: self._caption_requests(entry, _info(infos[entry.id]))
                   for entry in entries}
        requests = [req for reqs in windows.values() for req, _ in reqs]
        texts = dict(zip([r.id for r in requests], self.policy.answer(requests))) \
            if requests else {}
        out = []
        for entry in entries:
            spans = [Span(a, b, texts.get(req.id)) for req, (a, b) in windows[entry.id]]
            if not spans or any(s.text is None for s in spans):
                out.append({"id": entry.id, "error": "the policy could not caption the video"})
            else:
                out.append(_caption_record(entry.id, spans, self.policy.name))
        return out

    def _caption_requests(self, entry: VideoEntry, info) -> list[tuple[PolicyRequest, tuple]]:
        """(request, (start, end)) for each caption window of a video (windows without a frame
        are left out)."""
        from tpo_fast.video import FramePlan

        c = self.cfg.captions
        edges = [info.duration * k / c.windows for k in range(c.windows + 1)]
        out = []
        for k, (a, b) in enumerate(zip(edges, edges[1:])):
            try:
                plan = FramePlan.segment(info, a, b, c.frames)
            except ValueError:
                continue  # a window shorter than a frame period
            rid = f"{entry.id}@{k}"
            seed = stable_seed(self.cfg.run.seed, rid) % 2**31
            out.append((PolicyRequest(rid, entry.path, plan, c.prompt, seed, entry.events),
                        (a, b)))
        return out

    # ---- stage: queries --------------------------------------------------------------------
    def _targets(self, entry: VideoEntry, info: dict) -> list[Target]:
        s = self.cfg.segments
        return make_targets(entry, info["info"]["duration"], s.per_video, s.lengths,
                            s.comprehensive, self.cfg.run.seed)

    def _tasks(self, target: Target) -> list[str]:
        q = self.cfg.queries
        tasks = q.localized_tasks if target.kind == "localized" else q.comprehensive_tasks
        if q.tasks_per_target == 0 or q.tasks_per_target >= len(tasks):
            return list(tasks)
        rng = random.Random(stable_seed(self.cfg.run.seed, target.id, "tasks"))
        return rng.sample(list(tasks), q.tasks_per_target)

    def _queries_stage(self, entries: list[VideoEntry], infos: dict, captions: dict) -> Stage:
        items = []
        for entry in entries:
            if entry.id not in captions:
                continue
            for target in self._targets(entry, infos[entry.id]):
                items += [(f"{target.id}:{task}", (entry, target, task))
                          for task in self._tasks(target)]

        def process(batch) -> list[dict]:
            requests = [self._query_request(entry, target, task, captions[entry.id])
                        for entry, target, task in batch]
            results = self.query_llm.complete(requests)
            return [self._query_record(item, req, res)
                    for item, req, res in zip(batch, requests, results)]

        return Stage("queries", items, self.cfg.query.batch_size, process)

    def _query_request(self, entry: VideoEntry, target: Target, task: str,
                       caption_rec: dict) -> LLMRequest:
        spans = [Span(**c) for c in caption_rec["captions"]]
        if target.kind == "localized":
            spans = [s for s in spans if s.overlaps(target.t0, target.t1)] or spans
        qid = f"{target.id}:{task}"
        context = {"purpose": "query", "events": [e.to_dict() for e in entry.events],
                   "kind": target.kind, "t0": target.t0, "t1": target.t1, "task": task}
        return LLMRequest(qid, build_query_messages(spans, target.kind, target.t0, target.t1,
                                                    task), context,
                          stable_seed(self.cfg.run.seed, qid, "query") % 2**31)

    def _query_record(self, item, request: LLMRequest, result) -> dict:
        entry, target, task = item
        if result.text is None:
            return {"id": request.id, "error": result.error}
        return {"id": request.id, "video_id": entry.id, "video": str(entry.path),
                "target": target.to_dict(), "task": task,
                "question": parse_question(result.text), "raw": result.text,
                "model": self.query_llm.name}

    # ---- stage: responses ------------------------------------------------------------------
    def _responses_stage(self, entries: list[VideoEntry], infos: dict, queries: dict) -> Stage:
        by_id = {e.id: e for e in entries}
        items = [(qid, (by_id[q["video_id"]], q)) for qid, q in sorted(queries.items())
                 if q["question"] is not None]

        def process(batch) -> list[dict]:
            planned, out = [], []
            for entry, query in batch:
                try:
                    planned.append((entry, query, *self._plans(infos[entry.id], query)))
                except ValueError as exc:  # e.g. a segment that covers the whole video
                    out.append({"id": query["id"], "dropped": f"plan: {exc}"})
            requests = []
            for entry, query, chosen, rejected, seed in planned:
                requests += [PolicyRequest(f"{query['id']}/{side}", entry.path, plan,
                                           query["question"], seed, entry.events)
                             for side, plan in (("chosen", chosen), ("rejected", rejected))]
            texts = self.policy.answer(requests) if requests else []
            for k, (_, query, chosen, rejected, seed) in enumerate(planned):
                out.append(self._response_record(query, chosen, rejected, seed,
                                                 texts[2 * k], texts[2 * k + 1]))
            return out

        return Stage("responses", items, self.cfg.policy.batch_size, process)

    def _plans(self, info_rec: dict, query: dict):
        """(chosen plan, rejected plan, seed) of a query (TPO's manipulated inputs)."""
        from tpo_fast.video import FramePlan

        r, info, target = self.cfg.responses, _info(info_rec), query["target"]
        seed = stable_seed(self.cfg.run.seed, query["id"], "response") % 2**31
        if target["kind"] == "comprehensive":
            return (FramePlan.uniform(info, r.frames),
                    FramePlan.downsample(info, r.frames, r.downsample_factor), seed)
        t0, t1 = target["t0"], target["t1"]
        chosen = FramePlan.segment(info, t0, t1, r.frames)
        draw = random.Random(stable_seed(self.cfg.run.seed, query["id"], "rejected")).random()
        if draw < r.incomplete_fraction:
            rejected = FramePlan.incomplete(info, t0, t1, r.frames, keep=r.incomplete_keep,
                                            seed=seed)
        else:
            rejected = FramePlan.complement(info, t0, t1, r.frames)
        return chosen, rejected, seed

    def _response_record(self, query: dict, chosen, rejected, seed: int, chosen_text,
                         rejected_text) -> dict:
        if chosen_text is None or rejected_text is None:
            return {"id": query["id"], "error": "the policy could not answer (video decode)"}
        return {"id": query["id"], "chosen": chosen_text, "rejected": rejected_text,
                "chosen_plan": chosen.to_dict(), "rejected_plan": rejected.to_dict(),
                "policy": self.policy.name, "seed": seed}

    # ---- stage: post-filter ----------------------------------------------------------------
    def _judge_stage(self, entries: list[VideoEntry], queries: dict, responses: dict,
                     captions: dict) -> Stage:
        by_id = {e.id: e for e in entries}
        items = [(qid, (by_id[queries[qid]["video_id"]], queries[qid], resp))
                 for qid, resp in sorted(responses.items()) if "dropped" not in resp]

        def process(batch) -> list[dict]:
            out, ask = [], []
            for entry, query, resp in batch:
                reasons = rule_reasons(resp["chosen"], resp["rejected"], self.cfg.filter)
                if reasons or not self.cfg.filter.judge:
                    out.append({"id": query["id"], "keep": not reasons, "reasons": reasons})
                else:
                    ask.append(self._judge_request(entry, query, resp, captions[entry.id]))
            results = self.judge_llm.complete(ask) if ask else []
            return out + [_judgement_record(r, self.judge_llm.name) for r in results]

        return Stage("judged", items, self.cfg.judge.batch_size, process)

    def _judge_request(self, entry: VideoEntry, query: dict, resp: dict,
                       caption_rec: dict) -> LLMRequest:
        t = query["target"]
        spans = [Span(**c) for c in caption_rec["captions"]]
        context = {"purpose": "judge", "events": [e.to_dict() for e in entry.events],
                   "t0": t["t0"], "t1": t["t1"], "question": query["question"],
                   "chosen": resp["chosen"], "rejected": resp["rejected"]}
        return LLMRequest(query["id"], judge_messages(spans, query["question"], resp["chosen"],
                                                      resp["rejected"]), context,
                          stable_seed(self.cfg.run.seed, query["id"], "judge") % 2**31)

    # ---- per-rank report -------------------------------------------------------------------
    def _rank_done(self, rank: int) -> bool:
        return (self.out / f"done.rank{rank}-of-{self.world}.json").is_file()

    def _write_rank_report(self, seconds: float) -> None:
        report = {"rank": self.rank, "world_size": self.world, "seconds": round(seconds, 3),
                  "problems": self.problems,
                  "stages": {k: vars(v) for k, v in self.reports.items()}}
        path = self.out / f"done.rank{self.rank}-of-{self.world}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(path)


def _info_dict(info) -> dict:
    return {"fps": info.fps, "num_frames": info.num_frames, "duration": info.duration,
            "codec": info.codec, "width": info.width, "height": info.height}


def _info(record: dict):
    from tpo_fast.video import VideoInfo

    return VideoInfo(path=record["video"], **record["info"])


def _caption_record(video_id: str, spans: list[Span], source: str) -> dict:
    return {"id": video_id, "captions": [s.to_dict() for s in spans], "source": source}


def _judgement_record(result, judge_name: str) -> dict:
    if result.text is None:
        return {"id": result.id, "error": result.error}
    verdict = parse_judgement(result.text)
    if verdict is None:
        reasons = ["judge:unparseable"]
    else:
        reasons = [f"judge:not_{check}" for check in JUDGE_CHECKS if not verdict[check]]
    return {"id": result.id, "keep": not reasons, "reasons": reasons, "judgement": verdict,
            "judge": judge_name}


# ---- merge -----------------------------------------------------------------------------------

def merge(cfg: CurateConfig) -> dict:
    """Join every rank's stage files, mix the kept pairs and write ``pairs.jsonl`` and
    ``summary.json`` (atomically; safe to repeat)."""
    from tpo_fast.data.pairs import write_pairs_atomic

    out = Path(cfg.run.output_dir)
    stages = {name: read_stage(out / "stages", name) for name in STAGES}
    kept, drops = _kept_pairs(cfg, stages)
    chosen, mix_info = mix_pairs(kept, cfg.mix, cfg.run.seed)
    write_pairs_atomic(out / "pairs.jsonl", chosen)
    write_pairs_atomic(out / "dropped.jsonl", drops)
    summary = _summary(cfg, out, stages, kept, drops, mix_info)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")
    return summary


def _kept_pairs(cfg: CurateConfig, stages: dict) -> tuple[list[dict], list[dict]]:
    queries, responses, judged = stages["queries"], stages["responses"], stages["judged"]
    captions = stages["captions"]
    kept, drops = [], []
    for qid in sorted(queries):
        query = queries[qid]
        if query["question"] is None:
            drops.append({"id": qid, "stage": "queries", "reasons": ["query:none"]})
            continue
        resp, verdict = responses.get(qid), judged.get(qid)
        if resp is not None and "dropped" in resp:
            drops.append({"id": qid, "stage": "responses", "reasons": [resp["dropped"]]})
        elif verdict is not None and not verdict["keep"]:
            drops.append({"id": qid, "stage": "judged", "reasons": verdict["reasons"],
                          "chosen": resp["chosen"], "rejected": resp["rejected"]})
        elif verdict is not None:
            cap = captions.get(query["video_id"], {}).get("source")
            kept.append(_pair(cfg, query, resp, verdict, cap))
    return kept, drops


def _pair(cfg: CurateConfig, query: dict, resp: dict, verdict: dict, caption_source) -> dict:
    """One output pair: the trainer's fields, then provenance."""
    t = query["target"]
    return {
        "id": query["id"], "video": query["video"], "prompt": query["question"],
        "chosen": resp["chosen"], "rejected": resp["rejected"],
        "type": t["kind"], "task": query["task"], "video_id": query["video_id"],
        "segment": [t["t0"], t["t1"]] if t["kind"] == "localized" else None,
        "chosen_plan": resp["chosen_plan"], "rejected_plan": resp["rejected_plan"],
        "models": {"policy": resp["policy"], "query": query["model"],
                   "judge": verdict.get("judge"), "captions": caption_source},
        "seed": resp["seed"], "curate_seed": cfg.run.seed, "judgement": verdict.get("judgement"),
    }


def _summary(cfg: CurateConfig, out: Path, stages: dict, kept: list[dict], drops: list[dict],
             mix_info: dict) -> dict:
    world = cfg.rank_world()[1]
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob(f"done.rank*-of-{world}.json"))]
    reasons = Counter(r for d in drops for r in d["reasons"])
    problems = [p for r in ranks for p in r["problems"]]
    return {
        "counts": {
            "manifest_errors": sum(p.startswith("manifest:") for p in problems),
            "unreadable_videos": sum(r["stages"].get("videos", {}).get("failed", 0)
                                     for r in ranks),
            "videos": len(stages["videos"]), "captioned": len(stages["captions"]),
            "queries": len(stages["queries"]),
            "questions": sum(q["question"] is not None for q in stages["queries"].values()),
            "responses": sum("dropped" not in r for r in stages["responses"].values()),
            "judged": len(stages["judged"]), "kept": len(kept),
            "kept_localized": sum(p["type"] == "localized" for p in kept),
            "kept_comprehensive": sum(p["type"] == "comprehensive" for p in kept),
            "written": mix_info["selected"],
        },
        "drop_reasons": dict(sorted(reasons.items())),
        "mix": mix_info,
        "problems": problems[:200],
        "ranks": ranks,
        "seconds": round(max((r["seconds"] for r in ranks), default=0.0), 3),
        "config": curate_config_to_dict(cfg),
        "outputs": {"pairs": str(out / "pairs.jsonl"), "dropped": str(out / "dropped.jsonl")},
    }


def format_report(summary: dict) -> str:
    """A human-readable final report."""
    c, m = summary["counts"], summary["mix"]
    short = f"; short of {m['short']}" if m["short"] else ""
    lines = [
        f"videos {c['videos']}  captioned {c['captioned']}  queries {c['queries']}  "
        f"questions {c['questions']}  responses {c['responses']}  judged {c['judged']}  "
        f"kept {c['kept']} ({c['kept_localized']} localized, {c['kept_comprehensive']} "
        "comprehensive)",
        f"mix {m['ratio']}: wrote {m['selected']} pairs ({m['localized']} localized, "
        f"{m['comprehensive']} comprehensive){short}",
    ]
    if summary["drop_reasons"]:
        lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in
                                             summary["drop_reasons"].items()))
    for rank in summary["ranks"]:
        for name, st in rank["stages"].items():
            if st["failed"]:
                lines.append(f"rank {rank['rank']} {name}: {st['failed']} failed (re-run to "
                             f"retry), e.g. {st['failures'][0]}")
    if summary["problems"]:
        lines.append(f"{len(summary['problems'])} input problem(s), e.g. "
                     f"{summary['problems'][0]}")
    lines.append(f"time {summary['seconds']:.1f}s; pairs: {summary['outputs']['pairs']}")
    return "\n".join(lines)


def run_curation(cfg: CurateConfig, **backends) -> dict | None:
    """Run this rank's share of the pipeline (and the merge when every rank is done)."""
    return Curator(cfg, **backends).run()
