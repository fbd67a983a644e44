"""The tests' teacher: the demo's loopback stand-in with fault injection, keyed by a marker in the caption.

Markers (in the caption the stage sends):
  [429] / [503]  first attempt answers 429 / 503 with Retry-After: 1
  [500]          first attempt answers 500
  [slow]         first attempt sleeps 3 s (past the test's 1 s timeout)
  [malformed]    first attempt answers 200 with a body that is not JSON
  [empty]        every attempt answers with empty content
  [length]       every attempt ends with finish_reason "length"
  [refuse]       every attempt refuses
  [400]          every attempt answers 400 (never retried)
  [echo]         answers with the instructions it was given
  [caption]      answers about "the caption"
  [loop]         answers with a degenerate loop
"""

from __future__ import annotations

import json
import time

from mmcurate.demo.teacher import StandInTeacher

RETRY_AFTER_S = 1


class FaultyTeacher(StandInTeacher):
    def fault(self, payload: dict, attempt: int):
        caption = self.caption_of(payload)
        task = self.task_of(payload)
        if task == "judge":
            return None

        def reply(text, finish="stop"):
            return 200, {}, json.dumps(self.completion(payload, text, finish)).encode()

        if attempt == 0:
            if "[429]" in caption:
                return 429, {"Retry-After": str(RETRY_AFTER_S)}, b'{"error": {"message": "slow down"}}'
            if "[503]" in caption:
                return 503, {"Retry-After": str(RETRY_AFTER_S)}, b'{"error": {"message": "overloaded"}}'
            if "[500]" in caption:
                return 500, {}, b'{"error": {"message": "boom"}}'
            if "[slow]" in caption:
                time.sleep(3)
            if "[malformed]" in caption:
                return 200, {}, b'{"choices": [ {"message": '
        if "[400]" in caption:
            return 400, {}, b'{"error": {"message": "bad request: image too large"}}'
        if "[empty]" in caption:
            return reply("")
        if "[length]" in caption:
            return reply(self.content(payload)[:40], "length")
        if "[refuse]" in caption:
            return reply("I'm sorry, but I can't help with identifying things in this image.")
        if "[echo]" in caption:
            return reply(json.dumps({"turns": [{"question": "q?", "answer": self.request_text(payload)}],
                                     "question": "q?", "answer": self.request_text(payload)}))
        if "[caption]" in caption:
            text = "According to the caption, this is a picture of something nice and clear to see."
            return reply(json.dumps({"turns": [{"question": "What is it?", "answer": text}],
                                     "question": "What is it?", "answer": text}) if task != "detail" else text)
        if "[loop]" in caption:
            text = "It is a shape. " * 30
            return reply(json.dumps({"turns": [{"question": "What is it?", "answer": text}],
                                     "question": "What is it?", "answer": text}) if task != "detail" else text)
        return None
