"""Curation pipeline (``tpo-fast curate``): manifests, frame plans, filters, mixing, resume,
sharding. CPU only: tiny random models and small synthetic H.264 videos with known events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tpo_fast.config import ConfigError
from tpo_fast.curate.cli import main as curate_main
from tpo_fast.curate.config import FilterConfig, MixConfig, load_curate_config
from tpo_fast.curate.filters import rule_reasons
from tpo_fast.curate.llm import AnnotationLLM, LLMRequest, judge_from_events
from tpo_fast.curate.manifest import Span, read_inputs
from tpo_fast.curate.mix import mix_counts
from tpo_fast.curate.pipeline import STAGES, Curator, run_curation
from tpo_fast.curate.store import StageWriter, iter_records, read_stage
from tpo_fast.curate.tasks import parse_judgement, parse_question
from tpo_fast.synthetic.curate import make_synthetic_videos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A manifest of 3 synthetic 12 s videos (48 frames at 4 fps) with ground-truth events."""
    return make_synthetic_videos(tmp_path_factory.mktemp("curate_videos"), n_videos=3, seed=1)


def annotation_cfg(manifest: Path, out: Path, *extra: str):
    """A fast config: annotation policy, query writer and judge; small batches (many batches)."""
    return load_curate_config(None, [
        f"input.videos={manifest}", f"run.output_dir={out}", "run.progress=false",
        "policy.kind=annotation", "policy.batch_size=2", "query.batch_size=3",
        "judge.batch_size=2", "segments.per_video=3", "segments.lengths=[2.0, 3.0]",
        "queries.tasks_per_target=2", *extra])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_ids(out: Path) -> dict[str, list[str]]:
    """Every id of every stage file, duplicates included."""
    ids: dict[str, list[str]] = {}
    for path in (out / "stages").glob("*.jsonl"):
        ids.setdefault(path.name.split(".")[0], []).extend(r["id"] for r in iter_records(path))
    return ids


# ---- manifest ----------------------------------------------------------------------------------

