"""Typed config, pair files and the optimizer-step schedule."""

import json

import numpy as np
import pytest

from tpo_fast.config import ConfigError, TrainConfig, load_config, save_config
from tpo_fast.data.pairs import PairFileError, read_pairs, write_pairs_atomic
from tpo_fast.packing import plan_bins
from tpo_fast.train.schedule import lr_lambda, optimizer_steps

BASE = ["model.tiny=qwen2_vl", "data.train=pairs.jsonl"]


def test_overrides_are_typed():
    cfg = load_config(None, BASE + ["loss.beta=0.3", "optim.lr=4e-6", "model.lora.r=8",
                                    "optim.adam_betas=[0.9, 0.95]", "data.video_root=null"])
    assert (cfg.loss.beta, cfg.optim.lr, cfg.model.lora.r) == (0.3, 4e-6, 8)
    assert cfg.optim.adam_betas == [0.9, 0.95] and cfg.data.video_root is None
    assert isinstance(load_config(None, BASE + ["optim.lr=1"]).optim.lr, float)


@pytest.mark.parametrize("override, message", [
    ("loss.bta=1", r"unknown config key loss.bta; did you mean loss.beta\?"),
    ("optimizer.lr=1", r"unknown config key optimizer; did you mean optim\?"),
    ("optim.lr=fast", r"optim.lr must be a float, got 'fast'"),
    ("run.tensorboard=1", r"run.tensorboard must be true or false"),
    ("data.frames=2.5", r"data.frames must be an integer"),
    ("loss.loss_type=kto", r"loss: unknown loss_type 'kto'; expected one of \('sigmoid', 'ipo', "
                           r"'hinge'"),
    ("deepspeed.zero_stage=4", r"deepspeed.zero_stage must be 0-3"),
    ("loss.beta", r"'loss.beta' is not key=value"),
])
def test_bad_config_is_a_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, BASE + [override])


@pytest.mark.parametrize("override, message", [
    ("model.dtype=f16", r"model.dtype must be one of float32, bfloat16, float16, got 'f16'"),
    ("optim.scheduler=cos", r"optim.scheduler must be one of cosine, linear, constant"),
    ("run.path=medium", r"run.path must be one of fast, slow, got 'medium'"),
    ("run.path=1", r"run.path must be one of fast, slow, got 1"),
    ("data.format=xml", r"data.format must be one of auto, "),
    ("data.frames=0", r"data.frames must be >= 1"),
    ("deepspeed.tiled_mlp=-1", r"deepspeed.tiled_mlp must be >= 0"),
    ("decode.workers=-1", r"decode.workers must be >= 0"),
    ("decode.device=cuda:x", r"decode.device must be auto, cpu, cuda or cuda:N"),
    ("data.video_threads=2", r"config key data.video_threads is now decode.threads"),
])
def test_literal_values_and_section_checks_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, BASE + [override])


def test_checks_span_sections_and_python_built_configs():
    """Cross-section checks sit on TrainConfig; a config built in Python (no loader) gets the
    same Literal and section checks from validate()."""
    with pytest.raises(ConfigError, match="sequence_parallel_size > 1 needs run.path=fast"):
        load_config(None, BASE + ["deepspeed.sequence_parallel_size=2", "run.path=slow"])
    cfg = load_config(None, BASE)
    cfg.model.dtype = "half"
    with pytest.raises(ConfigError, match="model.dtype must be one of"):
        cfg.validate()
    cfg.model.dtype, cfg.optim.warmup_ratio = "float32", 1.5
    with pytest.raises(ConfigError, match=r"optim.warmup_ratio must be in \[0, 1\)"):
        cfg.validate()


def test_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("loss: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("loss: [1, 2]\n")
    with pytest.raises(ConfigError, match="loss must be a mapping"):
        load_config(tmp_path / "list.yaml")
    cfg = load_config(None, BASE + ["loss.beta=0.25"])
    save_config(cfg, tmp_path / "resolved.yaml", "tpo-fast train x.yaml")
    text = (tmp_path / "resolved.yaml").read_text()
    assert text.startswith("# tpo-fast train x.yaml\n")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    with pytest.raises(ConfigError, match="model.path or model.tiny must be set"):
        load_config(None, ["data.train=x"])
    assert isinstance(cfg, TrainConfig)


def write(tmp_path, lines, name="pairs.jsonl"):
    (tmp_path / "v.mp4").write_bytes(b"")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = {"video": "v.mp4", "prompt": "<video>\nwhat colour ?", "chosen": "red", "rejected": "blue"}


def test_read_pairs_and_placeholders(tmp_path):
    path = write(tmp_path, [json.dumps(GOOD), "", json.dumps(GOOD | {"ref_logps": [-1, -2.5],
                                                                    "frames": 8})])
    records, skipped = read_pairs(path)
    assert len(records) == 2 and skipped == []
    assert records[0].prompt == "what colour ?" and records[0].video == tmp_path / "v.mp4"
    assert records[1].ref_logps == (-1.0, -2.5) and records[1].frames == 8
    assert records[1].source == f"{path}:3"
    # The LLaVA-NeXT / TPO .json list
    listed = tmp_path / "dpo.json"
    listed.write_text(json.dumps([GOOD | {"id": "a", "prompt": "<image>\nhow many ?"}]))
    records, _ = read_pairs(listed)
    assert records[0].prompt == "how many ?" and records[0].source == f"{listed}[0]"


@pytest.mark.parametrize("line, reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "chosen"}), "missing field 'chosen'"),
    (json.dumps(GOOD | {"rejected": "  "}), "field 'rejected' is empty"),
    (json.dumps(GOOD | {"rejected": "red"}), "'chosen' and 'rejected' are identical"),
    (json.dumps(GOOD | {"prompt": "<video>"}), "holds only a video placeholder"),
    (json.dumps(GOOD | {"ref_logps": [1, float("nan")]}), "ref_logps"),
    (json.dumps(GOOD | {"ref_logps": [1]}), "ref_logps"),
    (json.dumps(GOOD | {"frames": 0}), "frames"),
    (json.dumps(GOOD | {"chosen": 3}), "field 'chosen' must be a string"),
    (json.dumps(GOOD | {"video": "missing.mp4"}), "missing.mp4 not found"),
])
def test_bad_pair_lines_name_file_line_and_field(tmp_path, line, reason):
    path = write(tmp_path, [json.dumps(GOOD), line])
    with pytest.raises(PairFileError) as err:
        read_pairs(path)
    assert f"{path}:2: " in str(err.value) and reason in str(err.value)
    records, skipped = read_pairs(path, skip_invalid=True)
    assert len(records) == 1 and len(skipped) == 1 and skipped[0].startswith(f"{path}:2: ")


