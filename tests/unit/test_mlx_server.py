"""What the mlx engine program adds around mlx-lm's server: stop strings matched on the text however the tokens
split it (cut_at_stops), and a listen backlog deep enough for a burst of connections (_deep_backlog)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.engines.programs.mlx_server import _deep_backlog, cut_at_stops, whole_characters
from worker.shared.models import bundled_dir


@dataclass
class Piece:  # the fields of mlx-lm's server Response that cut_at_stops reads
    text: str
    finish_reason: str | None = None


def run(texts: list[str], words: list[str], end: str | None = "length") -> tuple[list[Piece], int]:
    cancels: list[int] = []
    pieces = [Piece(t) for t in texts[:-1]] + [Piece(texts[-1], end)]
    out = list(cut_at_stops(pieces, words, lambda: cancels.append(1)))
    return out, len(cancels)


def test_a_stop_inside_a_token_cuts_the_text_before_it_and_cancels() -> None:
    out, cancels = run(["The", " capital", " is", " Paris", ".", " It"], ["Paris"])
    assert "".join(p.text for p in out) == "The capital is "
    assert out[-1].finish_reason is None and cancels == 1  # the server then ends with finish_reason "stop"
    assert len(out) == 4  # one response per token consumed: the server counts them as completion tokens


def test_a_stop_split_across_tokens_is_held_back_not_streamed() -> None:
    out, cancels = run(["I say Pa", "r", "is now"], ["Paris"])
    assert [p.text for p in out] == ["I say ", "", ""] and cancels == 1


def test_held_text_that_turns_out_not_to_stop_is_sent_in_order() -> None:
    out, cancels = run(["a Pa", "rty", " ok"], ["Paris"])
    assert [p.text for p in out] == ["a ", "Party", " ok"] and out[-1].finish_reason == "length"
    assert cancels == 0


def test_the_earliest_of_several_stops_wins() -> None:
    out, _ = run(["one two three"], ["three", "two"])
    assert out[0].text == "one "


def test_held_text_at_the_end_of_sequence_is_not_lost() -> None:
    out, cancels = run(["say Pa", ""], ["Paris"], end="stop")  # the model ended (EOS) on a partial match
    assert "".join(p.text for p in out) == "say Pa" and out[-1].finish_reason is None and cancels == 0


def _connects(count: int) -> int:
    """How many of `count` connections a server that has not accepted any yet completes within 0.3 s each."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # listening, never accepting
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                opened.append(socket.create_connection(server.server_address[:2], timeout=0.3))
            except OSError:  # the kernel's accept queue is full: the handshake is not answered
                break
        return len(opened)
    finally:
        for sock in opened:
            sock.close()
        server.server_close()


def test_a_burst_of_connections_waits_in_the_backlog_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ThreadingHTTPServer, "request_queue_size", ThreadingHTTPServer.request_queue_size)
    assert _connects(24) < 24  # socketserver's backlog of 5: a burst beyond it is not taken
    _deep_backlog(64)
    assert _connects(24) == 24


def test_an_answer_cut_inside_a_character_ends_without_a_replacement_character() -> None:
    """max_tokens cut the bundled model's answer inside 🍎 (four UTF-8 bytes, three tokens): mlx-lm's detokenizer
    flushes the partial bytes at the end as U+FFFD; what the mlx engine streams ends before them, as vLLM's."""
    tokenizer_utils = pytest.importorskip("mlx_lm.tokenizer_utils", reason="needs mlx-lm (pip install '.[mlx]')")
    tokenizer = tokenizer_utils.load(bundled_dir())
    ids = tokenizer._tokenizer.encode("An apple: 🍎", add_special_tokens=False)
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    pieces = []
    for index, token in enumerate(ids[:-1]):  # cut one token short of the whole emoji
        detokenizer.add_token(token)
        end = "length" if index == len(ids) - 2 else None
        if end:
            detokenizer.finalize()
        pieces.append(Piece(detokenizer.last_segment, end))
    assert "".join(p.text for p in pieces).endswith("\ufffd")  # what mlx-lm's server would have sent
    out = list(whole_characters(pieces))
    assert "".join(p.text for p in out) == "An apple: " and out[-1].finish_reason == "length"
    assert [p.text for p in whole_characters([Piece("a \ufffd b"), Piece("c", "stop")])] == ["a \ufffd b", "c"]
