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
