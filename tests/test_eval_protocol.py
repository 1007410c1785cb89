"""The oracle test of the lmms-eval protocol: lmms-eval 0.7.3's own task functions
(``doc_to_text``, ``process_results``, the aggregate functions, LongVA's ``load_video``) against
``tpo_fast.eval.protocol``, on documents read by our readers from files written as the public
annotation files are:

* Video-MME: ``lmms-lab/Video-MME`` ``videomme/test-00000-of-00001.parquet`` (fields from its
  dataset card: video_id, duration, domain, sub_category, url, videoID, question_id, task_type,
  question, options ["A. ..."], answer), videos ``data/<videoID>.mp4`` (some ``.MP4``), subtitles
  ``subtitle/<videoID>.srt`` with ``<font color="white" size=".72c">`` lines (the pattern
  lmms-eval's ``videomme/utils.py`` reads).
* MLVU: ``FlagOpen/FlagEmbedding`` ``research/MLVU/data/2_needle.json``, ``4_count.json`` and
  ``8_sub_scene.json`` (entries copied from there: video, duration, question, candidates,
  answer, question_type; the generation task has no candidates), and lmms-eval's parquet
  (``sy1998/MLVU_dev`` ``mlvu/test-00000-of-00001.parquet``: video_name, duration, question with
  "(A) ..." lines, candidates, answer letter, task_type, question_id — the layout of an
  lmms-eval mlvu_dev log sample, whose first document is needle_32's question below).
* LongVideoBench: ``lvb_val.json`` (fields as ``longvideobench/LongVideoBench``'s
  ``longvideobench_dataset.py`` reads them: video_id, question, question_wo_referring_query,
  candidates, correct_choice, position, topic_category, question_category, level, id,
  video_path, subtitle_path, duration_group, starting_timestamp_for_subtitles, duration,
  view_count) and the HF parquet layout lmms-eval reads (option0..option4, "N/A" past the last).

lmms-eval installs with ``--no-deps`` (see the Makefile). Without it these tests skip, except
under ``TPO_FAST_REQUIRE_ORACLES=1`` (set by ``make test``, i.e. CI), where a missing oracle is
an error: a broken install must not pass as a skip.
"""

import importlib
import json
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from tpo_fast.eval import protocol as ours
from tpo_fast.eval import read_longvideobench, read_mlvu, read_videomme
from tpo_fast.eval.records import ReadStats



def oracle(module: str):
    """lmms-eval's module; a skip without it, an import error where oracles are required."""
    if os.environ.get("TPO_FAST_REQUIRE_ORACLES") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def _decord_stub() -> None:
    """lmms-eval's LongVideoBench utils import decord at module level, and decord's bundled
    FFmpeg libraries clash with PyAV's once both are loaded in one process (measured: PyAV's
    libvpx-vp9 encoder then fails to open, breaking every later video test of the session).
    The functions used from that module never decode, so it gets a stand-in that refuses to;
    the frame test runs the real decord in a subprocess."""
    if "decord" in sys.modules:
        return
    stub = types.ModuleType("decord")

    def refuse(*args, **kwargs):
        raise RuntimeError("decord is stubbed in this process (tests/test_eval_protocol.py)")

    stub.VideoReader, stub.cpu, stub.gpu = refuse, refuse, refuse
    sys.modules["decord"] = stub


_decord_stub()
videomme_utils = oracle("lmms_eval.tasks.videomme.utils")
mlvu_utils = oracle("lmms_eval.tasks.mlvu.utils")
lvb_utils = oracle("lmms_eval.tasks.longvideobench.utils")


def lmms_task(module, yaml_name: str) -> tuple[dict, dict]:
    """(task config, the kwargs its doc_to_text gets) as lmms-eval's ``api/task.py`` builds
    them for ``--model longva`` (the TPO repo's eval.sh), which has no entry of its own: the
    YAML's ``lmms_eval_specific_kwargs`` updated with its ``default``."""
    text = (Path(module.__file__).parent / yaml_name).read_text()
    config = yaml.safe_load("".join(line for line in text.splitlines(True)
                                    if "!function" not in line))
    kwargs = dict(config["lmms_eval_specific_kwargs"])
    kwargs.update(kwargs["default"])
    return config, kwargs


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_json(path: Path, items) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=4))
    return path


