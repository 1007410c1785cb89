"""The eval readers on small files in each benchmark's format (written here), malformed items
included: every error names its file:line (JSONL) or file:item (JSON list)."""

import json
from pathlib import Path

import pytest

from tpo_fast.eval import (
    AnnotationError,
    ReadStats,
    duration_group_of,
    read_longvideobench,
    read_mlvu,
    read_questions,
    read_synthetic,
    read_videomme,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_json(path: Path, items) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=2))
    return path


def write_jsonl(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


VIDEOMME_ROWS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8",
     "question_id": "001-1", "task_type": "Counting Problem",
     "question": "How many red socks are there?",
     "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."], "answer": "C"},
    {"video_id": "302", "duration": "long", "domain": "Film", "sub_category": "Movie",
     "url": "https://www.youtube.com/watch?v=xyz", "videoID": "Zz9LOngVid",
     "question_id": "302-2", "task_type": "Temporal Reasoning",
     "question": "What happens last?", "options": ["A. one", "B. two", "C. three", "D. four"],
     "answer": "D"},
]


def test_videomme_json_list_and_jsonl(tmp_path):
    root = tmp_path / "Video-MME"
    touch(root / "data" / "fFjv93ACGo8.mp4")  # the unzipped archive's data/ folder
    touch(root / "Zz9LOngVid.mkv")  # another extension, directly under the root
    for path in (write_json(tmp_path / "videomme.json", VIDEOMME_ROWS),
                 write_jsonl(tmp_path / "lines.json", VIDEOMME_ROWS),  # JSONL named .json
                 write_jsonl(tmp_path / "videomme.jsonl", VIDEOMME_ROWS)):
        qs = read_videomme(path, root)
        assert [q.qid for q in qs] == ["001-1", "302-2"]
        assert qs[0].options == ["1.", "2.", "3.", "4."] and qs[0].answer == 2
        assert qs[1].answer == 3 and qs[1].options[0] == "one"
        assert qs[0].video == root / "data" / "fFjv93ACGo8.mp4"
        assert qs[1].video == root / "Zz9LOngVid.mkv"
        assert (qs[0].task_type, qs[0].duration_group) == ("Counting Problem", "short")
        assert qs[1].duration_group == "long"
    assert qs[1].source == f"{tmp_path / 'videomme.jsonl'}:2"


def test_videomme_nested_github_json(tmp_path):
    items = [{"video_id": "001", "duration": "medium", "videoID": "abc",
              "questions": [{"question_id": "001-1", "task_type": "OCR Problems",
                             "question": "What is written?", "options": ["A. x", "B. y"],
                             "answer": "B"},
                            {"question_id": "001-2", "task_type": "Action Recognition",
                             "question": "What does he do?", "options": ["A. run", "B. sit"],
                             "answer": "A"}]}]
    qs = read_videomme(write_json(tmp_path / "v.json", items), tmp_path)
    assert [(q.qid, q.answer, q.duration_group) for q in qs] == [
        ("001-1", 1, "medium"), ("001-2", 0, "medium")]
    assert qs[1].source.endswith("v.json:item 0.questions[1]")
    assert qs[0].video == tmp_path / "abc.mp4"  # missing: left for eval to count as a failure


def test_videomme_malformed(tmp_path):
    bad = dict(VIDEOMME_ROWS[1], answer="E")
    path = write_json(tmp_path / "v.json", [VIDEOMME_ROWS[0], bad])
    with pytest.raises(AnnotationError, match=r"v\.json:item 1: answer 'E' is outside the 4"):
        read_videomme(path, tmp_path)
    shuffled = dict(VIDEOMME_ROWS[0], options=["B. 1", "A. 2", "C. 3", "D. 4"])
    with pytest.raises(AnnotationError, match=r"item 0: option 0 'B\. 1' should start with 'A\.'"):
        read_videomme(write_json(tmp_path / "w.json", [shuffled]), tmp_path)
    lines = [VIDEOMME_ROWS[0], "{not json", {"videoID": "x", "question": "q?"}, VIDEOMME_ROWS[1]]
    path = write_jsonl(tmp_path / "v.jsonl", lines)
    with pytest.raises(AnnotationError, match=r"v\.jsonl:2: invalid JSON"):
        read_videomme(path, tmp_path)
    stats = ReadStats()
    qs = read_videomme(path, tmp_path, skip_invalid=True, stats=stats)
    assert [q.qid for q in qs] == ["001-1", "302-2"]
    assert (stats.read, stats.skipped) == (2, 2)
    assert "v.jsonl:3: missing field 'options'" in stats.errors[1]


