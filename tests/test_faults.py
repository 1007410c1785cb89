"""Faults that must lose nothing: a checkpoint write that fails (disk full) keeps the previous
checkpoint loadable and names the path; ``ref-logps`` never changes the user's pairs file
unless told ``--in-place`` (and then keeps the lines it cannot score); curation on 2 processes
with rank 1 SIGKILLed resumes to the pairs of an uninterrupted run. (A killed training rank and
resuming on another number of processes: test_resume_world_size.py.)
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_real_paths import _free_port
from test_resume_world_size import _rank_pid

from tpo_fast.cli import main
from tpo_fast.config import load_config
from tpo_fast.curate.store import iter_records
from tpo_fast.synthetic.curate import make_synthetic_videos
from tpo_fast.synthetic.pairs import make_pairs
from tpo_fast.train.loop import Trainer, TrainingError
from tpo_fast.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
QUIET = ["run.progress=false", "run.tensorboard=false", "run.plot=false"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), n_pairs=48, n_videos=8, seed=0)


def train(pairs, out, *extra):
    cfg = load_config(TINY, [f"data.train={pairs}", f"run.output_dir={out}", *QUIET,
                             "optim.max_steps=4", "optim.epochs=10", "run.save_every=2",
                             "loss.reference=none", *extra])
    return Trainer(cfg).run()


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(pairs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    failing = out / "checkpoints" / ".tmp-step-000004"

    def save(obj, f, *args, **kwargs):  # the disk fills while step 4's checkpoint is written
        if str(f).startswith(str(failing)):
            Path(f).write_bytes(b"\0" * 100)  # a partial file, as a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(TrainingError) as info:
        train(pairs, out)
    message = str(info.value)
    step2 = out / "checkpoints" / "step-000002"
    assert f"checkpoint of step 4 to {out / 'checkpoints' / 'step-000004'} failed" in message
    assert "No space left on device" in message and f"{step2} is intact" in message
    assert not failing.exists() and not (out / "checkpoints" / "step-000004").exists()
    monkeypatch.setattr(torch, "save", real_save)

    # the previous checkpoint loads: the same command resumes from it and finishes
    summary = train(pairs, out)
    assert summary["steps"] == 4
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    straight = tmp_path / "straight"
    train(pairs, straight)
    for a, b in zip(read_metrics(out / "metrics.jsonl"), read_metrics(straight / "metrics.jsonl")):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * max(1.0, abs(b["loss"])), (a, b)


def test_ref_logps_leaves_the_input_byte_identical(pairs, tmp_path, capsys):
    """A pairs file with an invalid line, a line whose video is missing and CRLF endings:
    by default the scores go to a new file and the input keeps every byte; ``--in-place``
    rewrites the scored lines and keeps the others exactly."""
    lines = Path(pairs).read_text().splitlines()
    objects = [json.loads(line) for line in lines[:6]]
    for obj in objects:
        obj["video"] = str(Path(pairs).parent / obj["video"])
    missing = dict(objects[2], video=str(tmp_path / "gone.mp4"))
    raw = [json.dumps(objects[0]), "{not json", json.dumps(missing),
           *[json.dumps(o) for o in objects[3:]]]
    source = tmp_path / "mine.jsonl"
    source.write_bytes(("\r\n".join(raw) + "\r\n").encode())
    before = source.read_bytes()
    common = ["ref-logps", str(TINY), f"data.train={source}", "data.skip_invalid=true", *QUIET]

    assert main(common) == 0
    assert source.read_bytes() == before
    scored = tmp_path / "mine.ref_logps.jsonl"
    out = [json.loads(line) for line in scored.read_text().splitlines()]
    assert len(out) == 4 and all(len(o["ref_logps"]) == 2 for o in out)
    err = capsys.readouterr().err
    assert "2 invalid pair(s) left out of it" in err and f"{source}:2" in err

    assert main([*common, f"--out={source}"]) == 2  # the input named as --out: refused
    assert "pass --in-place" in capsys.readouterr().err and source.read_bytes() == before

    assert main([*common, "--in-place"]) == 0
    after = source.read_bytes().split(b"\r\n")
    old = before.split(b"\r\n")
    assert len(after) == len(old)
    assert after[1] == b"{not json" and after[2] == old[2]  # kept exactly
    rewritten = [json.loads(line) for line in source.read_text().splitlines()
                 if line.strip() and line != "{not json"]
    assert [o["ref_logps"] for o in rewritten if "ref_logps" in o] == [
        o["ref_logps"] for o in out]
    assert [o["video"] for o in rewritten if "ref_logps" not in o] == [missing["video"]]


@pytest.mark.multiprocess_cpu
def test_curation_on_two_processes_resumes_after_rank_1_is_killed(tmp_path):
    videos = make_synthetic_videos(tmp_path / "videos", n_videos=4, seed=1)
    args = [f"input.videos={videos}", "policy.kind=hf", "policy.tiny=qwen2_vl",
            "policy.dtype=float32", "policy.batch_size=1", "policy.max_new_tokens=6",
            "responses.frames=4", "responses.downsample_factor=2", "captions.windows=2",
            "captions.frames=2", "filter.judge=false", "filter.rules=[empty]",
            "segments.per_video=2", "queries.tasks_per_target=2", "run.progress=false"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)

    def torchrun(out: Path, nproc: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
             f"--master_port={_free_port()}", "-m", "tpo_fast.curate.cli", *args,
             f"run.output_dir={out}"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    killed = tmp_path / "killed"
    proc = torchrun(killed, 2)
    shard = killed / "stages" / "responses.rank1-of-2.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if shard.exists() and len(list(iter_records(shard))) >= 1:
            break
        time.sleep(0.02)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None and proc.poll() is None, "curation ended before rank 1 was killed"
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (killed / "pairs.jsonl").exists()
    partial = len(list(iter_records(shard)))

    for out, nproc in ((killed, 2), (tmp_path / "one", 1)):  # the same command; a reference
        proc = torchrun(out, nproc)
        err = proc.communicate(timeout=900)[1].decode()
        assert proc.returncode == 0, err[-3000:]
    assert partial < len(list(iter_records(shard)))
    got, want = ({json.loads(line)["id"]: json.loads(line) for line in (d / "pairs.jsonl").open()}
                 for d in (killed, tmp_path / "one"))
    assert got == want and got
