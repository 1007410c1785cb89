"""lmms-eval's protocol for Video-MME, MLVU and LongVideoBench: prompt text, frame sampling,
answer extraction and the per-category scores, transcribed from lmms-eval 0.7.3.

The TPO paper's numbers come from lmms-eval (the TPO repo's ``longva/eval.sh`` and
``LLaVA/eval.sh``: ``--model longva``, so every task uses its YAML's ``default``
``lmms_eval_specific_kwargs``). What is transcribed, and from where (lmms-eval 0.7.3 wheel):

* ``tasks/videomme/utils.py``: ``videomme_doc_to_text``, ``videomme_doc_to_text_subtitle``
  (with ``load_subtitles`` / ``extract_subtitles``), ``videomme_aggregate_results``; the
  ``default`` kwargs of ``videomme.yaml`` / ``videomme_w_subtitle.yaml``.
* ``tasks/mlvu/utils.py``: ``mlvu_doc_to_text``, ``mlvu_aggregate_results_dev``; ``mlvu_dev.yaml``.
* ``tasks/longvideobench/utils.py``: ``longvideobench_doc_to_text`` (the ``_v`` task, no
  interleaved subtitles), ``parse_multi_choice_response``; ``longvideobench_val_v.yaml``.
* ``tasks/_task_utils/mcq_extract.py``: ``extract_mcq_answer`` (Video-MME and MLVU).
* ``models/simple/longva.py``: ``load_video`` — ``np.linspace(0, n - 1, k, dtype=int)``.

**The paper's era** (``version="0.3"``): the TPO scripts name the task ``mlvu``, which lmms-eval
had up to v0.3.1 (Feb 2025; removed in e5f70443). v0.3.0/v0.3.1 differ from 0.7.3 in three
places, transcribed from the v0.3.0 tag: MLVU's prompt (``"\n" + question + "\nOnly give the
best option.\n\nBest option: ("``, no generation length: LongVA's default 1024), the answer
extraction of Video-MME and MLVU (``extract_characters_regex``: the first A-D after some
prefixes), and MLVU's score (accuracy over all questions, not the mean over task types).
Video-MME's prompts, LongVideoBench and the frame sampling are the same in both.

Every function here works on the benchmark's lmms-eval *document* (the row of its Hugging
Face parquet, which the readers build from any supported layout: ``MCQuestion.doc``).
``tests/eval/test_eval_protocol.py`` holds each one equal to lmms-eval's own function.
"""

from __future__ import annotations

import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

LMMS_EVAL_VERSION = "0.7.3"

VIDEOMME_OPTION_PROMPT = (
    "Select the best answer to the following multiple-choice question based on the video and "
    "the subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
VIDEOMME_SUBTITLES_PROMPT = "This video's subtitles are listed below: \n"
_SUBTITLE_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')


@dataclass(frozen=True)
class Task:
    """One lmms-eval task: its prompt kwargs (the YAML's ``default``) and generation length."""

    name: str
    benchmark: str  # the reader format: videomme | mlvu | longvideobench
    pre_prompt: str
    post_prompt: str
    max_new_tokens: int
    subtitles: bool = False
    subtitle_frames: int = 32  # videomme_w_subtitle's ``frame_num`` (not the model's frames)
    version: str = LMMS_EVAL_VERSION  # the lmms-eval release transcribed


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("videomme", "videomme", "",
         "\nAnswer with the option's letter from the given choices directly.", 16),
    # The subtitle prompt ends with "The best answer is:" whatever the post_prompt says.
    Task("videomme_w_subtitle", "videomme", "",
         "\nAnswer the question using a single word or phrase.", 16, subtitles=True),
    Task("mlvu_dev", "mlvu", "", "\nOnly give the best option.\nBest option: (", 16),
    Task("longvideobench_val_v", "longvideobench", "",
         "Answer with the option's letter from the given choices directly.\n", 32),
)}
DEFAULT_TASK = {"videomme": "videomme", "mlvu": "mlvu_dev",
                "longvideobench": "longvideobench_val_v"}