def test_manifest_reports_malformed_lines_with_file_and_line(tmp_path, videos):
    good = read_jsonl(videos)[0]
    lines = [
        json.dumps({**good, "video": str(videos.parent / good["video"])}),
        "{not json",
        json.dumps({"captions": "no video field"}),
        json.dumps({"video": "b.mp4", "segments": [[5, 2]]}),
        "",
        json.dumps({"video": "c.mp4", "events": [{"start": 1, "end": 2}]}),
        json.dumps([1, 2]),
        json.dumps({**good, "video": str(videos.parent / good["video"])}),  # duplicate id
        json.dumps({"video": "d.mp4", "id": 7, "captions": [{"start": 0, "end": 3,
                                                             "text": "a cat"}],
                    "segments": [{"start": 1, "end": 2}], "source": "kept"}),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    entries, problems = read_inputs(manifest)
    assert [e.id for e in entries] == [str(videos.parent / good["video"]), "7"]
    assert entries[1].segments == [(1.0, 2.0)] and entries[1].extra == {"source": "kept"}
    assert entries[1].captions == [Span(0.0, 3.0, "a cat")]
    assert entries[1].path == tmp_path / "d.mp4"
    where = [p.split(": ", 1)[0] for p in problems]
    assert where == [f"{manifest}:{n}" for n in (2, 3, 4, 6, 7, 8)]
    assert "not valid JSON" in problems[0] and "'video'" in problems[1]
    assert "segments[0]" in problems[2] and "events[0].text" in problems[3]
    assert "duplicate video id" in problems[5]


def test_folder_input_is_sorted_and_filtered_by_extension(tmp_path):
    for name in ("b.mp4", "a.webm", "notes.txt", "sub/c.MKV"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    entries, problems = read_inputs(tmp_path, extensions=[".mp4", ".webm", ".mkv"])
    assert [e.id for e in entries] == ["a.webm", "b.mp4", "sub/c.MKV"] and problems == []


def test_unreadable_and_missing_videos_are_reported_and_skipped(tmp_path, videos):
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    # Explicit ids: a video's id seeds its segments, tasks and rejected plans, and the default id
    # is the path as written: an absolute tmp path, different in every run, whose rare draws
    # left no comprehensive pair, so the 5:5 mix kept nothing (the flaky failure).
    lines = [json.dumps({**r, "id": r["video"], "video": str(videos.parent / r["video"])})
             for r in read_jsonl(videos)[:2]]
    lines += [json.dumps({"video": "corrupt.mp4"}), json.dumps({"video": "missing.mp4"}),
              "{oops"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = run_curation(annotation_cfg(manifest, out))
    problems = summary["problems"]
    assert any("corrupt.mp4" in p for p in problems)
    assert any("missing.mp4" in p for p in problems)
    assert any(p.startswith(f"manifest: {manifest}:5:") for p in problems)
    assert summary["counts"]["videos"] == 2
    assert summary["counts"]["unreadable_videos"] == 2
    assert summary["counts"]["manifest_errors"] == 1
    pairs = read_jsonl(out / "pairs.jsonl")
    # the whole summary in the message: a failure must show why no pairs were kept
    assert pairs, json.dumps(summary, indent=1, default=str)
    assert {Path(p["video"]).name for p in pairs} <= {"events_000.mp4", "events_001.mp4"}
    assert summary["ranks"][0]["stages"]["videos"]["failed"] == 2
    # A re-run reports them again and still finishes.
    again = run_curation(annotation_cfg(manifest, out))
    assert sum("corrupt.mp4" in p for p in again["problems"]) == 1
    assert read_jsonl(out / "pairs.jsonl") == pairs


# ---- frame plans in provenance -----------------------------------------------------------------

def test_pairs_come_from_the_right_frame_plans(tmp_path, videos, monkeypatch):
    """Tiny LLaVA-OneVision policy: every pair's plans are FramePlan's, and the model was fed
    exactly those frames of that video for the chosen and the rejected answer."""
    import tpo_fast.video as video
    from tpo_fast.video import FramePlan, probe

    loaded: list[tuple[str, tuple[int, ...]]] = []
    real = video.load_video_inputs

    def recording(path, model_config, **kw):
        loaded.append((str(path), tuple(kw["plan"].indices)))
        return real(path, model_config, **kw)

    monkeypatch.setattr(video, "load_video_inputs", recording)
    out = tmp_path / "out"
    cfg = annotation_cfg(videos, out, "policy.kind=hf", "policy.tiny=llava_onevision",
                         "policy.dtype=float32", "policy.max_new_tokens=4",
                         "decode.workers=1", "responses.frames=8",
                         "responses.downsample_factor=3", "responses.incomplete_fraction=0.5",
                         "filter.rules=[]", "filter.judge=false", "captions.windows=2",
                         "segments.per_video=4", "queries.tasks_per_target=1",
                         "mix.target_size=1000", "mix.fill=true")  # keep every pair
    summary = run_curation(cfg)
    pairs = read_jsonl(out / "pairs.jsonl")
    assert summary["counts"]["kept"] == len(pairs) > 0
    assert summary["mix"]["localized"] > 0 and summary["mix"]["comprehensive"] > 0
    kinds = set()
    for pair in pairs:
        info = probe(pair["video"])
        c, r = pair["chosen_plan"], pair["rejected_plan"]
        if pair["type"] == "localized":
            t0, t1 = pair["segment"]
            assert c["kind"] == "segment" and (c["params"]["t0"], c["params"]["t1"]) == (t0, t1)
            expect_c = FramePlan.segment(info, t0, t1, 8)
            if r["kind"] == "complement":
                expect_r = FramePlan.complement(info, t0, t1, 8)
            else:
                assert r["kind"] == "incomplete" and r["params"]["keep"] == 0.5
                expect_r = FramePlan.incomplete(info, t0, t1, 8, keep=0.5,
                                                seed=r["params"]["seed"])
                assert set(r["indices"]) <= set(expect_c.indices)
            assert all(t0 - 0.25 <= t <= t1 + 0.25 for t in c["timestamps"])
        else:
            assert pair["segment"] is None and c["kind"] == "uniform"
            expect_c = FramePlan.uniform(info, 8)
            expect_r = FramePlan.downsample(info, 8, 3)
            assert r["kind"] == "downsample" and len(r["indices"]) == 3
        kinds.add(r["kind"])
        assert c["indices"] == list(expect_c.indices) and r["indices"] == list(expect_r.indices)
        assert (pair["video"], tuple(c["indices"])) in loaded
        assert (pair["video"], tuple(r["indices"])) in loaded
        assert pair["models"]["policy"] == "tiny:llava_onevision"
        assert pair["chosen"] and pair["rejected"] and pair["task"]
    assert kinds == {"complement", "incomplete", "downsample"}


def test_incomplete_fraction_selects_the_rejected_plan(tmp_path, videos):
    for fraction, kind in ((0.0, "complement"), (1.0, "incomplete")):
        out = tmp_path / kind
        run_curation(annotation_cfg(videos, out, f"responses.incomplete_fraction={fraction}",
                                    "filter.rules=[]", "filter.judge=false"))
        responses = read_stage(out / "stages", "responses").values()
        local = [r for r in responses if r["chosen_plan"]["kind"] == "segment"]
        assert local and {r["rejected_plan"]["kind"] for r in local} == {kind}


# ---- filters, judge, queries -------------------------------------------------------------------

def test_rule_filters_give_their_reason():
    cfg = FilterConfig(max_words=6)
    assert rule_reasons("a red square", "", cfg) == ["rule:empty"]
    assert rule_reasons("It was red.", "it was red", cfg) == ["rule:identical"]
    assert rule_reasons("the screen turns red", "the screen turned red", cfg) == [
        "rule:near_identical"]
    assert rule_reasons("one two three four five six seven", "no", cfg) == ["rule:overlong"]
    assert rule_reasons("I'm sorry, I cannot see it", "it is blue", cfg) == ["rule:refusal"]
    assert rule_reasons("the screen turns red", "a blue square", cfg) == []
    assert rule_reasons("a", "b", FilterConfig(rules=[])) == []
    assert rule_reasons("a", " a", FilterConfig(rules=[])) == ["rule:identical"]  # always
    assert rule_reasons("a", " ", FilterConfig(rules=[])) == ["rule:empty"]


def test_question_and_judgement_parsing():
    assert parse_question("None") is None and parse_question("none.") is None
    assert parse_question("") is None
    assert parse_question("Question: What turns red?\nextra") == "What turns red?"
    verdict = parse_judgement('Sure: {"chosen_better": "yes", "consistent": true, '
                              '"chosen_correct": false, "reason": "x"}')
    assert verdict == {"chosen_better": True, "consistent": True, "chosen_correct": False}
    assert parse_judgement("looks good") is None
    assert parse_judgement('{"chosen_better": true}') is None


def test_annotation_judge_checks_the_target_events():
    events = [Span(0, 4, "the screen turns red"), Span(4, 8, "the screen turns blue"),
              Span(5, 6, "a white square appears")]
    right = "In the video, the screen turns blue, then a white square appears."
    assert judge_from_events(events, 4.5, 7.0, "q?", right, "the screen turns red")[
        "chosen_better"]
    missing = judge_from_events(events, 4.5, 7.0, "q?", "the screen turns blue", right)
    assert not missing["chosen_correct"] and not missing["chosen_better"]
    extra = judge_from_events(events, 4.5, 7.0, "q?", right + " the screen turns red", right)
    assert not extra["chosen_correct"]
    llm = AnnotationLLM()
    none = llm.complete([LLMRequest("a", [], {"purpose": "query", "events": [],
                                              "kind": "localized", "t0": 0, "t1": 1,
                                              "task": "temporal"})])
    assert none[0].text == "None"


def test_query_none_and_drops_keep_their_reasons(tmp_path, videos):
    out = tmp_path / "out"
    summary = run_curation(annotation_cfg(videos, out, "queries.tasks_per_target=0"))
    drops = read_jsonl(out / "dropped.jsonl")
    by_reason = {r for d in drops for r in d["reasons"]}
    assert "query:none" in by_reason  # causal / spatial: the annotations cannot support them
    assert all(d["reasons"] for d in drops)
    counts = summary["counts"]
    assert counts["queries"] == counts["questions"] + summary["drop_reasons"]["query:none"]
    assert counts["judged"] == counts["kept"] + sum(
        v for k, v in summary["drop_reasons"].items() if k.startswith(("rule:", "judge:")))
    kept_ids = {p["id"] for p in read_jsonl(out / "pairs.jsonl")}
    assert not kept_ids & {d["id"] for d in drops}


def test_local_hf_chat_backend_batches_like_single_requests():
    """The local-model backend (here the tiny policy, text only): a batch of prompts of
    different lengths gives the same greedy answers as one prompt at a time."""
    from tpo_fast.curate.llm import HFChatLLM
    from tpo_fast.curate.policy import load_video_llm
    from tpo_fast.curate.tasks import query_messages

    model, tok, name = load_video_llm(None, "qwen2_vl", "float32", "cpu")
    requests = [LLMRequest(f"q{i}", query_messages([Span(0, 4, "the screen turns red " * i)],
                                                   "localized", 0, 2, "temporal"))
                for i in range(1, 4)]
    batched = HFChatLLM(model, tok, name, max_new_tokens=5, batch_size=3).complete(requests)
    single = HFChatLLM(model, tok, name, max_new_tokens=5, batch_size=1).complete(requests)
    assert [r.id for r in batched] == ["q1", "q2", "q3"] and name == "tiny:qwen2_vl"
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.text for r in batched)
    sampled = [HFChatLLM(model, tok, name, max_new_tokens=8, temperature=5.0).complete(requests)
               for _ in range(2)]
    assert [r.text for r in sampled[0]] == [r.text for r in sampled[1]]  # seeded
    assert [r.text for r in sampled[0]] != [r.text for r in batched]


# ---- mixing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("avail, cfg, expect", [
    ((10, 4), MixConfig(), (4, 4)),
    ((10, 4), MixConfig(localized=3, comprehensive=1), (10, 3)),
    ((10, 4), MixConfig(target_size=6), (3, 3)),
    ((10, 4), MixConfig(target_size=10), (5, 4)),
    ((10, 4), MixConfig(target_size=10, fill=True), (6, 4)),
    ((1, 9), MixConfig(target_size=8, fill=True), (1, 7)),
    ((7, 3), MixConfig(localized=1, comprehensive=0), (7, 0)),
])
def test_mix_counts(avail, cfg, expect):
    assert mix_counts(*avail, cfg) == expect


