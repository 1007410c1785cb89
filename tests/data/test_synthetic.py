"""Synthetic temporal-grounding data (``tpo_fast.synthetic``): determinism and splits, decoded
frames that show the annotated events, answers recomputed from the manifest's event texts alone,
the tokenizer's coverage, and the readers of the curation manifest and the pairs file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tpo_fast.curate.manifest import read_inputs
from tpo_fast.data.pairs import read_pairs
from tpo_fast.models.tiny import tiny_tokenizer
from tpo_fast.synthetic import (
    BACKGROUND,
    HELDOUT_SEED_OFFSET,
    PALETTE,
    TASK_TYPES,
    SplitPaths,
    generate_split,
    generate_splits,
    vocabulary,
)

FPS, SIZE, SEED = 4, 32, 3
TRAVEL = SIZE // 2 - SIZE // 4  # a quadrant minus the default shape size
# A pixel counts as a colour when it is this close to it (RGB distance); H.264 edge pixels,
# blended with the background, are farther from every colour and count as none.
NEAR = 60.0
PRESENT, ABSENT = 10, 2  # pixels of a shape's colour: at least / at most


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def decode(path: Path) -> np.ndarray:
    """uint8 [n, H, W, 3] frames through PyAV."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> SplitPaths:
    return generate_split(tmp_path_factory.mktemp("synthetic") / "train", 16, SEED)


# ---- events parsed from their texts (independent of the generator's structures) ---------------

_EVENT_PATTERNS = {
    "appear": re.compile(r"^an? (\w+) (\w+) appears$"),
    "move": re.compile(r"^the (\w+) (\w+) moves (left|right|up|down)$"),
    "turn": re.compile(r"^the (\w+) (\w+) turns (\w+)$"),
    "disappear": re.compile(r"^the (\w+) (\w+) disappears$"),
}


def parse_events(events: list[dict]) -> list[dict]:
    """Manifest events -> {start, end, action, colour, shape, detail, owner}; ``owner`` follows
    a shape through its colour change."""
    owners: dict[tuple[str, str], int] = {}
    out = []
    for e in events:
        matches = [(a, p.match(e["text"])) for a, p in _EVENT_PATTERNS.items()]
        action, m = next(((a, m) for a, m in matches if m), (None, None))
        assert m is not None, f"unknown event text {e['text']!r}"
        colour, shape, detail = m.group(1), m.group(2), (m.groups() + ("",))[2]
        key = (colour, shape)
        if action == "appear":
            assert key not in owners, f"colour and shape {key} appear twice"
            owners[key] = len(owners)
        owner = owners[key]
        if action == "turn":
            owners[(detail, shape)] = owner
        out.append(dict(e, action=action, colour=colour, shape=shape, detail=detail, owner=owner))
    return out


def names_of(events: list[dict], owner: int, article: str) -> set[str]:
    """Every way of naming shape ``owner`` ("the red circle", "the blue circle")."""
    colours = {e["colour"] for e in events if e["owner"] == owner}
    colours |= {e["detail"] for e in events if e["owner"] == owner and e["action"] == "turn"}
    shape = next(e["shape"] for e in events if e["owner"] == owner)
    return {f"{article} {c} {shape}" for c in colours}


def a(colour: str) -> str:
    return "an" if colour[0] in "aeiou" else "a"


def find_event(events: list[dict], phrase: str) -> dict:
    """The event a question names: "the red circle moved left" / "... move left"."""
    m = re.match(r"the (\w+) (\w+) (appear|move|turn|disappear)(?:s|ed|d)? ?(\w*)$", phrase)
    assert m, phrase
    colour, shape, action, detail = m.groups()
    found = [e for e in events if (e["colour"], e["shape"], e["action"], e["detail"])
             == (colour, shape, action, detail)]
    assert len(found) == 1, phrase
    return found[0]


def appearances_in(events: list[dict], question: str) -> list[dict]:
    t0, t1 = (float(x) for x in re.search(r"between (\d+) and (\d+) seconds", question).groups())
    return [e for e in events if e["action"] == "appear" and not (e["end"] < t0 or e["start"] > t1)]


