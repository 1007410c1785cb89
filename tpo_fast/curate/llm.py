"""Text-LLM backends for the query writer and the judge, behind one small interface.

    backend.complete([LLMRequest(id, messages, context), ...]) -> [LLMResult(id, text, error)]

* ``AnnotationLLM`` — writes questions and judgements from ground-truth event annotations in
  ``context`` (tests, the synthetic demo); needs no model.
* ``OpenAIChatLLM`` — any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, TGI, hosted
  APIs) over HTTP: per-request timeout, retries with exponential backoff and jitter on timeouts,
  connection errors, HTTP 429/5xx and malformed replies, a concurrency limit, and an API key read
  from the environment variable named in the config.
* ``HFChatLLM`` — a local Hugging Face model, batched ``generate`` (text only).

A request that fails for good comes back with ``text=None`` and ``error`` set; the stage counts
it and does not record it, so a re-run tries it again.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from tpo_fast.curate.config import LLMConfig
from tpo_fast.curate.manifest import Span


class LLMError(RuntimeError):
    """An LLM backend that cannot be used (bad settings, a missing API key)."""


@dataclass
class LLMRequest:
    id: str
    messages: list[dict]  # OpenAI-style chat messages
    context: dict = field(default_factory=dict)  # structured facts (the annotation backend)
    seed: int = 0


@dataclass
class LLMResult:
    id: str
    text: str | None  # None: failed for good (see error)
    error: str | None = None
    attempts: int = 1


class LLMBackend(Protocol):
    name: str  # recorded as provenance

    def complete(self, requests: list[LLMRequest]) -> list[LLMResult]: ...


# ---- annotation-driven --------------------------------------------------------------------

_STOP = {"a", "an", "the", "of", "on", "in", "to", "at", "and", "is", "it", "its", "screen"}


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP}


def mentions(answer: str, event: str) -> bool:
    """Whether an answer mentions an event: every content word of the event appears in it."""
    return content_words(event) <= content_words(answer)


_LOCALIZED_QUESTIONS = {
    "temporal": "What happens between {t0:.1f}s and {t1:.1f}s of the video?",
    "action": "What takes place in the video from {t0:.1f}s to {t1:.1f}s?",
    "descriptive": "Describe the video between {t0:.1f}s and {t1:.1f}s.",
    "object": "What can be seen in the video between {t0:.1f}s and {t1:.1f}s?",
    "information_extraction": "Which colours and shapes are shown from {t0:.1f}s to {t1:.1f}s?",
    "summarisation": "Summarise the part of the video from {t0:.1f}s to {t1:.1f}s.",
}
_COMPREHENSIVE_QUESTIONS = {
    "summarisation": "Summarise everything that happens in the video, in order.",
    "temporal": "In what order do things happen in the video?",
    "descriptive": "Describe the whole video.",
    "action": "What takes place over the course of the video?",
    "object": "What can be seen over the whole video?",
    "information_extraction": "Which colours and shapes appear in the video?",
}


def template_vocabulary() -> set[str]:
    """Every lower-cased word of the annotation backend's question templates (for word-level
    tokenizers such as the demo's)."""
    text = " ".join([*_LOCALIZED_QUESTIONS.values(), *_COMPREHENSIVE_QUESTIONS.values()])
    return set(re.findall(r"[a-z]+", text.lower()))


class AnnotationLLM:
    """Questions and judgements from ``context["events"]`` (spans with text).

    Query context: ``{"purpose": "query", "events", "kind", "t0", "t1", "task"}`` -> a templated
    question about the events in the target, or "None" (no event there, or a task type the
    events cannot support: causal, spatial). Judge context: ``{"purpose": "judge", "events",
    "t0", "t1", "question", "chosen", "rejected"}`` -> JSON with TPO's three checks, where a
    response is correct when it mentions every event of the target.
    """

    name = "annotation"

    def complete(self, requests: list[LLMRequest]) -> list[LLMResult]:
        return [LLMResult(r.id, self._one(r.context)) for r in requests]

    def _one(self, ctx: dict) -> str:
        events = [Span(e["start"], e["end"], e["text"]) for e in ctx.get("events", [])]
        inside = [e for e in events if e.overlaps(ctx["t0"], ctx["t1"])]
        if ctx["purpose"] == "query":
            table = _LOCALIZED_QUESTIONS if ctx["kind"] == "localized" else _COMPREHENSIVE_QUESTIONS
            template = table.get(ctx["task"])
            if not inside or template is None:
                return "None"
            return template.format(t0=ctx["t0"], t1=ctx["t1"])
        if ctx["purpose"] == "judge":
            return json.dumps(judge_from_events(events, ctx["t0"], ctx["t1"], ctx["question"],
                                                ctx["chosen"], ctx["rejected"]))
        raise ValueError(f"annotation backend: unknown purpose {ctx['purpose']!r}")


def judge_from_events(events: list[Span], t0: float, t1: float, question: str, chosen: str,
                      rejected: str) -> dict:
    """TPO's three checks from ground truth: an answer is correct when it mentions every event
    of the target [t0, t1] and no event that happens only outside it."""
    expected = [e for e in events if e.overlaps(t0, t1)]
    inside = {e.text for e in expected}
    outside = [e for e in events if not e.overlaps(t0, t1) and e.text not in inside]

    def correct(answer: str) -> bool:
        return (bool(expected) and all(mentions(answer, e.text) for e in expected)
                and not any(mentions(answer, e.text) for e in outside))

    chosen_ok = correct(chosen)
    return {"chosen_better": chosen_ok and not correct(rejected),
            "consistent": bool(expected) and bool(question.strip()),
            "chosen_correct": chosen_ok,
            "reason": f"{len(expected)} event(s) in the target, {len(outside)} outside"}