def test_mix_writes_the_ratio_and_target_size(tmp_path, videos):
    out = tmp_path / "out"
    summary = run_curation(annotation_cfg(videos, out, "mix.target_size=4",
                                          "filter.judge=false", "filter.rules=[]"))
    pairs = read_jsonl(out / "pairs.jsonl")
    assert len(pairs) == 4 == summary["mix"]["selected"]
    assert sorted(p["type"] for p in pairs) == ["comprehensive"] * 2 + ["localized"] * 2
    for p in pairs:  # the trainer's reader accepts the file, provenance included
        assert {"id", "video", "prompt", "chosen", "rejected", "task", "chosen_plan",
                "rejected_plan", "models", "seed"} <= set(p)
    from tpo_fast.data.pairs import read_pairs

    records, skipped = read_pairs(out / "pairs.jsonl")
    assert len(records) == 4 and not skipped and records[0].raw["chosen_plan"]


# ---- resumability ------------------------------------------------------------------------------

def _final(out: Path) -> list[dict]:
    return sorted(read_jsonl(out / "pairs.jsonl"), key=lambda p: p["id"])


class InjectedCrash(RuntimeError):
    """Raised by ``crash_after_batches`` to simulate a crash mid-run."""


@pytest.fixture
def crash_after_batches(monkeypatch):
    """``arm(n)``: the pipeline raises ``InjectedCrash`` right after the records of its n-th batch
    are written (what a kill between two batches leaves behind); ``arm(0)`` disarms."""
    state = {"after": 0, "batches": 0}
    append = StageWriter.append

    def append_then_maybe_crash(self, records):
        written = append(self, records)
        state["batches"] += 1
        if state["after"] and state["batches"] >= state["after"]:
            raise InjectedCrash(f"injected crash after {state['batches']} batches")
        return written

    monkeypatch.setattr(StageWriter, "append", append_then_maybe_crash)
    return lambda n: state.update(after=n, batches=0)