# Model answers of the kinds lmms-eval's extraction meets: a bare letter, letters with
# punctuation, phrases, lowercase, no letter at all, several letters, other languages, a letter
# past the options, long reasoning.
RESPONSES = [
    "A", "B.", "(C)", "D) the cat", "The answer is B.", "Answer: C", "The best answer is: D",
    "I think the correct option is (A).", "c", "None of the options.", "", "   ",
    "Based on the video, the man is cooking. So B", "A. 12 minutes", "Best option: (B) Red",
    "B) red\nC) blue", "答案是C", "E", "The video shows a dog. I choose D because it barks.",
    "Option C is correct", "ABCD", "It is not clear", "A cat and a dog",
    "In the video I saw many things happening such as people walking and cars driving by",
    "(E) none", "Best option: (D", "D", "b) The second one", "A or D", "C, not B",
    "Both (A) and B. are wrong; D", "Answer: B. Actually, C", "I pick A.", "a",
    "A) Delivers a product", "The correct answer is Actually B",
]

# ---- Video-MME --------------------------------------------------------------------------------
DOMAINS = [("Knowledge", "Humanity & History"), ("Film & Television", "Movie & TV Show"),
           ("Sports Competition", "Football"), ("Artistic Performance", "Magic Show"),
           ("Life Record", "Pet & Animal"), ("Multilingual", "Multilingual")]
VIDEO_IDS = ["fFjv93ACGo8", "Ab-3_xYz9Q0", "zz9LOngVid1", "kP0mYx_2aQw", "J3q-Wd8vYt4",
             "tt0lD8uXc1M", "pQ9x7H3mLk0", "Yh2-cV0aBn8"]


def videomme_rows() -> list[dict]:
    """24 questions (8 videos x 3), as the parquet's rows."""
    rows = []
    for i in range(24):
        v = i // 3
        domain, sub = DOMAINS[v % len(DOMAINS)]
        options = [f"A. {i + 1} times.", "B. The man in the red shirt.",
                   f"C. It's {['raining', 'sunny', 'dark'][i % 3]}.", "D. None of the above"]
        if i % 5 == 0:
            options[1] = "B. A, then C."  # option text with letters in it
        rows.append({
            "video_id": f"{v + 1:03d}", "duration": ["short", "medium", "long"][v % 3],
            "domain": domain, "sub_category": sub,
            "url": f"https://www.youtube.com/watch?v={VIDEO_IDS[v]}", "videoID": VIDEO_IDS[v],
            "question_id": f"{v + 1:03d}-{i % 3 + 1}",
            "task_type": videomme_utils.TASK_CATEGORIES[i % 12],
            "question": ["How many times does the dog jump?", "Who speaks first in the video?",
                         "What is the weather like at the end?"][i % 3],
            "options": options, "answer": "ABCD"[(i * 7) % 4]})
    return rows


@pytest.fixture
def videomme(tmp_path):
    root = tmp_path / "videomme"
    rows = videomme_rows()
    for k, vid in enumerate(VIDEO_IDS):
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "data" / f"{vid}.{'MP4' if k == 1 else 'mp4'}").write_bytes(b"")
    path = write_parquet(root / "videomme" / "test-00000-of-00001.parquet", rows)
    return rows, read_videomme(path, root / "data")