def expected(q: dict, events: list[dict]) -> tuple[str, str, set[str]]:
    """(right option, open answer, options that would also be right) from the events alone."""
    kind, text = q["task_type"].split("/")[1], q["question"]
    shown = sorted((e for e in events if e["action"] == "appear"), key=lambda e: e["start"])
    if kind in ("appear_colour", "appear_shape"):
        (e,) = appearances_in(events, text)
        if kind == "appear_colour":
            return e["colour"], f"it was {e['colour']} .", set()
        right = f"{a(e['colour'])} {e['colour']} {e['shape']}"
        return right, f"it was {right} .", set()
    if kind == "after":
        x = find_event(events, re.match(r"what happened right after (.*) \?$", text).group(1))
        nxt = min((e for e in events if e["start"] >= x["end"]), key=lambda e: e["start"])
        return nxt["text"], f"{nxt['text']} .", set()
    if kind == "when":
        x = find_event(events, re.match(r"when did (.*) \?$", text).group(1))
        right = f"between {x['start']:.0f} and {x['end']:.0f} seconds"
        return right, f"it happened {right} .", set()
    if kind == "which_moved":
        direction = re.match(r"which shape moved (\w+) \?$", text).group(1)
        (e,) = [e for e in events if e["action"] == "move" and e["detail"] == direction]
        right = f"the {e['colour']} {e['shape']}"
        return right, f"it was {right} .", names_of(events, e["owner"], "the")
    if kind == "turn_colour":
        colour, shape = re.match(r"what colour did the (\w+) (\w+) turn \?$", text).groups()
        (e,) = [e for e in events if e["action"] == "turn" and (e["colour"], e["shape"])
                == (colour, shape)]
        return e["detail"], f"it turned {e['detail']} .", set()
    if kind in ("count", "count_moves"):
        n = (len(shown) if kind == "count"
             else len({e["owner"] for e in events if e["action"] == "move"}))
        verb = "appeared" if kind == "count" else "moved"
        return str(n), f"{n} shape{'' if n == 1 else 's'} {verb} .", set()
    if kind in ("first_colour", "last_colour"):
        colour = shown[0 if kind == "first_colour" else -1]["colour"]
        return colour, f"it was {colour} .", set()
    if kind == "order":
        right = " then ".join(e["colour"] for e in shown)
        return right, f"{right} .", set()
    raise AssertionError(f"unknown task type {q['task_type']}")


# ---- tests ---------------------------------------------------------------------------------

def test_same_seed_same_split_and_videos_depend_only_on_seed_and_index(split, tmp_path):
    again = generate_split(tmp_path / "again", 4, SEED)
    first = read_jsonl(split.manifest)[:4]
    assert read_jsonl(again.manifest) == first
    qa = [q for q in read_jsonl(split.qa) if q["video"] in {m["video"] for m in first}]
    assert read_jsonl(again.qa) == qa
    for line in first:
        np.testing.assert_array_equal(decode(again.root / line["video"]),
                                      decode(split.root / line["video"]))


def test_train_and_heldout_splits_differ(split, tmp_path):
    paths = generate_splits(tmp_path, n_train=3, n_heldout=3, seed=SEED)
    train, heldout = read_jsonl(paths["train"].manifest), read_jsonl(paths["heldout"].manifest)
    assert train == read_jsonl(split.manifest)[:3]  # train uses the seed itself
    assert heldout == read_jsonl(generate_split(tmp_path / "h", 3,
                                                SEED + HELDOUT_SEED_OFFSET).manifest)
    assert [m["events"] for m in train] != [m["events"] for m in heldout]
    for t, h in zip(train, heldout):
        a_frames = decode(paths["train"].root / t["video"])
        b_frames = decode(paths["heldout"].root / h["video"])
        assert a_frames.shape != b_frames.shape or not np.array_equal(a_frames, b_frames)


