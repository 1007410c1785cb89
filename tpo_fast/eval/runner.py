"""``evaluate``: multiple-choice video QA of a video LLM, by option log-likelihood and/or by
greedy generation with answer-letter extraction.

Two protocols: ``"lmms-eval"`` (Video-MME, MLVU, LongVideoBench: lmms-eval 0.7.3's prompt
text, uniform frame sampling, answer extraction and scores, ``tpo_fast.eval.protocol``) and
``"native"`` (this project's prompt and extraction; the synthetic set). Generation under the
lmms-eval protocol is the method whose numbers stand beside lmms-eval's (the TPO paper's);
log-likelihood is the fast method, ranking the options' letters in one packed forward.

    from tpo_fast.eval import evaluate, read_questions
    questions = read_questions("synthetic", "heldout/questions.jsonl")
    results = evaluate(model, tokenizer, questions, method="both", frames=8)
    print(results["loglik"]["accuracy"], results["generate"]["by_task_type"])

Videos are decoded in background threads, each once however many questions it has; a video
that cannot be decoded (``VideoDecodeError``) skips its questions, which are counted in
``decode_failures`` and listed in ``skipped`` and are left out of every accuracy.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tpo_fast.config import DecodeConfig, check_sections
from tpo_fast.eval import protocol as lmms
from tpo_fast.eval.extract import extract_choice
from tpo_fast.eval.records import MCQuestion, letter
from tpo_fast.eval.results import summarize
from tpo_fast.eval.scoring import (
    ANSWER_FORMATS,
    DEFAULT_INSTRUCTION,
    answer_texts,
    choose,
    format_prompt,
    option_logps,
)

METHODS = ("loglik", "generate", "both")
PROTOCOLS = ("lmms-eval", "native")
METHOD_KINDS = {
    "loglik": "fast method: the option letter with the highest log-likelihood (one packed "
              "forward); not the paper's metric",
    "generate": "greedy generation with answer extraction",
}


@dataclass(frozen=True)
class EvalSettings:
    """How questions are asked and scored (saved with the results)."""

    method: str = "loglik"
    frames: int = 8
    batch_size: int = 4
    answer_format: str = "letter"  # loglik: score "B" or "B. red"
    length_normalize: bool = False  # loglik: mean instead of summed log-likelihood
    max_new_tokens: int = 16  # generate
    instruction: str = DEFAULT_INSTRUCTION
    system: str | None = None
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # the decode: section
    protocol: str = "native"  # lmms-eval | native
    task: str | None = None  # the lmms-eval task (protocol lmms-eval), e.g. "videomme"
    subtitle_root: str | None = None  # Video-MME's subtitle/ folder (videomme_w_subtitle)
    seed: int = 0  # LongVideoBench: lmms-eval guesses a letter for answers without one
    lmms_eval_version: str = lmms.LMMS_EVAL_VERSION  # or "0.3", the TPO paper's era

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose from {PROTOCOLS}")
        if self.lmms_eval_version not in lmms.TASKS_BY_VERSION:
            raise ValueError(f"unknown lmms-eval version {self.lmms_eval_version!r}; choose "
                             f"from {lmms.VERSIONS}")
        tasks = lmms.TASKS_BY_VERSION[self.lmms_eval_version]
        if self.protocol == "lmms-eval" and self.task not in tasks:
            raise ValueError(f"protocol lmms-eval {self.lmms_eval_version} needs a task from "
                             f"{sorted(tasks)}, got {self.task!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"unknown answer format {self.answer_format!r}; choose from "
                             f"{ANSWER_FORMATS}")
        if self.frames < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("frames, batch_size and max_new_tokens must be >= 1")
        check_sections(self.decode, "decode.")

    @property
    def methods(self) -> tuple[str, ...]:
        return ("loglik", "generate") if self.method == "both" else (self.method,)

    @property
    def lmms_task(self) -> lmms.Task | None:
        if self.protocol != "lmms-eval":
            return None
        return lmms.TASKS_BY_VERSION[self.lmms_eval_version][self.task]

    def describe(self) -> dict:
        """What the numbers are: the protocol, and per method whether it is comparable with
        lmms-eval's (the TPO paper's) numbers."""
        task = self.lmms_task
        out: dict = {"protocol": self.protocol}
        if task is not None:
            out.update({"lmms_eval_version": task.version, "task": task.name,
                        "pre_prompt": task.pre_prompt, "post_prompt": task.post_prompt,
                        "frame_sampling": "np.linspace(0, num_frames - 1, frames, dtype=int)"})
        for m in self.methods:
            kind = METHOD_KINDS[m]
            if m == "generate":
                kind += (f" (lmms-eval {task.version}'s protocol: comparable with lmms-eval "
                         f"{task.version}'s numbers)" if task is not None else
                         " (this project's prompt and extraction; not lmms-eval's)")
            out[m] = kind
        return out


@dataclass
class Item:
    """One question ready for the model: its prompt ids and video inputs."""

    question: MCQuestion
    prompt: list[int]
    video: dict


def group_by_video(questions: list[MCQuestion]) -> list[tuple[Path, list[MCQuestion]]]:
    """Questions grouped by video, in order of first appearance (each video decodes once)."""
    groups: dict[Path, list[MCQuestion]] = {}
    for q in questions:
        groups.setdefault(q.video, []).append(q)
    return list(groups.items())


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model.eval()`` and no autograd inside; training mode and every parameter's
    ``requires_grad`` (which ``PreferenceModel`` sets) restored on exit."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


class Evaluator:
    """Runs the configured methods over batches of ``Item``s and keeps one record per
    question. ``model`` is a HF video LLM or a ``PreferenceModel`` wrapping one."""

    def __init__(self, model, tokenizer, settings: EvalSettings):
        from tpo_fast.models import PreferenceModel, adapter_for

        self.settings = settings
        self.tokenizer = tokenizer
        if isinstance(model, PreferenceModel):
            self.preference_model, self.model = model, model.model
        else:
            self.model = model
            self.preference_model = (PreferenceModel(model) if "loglik" in settings.methods
                                     else None)
        self.adapter = adapter_for(self.model)
        self.records: list[dict] = []
        self.tied_options = 0  # questions whose option answers tokenize identically
        self.rng = random.Random(settings.seed)  # LongVideoBench's guesses, as lmms-eval's

    def item(self, question: MCQuestion, video: dict, info=None) -> Item:
        text = prompt_text(self.settings, question, info)
        prompt = self.adapter.prompt_ids(self.tokenizer, text, video, system=self.settings.system)
        return Item(question, prompt, video)

    def run(self, items: list[Item]) -> None:
        task = self.settings.lmms_task
        records = [record_of(it.question, task and task.benchmark) for it in items]
        if "loglik" in self.settings.methods:
            for record, result in zip(records, self.loglik(items)):
                record["loglik"] = result
        if "generate" in self.settings.methods:
            for record, result in zip(records, self.generate(items)):
                record["generate"] = result
        self.records.extend(records)

    def loglik(self, items: list[Item]) -> list[dict]:
        s = self.settings
        options = []
        for it in items:
            ids = [self.adapter.response_ids(self.tokenizer, text)
                   for text in answer_texts(it.question, s.answer_format)]
            if len({tuple(x) for x in ids}) < len(ids):
                self.tied_options += 1
            options.append(ids)
        scores = option_logps(self.preference_model, [it.prompt for it in items], options,
                              [it.video for it in items])
        return [{"prediction": choose(sc, [len(x) for x in opts], s.length_normalize),
                 "scores": [round(float(v), 6) for v in sc]}
                for sc, opts in zip(scores, options)]

    def generate(self, items: list[Item]) -> list[dict]:
        from tpo_fast.curate.generation import generate_batch

        # Only tensors reach ``generate`` (Qwen3-VL's frame_timestamps list is already in the
        # prompt, and generate_batch cannot merge non-tensor entries).
        videos = [{k: v for k, v in it.video.items() if torch.is_tensor(v)} for it in items]
        texts = generate_batch(self.model, self.tokenizer, [it.prompt for it in items], videos,
                               max_new_tokens=self.settings.max_new_tokens, do_sample=False,
                               temperature=1.0, top_p=1.0, seed=0)
        task = self.settings.lmms_task
        if task is None:
            return [{"prediction": extract_choice(text, it.question.options), "response": text}
                    for text, it in zip(texts, items)]
        out = []
        for text, it in zip(texts, items):
            # lmms-eval strips the decoded answer before process_results
            got = lmms.extract(task.benchmark, text.strip(), len(it.question.options), self.rng,
                               task.version)
            out.append({"prediction": got.index, "letter": got.letter, "guessed": got.guessed,
                        "response": text})
        return out


def prompt_text(settings: EvalSettings, question: MCQuestion, info=None) -> str:
    """The question as the model reads it under ``settings``' protocol (the video goes where
    the family adapter puts it); ``info`` (the video's ``VideoInfo``) places Video-MME's
    subtitles."""
    task = settings.lmms_task
    if task is None:
        return format_prompt(question, settings.instruction)
    if question.doc is None:
        raise ValueError(f"{question.source}: the lmms-eval protocol needs the question's "
                         "lmms-eval document (read it with the videomme, mlvu or "
                         "longvideobench reader)")
    subtitles = None
    if task.subtitles:
        srt = subtitle_file(question, settings.subtitle_root)
        if srt is not None:
            subtitles = lmms.videomme_subtitle_text(srt, info.fps, info.num_frames,
                                                    task.subtitle_frames)
    return lmms.prompt(task, question.doc, subtitles)


def record_of(question: MCQuestion, benchmark: str | None = None) -> dict:
    """The per-question row of the results (predictions are added per method); under the
    lmms-eval protocol also the categories its report groups by (``categories``)."""
    record = {"qid": question.qid, "source": question.source, "video": str(question.video),
              "task_type": question.task_type, "duration_group": question.duration_group,
              "answer": question.answer, "answer_letter": letter(question.answer)}
    if benchmark is not None and question.doc is not None:
        record["categories"] = {name: _category(question.doc.get(key, "unknown"))
                                for name, key in lmms.CATEGORY_FIELDS[benchmark]}
    return record


def _category(value) -> str:
    """A group name: 600.0 (a parquet float) reads as "600", like the JSON's 600."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def subtitle_file(question: MCQuestion, subtitle_root: str | None) -> Path | None:
    """Video-MME's ``subtitle/<videoID>.srt``: under ``subtitle_root`` if given, else beside
    the video's folder (``data/`` and ``subtitle/`` unzip side by side), or inside it."""
    name = f"{question.doc['videoID']}.srt"
    folders = ([Path(subtitle_root)] if subtitle_root else
               [question.video.parent.parent / "subtitle", question.video.parent / "subtitle"])
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return None


def evaluate(model, tokenizer, questions: list[MCQuestion], *, method: str = "loglik",
             frames: int = 8, batch_size: int = 4, answer_format: str = "letter",
             length_normalize: bool = False, max_new_tokens: int | None = None,
             instruction: str = DEFAULT_INSTRUCTION, system: str | None = None,
             decode: DecodeConfig | None = None, protocol: str = "native",
             task: str | None = None,
             subtitle_root: str | None = None, seed: int = 0,
             lmms_eval_version: str = lmms.LMMS_EVAL_VERSION, progress: bool = True) -> dict:
    """Evaluate ``model`` (a HF video LLM of any ``tpo_fast.models`` family, or a
    ``PreferenceModel``) on multiple-choice ``questions``.

    Args:
        method: "loglik" (argmax option log-likelihood, packed), "generate" (greedy answer,
            letter extraction) or "both".
        frames: frames sampled uniformly from each video (lmms-eval protocol: its
            ``np.linspace(0, n - 1, frames, dtype=int)``; native: rounded positions).
        batch_size: questions per packed forward / ``generate`` call.
        answer_format: loglik scores the answer "B" ("letter") or "B. red" ("letter_text").
        length_normalize: loglik ranks options by mean instead of summed token log-prob.
        decode: the ``decode:`` section (``DecodeConfig``: backend, device, threads, workers;
            ``workers=0`` decodes in this thread; by default DALI on the model's GPU on a
            CUDA machine, else PyAV).
        max_new_tokens: generate's answer length (default: the lmms-eval task's, else 16).
        system: a system prompt for the chat template (as the model was trained with).
        protocol: "lmms-eval" (with ``task``, one of ``protocol.TASKS``) or "native".
        subtitle_root: Video-MME's ``subtitle/`` folder (task ``videomme_w_subtitle``;
            default: beside the videos' folder).
        seed: the LongVideoBench guesses for answers without a letter (lmms-eval's rule).
        lmms_eval_version: "0.7.3", or "0.3" (v0.3.0/v0.3.1, the TPO paper's era: its MLVU
            prompt and score and its Video-MME / MLVU answer extraction).
    Returns:
        ``{"settings", "n_questions", "n_evaluated", "decode_failures", "skipped", <method>:
        {"accuracy", "correct", "total", "unparseable", "by_task_type", "by_duration_group"},
        "predictions": [per-question rows, in question order], "protocol": what the numbers
        are}`` (JSON-serialisable); loglik also reports ``tied_options`` (questions whose
        answers tokenize alike, so cannot be told apart). Under the lmms-eval protocol each
        method also has ``score`` (the task's headline number, 0-100, as lmms-eval aggregates
        it) and ``by_category`` (the groups its report logs).
    """
    tasks = lmms.TASKS_BY_VERSION.get(lmms_eval_version, {})
    if max_new_tokens is None:
        max_new_tokens = (tasks[task].max_new_tokens
                          if protocol == "lmms-eval" and task in tasks else 16)
    settings = EvalSettings(method=method, frames=frames, batch_size=batch_size,
                            answer_format=answer_format, length_normalize=length_normalize,
                            max_new_tokens=max_new_tokens, instruction=instruction,
                            system=system, decode=decode or DecodeConfig(),
                            protocol=protocol, task=task,
                            subtitle_root=subtitle_root, seed=seed,
                            lmms_eval_version=lmms_eval_version)
    from tpo_fast.models import PreferenceModel

    hf_model = model.model if isinstance(model, PreferenceModel) else model
    with eval_mode(hf_model):  # also undoes the trainable flags PreferenceModel sets
        evaluator = Evaluator(model, tokenizer, settings)
        skipped = _run(evaluator, questions, settings, progress)
    results: dict = {"settings": asdict(settings), "n_questions": len(questions),
                     "n_evaluated": len(evaluator.records),
                     "decode_failures": sum(len(g) for _, g, _ in skipped),
                     "skipped": [{"video": str(video), "qids": [q.qid for q in group],
                                  "reason": reason} for video, group, reason in skipped]}
    lmms_task = settings.lmms_task
    for m in settings.methods:
        results[m] = summarize(evaluator.records, m,
                               benchmark=lmms_task.benchmark if lmms_task else None,
                               version=lmms_task.version if lmms_task else None)
    results["protocol"] = settings.describe()
    if "loglik" in settings.methods:
        results["loglik"]["tied_options"] = evaluator.tied_options
    order = {q.qid: i for i, q in enumerate(questions)}
    results["predictions"] = sorted(evaluator.records, key=lambda r: order[r["qid"]])
    return results


def _run(evaluator: Evaluator, questions: list[MCQuestion], settings: EvalSettings,
         progress: bool) -> list[tuple[Path, list[MCQuestion], str]]:
    """Decode, batch and score; returns the skipped (video, questions, reason) groups."""
    from tqdm.auto import tqdm

    from tpo_fast.video import (
        DecodeSettings,
        FramePlan,
        VideoLoader,
        load_video_inputs,
        probe,
    )

    config = evaluator.model.config
    groups = group_by_video(questions)
    # Resolved here, so the decoding threads get an explicit device index.
    decode = DecodeSettings.from_config(settings.decode,
                                        model_device=next(evaluator.model.parameters()).device)
    lmms_eval = settings.protocol == "lmms-eval"

    def load(group: tuple[Path, list[MCQuestion]]):
        """(model inputs, VideoInfo) of one video, its frames sampled as the protocol says."""
        info = probe(group[0])
        plan = (FramePlan.explicit(info, lmms.uniform_frame_indices(info.num_frames,
                                                                    settings.frames))
                if lmms_eval and info.num_frames > 0 else None)
        inputs, _ = load_video_inputs(group[0], config, num_frames=settings.frames, plan=plan,
                                      settings=decode)
        return inputs, info

    loader = VideoLoader(groups, load, num_workers=settings.decode.workers,
                         prefetch=max(2, settings.batch_size))
    bar = tqdm(total=len(questions), desc=f"eval ({settings.method})", unit="q",
               disable=not progress)
    batch: list[Item] = []
    for (_, group), (video, info) in loader:
        for q in group:
            batch.append(evaluator.item(q, video, info))
            if len(batch) == settings.batch_size:
                evaluator.run(batch)
                batch = []
        skipped = sum(len(g) for (_, g), _ in loader.skipped)
        bar.update(len(evaluator.records) + skipped - bar.n)
    if batch:
        evaluator.run(batch)
    bar.update(len(questions) - bar.n)
    bar.close()
    return [(video, group, reason) for (video, group), reason in loader.skipped]