def test_videomme_prompts_equal_lmms_eval(videomme):
    rows, questions = videomme
    config, kwargs = lmms_task(videomme_utils, "videomme.yaml")
    task = ours.TASKS["videomme"]
    assert (task.pre_prompt, task.post_prompt) == (kwargs["pre_prompt"], kwargs["post_prompt"])
    assert task.max_new_tokens == config["generation_kwargs"]["max_new_tokens"]
    assert len(questions) == len(rows) >= 20
    for row, q in zip(rows, questions):
        assert ours.prompt(task, q.doc) == videomme_utils.videomme_doc_to_text(row, kwargs)
    # case-insensitive extension: lmms-eval's doc_to_visual also tries .MP4
    assert questions[3].video.name == f"{VIDEO_IDS[1]}.MP4"


def test_videomme_answers_and_score_equal_lmms_eval(videomme):
    rows, questions = videomme
    processed, ours_rows = [], []
    for response in RESPONSES:
        for row, q in zip(rows, questions):
            theirs = videomme_utils.videomme_process_results(row, [response])
            theirs = theirs["videomme_perception_score"]
            got = ours.extract("videomme", response, len(q.options), random.Random(0))
            assert got.letter == theirs["pred_answer"], (response, row["question_id"])
            assert (got.index == q.answer) == bool(theirs["score"])
    # one response per question for the aggregate: the right letter or one of RESPONSES
    for i, (row, q) in enumerate(zip(rows, questions)):
        response = RESPONSES[i % len(RESPONSES)] if i % 4 else row["answer"]
        processed.append(videomme_utils.videomme_process_results(row, [response])[
            "videomme_perception_score"])
        got = ours.extract("videomme", response, len(q.options), random.Random(0))
        ours_rows.append((q.doc, got.index == q.answer))
    assert ours.score("videomme", ours_rows) == pytest.approx(
        videomme_utils.videomme_aggregate_results(processed))