# ---- OpenAI-compatible HTTP ---------------------------------------------------------------

class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


class OpenAIChatLLM:
    """An OpenAI-compatible chat endpoint; ``complete`` sends up to ``concurrency`` requests at
    once and retries each one (``max_retries`` times, backoff ``backoff_s * 2**k`` + jitter,
    capped at ``max_backoff_s``) on timeouts, connection errors, HTTP 429/5xx and malformed
    replies. Other HTTP errors (400, 401, 404, ...) fail at once."""

    def __init__(self, cfg: LLMConfig, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        self.name = f"openai:{cfg.model}"
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._sleep = sleep
        self._key = None
        if cfg.api_key_env:
            self._key = os.environ.get(cfg.api_key_env)
            if not self._key:
                raise LLMError(f"the API key variable {cfg.api_key_env} (api_key_env) is not set "
                               "or empty")

    def complete(self, requests: list[LLMRequest]) -> list[LLMResult]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(requests))) as pool:
            return list(pool.map(self._complete_one, requests))

    def _complete_one(self, request: LLMRequest) -> LLMResult:
        tries = self.cfg.max_retries + 1
        last = ""
        for attempt in range(tries):
            try:
                return LLMResult(request.id, self._post(request), attempts=attempt + 1)
            except _Fatal as exc:
                return LLMResult(request.id, None, error=str(exc), attempts=attempt + 1)
            except _Retryable as exc:
                last = str(exc)
            if attempt + 1 < tries:
                self._sleep(self._backoff(attempt))
        return LLMResult(request.id, None, error=f"gave up after {tries} tries: {last}",
                         attempts=tries)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** attempt)
        return delay * (0.5 + random.random() / 2)

    def _post(self, request: LLMRequest) -> str:
        body = {"model": self.cfg.model, "messages": request.messages,
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens,
                "seed": request.seed % 2**31}
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        http = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers,
                                      method="POST")
        try:
            with urllib.request.urlopen(http, timeout=self.cfg.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            message = f"HTTP {exc.code} from {self.url}: {detail}"
            raise (_Retryable if exc.code == 429 or exc.code >= 500 else _Fatal)(message) from None
        except TimeoutError as exc:
            raise _Retryable(f"timed out after {self.cfg.timeout_s}s ({exc})") from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            if "timed out" in str(exc):
                raise _Retryable(f"timed out after {self.cfg.timeout_s}s") from None
            raise _Retryable(f"cannot reach {self.url}: {exc}") from None
        return _reply_text(raw)


def _reply_text(raw: bytes) -> str:
    """``choices[0].message.content`` of a chat-completions reply (``_Retryable`` if malformed)."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise _Retryable(f"malformed reply: {raw[:120]!r}") from None
    if not isinstance(content, str):
        raise _Retryable(f"malformed reply: content is {type(content).__name__}")
    return content


# ---- local Hugging Face model -------------------------------------------------------------

class HFChatLLM:
    """A local model's chat template + batched greedy (or sampled) ``generate``, text only."""

    def __init__(self, model, tokenizer, name: str, max_new_tokens: int = 512,
                 temperature: float = 0.0, batch_size: int = 16):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_new_tokens, self.temperature, self.batch_size = (max_new_tokens, temperature,
                                                                  batch_size)

    def complete(self, requests: list[LLMRequest]) -> list[LLMResult]:
        from tpo_fast.curate.generation import generate_batch

        out = []
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i:i + self.batch_size]
            prompts = [self._prompt(r.messages) for r in chunk]
            texts = generate_batch(self.model, self.tokenizer, prompts, [None] * len(chunk),
                                   max_new_tokens=self.max_new_tokens,
                                   do_sample=self.temperature > 0,
                                   temperature=self.temperature or 1.0, top_p=1.0,
                                   seed=chunk[0].seed)
            out += [LLMResult(r.id, t) for r, t in zip(chunk, texts)]
        return out

    def _prompt(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def build_llm(cfg: LLMConfig, policy=None) -> LLMBackend:
    """The backend a query/judge config asks for (``policy``: the loaded HFPolicy, for
    ``kind: policy``)."""
    if cfg.kind == "annotation":
        return AnnotationLLM()
    if cfg.kind == "openai":
        return OpenAIChatLLM(cfg)
    if cfg.kind == "policy":
        if not hasattr(policy, "model"):
            raise LLMError("kind: policy needs an HF policy (policy.kind: hf)")
        model, tokenizer, name = policy.model, policy.tokenizer, policy.name
    else:
        from tpo_fast.curate.policy import load_video_llm

        if cfg.tiny:
            model, tokenizer, name = load_video_llm(None, cfg.tiny, cfg.dtype, cfg.device)
        else:
            model, tokenizer, name = _load_text_llm(cfg)
    return HFChatLLM(model, tokenizer, name, max_new_tokens=cfg.max_tokens,
                     temperature=cfg.temperature, batch_size=cfg.batch_size)


def _load_text_llm(cfg: LLMConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tpo_fast.curate.policy import _DTYPES, resolve_device

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=_DTYPES[cfg.dtype])
    return model.to(resolve_device(cfg.device)).eval(), tokenizer, cfg.model
