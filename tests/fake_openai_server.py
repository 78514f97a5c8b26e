"""A real, deterministic OpenAI-compatible judge server for tests and benchmarks.

Serves `POST /v1/chat/completions` over HTTP (uvicorn, a plain ASGI app) and answers like an
LLM judge, deterministically: it finds the request and the response(s) between the api judge's
markers ([Request] … [End of request], [Response] … or [Response A]/[Response B] …) and scores
each response 1..10: an arithmetic prompt "Q:a+b=" scores 10 − |got − right| (at least 1; 1
without a number); `[[score:N]]` in a response forces N; `[[answer:TEXT]]` makes the server answer TEXT
verbatim (unparseable answers); anything else scores by a hash of its text.

Pointwise answers end "Score: N/10". Pairwise answers end "Winner: A|B|tie" (`--pairwise
winner`; with `--first-wins-ties` a tie goes to the first-shown response, i.e. position bias) or
"P(A) = p" (`--pairwise prob`: p = σ(s_A − s_B) + `--position-bias`, clipped to [0, 1]).
Every answer carries `usage` (tokens ≈ characters / 4).

Knobs: `--latency-ms` (sleep before answering), `--fault-rate` with `--fault-seed`: that
fraction of calls (of the `--fault-kinds`) returns 429 (with Retry-After `--retry-after` s,
as delta-seconds, an HTTP-date or alternately), 500, or hangs `--hang-s` before answering
(past the client's timeout). Whether a call faults is a hash of (seed, request body, how many
times that body was asked), so a run is deterministic whatever the order requests arrive in.
`--require-key-env NAME` rejects (401) requests whose bearer token is not the value of $NAME.
`--echo-key` repeats the caller's bearer token in every answer and error body (a badly
behaved proxy). `GET /stats` returns the request counts; `POST /reset` zeroes them.

    python tests/fake_openai_server.py --port 0 --latency-ms 100   # prints "listening on PORT"

`serve(...)` starts it in a subprocess and yields its base URL (…/v1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

FORCED_SCORE = re.compile(r"\[\[score:(\d+)\]\]")
FORCED_ANSWER = re.compile(r"\[\[answer:(.*?)\]\]", re.S)
ARITHMETIC = re.compile(r"Q:(-?\d+)([+\-*])(-?\d+)=")


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    j = text.find(end, i + len(start))
    return None if i < 0 or j < 0 else text[i + len(start) : j].strip()


def _draw(*parts: object) -> float:
    """A uniform draw in [0, 1) that is a pure function of its arguments."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class JudgeLogic:
    """What the server answers; see the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts: Counter[str] = Counter()
        self.asked: Counter[str] = Counter()

    def score(self, request: str, response: str) -> int:
        if m := FORCED_SCORE.search(response):
            return int(m.group(1))
        if m := ARITHMETIC.search(request):
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            want = {"+": a + b, "-": a - b, "*": a * b}[op]
            got = re.search(r"-?\d+", response)
            return 1 if got is None else max(1, 10 - abs(int(got.group()) - want))
        return 1 + int(_draw("score", response) * 10)

    def answer(self, content: str) -> str | None:
        request = _between(content, "[Request]", "[End of request]") or ""
        if (a := _between(content, "[Response A]", "[End of response A]")) is not None:
            b = _between(content, "[Response B]", "[End of response B]") or ""
            if m := FORCED_ANSWER.search(a):
                return m.group(1)
            sa, sb = self.score(request, a), self.score(request, b)
            if self.args.pairwise == "prob":
                p = 1.0 / (1.0 + math.exp(-(sa - sb))) + self.args.position_bias
                return f"Comparing both. P(A) = {min(1.0, max(0.0, p)):.6f}"
            if sa == sb:
                return "They are equally good. Winner: " + (
                    "A" if self.args.first_wins_ties else "tie"
                )
            return (
                f"Response {'A' if sa > sb else 'B'} is better. Winner: {'A' if sa > sb else 'B'}"
            )
        if (r := _between(content, "[Response]", "[End of response]")) is not None:
            if m := FORCED_ANSWER.search(r):
                return m.group(1)
            return f"I checked the response against the request. Score: {self.score(request, r)}/10"
        return None

    def fault(self, body: bytes) -> str | None:
        """None, or "429" / "500" / "hang" for this call (deterministic, see the docstring)."""
        if self.args.fault_rate <= 0:
            return None
        key = hashlib.sha256(body).hexdigest()
        self.asked[key] += 1
        n = self.asked[key]
        if _draw(self.args.fault_seed, key, n) >= self.args.fault_rate:
            return None
        kinds = self.args.fault_kinds.split(",")
        return kinds[int(_draw("kind", self.args.fault_seed, key, n) * len(kinds))]


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _send(send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def make_app(args: argparse.Namespace) -> Any:
    """The ASGI app."""
    logic = JudgeLogic(args)
    key = os.environ.get(args.require_key_env) if args.require_key_env else None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        if path == "/stats":
            return await _send(send, 200, dict(logic.counts), [])
        if path == "/reset" and method == "POST":
            logic.counts.clear()
            logic.asked.clear()
            return await _send(send, 200, {}, [])
        if path != "/v1/chat/completions" or method != "POST":
            return await _send(send, 404, {"error": {"message": f"no route {path}"}}, [])
        body = await _read_body(receive)
        logic.counts["requests"] += 1
        if any(k.startswith(b"x-stainless-") for k, _ in scope["headers"]):
            logic.counts["with_telemetry_headers"] += 1
        if key is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            if auth != f"Bearer {key}":
                logic.counts["unauthorized"] += 1
                error = {"error": {"message": "invalid api key", "type": "auth"}}
                return await _send(send, 401, error, [])
        fault = logic.fault(body)
        if fault is not None:
            logic.counts[f"fault_{fault}"] += 1
        # A badly behaved proxy (--echo-key) repeats the caller's bearer token everywhere.
        echo = f" (you sent {dict(scope['headers']).get(b'authorization', b'').decode()})"
        echo = echo if args.echo_key else ""
        if fault == "429":
            form = args.retry_after_form
            if form == "both":  # alternate delta-seconds and HTTP-date (RFC 9110 §10.2.3)
                form = "seconds" if logic.counts["fault_429"] % 2 else "date"
            when = (
                str(args.retry_after)
                if form == "seconds"
                else email.utils.formatdate(time.time() + args.retry_after, usegmt=True)
            )
            error = {"error": {"message": "rate limited" + echo, "type": "rate_limit"}}
            return await _send(send, 429, error, [(b"retry-after", when.encode())])
        if fault == "500":
            return await _send(send, 500, {"error": {"message": "internal error" + echo}}, [])
        if fault == "hang":
            await asyncio.sleep(args.hang_s)
        if args.latency_ms:
            await asyncio.sleep(args.latency_ms / 1000)
        request = json.loads(body)
        content = "\n".join(
            m["content"] for m in request["messages"] if isinstance(m.get("content"), str)
        )
        text = logic.answer(content)
        if text is None:
            error = {"error": {"message": "no [Response] block in the messages"}}
            return await _send(send, 400, error, [])
        logic.counts["answered"] += 1
        text += echo
        prompt_tokens, completion_tokens = len(content) // 4 + 1, len(text) // 4 + 1
        payload = {
            "id": f"chatcmpl-{logic.counts['requests']}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake-judge"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        await _send(send, 200, payload, [])

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed).")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--pairwise", choices=["winner", "prob"], default="winner")
    p.add_argument("--first-wins-ties", action="store_true")
    p.add_argument("--position-bias", type=float, default=0.0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument("--fault-kinds", default="429,500,hang", help="Comma list of those three.")
    p.add_argument("--hang-s", type=float, default=5.0)
    p.add_argument("--retry-after", type=int, default=1, help="Seconds a 429 asks to wait.")
    p.add_argument("--retry-after-form", choices=["seconds", "date", "both"], default="both")
    p.add_argument("--echo-key", action="store_true", help="Echo the bearer token back.")
    p.add_argument("--require-key-env", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        make_app(args), log_level="warning", access_log=False, backlog=2048, lifespan="on"
    )
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def serve(*flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run the server in a subprocess with these command-line flags; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--port", "0", *flags],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"fake OpenAI server did not start: {line!r}")
        base = f"http://127.0.0.1:{int(line.split()[-1])}"
        for _ in range(100):  # the socket is bound before uvicorn accepts: wait for it
            try:
                stats(base)
                break
            except OSError:
                time.sleep(0.05)
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def stats(url: str) -> dict[str, int]:
    """The server's request counts (url: the base URL, with or without /v1)."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as r:
        return json.loads(r.read())


def reset(url: str) -> None:
    """Zero the server's counts and fault history."""
    req = urllib.request.Request(url.removesuffix("/v1") + "/reset", method="POST")
    with urllib.request.urlopen(req, timeout=5):
        pass


if __name__ == "__main__":
    main()