def test_videomme_subtitle_prompt_equals_lmms_eval(tmp_path, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    from tpo_fast.eval.runner import EvalSettings, prompt_text
    from tpo_fast.synthetic.videos import write_video
    from tpo_fast.video import probe

    root = tmp_path / "videomme"
    rows = videomme_rows()[:6]  # two videos; the second has no subtitle file
    rng = np.random.default_rng(0)
    for vid in VIDEO_IDS[:2]:
        (root / "data").mkdir(parents=True, exist_ok=True)
        write_video(root / "data" / f"{vid}.mp4",
                    rng.integers(0, 255, (97, 32, 32, 3), dtype=np.uint8), fps=10)
    (root / "subtitle").mkdir()
    cues = [(0.0, 1.5, "Welcome back"), (1.5, 2.05, "to the show"), (2.2, 4.0, "no font tag"),
            (4.0, 6.3, "Today we cook"), (6.3, 6.35, "a blink"), (7.0, 9.9, "Goodbye, A and B")]
    srt = []
    for n, (a, b, text) in enumerate(cues, 1):
        stamp = lambda t: f"00:00:{int(t):02d},{round((t % 1) * 1000):03d}"
        line = text if text == "no font tag" else f'<font color="white" size=".72c">{text}</font>'
        srt.append(f"{n}\n{stamp(a)} --> {stamp(b)}\n{line}")
    (root / "subtitle" / f"{VIDEO_IDS[0]}.srt").write_text("\n\n".join(srt) + "\n")
    questions = read_videomme(write_parquet(tmp_path / "v.parquet", rows), root / "data")

    monkeypatch.setattr(videomme_utils, "base_cache_dir", str(tmp_path))
    _, kwargs = lmms_task(videomme_utils, "videomme_w_subtitle.yaml")
    task = ours.TASKS["videomme_w_subtitle"]
    assert task.subtitle_frames == kwargs["frame_num"]
    settings = EvalSettings(protocol="lmms-eval", task=task.name)
    for row, q in zip(rows, questions):
        info = probe(q.video)
        capture = cv2.VideoCapture(str(q.video))
        # lmms-eval reads fps and the frame count with OpenCV; we read them with PyAV
        assert info.fps == capture.get(cv2.CAP_PROP_FPS)
        assert info.num_frames == int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        expected = videomme_utils.videomme_doc_to_text_subtitle(row, kwargs)
        assert prompt_text(settings, q, info) == expected
    first = prompt_text(settings, questions[0], probe(questions[0].video))
    # cues on screen at the 32 sampled frames, the one without a font tag and the one shorter
    # than a frame left out
    assert ("below: \nWelcome back\nto the show\nToday we cook\nGoodbye, A and B\nSelect"
            in first)
    assert "No subtitles available" in prompt_text(settings, questions[5],
                                                   probe(questions[5].video))


# ---- MLVU -------------------------------------------------------------------------------------
NEEDLE = [  # research/MLVU/data/2_needle.json, its first entries
    {"video": "needle_32.mp4", "duration": 467.98,
     "question": "What does the hand coming out of the computer do?",
     "candidates": ["Delivers a product", "Shakes the woman's hand",
                    "Takes the woman's credit card", "Points at something on the screen"],
     "answer": "Delivers a product", "question_type": "findNeedle"},
    {"video": "needle_38.mp4", "duration": 1506.62,
     "question": "What is a popular activity on the beach during the monsoon season?",
     "candidates": ["Picnicking", "Surfing", "Playing volleyball", "Fishing"],
     "answer": "Fishing", "question_type": "findNeedle"},
    {"video": "needle_147.mp4", "duration": 622.0,
     "question": "Where is the senior businessman having a serious conversation on the cell "
                 "phone?",
     "candidates": ["By the sea shore", "In a park", "In his office", "At a restaurant"],
     "answer": "By the sea shore", "question_type": "findNeedle"},
    {"video": "needle_33.mp4", "duration": 467.89000000000004,
     "question": "What is the woman's appearance?",
     "candidates": ["She is an elderly woman", "She is a young girl",
                    "She is a middle-aged woman", "She is a beautiful woman"],
     "answer": "She is a beautiful woman", "question_type": "findNeedle"},
    {"video": "needle_119.mp4", "duration": 766.14,
     "question": "Where is the basketball court located in the video?",
     "candidates": ["In a school", "In a park", "In a gym", "On a cruise ship"],
     "answer": "On a cruise ship", "question_type": "findNeedle"},
    {"video": "needle_126.mp4", "duration": 6008.08,
     "question": "What color is the water on the tropical beach in the video?",
     "candidates": ["Dark blue", "Clear", "Green", "Azure blue"],
     "answer": "Azure blue", "question_type": "findNeedle"},
]
COUNT = [  # research/MLVU/data/4_count.json, its first entries
    {"video": "count_126.mp4", "duration": 572.8599999999999,
     "question": "Throughout this video, what is the total count of occurrences for the scene "
                 "featuring the 'playing trombone' action",
     "candidates": ["2", "1", "5", "4"], "answer": "1", "question_type": "count"},
    {"video": "count_151.mp4", "duration": 872.9900000000001,
     "question": "In this video, how many times does the scene of the 'shredding paper' action "
                 "appear in total?",
     "candidates": ["3", "2", "1", "6"], "answer": "2", "question_type": "count"},
    {"video": "count_108.mp4", "duration": 500.06,
     "question": "In this video, how many instances are there of the 'carving pumpkin' action "
                 "scene in total?",
     "candidates": ["5", "3", "1", "0"], "answer": "5", "question_type": "count"},
    {"video": "count_133.mp4", "duration": 520.05,
     "question": "In this video, how many instances are there of the 'making jewelry' action "
                 "scene in total?",
     "candidates": ["2", "1", "4", "6"], "answer": "4", "question_type": "count"},
    {"video": "count_115.mp4", "duration": 517.3,
     "question": "In this video, how many instances are there of the 'stomping grapes' action "
                 "scene in total?",
     "candidates": ["6", "0", "5", "1"], "answer": "1", "question_type": "count"},
    {"video": "count_140.mp4", "duration": 509.12999999999994,
     "question": "Throughout this video, what is the total count of occurrences for the scene "
                 "featuring the 'javelin throw' action",
     "candidates": ["4", "2", "3", "1"], "answer": "3", "question_type": "count"},
]
SUB_SCENE = [  # research/MLVU/data/8_sub_scene.json: a generation task, no candidates
    {"video": "subPlot_new_all_126.mp4", "duration": 5632.830200880858,
     "question": "Please describe the scene when the man in the green plaid shirt, wearing "
                 "sunglasses, leads the football players into the golf course.",
     "answer": "The man in the green plaid shirt, wearing sunglasses, leads the football "
               "players into the golf course with a swagger.",
     "question_type": "subPlot",
     "scoring_points": ["The man leads the football players with a swagger"]},
    {"video": "subPlot_new_all_151.mp4", "duration": 861.6993410442371,
     "question": "Please describe how the man in red pants saved the woman in the black and "
                 "white striped dress when she was about to fall due to a twisted ankle.",
     "answer": "The man in red pants hooked a tree with one foot and used his hand to grab her.",
     "question_type": "subPlot", "scoring_points": ["The man hooked a tree with one foot"]},
]


def mlvu_parquet_rows() -> list[dict]:
    """lmms-eval's MLVU rows for the other five task types (2 each)."""
    rows = []
    specs = [("plotQA", "movie101_66.mp4", "What color is the main male character in the video?",
              ["Yellow", "Red", "Green", "Blue"]),
             ("ego", "ego_35.mp4", "What did I put in the drawer?",
              ["A key", "A phone", "Scissors", "A notebook"]),
             ("order", "order_12.mp4", "Arrange the following events from the video in the "
              "correct chronological order: (1) wash; (2) cut; (3) cook.",
              ["1->2->3", "2->1->3", "3->2->1", "1->3->2"]),
             ("anomaly_reco", "surveil_3.mp4", "Does this surveillance footage contain any "
              "anomalies? If yes, which kind of anomaly?",
              ["Shoplifting", "Arson", "Normal", "Robbery"]),
             ("topic_reasoning", "AWA-6.mp4", "What is the main background of the video?",
              ["In a desert", "Under the sea", "In a city", "In a forest"])]
    for t, (task_type, video, question, candidates) in enumerate(specs):
        for j in range(2):
            cands = candidates[j:] + candidates[:j]
            rows.append({
                "video_name": video, "duration": 300.5 + 100 * t,
                "question": question + "\n" + "".join(f"({'ABCD'[i]}) {c}\n"
                                                     for i, c in enumerate(cands)),
                "candidates": cands, "answer": "ABCD"[(t + j) % 4], "task_type": task_type,
                "question_id": f"Q{100 + 2 * t + j}"})
    return rows


@pytest.fixture
def mlvu(tmp_path):
    json_dir = tmp_path / "MLVU" / "json"
    write_json(json_dir / "2_needle.json", NEEDLE)
    write_json(json_dir / "4_count.json", COUNT)
    write_json(json_dir / "8_sub_scene.json", SUB_SCENE)
    stats = ReadStats()
    from_json = read_mlvu(json_dir, tmp_path / "MLVU" / "video", stats=stats)
    rows = mlvu_parquet_rows()
    from_parquet = read_mlvu(write_parquet(tmp_path / "mlvu" / "test-00000-of-00001.parquet",
                                           rows), tmp_path / "mlvu")
    return from_json, stats, rows, from_parquet


def test_mlvu_documents_and_prompts_equal_lmms_eval(mlvu):
    from_json, stats, rows, from_parquet = mlvu
    # the generation task is left out by design and counted, not invalid
    assert (stats.read, stats.skipped, stats.not_multiple_choice) == (12, 0, 2)
    assert list(stats.left_out.values()) == [2]
    # needle_32's document as lmms-eval has it (the log sample cited above)
    doc = from_json[0].doc
    assert doc["question"] == (
        "What does the hand coming out of the computer do?\n(A) Delivers a product\n"
        "(B) Shakes the woman's hand\n(C) Takes the woman's credit card\n"
        "(D) Points at something on the screen\n")
    assert (doc["answer"], doc["task_type"], doc["video_name"]) == ("A", "needle",
                                                                    "needle_32.mp4")
    config, kwargs = lmms_task(mlvu_utils, "mlvu_dev.yaml")
    task = ours.TASKS["mlvu_dev"]
    assert (task.pre_prompt, task.post_prompt) == (kwargs["pre_prompt"], kwargs["post_prompt"])
    assert task.max_new_tokens == config["generation_kwargs"]["max_new_tokens"]
    questions = from_json + from_parquet
    assert len(questions) >= 20
    for q in from_json:
        assert ours.prompt(task, q.doc) == mlvu_utils.mlvu_doc_to_text(q.doc, kwargs)
    for row, q in zip(rows, from_parquet):  # the parquet row itself is lmms-eval's document
        assert ours.prompt(task, q.doc) == mlvu_utils.mlvu_doc_to_text(row, kwargs)
        assert q.options[q.answer] == row["candidates"]["ABCD".index(row["answer"])]
        assert q.question == row["question"].split("\n")[0]


def test_mlvu_answers_and_score_equal_lmms_eval(mlvu):
    from_json, _, rows, from_parquet = mlvu
    docs = [q.doc for q in from_json] + rows
    questions = from_json + from_parquet
    for response in RESPONSES:
        for doc, q in zip(docs, questions):
            theirs = mlvu_utils.mlvu_process_results(doc, [response])["mlvu_percetion_score"]
            got = ours.extract("mlvu", response, len(q.options), random.Random(0))
            assert got.letter == theirs["pred_answer"], response
    processed, ours_rows = [], []
    for i, (doc, q) in enumerate(zip(docs, questions)):
        response = RESPONSES[(3 * i) % len(RESPONSES)] if i % 3 else "ABCD"[q.answer]
        processed.append(mlvu_utils.mlvu_process_results(doc, [response])["mlvu_percetion_score"])
        got = ours.extract("mlvu", response, len(q.options), random.Random(0))
        ours_rows.append((q.doc, got.index == q.answer))
    # the mean over the seven task types
    assert ours.score("mlvu", ours_rows) == pytest.approx(
        mlvu_utils.mlvu_aggregate_results_dev(processed))


# ---- LongVideoBench ---------------------------------------------------------------------------
def lvb_items() -> list[dict]:
    """22 lvb_val.json items, 2 to 5 candidates."""
    categories = ["S2E", "S2O", "S2A", "E2O", "O2E", "T2E", "T2O", "T2A", "E3E", "O3O", "SSS",
                  "SOS", "SAA", "T3E", "T3O", "TOS", "TAA"]
    items = []
    for i in range(22):
        n = 2 + i % 4 if i % 5 else 5
        vid = f"{'86CxyhFV9MI' if i < 11 else 'q8E_wdT1ZkA'}"
        items.append({
            "video_id": vid,
            "question": f"In the scene where a woman in a red coat speaks, what is on the table? "
                        f"({i})",
            "question_wo_referring_query": "What is on the table?",
            "candidates": [f"{w} {i}" for w in ["A cup", "Two books", "A laptop", "Nothing",
                                                 "B and C"][:n]],
            "correct_choice": (3 * i) % n, "position": [12 + i, 40 + i],
            "topic_category": "NP-News-Programs", "question_category": categories[i % 17],
            "level": ["L1-Perception", "L2-Relation"][i % 2], "id": f"{vid}_{i}",
            "video_path": f"{vid}.mp4", "subtitle_path": f"{vid}_en.json",
            "duration_group": [15, 60, 600, 3600][i % 4],
            "starting_timestamp_for_subtitles": 0, "duration": [12.0, 48.5, 527.7, 2400.0][i % 4],
            "view_count": 1000 + i})
    return items


def lvb_parquet_row(item: dict) -> dict:
    row = {k: v for k, v in item.items() if k != "candidates"}
    row.update({f"option{i}": item["candidates"][i] if i < len(item["candidates"]) else "N/A"
                for i in range(5)})
    return row


@pytest.fixture
def lvb(tmp_path):
    items = lvb_items()
    from_json = read_longvideobench(write_json(tmp_path / "lvb_val.json", items), tmp_path)
    rows = [lvb_parquet_row(item) for item in items]
    from_parquet = read_longvideobench(
        write_parquet(tmp_path / "validation-00000-of-00001.parquet", rows), tmp_path)
    return items, rows, from_json, from_parquet


def test_longvideobench_prompts_equal_lmms_eval(lvb):
    items, rows, from_json, from_parquet = lvb
    config, kwargs = lmms_task(lvb_utils, "longvideobench_val_v.yaml")
    task = ours.TASKS["longvideobench_val_v"]
    assert (task.pre_prompt, task.post_prompt) == (kwargs["pre_prompt"], kwargs["post_prompt"])
    assert task.max_new_tokens == config["generation_kwargs"]["max_new_tokens"]
    assert len(from_json) == len(from_parquet) == len(items) >= 20
    for item, row, a, b in zip(items, rows, from_json, from_parquet):
        expected = lvb_utils.longvideobench_doc_to_text(row, kwargs)
        assert ours.prompt(task, a.doc) == ours.prompt(task, b.doc) == expected
        assert a.options == b.options == item["candidates"]
        assert a.answer == b.answer == item["correct_choice"]


def test_longvideobench_answers_and_score_equal_lmms_eval(lvb):
    _, rows, questions, _ = lvb
    for k, response in enumerate(RESPONSES):
        for j, (row, q) in enumerate(zip(rows, questions)):
            random.seed(1000 * k + j)  # lmms-eval guesses with the global random
            theirs = lvb_utils.longvideobench_process_results(row, [response])["lvb_acc"]
            got = ours.extract("longvideobench", response, len(q.options),
                               random.Random(1000 * k + j))
            assert got.letter == theirs["parsed_pred"], response
            assert (got.index == q.answer) == (theirs["parsed_pred"] == theirs["answer"])
    processed, ours_rows = [], []
    for i, (row, q) in enumerate(zip(rows, questions)):
        response = RESPONSES[(5 * i) % len(RESPONSES)] if i % 2 else "ABCDE"[q.answer]
        random.seed(i)
        processed.append(lvb_utils.longvideobench_process_results(row, [response])["lvb_acc"])
        got = ours.extract("longvideobench", response, len(q.options), random.Random(i))
        ours_rows.append((q.doc, got.index == q.answer))
    assert ours.score("longvideobench", ours_rows) == pytest.approx(
        100 * lvb_utils.longvideobench_aggregate_results(processed), abs=1e-3)


# ---- frame sampling ---------------------------------------------------------------------------
def test_frame_sampling_equals_lmms_eval_longva(tmp_path):
    """LongVA's (and LLaVA-Video's, run as ``--model longva``) ``load_video``: decord frames
    at ``np.linspace(0, n - 1, k, dtype=int)``; ours: the same indices through our decoder."""
    oracle("lmms_eval.models.simple.longva")  # importable here (the stub), run in a subprocess
    from tpo_fast.synthetic.videos import write_video
    from tpo_fast.video import decode, probe

    frames = np.zeros((61, 32, 64, 3), dtype=np.uint8)  # decord wants width % 32 == 0
    frames[:] = (np.arange(61) * 4)[:, None, None, None]  # each frame its own grey level
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=10)
    info = probe(path)
    for n in (1, 7, 32, 61, 96):
        theirs = _longva_load_video(path, n, tmp_path / f"theirs{n}.npy")
        indices = ours.uniform_frame_indices(info.num_frames, n)
        assert indices == np.linspace(0, 60, n, dtype=int).tolist()
        mine = decode(info, indices, backend="pyav").cpu().numpy()
        assert mine.shape == theirs.shape
        # same frames (each frame's grey level identifies it); decoders may differ by rounding
        assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 3


