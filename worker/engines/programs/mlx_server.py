"""The `mlx` engine process: mlx-lm's OpenAI server, on one host or as one rank of a shard group.

    python -m worker.engines.programs.mlx_server --model PATH --served-name NAME --port P \
        [--pipeline-layers 15,15] [MLX_LM_ARGS]

A shard group is MLX's own interface: the agent sets `MLX_RANK` and `MLX_HOSTFILE` (a ring hostfile,
`[["ip:port"], ...]`, as `mlx.launch` writes it) and `--backend ring|jaccl`. mlx-lm's server then loads its
shard with `sharded_load` (tensor parallel by default, pipeline with `--pipeline-layers`) and rank 0 answers
HTTP while the other ranks follow its batches. Around mlx-lm's server:

- the listen backlog is deep enough for every slot the agent may open at once (socketserver's is 5);
- requests name the model as clients do (`--served-name`); mlx-lm would otherwise try to load a model of that
  name (and in a group, on rank 0 alone, which deadlocks the collectives);
- every architecture with mlx-lm's `PipelineMixin` (qwen2, qwen3_moe, deepseek_v2/v3, glm4_moe, …) splits its
  layers as placement decided (by memory, so the smaller Mac of a mixed pair holds fewer), not evenly: older
  mlx-lm releases take no split at all, so the mixin's `pipeline` is replaced by one that does;
- stop strings end the answer where they first occur in the text, as vLLM and OpenAI do: mlx-lm matches them
  as token ids (so " Paris" never matches "Paris") and strips them from the text without stopping, which
  answered stop=["Paris"] with "The capital of France is ." — here the text is cut, the generation cancelled;
- llama has no pipeline support in mlx-lm, so its decoder gets the mixin and a pipelined forward pass (the
  pattern of mlx-lm's own deepseek_v3: receive from the next rank, run the local layers, send to the previous,
  all_gather the result).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from worker.shared.layers import even_split, rank_layers


def _planned_split(layers_per_rank: list[int]) -> None:
    """Every PipelineMixin model splits as planned (the server calls `pipeline(group)` with no split)."""
    from mlx_lm.models.pipeline import PipelineMixin

    def pipeline(self: Any, group: Any, split: list[int] | None = None) -> None:
        split = list(split or layers_per_rank or even_split(len(self.layers), group.size()))
        if len(split) != group.size() or sum(split) != len(self.layers) or min(split) < 1:
            raise ValueError(f"layer split {split} does not fit {len(self.layers)} layers on {group.size()} ranks")
        self.pipeline_rank, self.pipeline_size = group.rank(), group.size()
        self.start_idx, self.end_idx = rank_layers(split, self.pipeline_rank)
        self.layers = self.layers[: self.end_idx]
        self.layers[: self.start_idx] = [None] * self.start_idx  # layer numbers stay as the weights name them

    PipelineMixin.pipeline = pipeline


def _pipelined_llama(layers_per_rank: list[int] | None) -> None:
    """Give mlx-lm's llama decoder pipeline support, splitting layers as `layers_per_rank` says (rank order)."""
    import mlx.core as mx
    from mlx_lm.models import llama
    from mlx_lm.models.base import create_attention_mask
    from mlx_lm.models.pipeline import PipelineMixin

    if hasattr(llama.LlamaModel, "pipeline"):
        return  # a newer mlx-lm has its own

    class PipelinedLlamaModel(llama.LlamaModel):
        pipeline_layers = PipelineMixin.pipeline_layers

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.pipeline_rank, self.pipeline_size, self.start_idx, self.end_idx = 0, 1, 0, None

        def pipeline(self, group: Any, split: list[int] | None = None) -> None:
            PipelineMixin.pipeline(self, group, split or layers_per_rank)  # the planned split (_planned_split)

        def __call__(self, inputs: Any, cache: Any = None, input_embeddings: Any = None) -> Any:
            h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
            rank, size = self.pipeline_rank, self.pipeline_size
            layers = self.pipeline_layers
            if cache is None:
                cache = [None] * len(layers)
            full = next((i for i, layer in enumerate(layers) if not layer.use_sliding), None)
            sliding = next((i for i, layer in enumerate(layers) if layer.use_sliding), None)
            full_mask = create_attention_mask(h, cache[full]) if full is not None else None
            sliding_mask = (
                create_attention_mask(h, cache[sliding], window_size=self.sliding_window)
                if sliding is not None
                else None
            )
            if rank < size - 1:  # the earlier layers live on the higher ranks
                h = mx.distributed.recv_like(h, rank + 1)
            for layer, layer_cache in zip(layers, cache, strict=True):
                h = layer(h, sliding_mask if layer.use_sliding else full_mask, cache=layer_cache)
            if rank != 0:
                h = mx.distributed.send(h, (rank - 1) % size)
                if cache[-1] is not None:
                    cache[-1].keys = mx.depends(cache[-1].keys, h)
            if size > 1:
                h = mx.distributed.all_gather(h)[: h.shape[0]]
            return self.norm(h)

    llama.LlamaModel = PipelinedLlamaModel
    llama.Model.layers = property(lambda self: self.model.pipeline_layers)  # caches for the local layers only


