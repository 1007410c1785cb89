"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 (an ephemeral port):
fixed answers, a timeout, HTTP 500s, malformed JSON; then the whole pipeline through it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tpo_fast.curate.config import LLMConfig, load_curate_config
from tpo_fast.curate.llm import LLMError, LLMRequest, OpenAIChatLLM
from tpo_fast.curate.pipeline import run_curation
from tpo_fast.curate.tasks import JUDGE_SYSTEM, QUERY_SYSTEM
from tpo_fast.synthetic.curate import make_synthetic_videos


class ScriptedServer:
    """A chat-completions server whose replies follow a script: a list of modes consumed one
    per request ("ok", "slow", "500", "400", "badjson", "noshape"), then ``default``."""

    def __init__(self):
        self.script: list[str] = []
        self.default = "ok"
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.delay = 0.0  # seconds every "ok" reply waits (to see concurrency)
        self.answer = lambda body: "fixed answer"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self.lock:
            self.requests.append(body)
            self.headers.append(dict(h.headers))
            mode = self.script.pop(0) if self.script else self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._reply(h, mode, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _reply(self, h: BaseHTTPRequestHandler, mode: str, body: dict) -> None:
        if mode == "slow":
            time.sleep(1.0)
            mode = "ok"
        status, payload = {
            "500": (500, b'{"error": "overloaded"}'),
            "400": (400, b'{"error": "bad model"}'),
            "badjson": (200, b'{"choices": [{"message": {"content": "cut off'),
            "noshape": (200, b'{"result": "not a chat completion"}'),
        }.get(mode, (200, None))
        if payload is None:
            time.sleep(self.delay)
            payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": self.answer(body)}}]}
                                 ).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def backend(server: ScriptedServer, sleeps: list[float] | None = None, **kw) -> OpenAIChatLLM:
    cfg = LLMConfig(kind="openai", model="test-model", base_url=server.url,
                    **{"timeout_s": 0.3, "max_retries": 2, "backoff_s": 0.01, **kw})
    return OpenAIChatLLM(cfg, sleep=(sleeps.append if sleeps is not None else time.sleep))


def ask(llm: OpenAIChatLLM, n: int = 1):
    return llm.complete([LLMRequest(f"r{i}", [{"role": "user", "content": f"question {i}"}],
                                    seed=i) for i in range(n)])


def test_fixed_answers_with_key_and_concurrency_limit(server, monkeypatch):
    monkeypatch.setenv("CURATE_TEST_KEY", "sk-test")
    server.delay = 0.1
    server.answer = lambda body: "echo: " + body["messages"][-1]["content"]
    results = ask(backend(server, concurrency=3, api_key_env="CURATE_TEST_KEY"), 9)
    assert [r.text for r in results] == [f"echo: question {i}" for i in range(9)]
    assert all(r.error is None and r.attempts == 1 for r in results)
    assert 2 <= server.max_in_flight <= 3
    assert {h["Authorization"] for h in server.headers} == {"Bearer sk-test"}
    body = server.requests[0]
    assert body["model"] == "test-model" and body["max_tokens"] == 512
    assert body["messages"][0]["role"] == "user"


def test_missing_api_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv("CURATE_MISSING_KEY", raising=False)
    with pytest.raises(LLMError, match="CURATE_MISSING_KEY"):
        backend(server, api_key_env="CURATE_MISSING_KEY")


def test_timeout_is_retried_then_succeeds(server):
    server.script = ["slow"]
    sleeps: list[float] = []
    (result,) = ask(backend(server, sleeps))
    assert result.text == "fixed answer" and result.attempts == 2
    assert len(server.requests) == 2 and len(sleeps) == 1


def test_timeouts_give_up_with_a_clear_error(server):
    server.default = "slow"
    sleeps: list[float] = []
    start = time.perf_counter()
    (result,) = ask(backend(server, sleeps, max_retries=1))
    assert result.text is None and result.attempts == 2
    assert "gave up after 2 tries" in result.error and "timed out" in result.error
    assert time.perf_counter() - start < 2.0  # two 0.3 s timeouts, not the server's 1 s


def test_http_500_is_retried_with_exponential_backoff(server):
    server.script = ["500", "500"]
    sleeps: list[float] = []
    (result,) = ask(backend(server, sleeps, max_retries=3, backoff_s=1.0, max_backoff_s=1.5))
    assert result.text == "fixed answer" and result.attempts == 3
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 0.75 <= sleeps[1] <= 1.5  # 1 * 2**k, jittered, capped