PAPER_ERA = "0.3"  # lmms-eval v0.3.0 / v0.3.1
VERSIONS = (LMMS_EVAL_VERSION, PAPER_ERA)
# The v0.3 tasks: the same kwargs, but MLVU is the task "mlvu" (prompt without kwargs).
TASKS_03: dict[str, Task] = {
    **{name: replace(t, version=PAPER_ERA) for name, t in TASKS.items() if t.benchmark != "mlvu"},
    "mlvu": Task("mlvu", "mlvu", "", "", 1024, version=PAPER_ERA),
}
TASKS_BY_VERSION = {LMMS_EVAL_VERSION: TASKS, PAPER_ERA: TASKS_03}


def task_for(benchmark: str, subtitles: bool = False, version: str = LMMS_EVAL_VERSION) -> Task:
    """The lmms-eval task of a reader format (Video-MME with or without subtitles)."""
    if version not in TASKS_BY_VERSION:
        raise ValueError(f"unknown lmms-eval version {version!r}; choose from {VERSIONS}")
    tasks = TASKS_BY_VERSION[version]
    if subtitles:
        if benchmark != "videomme":
            raise ValueError(f"subtitles are part of the protocol for videomme only, not "
                             f"{benchmark!r}")
        return tasks["videomme_w_subtitle"]
    if benchmark not in DEFAULT_TASK:
        raise ValueError(f"lmms-eval's protocol covers {sorted(DEFAULT_TASK)}, not {benchmark!r}")
    return tasks["mlvu" if benchmark == "mlvu" and version == PAPER_ERA else
                 DEFAULT_TASK[benchmark]]


# ---- frame sampling --------------------------------------------------------------------------
def uniform_frame_indices(total_frames: int, n: int) -> list[int]:
    """lmms-eval's uniform sampling (LongVA / LLaVA-Video ``load_video``): ``n`` indices
    ``np.linspace(0, total - 1, n, dtype=int)`` — truncated, not rounded."""
    if total_frames < 1 or n < 1:
        raise ValueError(f"need frames to sample from and n >= 1 (got {total_frames}, {n})")
    return np.linspace(0, total_frames - 1, n, dtype=int).tolist()


# ---- prompts ---------------------------------------------------------------------------------
def videomme_prompt(doc: dict, task: Task = TASKS["videomme"]) -> str:
    """``videomme_doc_to_text`` with the ``default`` kwargs: the instruction, the question,
    the options as given ("A. ..."), and the post prompt."""
    question = doc["question"] + "\n" + "\n".join(str(o) for o in doc["options"])
    return VIDEOMME_OPTION_PROMPT + "\n" + question + "\n" + task.post_prompt


def videomme_subtitle_prompt(doc: dict, subtitles: str | None) -> str:
    """``videomme_doc_to_text_subtitle``; ``subtitles`` is ``videomme_subtitle_text``'s output,
    or None where the video has no subtitle file."""
    subtitle = "No subtitles available" if subtitles is None else subtitles
    question = doc["question"] + "\n" + "\n".join(str(o) for o in doc["options"])
    return (VIDEOMME_SUBTITLES_PROMPT + subtitle + "\n" + VIDEOMME_OPTION_PROMPT + "\n"
            + question + "\n" + "The best answer is:")


def _srt_seconds(stamp: str) -> float:
    h, m, s_ms = stamp.split(":")
    s, ms = s_ms.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def read_srt(path: str | os.PathLike) -> dict[tuple[float, float], str]:
    """``load_subtitles``: ``{(start s, end s): text}`` of a Video-MME ``.srt`` file."""
    subtitles: dict[tuple[float, float], str] = {}
    with open(path, encoding="utf-8") as f:
        sections = f.read().split("\n\n")
    for section in sections:
        if section.strip():
            lines = section.split("\n")
            if len(lines) >= 3:
                start, end = lines[1].split(" --> ")
                subtitles[(_srt_seconds(start), _srt_seconds(end))] = " ".join(lines[2:])
    return subtitles