def test_injected_crashes_then_restart_give_the_same_pairs(tmp_path, videos,
                                                          crash_after_batches):
    ref_out = tmp_path / "ref"
    run_curation(annotation_cfg(videos, ref_out))
    uninterrupted = _final(ref_out)
    assert len(uninterrupted) >= 4
    out = tmp_path / "crashy"
    for after in (1, 2, 3, 5, 8):  # each run crashes partway, in a later stage each time
        crash_after_batches(after)
        with pytest.raises(InjectedCrash):
            Curator(annotation_cfg(videos, out)).run()
        assert not (out / "pairs.jsonl").exists()
    done = {stage: len(ids) for stage, ids in stage_ids(out).items()}
    assert done.get("responses", 0) > 0  # the crashes reached the later stages
    crash_after_batches(0)
    run_curation(annotation_cfg(videos, out))
    assert _final(out) == uninterrupted
    for stage, ids in stage_ids(out).items():
        assert len(ids) == len(set(ids)), f"duplicate records in stage {stage}"
    assert set(stage_ids(out)) == set(STAGES)


def test_resumed_run_skips_finished_work(tmp_path, videos):
    out = tmp_path / "out"
    run_curation(annotation_cfg(videos, out))
    calls = []

    class CountingLLM(AnnotationLLM):
        def complete(self, requests):
            calls.append(len(requests))
            return super().complete(requests)

    summary = Curator(annotation_cfg(videos, out), query_llm=CountingLLM(),
                      judge_llm=CountingLLM()).run()
    assert calls == []
    stages = summary["ranks"][0]["stages"]
    assert all(s["done"] == 0 and s["resumed"] == s["total"] for s in stages.values())