def colour_pixels(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per colour: bool [n, H, W], pixels nearest that colour and within ``NEAR`` of it."""
    names = list(PALETTE)
    table = np.array([PALETTE[c] for c in names] + [BACKGROUND], float)
    dist = np.linalg.norm(frames[..., None, :].astype(float) - table, axis=-1)
    nearest, close = dist.argmin(-1), dist.min(-1) < NEAR
    return {c: (nearest == i) & close for i, c in enumerate(names)}


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    assert len(xs) >= PRESENT
    return np.array([xs.mean(), ys.mean()])


def check_event(e: dict, pixels: dict[str, np.ndarray], n_frames: int) -> None:
    """The decoded frames show event ``e`` over its span, as the scene module documents."""
    f0, f1 = round(e["start"] * FPS), round(e["end"] * FPS)  # frames [f0, f1) inside the span
    assert f1 < n_frames, "every event ends before the last frame"
    count = lambda colour, k: int(pixels[colour][k].sum())
    where = f"{e['text']} [{e['start']}, {e['end']}]"
    if e["action"] == "appear":
        assert f0 > 0 and count(e["colour"], f0 - 1) <= ABSENT, where
        assert min(count(e["colour"], k) for k in range(f0, f1)) >= PRESENT, where
    elif e["action"] == "disappear":
        assert min(count(e["colour"], k) for k in range(f0, f1)) >= PRESENT, where
        assert count(e["colour"], f1) <= ABSENT, where
    elif e["action"] == "turn":
        mid = (f0 + f1) // 2
        assert min(count(e["colour"], k) for k in range(f0, mid)) >= PRESENT, where
        assert max(count(e["detail"], k) for k in range(f0, mid)) <= ABSENT, where
        assert min(count(e["detail"], k) for k in range(mid, f1)) >= PRESENT, where
        assert max(count(e["colour"], k) for k in range(mid, f1)) <= ABSENT, where
    else:
        step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[e["detail"]]
        moved = centroid(pixels[e["colour"]][f1]) - centroid(pixels[e["colour"]][f0])
        assert np.allclose(moved, np.array(step) * TRAVEL, atol=1.0), (where, moved)


def test_decoded_frames_show_the_annotated_events(split):
    manifest = read_jsonl(split.manifest)
    actions = set()
    for line in manifest:
        frames = decode(split.root / line["video"])
        assert frames.shape == (round(line["duration"] * FPS), SIZE, SIZE, 3)
        pixels = colour_pixels(frames)
        events = parse_events(line["events"])
        for e in events:
            check_event(e, pixels, len(frames))
            actions.add(e["action"])
        # A colour is on screen only while its shape is: nothing unannotated is drawn.
        seen = {e["colour"] for e in events} | {e["detail"] for e in events
                                                if e["action"] == "turn"}
        for colour in set(PALETTE) - seen:
            assert pixels[colour].sum((1, 2)).max() <= ABSENT, (line["video"], colour)
    assert actions == {"appear", "move", "turn", "disappear"}


def test_events_have_distinct_whole_second_starts_and_valid_spans(split):
    for line in read_jsonl(split.manifest):
        starts = [e["start"] for e in line["events"]]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        for e in line["events"]:
            assert float(e["start"]).is_integer() and float(e["end"]).is_integer()
            assert 1 <= e["start"] and e["start"] + 1 <= e["end"] <= line["duration"] - 1


def test_every_answer_follows_from_the_events(split):
    events = {m["video"]: parse_events(m["events"]) for m in read_jsonl(split.manifest)}
    qa = read_jsonl(split.qa)
    assert {q["task_type"] for q in qa} == set(TASK_TYPES)
    assert len({q["qid"] for q in qa}) == len(qa)
    for q in qa:
        right, answer_text, also_right = expected(q, events[q["video"]])
        assert len(q["options"]) == 4 and len(set(q["options"])) == 4, q
        assert q["options"][q["answer"]] == right, q
        assert q["answer_text"] == answer_text, q
        wrong = [o for i, o in enumerate(q["options"]) if i != q["answer"]]
        assert not also_right & set(wrong), q
        if q["task_type"].startswith("localized/"):
            assert q["span"] is not None and 0 <= q["span"][0] < q["span"][1] <= q["duration"]
        else:
            assert q["span"] is None


def test_answers_do_not_sit_at_one_option_index(split):
    counts = np.bincount([q["answer"] for q in read_jsonl(split.qa)], minlength=4)
    assert counts.min() > 0.1 * counts.sum(), counts


def test_tokenizer_of_the_vocabulary_knows_every_generated_word(split):
    tok = tiny_tokenizer("qwen2_vl", vocabulary())
    texts = [e["text"] for m in read_jsonl(split.manifest) for e in m["events"]]
    for q in read_jsonl(split.qa):
        texts += [q["question"], q["answer_text"], *q["options"]]
    for p in read_jsonl(split.sft):
        texts += [p["prompt"], p["chosen"], p["rejected"]]
    unknown = {t for t in texts if tok.unk_token_id in tok(t)["input_ids"]}
    assert not unknown, sorted(unknown)[:5]
    assert tok.unk_token_id in tok("a zebra appears")["input_ids"]  # the check can fail


def test_manifest_reads_with_the_curation_reader(split):
    entries, problems = read_inputs(split.manifest)
    assert problems == []
    lines = read_jsonl(split.manifest)
    assert len(entries) == len(lines) == split.n_videos
    for entry, line in zip(entries, lines):
        assert entry.path.is_file() and entry.path == (split.root / line["video"]).absolute()
        assert [s.to_dict() for s in entry.events] == line["events"]
        assert entry.extra == {"duration": line["duration"]}


def test_sft_pairs_read_with_the_pairs_reader(split):
    records, skipped = read_pairs(split.sft)
    qa = read_jsonl(split.qa)
    assert skipped == [] and len(records) == len(qa) == split.n_questions
    for record, q in zip(records, qa):
        assert record.video == split.root / q["video"] and record.video.is_file()
        assert (record.prompt, record.chosen) == (q["question"], q["answer_text"])
        assert record.rejected != record.chosen


@pytest.mark.parametrize("kwargs", [dict(size=33), dict(fps=2.5), dict(seconds=(3, 8)),
                                    dict(max_shapes=5), dict(shape_px=16)])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_split(tmp_path, 1, 0, **kwargs)


# ---- the demo's search task (tpo_fast.synthetic.search) ----------------------------------------

def test_search_split_frames_questions_and_clips(tmp_path):
    from tpo_fast.synthetic.search import ANSWER_COLOURS, COLOURS, generate_search_split
    from tpo_fast.video import FramePlan, probe

    made = generate_search_split(tmp_path / "train", 6, seed=4)
    qa = read_jsonl(made["qa"])
    manifest = {m["video"]: m for m in read_jsonl(made["manifest"])}

    def colour_of(pixel) -> str:  # the nearest palette colour
        return min(COLOURS, key=lambda c: np.linalg.norm(pixel.astype(float) - COLOURS[c]))

    for q in qa:
        assert q["options"] == list(ANSWER_COLOURS)
        frames = decode(tmp_path / "train" / q["video"])
        assert len(frames) == 48  # 4 segments x 3 s x 4 fps
        # every segment's answer colour (rows 4-7 of its first frame); the answers are the
        # four option colours once each, so every wrong option is on screen somewhere
        answers = [colour_of(frames[12 * k][5, 8]) for k in range(4)]
        assert sorted(answers) == sorted(ANSWER_COLOURS)
        seg = q["segment"]
        assert q["options"][q["answer"]] == answers[seg]
        if q["task_type"] == "localized/under":
            cue = q["question"].split()[-2]
            assert colour_of(frames[12 * seg][1, 8]) == cue  # the cue rows 0-3
            striped = [k for k in range(4) if colour_of(frames[12 * k][1, 8]) != answers[k]]
            assert striped == [seg]  # the other segments are solid
            # the segment plan of its span holds only that segment's frames
            plan = FramePlan.segment(probe(tmp_path / "train" / q["video"]), *q["span"], 8)
            assert all(12 * seg <= i < 12 * (seg + 1) for i in plan.indices)
            events = manifest[q["video"]]["events"]
            assert events[seg]["text"] == f"{cue} over {answers[seg]}"
        else:
            assert seg == (0 if q["task_type"] == "comprehensive/first" else 3)
    clips = read_jsonl(made["clips"])
    assert len(clips) == sum(q["span"] is not None for q in qa) == 6
    for c in clips:  # a clip is its segment of the full video
        clip, full = decode(tmp_path / "train" / c["video"]), decode(
            tmp_path / "train" / c["full_video"])
        assert len(clip) == 12
        k = c["segment"]
        assert np.abs(clip.astype(int) - full[12 * k:12 * (k + 1)].astype(int)).max() <= 8
    # a held-out split that excludes the train videos shares none of them
    heldout = generate_search_split(tmp_path / "heldout", 6, seed=5, exclude=made["plans"])
    assert not heldout["plans"] & made["plans"] and len(heldout["plans"]) == 6
