"""Pairs in the formats users already have: each read from rows written as the public files
are, and one optimizer step of ``tpo-fast train`` (the tiny preset, in-process) on them.

Sources of the row layouts:
* TRL's preference format: huggingface/trl ``docs/source/dataset_formats.md`` ("Conversational"
  preference example; "Vision datasets": ``content`` as a list of ``{"type": "image"}`` /
  ``{"type": "text", "text"}`` parts, an ``images`` column) and
  ``examples/datasets/rlaif-v.py`` (``to_conversational``: ``prompt`` / ``chosen`` /
  ``rejected`` message lists, ``images`` cast to ``Sequence(Image)``); a ``{"type": "video"}``
  part as TRL's ``trl/chat_templates/qwen2_5_vl.jinja`` reads it. TRL defines no video column
  (checked at trl f2cd577); ``videos`` mirrors ``images``.
* LLaVA-Hound-DPO (``sft_dpo_17k.jsonl``): RifleZhang/LLaVA-Hound-DPO
  ``llava_hound_dpo/dpo_scripts/run_dpo.py`` (``video`` joined to ``--video_folder``,
  ``prompt`` with ``<video>``, ``chosen``, ``rejected``), the frame folders of
  ``llava_hound_dpo/inference/inference_utils.py::decode2frame`` (``c01_%04d.jpeg``, 2 fps);
  the rest of the row (``id``, ``answer``, ``chosen_score``, ``rejected_score``) as
  LLaVA-VL/LLaVA-NeXT ``scripts/archived/dpo_data_info.py`` writes its DPO files.
* LLaVA-NeXT DPO JSON: LLaVA-VL/LLaVA-NeXT ``llava/train/train_dpo.py`` (a JSON list; ``id``,
  ``video``, ``prompt`` with ``<image>``, ``chosen``, ``rejected``).
* ``datasets`` folders and Parquet are written by ``datasets`` itself (``save_to_disk``,
  ``to_parquet``), so their layout is the library's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tpo_fast.config import load_config
from tpo_fast.data.pairs import PairFileError, read_pairs, read_pairs_config
from tpo_fast.synthetic.pairs import make_pairs
from tpo_fast.video import FrameVideo, decode, load_video_inputs, probe
from tpo_fast.video.errors import VideoDecodeError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
QUIET = ["run.progress=false", "run.tensorboard=false", "run.plot=false", "run.resume=never"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Two H.264 videos with 4 of our pairs on them, and each video's frames as JPEG files in
    LLaVA-Hound's layout (``<frames>/<video id>/c01_0001.jpeg ...``)."""
    from PIL import Image

    out = tmp_path_factory.mktemp("formats")
    pairs_file = make_pairs(out, n_pairs=4, n_videos=2, seed=1)
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    frames = {}
    for name in sorted({p["video"] for p in pairs}):
        info = probe(out / name)
        rgb = decode(info, range(info.num_frames)).numpy()
        folder = out / "frames" / Path(name).stem
        folder.mkdir(parents=True)
        for i, frame in enumerate(rgb):
            Image.fromarray(frame).save(folder / f"c01_{i + 1:04d}.jpeg", quality=95)
        frames[name] = rgb
    return {"dir": out, "pairs": pairs, "frames": frames}


def train_one_step(train, out, *extra):
    """One optimizer step of the tiny preset on ``train``; returns the summary and metrics."""
    from tpo_fast.train.loop import Trainer
    from tpo_fast.train.metrics import read_metrics

    cfg = load_config(TINY, [f"data.train={train}", f"run.output_dir={out}", *QUIET,
                             "data.synthetic=false", "optim.max_steps=1",
                             "optim.global_batch_size=4", "optim.warmup_ratio=0", *extra])
    summary = Trainer(cfg).run()
    rows = read_metrics(Path(out) / "metrics.jsonl")
    assert summary["steps"] == 1 and len(rows) == 1
    assert rows[0]["pairs"] == 4 and np.isfinite(rows[0]["loss"])
    return summary, rows[0]