MLVU_PLOT = [
    {"video": "movie101_66.mp4", "duration": 246, "question": "What color is the main male "
     "character in the video?", "candidates": ["Yellow", "Red", "Green", "Blue"],
     "answer": "Yellow", "question_type": "plotQA"},
    {"video": "movie101_67.mp4", "duration": 1500.5, "question": "Who enters first?",
     "candidates": ["Alice", "Bob", "Carol"], "answer": "Carol", "question_type": "plotQA"},
]
MLVU_NEEDLE = [
    {"video": "needle_32.mp4", "duration": 467.98, "question": "What does the hand do?",
     "candidates": ["Delivers a product", "Shakes a hand"], "answer": "Shakes a hand",
     "question_type": "findNeedle"},
]


def test_mlvu_folder_of_task_files(tmp_path):
    json_dir, video_dir = tmp_path / "MLVU" / "json", tmp_path / "MLVU" / "video"
    write_json(json_dir / "1_plotQA.json", MLVU_PLOT)
    write_json(json_dir / "2_needle.json", MLVU_NEEDLE)
    touch(video_dir / "1_plotQA" / "movie101_66.mp4")
    touch(video_dir / "2_needle" / "needle_32.mp4")
    qs = read_mlvu(json_dir, video_dir)
    assert [(q.qid, q.answer, q.task_type) for q in qs] == [
        ("1_plotQA/0", 0, "plotQA"), ("1_plotQA/1", 2, "plotQA"), ("2_needle/0", 1, "findNeedle")]
    assert qs[0].video == video_dir / "1_plotQA" / "movie101_66.mp4"
    assert qs[2].video == video_dir / "2_needle" / "needle_32.mp4"
    assert [q.duration_group for q in qs] == ["3-10min", "10-30min", "3-10min"]
    assert qs[1].duration == 1500.5
    one = read_questions("mlvu", json_dir / "2_needle.json", video_dir)
    assert [q.qid for q in one] == ["2_needle/0"]


def test_mlvu_malformed(tmp_path):
    bad = dict(MLVU_PLOT[0], answer="Purple")
    path = write_json(tmp_path / "1_plotQA.json", [MLVU_PLOT[1], bad])
    with pytest.raises(AnnotationError, match=r"1_plotQA\.json:item 1: answer 'Purple' is not "):
        read_mlvu(path, tmp_path)
    one_option = dict(MLVU_PLOT[0], candidates=["Yellow"])
    with pytest.raises(AnnotationError, match="item 0: candidates needs at least 2 options"):
        read_mlvu(write_json(tmp_path / "x.json", [one_option]), tmp_path)
    with pytest.raises(AnnotationError, match=r"expected a JSON list"):
        read_mlvu(write_json(tmp_path / "y.json", {"video": "a"}), tmp_path)


LVB = [
    {"video_id": "86CxyhFV9MI", "question": "Which subtitles appear with the red car?",
     "question_wo_referring_query": "Which subtitles appear?", "candidates": ["a", "b", "c",
                                                                              "d", "e"],
     "correct_choice": 4, "position": [0, 12], "topic_category": "NP-News-Programs",
     "question_category": "TOS", "level": "L2-Relation", "id": "86CxyhFV9MI_0",
     "video_path": "86CxyhFV9MI.mp4", "subtitle_path": "86CxyhFV9MI_en.json",
     "duration_group": 600, "starting_timestamp_for_subtitles": 0, "duration": 527.7},
    {"video_id": "q1", "question": "What is on the table?", "candidates": ["cup", "pen"],
     "correct_choice": 0, "question_category": "S2O", "id": "q1_0", "video_path": "q1.mp4",
     "duration_group": 15.0, "duration": 12.0},
]