def videomme_subtitle_text(srt_path: str | os.PathLike, fps: float, total_frames: int,
                           frame_num: int = 32) -> str:
    """The subtitle lines lmms-eval shows: those on screen at ``frame_num`` uniformly sampled
    frames (``extract_subtitles`` + the ``frame_num`` branch of the subtitle prompt; lmms-eval
    reads ``fps`` and the frame count with OpenCV)."""
    by_frame = [(int(start * fps), int(end * fps), text)
                for (start, end), text in read_srt(srt_path).items()]
    if frame_num == -1:
        frame_num = total_frames
    sampled = np.linspace(0, total_frames - 1, frame_num, dtype=int).tolist()
    hit = [i for f in sampled for i, (first, last, _) in enumerate(by_frame) if first <= f < last]
    lines = []
    for i in list(set(hit)):  # lmms-eval's order: CPython's iteration order of this int set
        found = _SUBTITLE_FONT.findall(by_frame[i][2])
        if found:
            lines.append(found[0])
    return "\n".join(lines)


def mlvu_prompt(doc: dict, task: Task = TASKS["mlvu_dev"]) -> str:
    """``mlvu_doc_to_text``: the parquet's question (which carries the "(A) ..." options)
    between the pre and post prompts (v0.3: a fixed frame around it)."""
    if task.version == PAPER_ERA:
        return "\n" + doc["question"] + "\nOnly give the best option.\n" + "\n" + "Best option: ("
    return task.pre_prompt + doc["question"] + task.post_prompt


def longvideobench_options(doc: dict) -> list[str]:
    """The options as lmms-eval reads them: ``option0``..``option4`` up to the first "N/A"."""
    options = []
    for i in range(5):
        option = doc.get(f"option{i}")
        if option == "N/A":
            break
        options.append(option)
    return options


def longvideobench_prompt(doc: dict, task: Task = TASKS["longvideobench_val_v"]) -> str:
    """``longvideobench_doc_to_text`` (no interleaved subtitles): "A. ..." options."""
    candidates = [doc.get(f"option{i}") for i in range(5) if doc.get(f"option{i}") != "N/A"]
    question = doc["question"] + "\n" + "\n".join(
        ". ".join([chr(ord("A") + i), c]) for i, c in enumerate(candidates))
    return f"{task.pre_prompt}{question}\n{task.post_prompt}"


# ---- answer extraction -----------------------------------------------------------------------
_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is",
    "the best answer is", "best answer is", "the correct option is", "correct option is",
    "the best option is", "best option is", "the choice is", "choice is",
    "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
    "答えは",
)
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4,
             "right_paren": 3, "space": 2, "fallback": 0}


def extract_mcq_answer(response: str, choices: list[str] | None = None) -> str:
    """``extract_mcq_answer``: the chosen letter of a free-form answer, or "" if none.
    Candidates in several formats; the highest-priority format wins, then the last one."""
    if not response or not response.strip():
        return ""
    choices = choices or list("ABCDEFGH")
    text = response.strip()
    for char in ",.!?;:'\"":
        text = text.strip(char)
    text = " " + text + " "
    found: list[tuple[str, int, str]] = []
    for fmt, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"),
                         ("right_paren", "{})"), ("space", "{} ")):
        for ch in choices:
            if pattern.format(ch) in text:
                found.append((ch, text.rfind(pattern.format(ch)), fmt))
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lower.find(phrase)
        if at != -1:
            for ch in choices:
                pos = text.find(ch, at + len(phrase))
                if pos != -1:
                    found.append((ch, pos, "phrase"))
    stripped = text.strip()
    for ch in choices:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            found.append((ch, 0, "start"))
    for ch in choices:
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            found.append((ch, len(text) - 1, "end"))
    if not found:
        found = [(ch, text.rfind(ch), "fallback") for ch in choices if ch in text]
    if not found:
        return ""
    found.sort(key=lambda x: (_PRIORITY[x[2]], x[1]), reverse=True)
    return found[0][0]


# v0.3's list, with its two missing commas (so two entries are joined strings)
_PREFIXES_03 = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                "The best option is" "The correct option is", "Best answer:" "Best option:")