def _trl_rows(base, video_column=True):
    """TRL conversational preference rows (dataset_formats.md), the video as a content part
    plus a ``videos`` column, one with a system message."""
    rows = []
    for i, p in enumerate(base["pairs"]):
        prompt = [{"role": "user", "content": [{"type": "video"},
                                               {"type": "text", "text": p["prompt"]}]}]
        if i == 0:
            prompt.insert(0, {"role": "system", "content": [
                {"type": "text", "text": "You are a helpful assistant."}]})
        row = {"prompt": prompt,
               "chosen": [{"role": "assistant", "content": [{"type": "text",
                                                             "text": p["chosen"]}]}],
               "rejected": [{"role": "assistant", "content": [{"type": "text",
                                                               "text": p["rejected"]}]}]}
        if video_column:
            row["videos"] = [p["video"]]
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- TRL: JSONL, Parquet, a save_to_disk folder, a folder of Parquet shards -----------------

def test_trl_conversational_jsonl_reads_and_trains(base, tmp_path):
    path = _write_jsonl(base["dir"] / "trl.jsonl", _trl_rows(base))
    records, skipped = read_pairs(path)
    assert not skipped and len(records) == 4
    for record, pair in zip(records, base["pairs"]):
        assert (record.prompt, record.chosen, record.rejected) == (
            pair["prompt"], pair["chosen"], pair["rejected"])
        assert record.video == base["dir"] / pair["video"]
    assert records[0].system == "You are a helpful assistant." and records[1].system is None
    summary, _ = train_one_step(path, tmp_path / "run")
    assert summary["skipped_pairs"] == 0


def test_trl_standard_and_implicit_prompt_rows(base):
    """The standard (string) rows and chosen/rejected as whole conversations (implicit prompt,
    dataset_formats.md "Preference" with implicit prompt) give the same pair."""
    p = base["pairs"][0]
    user = {"role": "user", "content": [{"type": "video", "video": p["video"]},
                                        {"type": "text", "text": p["prompt"]}]}
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
             "videos": [p["video"]]},
            {"chosen": [user, {"role": "assistant", "content": p["chosen"]}],
             "rejected": [user, {"role": "assistant", "content": p["rejected"]}]}]
    records, _ = read_pairs(_write_jsonl(base["dir"] / "trl_std.jsonl", rows), format="trl")
    for r in records:
        assert (r.prompt, r.chosen, r.rejected, r.video) == (
            p["prompt"], p["chosen"], p["rejected"], base["dir"] / p["video"])


def _trl_dataset(base, images: bool):
    """A ``datasets.Dataset`` as TRL's rlaif-v.py builds it: message columns, and either the
    frames as ``images`` cast to ``Sequence(Image)`` or a ``videos`` column of paths."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rows = _trl_rows(base, video_column=not images)
    if images:
        for row, p in zip(rows, base["pairs"]):
            row["prompt"][-1]["content"][0] = {"type": "image"}
            row["images"] = [Image.fromarray(f) for f in base["frames"][p["video"]]]
    ds = datasets.Dataset.from_list(rows)
    if images:
        f = ds.features
        f["images"] = datasets.features.Sequence(datasets.features.Image(decode=True))
        ds = ds.cast(f)
    return ds


def test_trl_parquet_with_images_as_frames_reads_and_trains(base, tmp_path):
    """TRL's vision rows with the frames in an ``images`` column, written by ``datasets``
    ``to_parquet`` (each image stored as ``{"bytes", "path"}``): the images are the video."""
    pytest.importorskip("pyarrow")
    path = tmp_path / "trl_images.parquet"
    _trl_dataset(base, images=True).to_parquet(str(path))
    records, _ = read_pairs(path)
    assert len(records) == 4
    video = records[1].video
    assert isinstance(video, FrameVideo) and len(video.files) == 16
    assert video.name == f"{path}[1] images"
    info = probe(video)
    assert (info.num_frames, info.fps, info.codec) == (16, 2.0, "frames")
    # PNG-encoded by datasets: lossless, so the frames are the source frames exactly
    got = decode(info, [0, 5, 15]).numpy()
    np.testing.assert_array_equal(got, base["frames"][base["pairs"][1]["video"]][[0, 5, 15]])
    train_one_step(path, tmp_path / "run", f"data.video_root={base['dir']}")


def test_trl_json_lines_written_by_datasets_to_json(base, tmp_path):
    """``datasets``' ``to_json`` writes JSON Lines even into a ``.json`` file."""
    path = tmp_path / "trl.json"
    _trl_dataset(base, images=False).to_json(str(path))
    records, _ = read_pairs(path, video_root=base["dir"])
    assert [r.rejected for r in records] == [p["rejected"] for p in base["pairs"]]
    assert records[1].source == f"{path}:2"