def test_missing_or_empty_pairs_file(tmp_path):
    with pytest.raises(PairFileError, match="does not exist"):
        read_pairs(tmp_path / "none.jsonl")
    path = write(tmp_path, ["{bad"])
    with pytest.raises(PairFileError, match="no usable pairs"):
        read_pairs(path, skip_invalid=True)


def test_atomic_rewrite_keeps_other_fields(tmp_path):
    path = write(tmp_path, [json.dumps(GOOD | {"task": "temporal"})])
    records, _ = read_pairs(path)
    write_pairs_atomic(path, [r.raw | {"ref_logps": [-3.0, -4.0]} for r in records])
    again, _ = read_pairs(path)
    assert again[0].ref_logps == (-3.0, -4.0) and again[0].raw["task"] == "temporal"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_atomic_write_leaves_the_file_as_it_was(tmp_path):
    path = write(tmp_path, [json.dumps(GOOD)])
    before = path.read_bytes()
    with pytest.raises(TypeError, match="not JSON serializable"):  # the second object fails
        write_pairs_atomic(path, [GOOD, GOOD | {"ref_logps": {1.0, 2.0}}])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_optimizer_steps_cover_the_plan_with_exact_counts():
    rng = np.random.default_rng(0)
    p, c, r = (rng.integers(lo, hi, 200) for lo, hi in ((100, 3000), (1, 60), (1, 60)))
    plan = plan_bins(p, c, r, token_budget=8192, world_size=3, seed=1)
    steps = optimizer_steps(plan, c, global_batch_size=16)
    assert [s for o in steps for s in o.plan_steps] == list(range(plan.num_steps))
    assert sum(o.pairs for o in steps) == 200
    assert sum(o.chosen_tokens for o in steps) == c.sum()
    assert all(o.pairs >= 16 for o in steps[:-1])
    for o in steps:  # recount the slow way
        bins = [b for s in o.plan_steps for b in range(s * 3, s * 3 + 3)
                if not plan.bin_padding[b]]
        pairs = np.concatenate([plan.bin(b) for b in bins])
        assert o.pairs == len(pairs) and o.chosen_tokens == c[pairs].sum()


def test_padding_bins_count_nothing():
    plan = plan_bins([60, 70, 80], [1, 2, 3], [1, 1, 1], token_budget=100, world_size=2)
    (step,) = optimizer_steps(plan, np.array([1, 2, 3]), global_batch_size=64)
    assert step.pairs == 3 and step.chosen_tokens == 6


def test_lr_schedule():
    f = lr_lambda(100, 0.1, "cosine")
    assert f(0) < f(5) < f(9) <= 1.0 and abs(f(10) - 1.0) < 1e-9 and f(99) < 0.01
    assert lr_lambda(10, 0.0, "constant")(7) == 1.0
    assert lr_lambda(10, 0.0, "linear")(5) == 0.5


@pytest.mark.parametrize("override, message", [
    ("policy.kind=gpt", "policy.kind must be one of hf, annotation, got 'gpt'"),
    ("judge.kind=claude", "judge.kind must be one of annotation, openai, hf, policy"),
    ("captions.source=web", "captions.source must be one of auto, given, policy"),
    ("query.dtype=fp8", "query.dtype must be one of float32, bfloat16, float16"),
    ("decode.backend=opencv", "decode.backend must be one of auto, "),
    ("policy.video_backend=pyav", "config key policy.video_backend is now decode.backend"),
])
def test_curate_config_uses_the_same_loader_and_checks(override, message):
    from tpo_fast.curate.config import load_curate_config

    with pytest.raises(ConfigError, match=message):
        load_curate_config(None, ["input.videos=x", "policy.kind=annotation", override])
