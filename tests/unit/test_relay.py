"""What the relay learns from engine chunks without changing them."""

from __future__ import annotations

import json

from worker.relay import Tally, _worth_parsing


def test_plain_delta_chunks_skip_parsing_but_usage_and_finish_do_not() -> None:
    delta = json.dumps({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}).encode()
    finish = json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode()
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
    assert not _worth_parsing(delta)
    assert _worth_parsing(finish) and _worth_parsing(usage)
    assert _worth_parsing(finish.replace(b'": "', b'":"'))  # compact JSON too


def test_tally_keeps_last_usage_and_finish_reason() -> None:
    tally = Tally()
    tally.observe({"choices": [{"index": 0, "text": "a", "finish_reason": None}]})
    tally.observe({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    tally.observe({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    assert tally.tokens_seen and tally.finish_reason == "length" and tally.usage["total_tokens"] == 5