@pytest.mark.parametrize("holder", ["save_to_disk", "parquet_shards"])
def test_trl_datasets_folders_read_and_train(base, tmp_path, holder):
    pytest.importorskip("pyarrow")
    ds = _trl_dataset(base, images=False)
    folder = tmp_path / holder
    if holder == "save_to_disk":
        ds.save_to_disk(str(folder), num_shards=2)
        assert (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    else:  # the Hub's layout of a split: train-0000N-of-00002.parquet
        folder.mkdir()
        for i in range(2):
            ds.shard(2, i, contiguous=True).to_parquet(
                str(folder / f"train-{i:05d}-of-00002.parquet"))
    records, _ = read_pairs(folder, video_root=base["dir"])
    assert [r.chosen for r in records] == [p["chosen"] for p in base["pairs"]]
    assert records[2].source.endswith("[0]")  # row 0 of the second shard
    train_one_step(folder, tmp_path / "run", f"data.video_root={base['dir']}")


def test_datasetdict_folder_names_its_splits(base, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = _trl_dataset(base, images=False)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(PairFileError, match="DatasetDict.*test, train"):
        read_pairs(tmp_path / "dd")


# ---- CSV / Parquet / JSONL with a column mapping ---------------------------------------------

def _mapped_rows(base):
    return [{"clip": p["video"], "question": p["prompt"], "good": p["chosen"],
             "bad": p["rejected"], "n_frames": 6} for p in base["pairs"]]


MAPPING = ["data.fields.video=clip", "data.fields.prompt=question", "data.fields.chosen=good",
           "data.fields.rejected=bad", "data.fields.frames=n_frames"]


def test_csv_with_a_column_mapping_reads_and_trains(base, tmp_path):
    import csv

    path = base["dir"] / "dataset.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(_mapped_rows(base)[0]))
        writer.writeheader()
        writer.writerows(_mapped_rows(base))
    cfg = load_config(TINY, [f"data.train={path}", *MAPPING])
    records, _ = read_pairs_config(cfg.data)
    assert [r.prompt for r in records] == [p["prompt"] for p in base["pairs"]]
    assert all(r.frames == 6 for r in records)  # "6" in the CSV cell
    assert records[0].source == f"{path}:2"
    train_one_step(path, tmp_path / "run", *MAPPING)


def test_ref_logps_on_a_mapped_csv_writes_jsonl_that_trains_with_the_same_config(base, tmp_path):
    """The recipe's step 2 -> 3 on a CSV: ``ref-logps`` rewrites it as JSONL with our field
    names, and training with the same ``data.fields`` mapping uses the stored log-probs."""
    from tpo_fast.cli import main

    path = base["dir"] / "dataset.csv"  # written by the CSV test above
    if not path.exists():
        pytest.skip("needs test_csv_with_a_column_mapping_reads_and_trains")
    stored = tmp_path / "scored.jsonl"
    assert main(["ref-logps", str(TINY), f"data.train={path}", "data.synthetic=false",
                 *MAPPING, "--out", str(stored)]) == 0
    rows = [json.loads(line) for line in stored.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in base["pairs"]]
    assert all(len(r["ref_logps"]) == 2 and r["frames"] == 6 for r in rows)
    summary, _ = train_one_step(stored, tmp_path / "run", *MAPPING,
                                f"data.video_root={base['dir']}")
    assert summary["reference"] == "precomputed"


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_parquet_and_jsonl_with_a_column_mapping(base, suffix):
    rows = _mapped_rows(base)
    path = base["dir"] / f"mapped{suffix}"
    if suffix == ".parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        _write_jsonl(path, rows)
    fields = {"video": "clip", "prompt": "question", "chosen": "good", "rejected": "bad",
              "frames": "n_frames"}
    records, _ = read_pairs(path, fields=fields)
    assert [(r.chosen, r.frames) for r in records] == [(p["chosen"], 6) for p in base["pairs"]]


def test_csv_errors_name_the_line_and_the_mapped_column(base, tmp_path):
    path = tmp_path / "bad.csv"
    video = base["dir"] / base["pairs"][0]["video"]
    path.write_text("clip,question,good,bad\n"
                    f"{video},q one,yes it was,no it was not\n"
                    f"{video},q two,only three values\n"
                    f'{video},"q, three",same,same\n')
    fields = {"video": "clip", "prompt": "question", "chosen": "good", "rejected": "bad"}
    with pytest.raises(PairFileError) as err:
        read_pairs(path, fields=fields)
    msg = str(err.value)
    assert f"{path}:3: 3 values for 4 columns" in msg
    assert f"{path}:4: fields 'chosen' and 'rejected' are identical" in msg
    with pytest.raises(PairFileError, match=r"bad\.csv:2: missing column 'prompt_text' "
                                            r"\(data\.fields\.prompt\)"):
        read_pairs(path, fields={**fields, "prompt": "prompt_text"})


# ---- LLaVA-Hound-DPO: sft_dpo_17k.jsonl whose video is a folder of frames ---------------------

def _hound_rows(base):
    return [{"id": f"{Path(p['video']).stem}_{i}", "prompt": "<video>\n" + p["prompt"],
             "answer": p["chosen"], "chosen": p["chosen"], "rejected": p["rejected"],
             "chosen_score": 5.0, "rejected_score": 2.0, "video": Path(p["video"]).stem}
            for i, p in enumerate(base["pairs"])]


def test_llava_hound_dpo_frame_folders_read_and_train(base, tmp_path):
    path = _write_jsonl(tmp_path / "sft_dpo_17k.jsonl", _hound_rows(base))
    frames_root = base["dir"] / "frames"
    records, _ = read_pairs(path, video_root=frames_root, frame_fps=2.0)
    video = records[0].video
    assert isinstance(video, FrameVideo) and video.folder == str(frames_root / "video_000")
    # the frame rate: a pair's own "fps" field, else the setting
    with_fps = _write_jsonl(tmp_path / "with_fps.jsonl", [_hound_rows(base)[1] | {"fps": 4}])
    assert read_pairs(with_fps, video_root=frames_root, frame_fps=2.0)[0][0].video.fps == 4.0
    assert read_pairs(path, video_root=frames_root, frame_fps=8.0)[0][0].video.fps == 8.0
    assert records[0].prompt == base["pairs"][0]["prompt"]  # "<video>\n" removed
    # frames in name order, at i / fps seconds
    inputs, plan = load_video_inputs(video, _tiny_config(), num_frames=4)
    assert list(plan.indices) == [0, 5, 10, 15]
    np.testing.assert_allclose(plan.timestamps, [0.0, 2.5, 5.0, 7.5])
    summary, _ = train_one_step(path, tmp_path / "run", f"data.video_root={frames_root}",
                                "data.format=llava_hound")
    assert summary["skipped_pairs"] == 0


def _tiny_config():
    from tpo_fast.models.tiny import tiny_config, tiny_tokenizer

    return tiny_config("llava_onevision", tiny_tokenizer("llava_onevision"), frame_size=32)


def test_frame_folder_decode_equals_reading_each_image(base):
    """The fast path (only the asked frames, each read once) against the obvious one: every
    file in sorted order through Pillow."""
    from PIL import Image

    folder = base["dir"] / "frames" / "video_001"
    files = sorted(folder.iterdir())
    naive = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    info = probe(FrameVideo(folder=str(folder), fps=4.0))
    assert (info.num_frames, info.duration, info.width, info.height) == (16, 4.0, 32, 32)
    idx = [15, 0, 7, 7, 3]
    np.testing.assert_array_equal(decode(info, idx).numpy(), naive[idx])
    assert probe(folder).fps == 2.0  # a bare folder: the default frame rate
    stored = dataclasses.replace(info, frames=())  # as curate rebuilds it from its stage files
    np.testing.assert_array_equal(decode(stored, idx).numpy(), naive[idx])


def test_frame_folder_errors(base, tmp_path):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    Image.new("RGB", (16, 32)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not a frame")
    info = probe(folder)
    assert info.num_frames == 2
    with pytest.raises(VideoDecodeError, match=r"b\.png: frame is 16x32, the first frame 32x32"):
        decode(info, [0, 1])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoDecodeError, match="no frame images"):
        probe(empty)


# ---- LLaVA-NeXT DPO JSON (read before this change: kept) -------------------------------------

def test_llava_next_json_list_reads_and_trains(base, tmp_path):
    rows = [{"id": str(i), "video": p["video"], "prompt": "<image>\n" + p["prompt"],
             "chosen": p["chosen"], "rejected": p["rejected"]}
            for i, p in enumerate(base["pairs"])]
    path = base["dir"] / "llava_next_dpo.json"
    path.write_text(json.dumps(rows, indent=4))
    records, _ = read_pairs(path)
    assert records[3].source == f"{path}[3]" and records[3].prompt == base["pairs"][3]["prompt"]
    train_one_step(path, tmp_path / "run")


# ---- bad input: file:line / row and field, or counted, logged skips --------------------------

def test_bad_trl_rows_name_the_row_and_field_or_are_counted_skips(base, caplog):
    rows = _trl_rows(base)
    rows[1]["prompt"].append({"role": "assistant", "content": "an earlier answer"})
    rows[2]["videos"] = [rows[2]["videos"][0], rows[2]["videos"][0]]
    rows[3]["chosen"] = [{"role": "assistant", "content": [{"type": "image"}]}]
    path = _write_jsonl(base["dir"] / "trl_bad.jsonl", rows)
    with pytest.raises(PairFileError) as err:
        read_pairs(path)
    msg = str(err.value)
    assert f"{path}:2: field 'prompt'[1]: role 'assistant' in the prompt" in msg
    assert f"{path}:3: field 'videos' holds 2 videos" in msg
    assert f"{path}:4: field 'chosen'[0]: a response may hold only text parts" in msg
    with caplog.at_level(logging.WARNING):
        records, skipped = read_pairs(path, skip_invalid=True)
    assert len(records) == 1 and len(skipped) == 3
    assert "skipped 3 invalid pair(s)" in caplog.text


def test_bad_parquet_row_and_missing_frame_folder_name_the_row(base, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = _hound_rows(base)
    rows[1]["video"] = "no_such_video"
    rows[2]["chosen"] = ""
    path = tmp_path / "hound.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(PairFileError) as err:
        read_pairs(path, video_root=base["dir"] / "frames")
    msg = str(err.value)
    assert f"{path}[1]: video {base['dir'] / 'frames' / 'no_such_video'} not found" in msg
    assert f"{path}[2]: field 'chosen' is empty" in msg


def test_unknown_format_and_missing_pyarrow_message(base, monkeypatch, tmp_path):
    with pytest.raises(PairFileError, match="unknown pairs format 'sharegpt'"):
        read_pairs(base["dir"] / "pairs.jsonl", format="sharegpt")
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(PairFileError, match=r"needs pyarrow: pip install 'tpo-fast\[data\]'"):
        read_pairs(tmp_path / "x.parquet")