def test_persistent_500_is_a_counted_failure(server):
    server.default = "500"
    sleeps: list[float] = []
    results = ask(backend(server, sleeps, max_retries=2), 2)
    assert all(r.text is None and r.attempts == 3 for r in results)
    assert all("HTTP 500" in r.error and "overloaded" in r.error for r in results)
    assert len(server.requests) == 6 and len(sleeps) == 4


@pytest.mark.parametrize("mode", ["badjson", "noshape"])
def test_malformed_json_is_retried_then_reported(server, mode):
    server.script = [mode]
    (ok,) = ask(backend(server, []))
    assert ok.text == "fixed answer" and ok.attempts == 2
    server.default = mode
    (bad,) = ask(backend(server, []))
    assert bad.text is None and "malformed reply" in bad.error and bad.attempts == 3


def test_client_errors_are_not_retried(server):
    server.default = "400"
    sleeps: list[float] = []
    (result,) = ask(backend(server, sleeps))
    assert result.text is None and result.attempts == 1 and sleeps == []
    assert "HTTP 400" in result.error and "bad model" in result.error


def test_unreachable_server_is_retried_then_reported(server):
    server.close()
    (result,) = ask(backend(server, []))
    assert result.text is None and result.attempts == 3 and "cannot reach" in result.error


def _fixed_replies(body: dict) -> str:
    """Questions for the query writer, a positive verdict for the judge."""
    system = body["messages"][0]["content"]
    if system == QUERY_SYSTEM:
        return "Question: What colour does the screen turn?"
    assert system == JUDGE_SYSTEM
    return ('Verdict: {"chosen_better": true, "consistent": true, "chosen_correct": true, '
            '"reason": "ok"}')


def test_pipeline_through_the_endpoint_counts_failures_and_resumes(server, tmp_path):
    manifest = make_synthetic_videos(tmp_path / "videos", n_videos=2, seed=3)
    out = tmp_path / "out"
    overrides = [f"input.videos={manifest}", f"run.output_dir={out}", "run.progress=false",
                 "policy.kind=annotation", "queries.tasks_per_target=1",
                 "segments.lengths=[2.0]", "mix.target_size=1000", "mix.fill=true"]
    for role in ("query", "judge"):
        overrides += [f"{role}.kind=openai", f"{role}.model=test-model",
                      f"{role}.base_url={server.url}", f"{role}.timeout_s=2",
                      f"{role}.max_retries=1", f"{role}.backoff_s=0.01"]
    cfg = load_curate_config(None, overrides)
    server.answer = _fixed_replies

    # The judge's endpoint fails (HTTP 500) for the first run: pairs are counted as failed,
    # not recorded, and no pair is written.
    original = server._reply

    def reply(h, mode, body):
        if body["messages"][0]["content"] == JUDGE_SYSTEM and failing["on"]:
            mode = "500"
        original(h, mode, body)

    failing = {"on": True}
    server._reply = reply
    first = run_curation(cfg)
    judged = first["ranks"][0]["stages"]["judged"]
    assert judged["failed"] > 0 and judged["done"] + judged["failed"] == judged["total"]
    assert set(first["drop_reasons"]) <= {"query:none", "rule:identical", "rule:near_identical"}
    assert "HTTP 500" in judged["failures"][0]
    assert first["counts"]["kept"] == 0 and not Path(out / "pairs.jsonl").read_text()

    from tpo_fast.curate.cli import retriable_failures

    assert retriable_failures(first) == judged["failed"]
    failing["on"] = False
    second = run_curation(cfg)
    assert retriable_failures(second) == 0
    stages = second["ranks"][0]["stages"]
    assert stages["queries"]["done"] == 0 and stages["responses"]["done"] == 0  # resumed
    assert stages["judged"]["done"] == judged["failed"] and stages["judged"]["failed"] == 0
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == second["counts"]["kept"] > 0
    assert {p["prompt"] for p in pairs} == {"What colour does the screen turn?"}
    assert {p["models"]["query"] for p in pairs} == {"openai:test-model"}
    assert {p["models"]["judge"] for p in pairs} == {"openai:test-model"}
    assert all(p["judgement"]["chosen_correct"] for p in pairs)
