"""Every supported family from a model folder on disk through the CLI, as a user runs it:
``tpo-fast train`` (2 optimizer steps from video files), ``tpo-fast ref-logps``, ``tpo-fast
eval`` (multiple choice, log-likelihood and generation) on the trained checkpoint, and the
policy's answers in ``tpo-fast curate``.

The folders are tiny random models written as the family's published checkpoints are
(``save_tiny_model``: config, weights, tokenizer, the processor config with the keys of its
transformers processor class, the chat template in the family's layout). The CLI entry points
run in this process (``tpo_fast.cli.main``): one DeepSpeed process group of one serves every
family, so each family costs its own model loads and steps only.
"""

import json
import logging
import math
from pathlib import Path

import pytest

from tpo_fast.cli import main
from tpo_fast.data.pairs import read_pairs
from tpo_fast.models import supported_families
from tpo_fast.models.registry import FAMILIES
from tpo_fast.models.tiny_folders import PROCESSOR_TEMPLATE_FAMILIES, save_tiny_model
from tpo_fast.synthetic.pairs import make_pairs
from tpo_fast.train.metrics import read_metrics

logging.getLogger("transformers").setLevel(logging.ERROR)
ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
QUIET = ["run.progress=false", "run.tensorboard=false", "run.plot=false"]
OPTIONS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 pairs over 2 synthetic colour videos, and 2 multiple-choice questions on them
    (tpo-fast eval's synthetic format)."""
    root = tmp_path_factory.mktemp("families_data")
    pairs = make_pairs(root, n_pairs=4, n_videos=2, seed=0, n_frames=12)
    videos = sorted((root / "videos").iterdir())
    rows = [{"qid": f"q{i}", "video": f"videos/{v.name}", "options": OPTIONS, "answer": i,
             "question": "what colour was the shape that appeared first ?"}
            for i, v in enumerate(videos)]
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return pairs, questions


def test_supported_means_a_registry_entry_with_frame_steps():
    families = supported_families()
    assert len(families) >= 18 and families == tuple(sorted(families))
    assert all(FAMILIES[f].frames is not None for f in families)
    # the families without frame steps say which processor step is missing
    others = set(FAMILIES) - set(families)
    assert all(FAMILIES[f].missing for f in others)
    # a hand-written adapter's own model_types agree with the registry
    for family, entry in FAMILIES.items():
        if entry.adapter.model_types:
            assert family in entry.adapter.model_types, (family, entry.adapter.__name__)


@pytest.mark.parametrize("family", supported_families())
def test_family_from_its_folder_through_the_cli(family, data, tmp_path, capsys):
    pairs, questions = data
    folder = save_tiny_model(family, tmp_path / "model", words=["A", "B", "C"])
    processor_template = family in PROCESSOR_TEMPLATE_FAMILIES
    if family not in ("longva", "llava_video"):  # LLaVA-NeXT's layout (tests/test_longva.py,
        # tests/test_llava_video.py): its builder makes the image processor, the folder has none
        assert (folder / "chat_template.json").is_file() == processor_template
        assert (folder / "chat_template.jinja").is_file() != processor_template
        assert any((folder / name).is_file() for name in (
            "video_preprocessor_config.json", "preprocessor_config.json"))
    common = ["model.tiny=null", f"model.path={folder}", f"data.train={pairs}", "data.frames=4",
              *QUIET]

    run = tmp_path / "run"
    assert main(["train", TINY, *common, f"run.output_dir={run}", "optim.max_steps=2",
                 "optim.global_batch_size=2"]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["pairs"] > 0 for r in rows)
    assert rows[1]["loss"] != rows[0]["loss"]  # the first step changed the weights
    final = run / "final"
    assert (final / "config.json").is_file()

    scored = Path(pairs).parent / f"ref_{family}.jsonl"  # beside the pairs: relative videos
    assert main(["ref-logps", TINY, *common, "--out", str(scored), "--device", "cpu"]) == 0
    records, _ = read_pairs(scored)
    assert len(records) == 4
    assert all(len(r.ref_logps) == 2 and all(x < 0 for x in r.ref_logps) for r in records)

    results = tmp_path / "eval.json"  # the trained checkpoint: what export wrote must load
    assert main(["eval", "--format", "synthetic", "--annotations", str(questions), "--model",
                 str(final), "--frames", "4", "--method", "both", "--max-new-tokens", "3",
                 "--device", "cpu", "--no-progress", "--out", str(results)]) == 0
    summary = json.loads(results.read_text())
    assert summary["n_questions"] == 2 and summary["decode_failures"] == 0
    assert summary["loglik"]["total"] == summary["generate"]["total"] == 2

    curated = tmp_path / "curate"
    capsys.readouterr()
    assert main(["curate", "--synthetic", "1", "--output", str(curated), "--no-progress",
                 "policy.kind=hf", f"policy.path={folder}", "policy.dtype=float32",
                 "policy.device=cpu", "policy.max_new_tokens=4", "responses.frames=4",
                 "segments.per_video=1", "query.kind=annotation", "judge.kind=annotation",
                 "filter.judge=false", "filter.rules=[]"]) == 0
    report = json.loads((curated / "summary.json").read_text())
    counts = report["counts"]
    assert counts["questions"] == counts["responses"] == 2  # one localized, one comprehensive
    # a random model may answer with special tokens only (empty text) or the same for both
    # plans, which curation always drops; every answer pair is kept or dropped for that
    assert set(report["drop_reasons"]) <= {"rule:empty", "rule:identical"}
    assert counts["kept"] + sum(report["drop_reasons"].values()) == 2
    written = [json.loads(line) for line in (curated / "pairs.jsonl").read_text().splitlines()]
    assert len(written) == counts["written"]


def test_a_template_only_in_the_processor_trains_and_evaluates(data, tmp_path):
    """A Qwen2.5-VL folder as an older processor-template layout: no tokenizer template,
    ``chat_template.json`` only. The tokenizer takes the processor's template."""
    from tpo_fast.models.folder import load_tokenizer
    from tpo_fast.models.tiny import tiny_tokenizer

    pairs, questions = data
    folder = save_tiny_model("qwen2_5_vl", tmp_path / "model", template="processor",
                             words=["A", "B", "C"])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and not (folder / "chat_template.jinja").exists()
    assert json.loads((folder / "chat_template.json").read_text())["chat_template"] == \
        tiny_tokenizer("qwen2_5_vl").chat_template
    assert load_tokenizer(folder).chat_template == tiny_tokenizer("qwen2_5_vl").chat_template

    run = tmp_path / "run"
    assert main(["train", TINY, "model.tiny=null", f"model.path={folder}", f"data.train={pairs}",
                 "data.frames=4", *QUIET, f"run.output_dir={run}", "optim.max_steps=2",
                 "optim.global_batch_size=2"]) == 0
    assert len(read_metrics(run / "metrics.jsonl")) == 2
    results = tmp_path / "eval.json"
    assert main(["eval", "--format", "synthetic", "--annotations", str(questions), "--model",
                 str(folder), "--frames", "4", "--device", "cpu", "--no-progress", "--out",
                 str(results)]) == 0
    assert json.loads(results.read_text())["loglik"]["total"] == 2


def test_a_folder_without_any_template_is_a_clear_error(data, tmp_path, capsys):
    pairs, _ = data
    folder = save_tiny_model("qwen2_vl", tmp_path / "model", template="processor")
    (folder / "chat_template.json").unlink()
    code = main(["train", TINY, "model.tiny=null", f"model.path={folder}", f"data.train={pairs}",
                 "data.frames=4", *QUIET, f"run.output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert "no chat template" in capsys.readouterr().err