def test_longvideobench(tmp_path):
    touch(tmp_path / "videos" / "86CxyhFV9MI.mp4")
    qs = read_longvideobench(write_json(tmp_path / "lvb_val.json", LVB), tmp_path)
    assert [(q.qid, q.answer, q.task_type, q.duration_group) for q in qs] == [
        ("86CxyhFV9MI_0", 4, "TOS", "600"), ("q1_0", 0, "S2O", "15")]
    assert qs[0].video == tmp_path / "videos" / "86CxyhFV9MI.mp4"
    assert qs[0].duration == 527.7 and len(qs[0].options) == 5


def test_longvideobench_malformed(tmp_path):
    test_split = {k: v for k, v in LVB[1].items() if k != "correct_choice"}
    path = write_json(tmp_path / "lvb_test.json", [LVB[0], test_split])
    with pytest.raises(AnnotationError, match=r"lvb_test\.json:item 1: no 'correct_choice'"):
        read_longvideobench(path, tmp_path)
    with pytest.raises(AnnotationError, match=r"item 0: field 'correct_choice' must be a int"):
        read_longvideobench(write_json(tmp_path / "b.json", [dict(LVB[1], correct_choice="A")]),
                            tmp_path)
    dup = write_json(tmp_path / "dup.json", [LVB[1], LVB[1]])
    with pytest.raises(AnnotationError, match=r"dup\.json:item 1: qid 'q1_0' repeats"):
        read_longvideobench(dup, tmp_path)


def synthetic_row(i: int, **over) -> dict:
    row = {"qid": f"s{i}", "video": f"videos/clip{i}.mp4", "question": "What colour was the "
           "shape that appeared between 0:04 and 0:06?", "options": ["red", "green", "blue"],
           "answer": i % 3, "task_type": "localized/colour", "duration": 8.0, "seed": 7}
    row.update(over)
    return row


def test_synthetic(tmp_path):
    absolute = touch(tmp_path / "elsewhere" / "abs.mp4")
    path = write_jsonl(tmp_path / "set" / "questions.jsonl", [
        synthetic_row(0), synthetic_row(1, video=str(absolute), task_type="comprehensive/count",
                                        duration=75.0),
        synthetic_row(2, duration_group="custom")])
    qs = read_synthetic(path)
    assert qs[0].video == tmp_path / "set" / "videos" / "clip0.mp4"  # relative to the file
    assert qs[1].video == absolute
    assert [q.duration_group for q in qs] == ["0-15s", "1-3min", "custom"]
    assert [q.answer for q in qs] == [0, 1, 2] and qs[1].task_type == "comprehensive/count"
    assert read_synthetic(path, tmp_path / "root")[0].video == tmp_path / "root/videos/clip0.mp4"


@pytest.mark.parametrize("row, message", [
    (synthetic_row(0, answer=3), "answer 3 is outside the 3 options"),
    (synthetic_row(0, answer=True), "field 'answer' must be a int"),
    ({k: v for k, v in synthetic_row(0).items() if k != "qid"}, "missing field 'qid'"),
    (synthetic_row(0, question="  "), "empty question"),
    (synthetic_row(0, options=["red", "red"]), "options repeat"),
    (synthetic_row(0, options=["red", 3]), r"options\[1\] must be a non-empty string"),
    ([1, 2], "expected an object, got list"),
])
def test_synthetic_malformed(tmp_path, row, message):
    path = write_jsonl(tmp_path / "q.jsonl", [synthetic_row(5), "", row])
    with pytest.raises(AnnotationError, match=rf"q\.jsonl:3: {message}"):
        read_synthetic(path)
    stats = ReadStats()
    assert [q.qid for q in read_synthetic(path, skip_invalid=True, stats=stats)] == ["s5"]
    assert stats.skipped == 1


def test_duration_groups_and_unknown_format(tmp_path):
    assert [duration_group_of(s) for s in (None, 15, 15.1, 600, 3600, 3601)] == [
        None, "0-15s", "15-60s", "3-10min", "30-60min", ">60min"]
    with pytest.raises(ValueError, match="unknown annotation format"):
        read_questions("egoschema", tmp_path / "x.json")
    with pytest.raises(FileNotFoundError):
        read_synthetic(tmp_path / "missing.jsonl")