def _longva_load_video(path, n: int, out) -> np.ndarray:
    """lmms-eval's ``LongVA.load_video`` (self is not used) with the real decord, in a process
    of its own (see ``_decord_stub``)."""
    code = ("import sys, numpy as np\n"
            "from lmms_eval.models.simple.longva import LongVA\n"
            "np.save(sys.argv[3], LongVA.load_video(None, sys.argv[1], int(sys.argv[2])))\n")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(n), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out)


# ---- the paper's era: lmms-eval v0.3.0 / v0.3.1 ----------------------------------------------
def v03_functions(names: dict[str, list[str]]) -> dict:
    """Functions of lmms-eval v0.3.0's task utils, compiled from its sources (the folder in
    ``LMMS_EVAL_V03_SRC``: a checkout of the v0.3.0 tag or the unpacked 0.3.0 wheel) without
    running their modules' imports (decord, the HF dataset cache); skipped without it."""
    import ast
    import os
    import re

    root = os.environ.get("LMMS_EVAL_V03_SRC")
    if not root:
        pytest.skip("LMMS_EVAL_V03_SRC (lmms-eval v0.3.0 sources) not set")
    found = {}
    for module, wanted in names.items():
        path = Path(root) / "lmms_eval" / "tasks" / module / "utils.py"
        tree = ast.parse(path.read_text())
        scope = {"re": re, "eval_logger": __import__("logging").getLogger("v03")}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "TASK_TYPES"
                                                   for t in node.targets):
                exec(compile(ast.Module([node], []), str(path), "exec"), scope)
            if isinstance(node, ast.FunctionDef) and node.name in wanted:
                exec(compile(ast.Module([node], []), str(path), "exec"), scope)
        found.update({f"{module}.{n}": scope[n] for n in wanted})
    return found