def _deep_backlog(connections: int) -> None:
    """mlx-lm's server is a ThreadingHTTPServer with socketserver's listen backlog of 5: a burst of streams
    opened at once gets connections reset (32 at once failed part of them). The agent opens at most its slots."""
    from http.server import ThreadingHTTPServer

    ThreadingHTTPServer.request_queue_size = max(connections, 5)


def cut_at_stops(responses: Iterable[Any], words: list[str], cancel: Callable[[], None]) -> Iterator[Any]:
    """mlx-lm's responses (dataclasses with `text` and `finish_reason`) up to the first stop string: text that
    may begin one is held back until it cannot; at a match the text before it is the last, the generation is
    cancelled and the iteration ends (the server then reports finish_reason "stop", with the tokens so far)."""
    held = ""
    keep = max(len(w) for w in words) - 1
    for response in responses:
        pending = held + response.text
        hits = [i for i in (pending.find(w) for w in words) if i >= 0]
        if hits:
            cancel()
            yield dataclasses.replace(response, text=pending[: min(hits)], finish_reason=None)
            return
        if response.finish_reason == "length":  # the server flushes the text of a "length" end
            yield dataclasses.replace(response, text=pending)
            return
        if response.finish_reason is not None:  # but drops that of a "stop" end: send it as text, then end
            yield dataclasses.replace(response, text=pending, finish_reason=None)
            return
        cut = next(
            (
                i
                for i in range(max(0, len(pending) - keep), len(pending))
                if any(w.startswith(pending[i:]) for w in words)
            ),
            len(pending),
        )
        held = pending[cut:]
        yield dataclasses.replace(response, text=pending[:cut])


def whole_characters(responses: Iterable[Any]) -> Iterator[Any]:
    """mlx-lm's detokenizer holds an incomplete UTF-8 character back while it streams, but at the end flushes it
    decoded with "replace": an answer that max_tokens cut inside a character ended with U+FFFD. The end's text
    loses that partial character, as vLLM's does."""
    for response in responses:
        if response.finish_reason is not None and response.text.endswith("\ufffd"):
            response = dataclasses.replace(response, text=response.text.rstrip("\ufffd"))
        yield response


def _text_filters() -> None:
    """Whole characters at the end (whole_characters), and stop strings matched on the text (cut_at_stops), not
    by mlx-lm's token-id matcher and text stripping."""
    from mlx_lm import server

    original = server.ResponseGenerator.generate

    def generate(self: Any, request: Any, args: Any, progress_callback: Any = None) -> tuple[Any, Iterator[Any]]:
        words = [w for w in args.stop_words if w]
        ctx, responses = original(self, request, dataclasses.replace(args, stop_words=[]), progress_callback)
        responses = whole_characters(responses)
        return ctx, cut_at_stops(responses, words, ctx.stop) if words else responses

    server.ResponseGenerator.generate = generate


def _serve_as(served_name: str) -> None:
    """Requests say `model: <served name>`; map that to the loaded model (mlx-lm maps only 'default_model')."""
    from mlx_lm import server

    original = server.ModelProvider.__init__

    def init(self: Any, cli_args: argparse.Namespace) -> None:
        original(self, cli_args)
        self._model_map[served_name] = cli_args.model
        self._adapter_map[served_name] = cli_args.adapter_path
        self._draft_model_map[served_name] = cli_args.draft_model

    server.ModelProvider.__init__ = init


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.engines.programs.mlx_server", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", choices=("ring", "jaccl"), default="ring", help="shard-group transport")
    parser.add_argument("--pipeline-layers", help="pipeline group: layers per rank, rank order (e.g. 20,10)")
    parser.add_argument("--backlog", type=int, default=256, help="listen backlog: connections that may wait")
    args, rest = parser.parse_known_args(argv)

    import mlx.core as mx

    if "MLX_RANK" in os.environ:
        group = mx.distributed.init(strict=True, backend=args.backend)
        print(f"mlx group: rank {group.rank()} of {group.size()} ({args.backend})", file=sys.stderr, flush=True)
    layers = [int(n) for n in args.pipeline_layers.split(",")] if args.pipeline_layers else None
    if layers:
        _planned_split(layers)
        _pipelined_llama(layers)
    _serve_as(args.served_name)
    _text_filters()
    _deep_backlog(args.backlog)
    from mlx_lm import server

    sys.argv = ["mlx_lm.server", "--model", args.model, "--host", args.host, "--port", str(args.port)]
    sys.argv += ["--pipeline"] if layers else []
    sys.argv += rest
    server.main()


if __name__ == "__main__":
    main()