def test_torn_last_line_is_cut_and_not_read(tmp_path):
    path = tmp_path / "s.rank0-of-1.jsonl"
    with StageWriter(path) as w:
        w.append([{"id": "a"}, {"id": "b"}])
    with path.open("a") as f:
        f.write('{"id": "c", "x": ')  # a crash mid-write
    assert [r["id"] for r in iter_records(path)] == ["a", "b"]
    with StageWriter(path) as w:
        w.append([{"id": "c"}])
    assert [r["id"] for r in iter_records(path)] == ["a", "b", "c"]
    assert path.read_text().count("\n") == 3


def test_sigkilled_run_restarts_to_the_same_pairs(tmp_path, videos):
    """A subprocess with the tiny Qwen2-VL policy is SIGKILLed once responses are being
    written; the restart completes with the same pairs as an uninterrupted run."""
    args = [f"input.videos={videos}", "policy.kind=hf", "policy.tiny=qwen2_vl",
            "policy.dtype=float32", "policy.batch_size=1", "policy.max_new_tokens=6",
            "responses.frames=4", "responses.downsample_factor=2", "captions.windows=2",
            "captions.frames=2", "filter.judge=false", "filter.rules=[empty]",
            "segments.per_video=2", "queries.tasks_per_target=2", "run.progress=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tpo_fast.curate.cli", *args,
                                 f"run.output_dir={out}"], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    killed = tmp_path / "killed"
    proc = cli(killed)
    responses = killed / "stages" / "responses.rank0-of-1.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if responses.exists() and len(list(iter_records(responses))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(iter_records(responses)))
    assert not (killed / "pairs.jsonl").exists()
    ref = tmp_path / "ref"
    for out in (killed, ref):
        proc = cli(out)
        output = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode == 0, output
    assert partial < len(read_stage(killed / "stages", "responses"))
    assert _final(killed) == _final(ref) and _final(ref)
    for stage, ids in stage_ids(killed).items():
        assert len(ids) == len(set(ids)), f"duplicate records in stage {stage}"


