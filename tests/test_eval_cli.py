"""``tpo-fast eval`` end to end on the synthetic format with a tiny random model."""

import json

import numpy as np
import pytest

from tpo_fast.eval.cli import main
from tpo_fast.synthetic.videos import write_video


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
    tests/test_eval_protocol.py for the field sources.)"""
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


# ---- the config: YAML + key=value, the flags as sugar ------------------------------------------

def test_eval_config_from_yaml_overrides_and_flags(tmp_path):
    from tpo_fast.config import DecodeConfig
    from tpo_fast.eval.cli import config_from_args

    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text("format: videomme\nannotations: videomme/test.parquet\n"
                        "model: /models/LongVA-7B\nframes: 128\nmethod: generate\n"
                        "lmms_eval_version: '0.3'\ndecode: {backend: pyav, workers: 4}\n")
    cfg = config_from_args([str(cfg_file), "frames=64", "decode.threads=3", "--subtitles",
                            "--video-threads", "5", "--system", "You are: careful."])
    assert (cfg.format, cfg.frames, cfg.method, cfg.subtitles) == ("videomme", 64, "generate",
                                                                    True)
    assert cfg.lmms_eval_version == "0.3" and cfg.system == "You are: careful."
    assert cfg.decode == DecodeConfig(backend="pyav", threads=5, workers=4)  # the flag wins
    flags = config_from_args(["--format", "synthetic", "--annotations", "q.jsonl", "--tiny",
                              "qwen2_vl", "--decode-workers", "0", "--no-progress"])
    assert flags.decode.workers == 0 and flags.progress is False and flags.tiny == "qwen2_vl"


@pytest.mark.parametrize("argv, message", [
    (["method=fast"], "method must be one of loglik, generate, both, got 'fast'"),
    (["frame=8"], "unknown config key frame; did you mean frames?"),
    (["model=/m"], "set exactly one of model or tiny"),
    (["video_backend=pyav"], "config key video_backend is now decode.backend"),
    (["--video-backend", "opencv"], "decode.backend must be one of auto, "),
    (["lmms_eval_version=0.3"], "lmms_eval_version must be a string, got the number 0.3"),
    (["dtype=half"], "dtype must be one of float32, bfloat16, float16, got 'half'"),
])
def test_eval_config_errors_name_the_key(argv, message, capsys):
    base = ["format=synthetic", "annotations=q.jsonl", "tiny=qwen2_vl"]
    assert main([*base, *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_runs_from_a_yaml_config(synthetic_set, tmp_path, capsys):
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text(f"format: synthetic\nannotations: {synthetic_set}\ntiny: qwen2_vl\n"
                        "frames: 4\nbatch_size: 2\nprogress: false\n"
                        "decode: {backend: pyav, workers: 0}\n")
    out = tmp_path / "r.json"
    assert main([str(cfg_file), "limit=2", f"out={out}"]) == 0
    assert "2 of 2 questions evaluated" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["settings"]["frames"] == 4 and results["settings"]["decode"]["workers"] == 0