def test_video_extensions_any_case(tmp_path):
    """Video-MME ships some videos as ``X.MP4``; MLVU names carry an extension."""
    touch(tmp_path / "data" / "fFjv93ACGo8.MP4")
    touch(tmp_path / "Zz9LOngVid.Mkv")
    qs = read_videomme(write_json(tmp_path / "v.json", VIDEOMME_ROWS), tmp_path)
    assert qs[0].video == tmp_path / "data" / "fFjv93ACGo8.MP4"
    assert qs[1].video == tmp_path / "Zz9LOngVid.Mkv"
    touch(tmp_path / "video" / "1_plotQA" / "MOVIE101_66.MP4")
    qs = read_mlvu(write_json(tmp_path / "json" / "1_plotQA.json", MLVU_PLOT), tmp_path / "video")
    assert qs[0].video == tmp_path / "video" / "1_plotQA" / "MOVIE101_66.MP4"
    assert qs[1].video == tmp_path / "video" / "movie101_67.mp4"  # missing: as named


def test_mlvu_generation_tasks_left_out_and_counted(tmp_path, capsys):
    """MLVU's json/ folder also holds generation tasks (no candidates): left out, counted,
    not errors (FlagOpen/FlagEmbedding research/MLVU/data/8_sub_scene.json's fields)."""
    json_dir = tmp_path / "json"
    write_json(json_dir / "1_plotQA.json", MLVU_PLOT)
    write_json(json_dir / "8_sub_scene.json", [
        {"video": "subPlot_new_all_126.mp4", "duration": 5632.83, "question": "Please describe "
         "the scene.", "answer": "The man leads the players.", "question_type": "subPlot",
         "scoring_points": ["The man leads the players"]}] * 3)
    stats = ReadStats()
    qs = read_mlvu(json_dir, tmp_path, stats=stats)
    assert len(qs) == 2 and (stats.read, stats.skipped, stats.not_multiple_choice) == (2, 0, 3)
    assert stats.left_out == {str(json_dir / "8_sub_scene.json"): 3}
    assert qs[0].doc["question"] == ("What color is the main male character in the video?\n"
                                     "(A) Yellow\n(B) Red\n(C) Green\n(D) Blue\n")
    assert (qs[0].doc["answer"], qs[0].doc["task_type"]) == ("A", "plotQA")


def test_lmms_eval_parquet_layouts(tmp_path):
    """lmms-eval's MLVU parquet (sy1998/MLVU_dev mlvu/test-00000-of-00001.parquet) and
    LongVideoBench's HF parquet (option0..option4, "N/A" past the last)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    mlvu_rows = [{"video_name": "needle_32.mp4", "duration": 467.98,
                  "question": "What does the hand do?\n(A) Delivers a product\n(B) Shakes a "
                              "hand\n", "candidates": ["Delivers a product", "Shakes a hand"],
                  "answer": "B", "task_type": "needle", "question_id": "Q0"}]
    (tmp_path / "mlvu").mkdir()
    pq.write_table(pa.Table.from_pylist(mlvu_rows), tmp_path / "mlvu" / "test.parquet")
    touch(tmp_path / "needle" / "needle_32.mp4")
    (q,) = read_mlvu(tmp_path / "mlvu", tmp_path)  # a folder with the parquet
    assert (q.qid, q.question, q.options, q.answer, q.task_type) == (
        "Q0", "What does the hand do?", ["Delivers a product", "Shakes a hand"], 1, "needle")
    assert q.video == tmp_path / "needle" / "needle_32.mp4" and q.doc["answer"] == "B"

    rows = [{**{k: v for k, v in LVB[1].items() if k != "candidates"},
             "option0": "cup", "option1": "pen", "option2": "N/A", "option3": "N/A",
             "option4": "N/A"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    (q,) = read_longvideobench(tmp_path / "validation.parquet", tmp_path)
    assert (q.qid, q.options, q.answer, q.duration_group) == ("q1_0", ["cup", "pen"], 0, "15")
    (j,) = read_longvideobench(write_json(tmp_path / "lvb_val.json", [LVB[1]]), tmp_path)
    assert {k: j.doc[k] for k in rows[0]} == {k: q.doc[k] for k in rows[0]}
