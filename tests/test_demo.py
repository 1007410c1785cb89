"""The reduced embedded-default demo: every stage produces its outputs and the eval table."""

import json

from tpo_fast.cli import main


def test_quick_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for path in ("data/train/qa.jsonl", "data/heldout/qa.jsonl", "data/train/manifest.jsonl",
                 "init/config.json", "base/final/config.json", "base/metrics.jsonl",
                 "curate/pairs.jsonl", "curate/summary.json", "tpo/final/config.json",
                 "tpo/metrics.jsonl", "eval.json", "eval.png"):
        assert (out / path).exists(), path
    # the warm-up used every open and multiple-choice train question (none skipped)
    assert json.loads((out / "base/summary.json").read_text())["skipped_pairs"] == 0
    pairs = [json.loads(line) for line in (out / "curate/pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    # localized pairs come from the segment plan vs its complement / an incomplete half
    local = [p for p in pairs if p["type"] == "localized"]
    assert all(p["chosen_plan"]["kind"] == "segment" and p["rejected_plan"]["kind"] in
               ("complement", "incomplete") for p in local)
    results = json.loads((out / "eval.json").read_text())
    assert set(results) == {"base", "tpo"}
    for r in results.values():
        assert 0.0 <= r["overall"] <= 1.0 and r["n"] > 0
        assert {"localized", "comprehensive"} <= set(r)
    assert "held-out accuracy" in printed and "tpo" in printed
    # a second run finds every stage done and reproduces the table
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--stage", "eval"]) == 0
    assert json.loads((out / "eval.json").read_text()) == results


def test_ground_truth_judge(tmp_path):
    from tpo_fast.demo import SyntheticQuestions, names_only_answer
    from tpo_fast.synthetic import generate_split

    options = ["red", "blue", "green", "orange"]
    assert names_only_answer("it was blue .", options, 1)
    assert not names_only_answer("it was blue or red .", options, 1)
    assert not names_only_answer("it was bluegreen .", options, 1)
    assert names_only_answer("it happened between 3 and 5 seconds .",
                             ["between 3 and 5 seconds", "between 5 and 7 seconds"], 0)

    split = generate_split(tmp_path, 2, seed=1)
    judge = SyntheticQuestions(split.manifest, split.qa)
    entry = json.loads(split.manifest.read_text().splitlines()[0])
    q = next(json.loads(line) for line in split.qa.read_text().splitlines()
             if json.loads(line)["video"] == entry["video"])
    right, wrong = q["options"][q["answer"]], q["options"][(q["answer"] + 1) % 4]
    ctx = {"purpose": "judge", "events": entry["events"], "question": q["question"]}
    good = json.loads(judge._judge(ctx | {"chosen": f"it was {right} .",
                                          "rejected": f"it was {wrong} ."}))
    swapped = json.loads(judge._judge(ctx | {"chosen": f"it was {wrong} .",
                                             "rejected": f"it was {right} ."}))
    assert good == good | {"chosen_better": True, "chosen_correct": True, "consistent": True}
    assert not swapped["chosen_better"] and not swapped["chosen_correct"]