def test_paper_era_protocol_equals_lmms_eval_v0_3(mlvu, videomme):
    """``version="0.3"`` against v0.3.0's own functions: MLVU's prompt, the Video-MME / MLVU
    answer extraction and MLVU's score (accuracy over all questions)."""
    v03 = v03_functions({"mlvu": ["mlvu_doc_to_text", "extract_characters_regex",
                                  "mlvu_aggregate_results"],
                         "videomme": ["extract_characters_regex"]})
    from_json, _, rows, from_parquet = mlvu
    task = ours.task_for("mlvu", version="0.3")
    assert task.name == "mlvu"
    docs = [q.doc for q in from_json] + rows
    for doc in docs:
        assert ours.prompt(task, doc) == v03["mlvu.mlvu_doc_to_text"](doc, {})
    differs = 0
    for response in RESPONSES:
        for bench in ("mlvu", "videomme"):
            got = ours.extract(bench, response, 4, random.Random(0), version="0.3")
            assert got.letter == v03[f"{bench}.extract_characters_regex"](response), response
        differs += ours.extract("mlvu", response, 4, random.Random(0)).letter != got.letter
    assert differs > 0  # the two releases do read some answers differently
    # v0.3's MLVU rows carried task-type codes (TR, AR, NQA, ...): the score is over questions
    codes = v03["mlvu.mlvu_aggregate_results"].__globals__["TASK_TYPES"]
    processed, ours_rows = [], []
    for i, (doc, q) in enumerate(zip(docs, from_json + from_parquet)):
        response = RESPONSES[(3 * i) % len(RESPONSES)] if i % 3 else "ABCD"[q.answer]
        pred = v03["mlvu.extract_characters_regex"](response)
        processed.append({"task_type": codes[i % len(codes)], "pred_answer": pred,
                          "answer": doc["answer"]})
        got = ours.extract("mlvu", response, len(q.options), random.Random(0), version="0.3")
        ours_rows.append((doc, got.index == q.answer))
    assert ours.score("mlvu", ours_rows, version="0.3") == pytest.approx(
        v03["mlvu.mlvu_aggregate_results"](processed))
