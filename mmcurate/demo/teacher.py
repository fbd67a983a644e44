"""A STAND-IN teacher for the demo: an OpenAI-compatible chat-completions server on loopback.

It is not a model and does not look at the image: it writes well-formed answers out of the
caption it is sent, so that a newcomer sees the whole synthesis path (requests, cache,
validation, llava.json, report) offline. It names itself `mmcurate-stand-in-teacher` in every
response. Point `synthesis.endpoint` at a real server (vLLM, SGLang, TGI, Ollama, a hosted API)
for real data.

Subclasses (the tests' fault-injecting double) override `fault()`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "mmcurate-stand-in-teacher"
_ASK = ("What can you tell me about the {subject} in this picture?", "What is the {subject} like here?",
        "Can you describe the {subject} you see?", "What stands out about this {subject}?",
        "How would you describe the {subject} in the image?", "What does the {subject} look like?")
_WHERE = ("Where is the {subject} placed in the frame?", "Which part of the picture does the {subject} take up?",
          "How much of the frame does the {subject} fill?", "Is the {subject} near the centre of the image?",
          "Where in the image can the {subject} be seen?", "How is the {subject} positioned?")
_WHY = ("Why might someone have taken this picture of the {subject}?", "What could this image of the {subject} be used for?",
        "Why is the {subject} shown this way?", "What might the photographer have wanted to show with the {subject}?",
        "For what purpose could this picture of the {subject} have been made?",
        "Why would the {subject} be the focus of this picture?")
_NOTE = re.compile(r"orientation only\):\s*(.*)")


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


_STOP = frozenset({"in", "on", "with", "at", "under", "against", "looking", "standing", "parked", "blurred", "by"})


def _subject(caption: str) -> str:
    """The caption's head noun phrase ("a tabby cat looking at the camera" -> "tabby cat")."""
    words = re.sub(r"[^\w\s'-]", " ", caption.split(",")[0]).split()
    while words and words[0].lower() in ("a", "an", "the", "part", "of"):
        words = words[1:]
    head = []
    for word in words:
        if head and word.lower() in _STOP:
            break
        head.append(word)
    return " ".join(head[:6]) or "scene"


class StandInTeacher:
    """Serves /v1/chat/completions on 127.0.0.1; counts requests; optional latency and capacity."""

    def __init__(self, port: int = 0, latency_s: float = 0.0, capacity: int | None = None):
        self.latency_s = latency_s
        self.capacity = threading.BoundedSemaphore(capacity) if capacity else None
        self.lock = threading.Lock()
        self.requests = 0
        self.log: list[dict] = []  # one entry per request: time, task key, status
        self.attempts: dict[tuple, int] = {}  # requests per (caption, task) so far
        self.authorization_seen: set[str] = set()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as real servers do: no 40 ms delayed-ACK stall per keep-alive reply

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                auth = self.headers.get("Authorization")
                status, headers, body = teacher.handle(self.path, raw, auth)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self._httpd = _Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="teacher", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> StandInTeacher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ------------------------------------------------------------------ answering
    @staticmethod
    def request_text(payload: dict) -> str:
        parts = []
        for message in payload.get("messages") or []:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text"]
        return "\n".join(parts)

    @classmethod
    def task_of(cls, payload: dict) -> str:
        text = cls.request_text(payload)
        if '"accurate"' in text:
            return "judge"
        if '"turns"' in text:
            return "conversation"
        if '"question"' in text:
            return "reasoning"
        return "detail"

    @classmethod
    def caption_of(cls, payload: dict) -> str:
        found = _NOTE.search(cls.request_text(payload))
        return found.group(1).strip() if found else ""

    @staticmethod
    def image_variant(payload: dict, n: int) -> int:
        """A number in [0, n) from the image bytes sent: the stand-in words its questions by it."""
        import hashlib

        for message in payload.get("messages") or []:
            for part in message.get("content") if isinstance(message.get("content"), list) else []:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    return int(hashlib.sha256(url.encode()).hexdigest(), 16) % n
        return 0

    def content(self, payload: dict) -> str:
        """The answer text for a well-behaved request."""
        task, caption = self.task_of(payload), self.caption_of(payload)
        subject = _subject(caption)
        v = self.image_variant(payload, len(_ASK))
        if task == "judge":
            return json.dumps({"accurate": True, "complete": True})
        if task == "conversation":
            return json.dumps({"turns": [
                {"question": _ASK[v].format(subject=subject),
                 "answer": f"The picture shows {caption}. It is the clear focus of the frame."},
                {"question": _WHERE[v].format(subject=subject),
                 "answer": f"The {subject} fills most of the frame, close to its centre."},
            ]})
        if task == "reasoning":
            return "```json\n" + json.dumps({
                "question": _WHY[v].format(subject=subject),
                "answer": f"Because the {subject} is the clear subject: the framing and the light keep the "
                          f"attention on it, which suggests it was photographed on purpose to show it.",
            }) + "\n```"
        return (f"The image shows {caption}. The {subject} is the main subject and is seen clearly; "
                "the colours and the light look natural, and the composition keeps the attention on it.")

    def fault(self, payload: dict, attempt: int) -> tuple[int, dict, bytes] | None:
        """A response to send instead of the answer (tests inject faults here); None: answer."""
        return None

    def handle(self, path: str, raw: bytes, auth: str | None) -> tuple[int, dict, bytes]:
        if auth:
            with self.lock:
                self.authorization_seen.add(auth)
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, b'{"error": {"message": "not found"}}'
        try:
            payload = json.loads(raw)
        except ValueError:
            return 400, {}, b'{"error": {"message": "request body is not JSON"}}'
        key = (self.caption_of(payload), self.task_of(payload))
        with self.lock:
            self.requests += 1
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            entry = {"time": time.monotonic(), "key": key}
            self.log.append(entry)
        if self.capacity:
            self.capacity.acquire()
        try:
            if self.latency_s:
                time.sleep(self.latency_s)
            injected = self.fault(payload, attempt)
            if injected is not None:
                entry["status"] = injected[0]
                return injected
            text = self.content(payload)
        finally:
            if self.capacity:
                self.capacity.release()
        entry["status"] = 200
        return 200, {}, json.dumps(self.completion(payload, text)).encode()

    def completion(self, payload: dict, text: str | None, finish_reason: str = "stop") -> dict:
        prompt_words = len(self.request_text(payload).split())
        return {
            "id": f"chatcmpl-standin-{self.requests}", "object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_words + 256, "completion_tokens": len((text or "").split()),
                      "total_tokens": prompt_words + 256 + len((text or "").split())},
        }
