"""``tpo-fast eval`` end to end on the synthetic format with a tiny random model."""

import json

import numpy as np
import pytest

from tpo_fast.data.synthetic import write_video
from tpo_fast.eval.cli import main


@pytest.fixture
def synthetic_set(tmp_path):
    (tmp_path / "videos").mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        write_video(tmp_path / "videos" / f"clip{i}.mp4",
                    rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=4)
    rows = [{"qid": f"s{i}", "video": f"videos/clip{i % 2}.mp4",
             "question": "what colour was the shape that appeared first ?",
             "options": ["red", "green", "blue", "yellow"][: 3 + i % 2], "answer": i % 3,
             "task_type": ["localized/colour", "comprehensive/order"][i % 2],
             "duration": [1.5, 20.0][i % 2]} for i in range(5)]
    rows.append({**rows[0], "qid": "gone", "video": "videos/missing.mp4"})
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_synthetic_both_methods(synthetic_set, tmp_path, capsys):
    out = tmp_path / "out" / "results.json"
    code = main(["--format", "synthetic", "--annotations", str(synthetic_set), "--tiny",
                 "qwen2_vl", "--frames", "4", "--method", "both", "--batch-size", "3",
                 "--max-new-tokens", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    for text in ("overall", "task localized/colour", "task comprehensive/order",
                 "duration 0-15s", "duration 15-60s", "loglik", "generate",
                 "5 of 6 questions evaluated; 1 skipped", f"results written to {out}"):
        assert text in printed, text
    results = json.loads(out.read_text())
    assert results["n_questions"] == 6 and results["decode_failures"] == 1
    assert results["skipped"][0]["qids"] == ["gone"]
    for method in ("loglik", "generate"):
        summary = results[method]
        assert summary["total"] == 5
        assert sum(v["total"] for v in summary["by_task_type"].values()) == 5
        assert summary["by_task_type"]["localized/colour"]["total"] == 3
    assert [p["qid"] for p in results["predictions"]] == ["s0", "s1", "s2", "s3", "s4"]
    assert results["source"]["model"] == "tiny:qwen2_vl"
    assert results["settings"]["frames"] == 4


def test_cli_limit_and_malformed_annotations(synthetic_set, tmp_path, capsys):
    lines = synthetic_set.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], '{"qid": "x", "video": "v.mp4"}', *lines[1:]]) + "\n")
    args = ["--format", "synthetic", "--annotations", str(bad), "--tiny", "llava_onevision",
            "--frames", "2", "--no-progress"]
    assert main(args) == 2
    assert f"{bad}:2: missing field 'options'" in capsys.readouterr().err
    assert main([*args, "--skip-invalid", "--limit", "2"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 malformed annotation items" in captured.err
    assert "2 of 2 questions evaluated" in captured.out


def test_cli_lmms_eval_protocol(tmp_path, capsys, monkeypatch):
    """Video-MME under lmms-eval's protocol end to end: its prompt and frame indices reach the
    model, a video named ``X.MP4`` is found, ``--system`` is used, the report names the
    protocol and gives lmms-eval's groups and score; MLVU's generation task is left out and
    counted. (Rows as lmms-lab/Video-MME's parquet and MLVU's json/ files; see
    tests/eval/test_eval_protocol.py for the field sources.)"""
    import tpo_fast.video as video
    from tpo_fast.eval import protocol

    rng = np.random.default_rng(2)
    data = tmp_path / "Video-MME" / "data"
    data.mkdir(parents=True)
    write_video(data / "fFjv93ACGo8.MP4", rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8))
    write_video(data / "Ab-3_xYz9Q0.mp4", rng.integers(0, 255, (7, 32, 32, 3), dtype=np.uint8))
    rows = [{"video_id": f"00{v + 1}", "duration": ["short", "long"][v], "domain": "Knowledge",
             "sub_category": "Astronomy", "url": "https://www.youtube.com/watch?v=" + vid,
             "videoID": vid, "question_id": f"00{v + 1}-{j + 1}", "task_type": "OCR Problems",
             "question": "What is written on the board?",
             "options": ["A. Mars.", "B. Venus.", "C. Earth.", "D. Saturn."], "answer": "ABCD"[j]}
            for v, vid in enumerate(["fFjv93ACGo8", "Ab-3_xYz9Q0"]) for j in range(2)]
    annotations = tmp_path / "videomme.json"
    annotations.write_text(json.dumps(rows))
    prompts, plans = [], []
    real_prompt, real_load = protocol.prompt, video.load_video_inputs
    monkeypatch.setattr(protocol, "prompt",
                        lambda *a, **k: prompts.append(real_prompt(*a, **k)) or prompts[-1])
    monkeypatch.setattr(video, "load_video_inputs",
                        lambda *a, **k: plans.append(k["plan"].indices) or real_load(*a, **k))
    out = tmp_path / "r.json"
    assert main(["--format", "videomme", "--annotations", str(annotations), "--video-root",
                 str(data), "--tiny", "qwen2_vl", "--frames", "4", "--method", "both",
                 "--system", "You are a careful viewer.", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for text in ("duration short", "duration long", "domain Knowledge", "task_type OCR Problems",
                 "generate score (as lmms-eval aggregates it)",
                 "protocol: lmms-eval 0.7.3 task videomme", "4 of 4 questions evaluated"):
        assert text in printed, text
    assert prompts[0] == protocol.videomme_prompt(rows[0])
    assert sorted(plans) == [(0, 2, 4, 6), (0, 2, 5, 8)]  # linspace(0, n - 1, 4, dtype=int)
    results = json.loads(out.read_text())
    assert results["settings"]["system"] == "You are a careful viewer."
    assert results["settings"]["max_new_tokens"] == 16  # the task's generation length
    assert results["protocol"]["task"] == "videomme"
    assert "comparable with lmms-eval" in results["protocol"]["generate"]
    assert "fast method" in results["protocol"]["loglik"]
    assert results["generate"]["by_category"]["duration"]["short"]["total"] == 2

    mlvu = tmp_path / "MLVU" / "json"
    mlvu.mkdir(parents=True)
    (mlvu / "4_count.json").write_text(json.dumps([
        {"video": "count_126.mp4", "duration": 572.86, "question": "How many times?",
         "candidates": ["2", "1", "5", "4"], "answer": "1", "question_type": "count"}]))
    (mlvu / "9_summary.json").write_text(json.dumps([
        {"video": "summary_1.mp4", "duration": 900.0, "question": "Please summarize this video.",
         "answer": "A man cooks.", "question_type": "summary"}]))
    assert main(["--format", "mlvu", "--annotations", str(mlvu), "--tiny", "qwen2_vl",
                 "--no-progress"]) == 0  # no --skip-invalid needed
    captured = capsys.readouterr()
    assert "left out 1 items that are not multiple choice (generation tasks: " \
           "9_summary.json: 1)" in captured.err
    assert "0 of 1 questions evaluated; 1 skipped" in captured.out  # its video is missing
    assert "ego, needle, order, plotQA, topic_reasoning had no questions here" in captured.out
    assert main(["--format", "mlvu", "--annotations", str(mlvu), "--tiny", "qwen2_vl",
                 "--lmms-eval-version", "0.3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "protocol: lmms-eval 0.3 task mlvu " in printed and "no questions here" not in printed