# ---- sharding ----------------------------------------------------------------------------------

def test_ranks_write_shards_and_the_last_one_merges(tmp_path, videos):
    single = tmp_path / "single"
    run_curation(annotation_cfg(videos, single))
    out = tmp_path / "sharded"
    first = run_curation(annotation_cfg(videos, out, "run.rank=0", "run.world_size=2"))
    assert first is None and not (out / "pairs.jsonl").exists()
    second = run_curation(annotation_cfg(videos, out, "run.rank=1", "run.world_size=2"))
    assert second is not None and len(second["ranks"]) == 2
    assert {p.name for p in (out / "stages").glob("queries.*")} == {
        "queries.rank0-of-2.jsonl", "queries.rank1-of-2.jsonl"}
    videos_of = [{r["video_id"] for r in iter_records(out / "stages" /
                                                      f"queries.rank{k}-of-2.jsonl")}
                 for k in (0, 1)]
    assert videos_of[0] and videos_of[1] and not videos_of[0] & videos_of[1]
    assert _final(out) == _final(single)


def test_rank_and_world_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = load_curate_config(None, ["input.videos=x", "policy.kind=annotation"])
    assert cfg.rank_world() == (2, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="rank 4"):
        cfg.rank_world()


# ---- config and CLI ----------------------------------------------------------------------------

def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="did you mean responses.frames"):
        load_curate_config(None, ["input.videos=x", "responses.frame=8"])
    with pytest.raises(ConfigError, match="unknown task type"):
        load_curate_config(None, ["input.videos=x", "policy.kind=annotation",
                                  "queries.localized_tasks=[dancing]"])
    with pytest.raises(ConfigError, match="query.kind=openai needs query.model"):
        load_curate_config(None, ["input.videos=x", "policy.kind=annotation",
                                  "query.kind=openai"])
    with pytest.raises(ConfigError, match="policy.path or policy.tiny"):
        load_curate_config(None, ["input.videos=x"])


def test_cli_synthetic_demo_and_bad_input(tmp_path, capsys, monkeypatch):
    from tpo_fast.data.pairs import read_pairs

    monkeypatch.chdir(tmp_path)  # a relative output folder: the pairs still find their videos
    code = curate_main(["--synthetic", "2", "--output", "demo", "--no-progress",
                        "policy.kind=annotation"])
    out = tmp_path / "demo"
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "pairs.jsonl").is_file() and (out / "summary.json").is_file()
    records, _ = read_pairs(out / "pairs.jsonl")
    assert records and all(r.video.is_absolute() and r.video.is_file() for r in records)
    assert curate_main(["--merge-only", "--output", str(out), "--videos", "unused",
                        "policy.kind=annotation", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["videos"] == 2
    assert curate_main(["--videos", str(tmp_path / "nope"), "policy.kind=annotation",
                        "--output", str(tmp_path / "x")]) == 2
    assert "neither a folder nor a manifest" in capsys.readouterr().err


def test_generate_batch_ignores_non_tensor_video_fields():
    """Qwen3-VL videos carry frame_timestamps (a list): generation must still batch them."""
    from tpo_fast.curate.generation import generate_batch
    from tpo_fast.models import adapter_for
    from tpo_fast.models.tiny import random_video, tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("qwen3_vl")
    model = tiny_model("qwen3_vl", tok)
    video = random_video("qwen3_vl", model.config, 4)
    prompt = adapter_for(model).prompt_ids(tok, "what colour ?", video)
    out = generate_batch(model, tok, [prompt, prompt], [video, video], max_new_tokens=3,
                         do_sample=False, temperature=1.0, top_p=1.0, seed=0)
    assert len(out) == 2 and out[0] == out[1]