def extract_characters_regex_03(response: str) -> str:
    """v0.3's ``extract_characters_regex`` (Video-MME and MLVU): the first of A-D after the
    prefixes are removed; "" for none, or for more than ten words without one."""
    s = response.strip()
    for prefix in _PREFIXES_03:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    match = re.search(r"[ABCD]", s)
    return "" if match is None else match[0]


_LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                 "The best option is", "The correct option is", "Best answer:", "Best option:")


def longvideobench_parse(response: str, all_choices: list[str],
                         rng: random.Random) -> tuple[str, bool]:
    """``parse_multi_choice_response``: ``(letter, guessed)``. As in lmms-eval (and the
    LongVideoBench paper), an answer without a letter gets a random choice (``guessed``)."""
    s = response.strip()
    for prefix in _LVB_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return rng.choice(all_choices), True
    match = re.search(r"[ABCDE]", s)
    if match is None:
        return rng.choice(all_choices), True
    return match[0], False


@dataclass(frozen=True)
class Extracted:
    """A generated answer read the lmms-eval way: the letter it scores ("" when none),
    whether lmms-eval had to guess it (LongVideoBench), and its option index (None when the
    letter names no option)."""

    letter: str
    guessed: bool
    index: int | None


def extract(benchmark: str, response: str, n_options: int, rng: random.Random,
            version: str = LMMS_EVAL_VERSION) -> Extracted:
    """The answer letter of ``response`` as the benchmark's ``process_results`` reads it."""
    if benchmark == "longvideobench":
        letter, guessed = longvideobench_parse(
            response, [chr(ord("A") + i) for i in range(n_options)], rng)
    elif benchmark in ("videomme", "mlvu") and version == PAPER_ERA:
        letter, guessed = extract_characters_regex_03(response), False
    elif benchmark in ("videomme", "mlvu"):
        letter, guessed = extract_mcq_answer(response, ["A", "B", "C", "D"]), False
    else:
        raise ValueError(f"no lmms-eval answer extraction for {benchmark!r}")
    index = ord(letter) - ord("A") if letter else None
    return Extracted(letter, guessed, index if index is not None and index < n_options else None)


def prompt(task: Task, doc: dict, subtitles: str | None = None) -> str:
    """The task's prompt text for one lmms-eval document."""
    if task.benchmark == "videomme":
        return videomme_subtitle_prompt(doc, subtitles) if task.subtitles else videomme_prompt(
            doc, task)
    if task.benchmark == "mlvu":
        return mlvu_prompt(doc, task)
    if task.benchmark == "longvideobench":
        return longvideobench_prompt(doc, task)
    raise ValueError(f"unknown benchmark {task.benchmark!r}")


# ---- scores ----------------------------------------------------------------------------------
MLVU_DEV_TASK_TYPES = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA",
                       "topic_reasoning")
# The per-category groups each aggregate function logs, by benchmark: (report name, doc field).
CATEGORY_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "videomme": (("duration", "duration"), ("domain", "domain"),
                 ("sub_category", "sub_category"), ("task_type", "task_type")),
    "mlvu": (("task_type", "task_type"),),
    "longvideobench": (("duration_group", "duration_group"),
                       ("question_category", "question_category")),
}


def score(benchmark: str, rows: list[tuple[dict, bool]],
          version: str = LMMS_EVAL_VERSION) -> float:
    """The task's headline number (0-100) from ``(doc, correct)`` rows, as its aggregate
    function computes it: Video-MME and LongVideoBench the accuracy over questions; MLVU dev
    the mean of the seven task types' accuracies (a task type with no questions counts 0;
    v0.3: the accuracy over questions)."""
    if benchmark == "mlvu" and version != PAPER_ERA:
        tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for doc, correct in rows:
            tally[doc["task_type"]][0] += int(correct)
            tally[doc["task_type"]][1] += 1
        per_task = [100 * tally[t][0] / tally[t][1] if tally[t][1] else 0.0
                    for t in MLVU_DEV_TASK_TYPES]
        return sum(per_task) / len(MLVU_DEV_TASK_TYPES)
    if benchmark in ("videomme", "longvideobench", "mlvu"):
        return 100 * sum(c for _, c in rows) / len(rows) if rows else 0.0
    raise ValueError(f"no lmms-eval score for {benchmark!r}")
