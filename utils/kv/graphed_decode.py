"""One decode step of the course's paged or contiguous engine with fixed shapes, replayed as a CUDA graph.

Eager decode of a small model is bound by the host: hundreds of kernel launches from Python per step (notebook 00),
so timing `PagedEngine.decode` against `ContiguousEngine.decode` measures Python, not where K/V live. nano-vLLM's
answer, and vLLM's: keep the step's shapes fixed (batch, block tables padded to a fixed width, a fixed context
bound), keep its inputs in static buffers, capture the step once and replay it. Both engines get that treatment
here, and each replay is timed with CUDA events, so what differs is GPU work:

  * paged:      slots, padded block tables and lengths are buffers; attention gathers the table's blocks, then attends
  * contiguous: positions and lengths are buffers; attention reads rows 0..batch-1 of the slab up to `max_len`
                (a view, no copy)

`StaticDecode(engine, batch, max_len).step(seq_ids, token_ids)` does the host bookkeeping exactly as
`engine.decode` (append_slot, copy-on-write), copies the new inputs into the buffers and runs the step: eagerly
until `capture()` is called (the only mode on CPU), then as a replay of the captured graph (CUDA).
"""
from __future__ import annotations

import torch

from .decode_engines import PagedEngine, llama_forward
from .paged_attention import masked_decode_attention, paged_decode_attention


class StaticDecode:
    def __init__(self, engine, batch: int, max_len: int):
        self.engine, self.batch, self.max_len = engine, batch, max_len
        self.paged = isinstance(engine, PagedEngine)
        dev = engine.device
        self.ids = torch.zeros(batch, dtype=torch.long, device=dev)
        self.pos = torch.zeros(batch, dtype=torch.long, device=dev)
        self.lens = torch.ones(batch, dtype=torch.long, device=dev)
        if self.paged:
            width = -(-max_len // engine.manager.block_size)
            self.tables = torch.zeros(batch, width, dtype=torch.long, device=dev)   # padding: block 0, masked
            self.slots = torch.zeros(batch, dtype=torch.long, device=dev)
        else:
            if max_len > engine.max_len:
                raise ValueError(f"max_len {max_len} exceeds the contiguous engine's rows ({engine.max_len})")
            self.rows = torch.arange(batch, device=dev)          # the step reads rows 0..batch-1, always
        self.graph, self.logits = None, None

    def _attend(self, layer, q, k, v):
        e = self.engine
        if self.paged:
            e.cache.write(layer, self.slots, k, v)
            return paged_decode_attention(q, e.cache.k[layer], e.cache.v[layer], self.tables, self.lens, e.scale)
        e.k[layer, self.rows, self.pos], e.v[layer, self.rows, self.pos] = k, v
        # rows 0..batch-1: a view of the slab, no copy (the contiguous layout's advantage)
        kk, vv = e.k[layer, :self.batch, :self.max_len], e.v[layer, :self.batch, :self.max_len]
        return masked_decode_attention(q, kk, vv, self.lens, e.scale)

    def _forward(self) -> torch.Tensor:
        return llama_forward(self.engine.model, self.ids, self.pos, self._attend)

    def _load_inputs(self, seq_ids: list[int], token_ids: list[int]) -> None:
        """The host side of a step: the same bookkeeping as engine.decode, then copies into the buffers."""
        if len(seq_ids) != self.batch:
            raise ValueError(f"a captured step has a fixed batch of {self.batch}, got {len(seq_ids)} sequences")
        e = self.engine
        lens = [e.num_tokens(s) + 1 for s in seq_ids]
        if max(lens) > self.max_len:                             # checked before any bookkeeping changes
            raise ValueError(f"a sequence reached {max(lens)} tokens, past the captured bound max_len={self.max_len}")
        if self.paged:
            slots = e.append_slots(seq_ids)
            table = e.manager.block_table_tensor(seq_ids)
            self.tables.zero_()
            self.tables[:, :table.shape[1]].copy_(table)
            self.slots.copy_(torch.tensor(slots))
        else:
            rows = [e.rows[s] for s in seq_ids]
            if rows != list(range(self.batch)):
                raise ValueError("the contiguous step reads rows 0..batch-1 as one view: prefill the sequences in "
                                 f"order into a fresh engine (their rows are {rows})")
            for s in seq_ids:
                e.lens[s] += 1
        self.lens.copy_(torch.tensor(lens))
        self.pos.copy_(self.lens - 1)
        self.ids.copy_(torch.tensor(token_ids))

    def step(self, seq_ids: list[int], token_ids: list[int]) -> torch.Tensor:
        """Append one token to each sequence; next-token logits [batch, vocab] (a buffer, when replayed)."""
        self._load_inputs(seq_ids, token_ids)
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.logits

    def capture(self) -> None:
        """Capture the step on the inputs of the last step() (CUDA only). Warm-up and capture re-run that step's
        forward with the same inputs, which rewrites the same K/V into the same slots: the cache is unchanged."""
        if not torch.cuda.is_available() or self.engine.device.type != "cuda":
            raise RuntimeError("CUDA graphs need the engine on a CUDA device")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward()                                   # warm-up: allocator and kernels settle off-graph
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()
        torch.cuda.synchronize()


def graphed_greedy(engine, prompts: list[list[int]], max_new_tokens: int, max_len: int) -> list[list[int]]:
    """greedy_generate with every decode step after the first replayed from a captured graph (CUDA; eager on CPU):
    the notebook compares its tokens with transformers' before timing anything."""
    ids = list(range(len(prompts)))
    tokens = [[int(engine.prefill(i, p).argmax())] for i, p in zip(ids, prompts)]
    runner = StaticDecode(engine, len(prompts), max_len)
    for k in range(max_new_tokens - 1):
        logits = runner.step(ids, [t[-1] for t in tokens])
        if k == 0 and engine.device.type == "cuda":
            runner.capture()                       # the first step ran eagerly; capture re-runs it identically
            runner.graph.replay()
            logits = runner.logits
        for t, row in zip(tokens, logits.argmax(-1).tolist()):
            t.append(row)
    for i in ids:
        engine.free(i)
    return tokens


def graphed_step_times(engines: dict, prompts: list[list[int]], steps: int, max_len: int, warmup: int = 2) -> dict:
    """Prefill the same prompts into every engine, capture each one's decode step (CUDA), then alternate steps
    between the engines. Per engine, Timings of one step: `device` (CUDA events around the replay; on CPU the eager
    forward) and `step` (the whole step: host bookkeeping, input copies, the replay, reading the next tokens)."""
    import time
    from ..measure.timing import Timing
    ids = list(range(len(prompts)))
    runners, last = {}, {}
    for name, eng in engines.items():
        first = [int(eng.prefill(i, p).argmax()) for i, p in zip(ids, prompts)]
        runners[name] = StaticDecode(eng, len(prompts), max_len)
        last[name] = runners[name].step(ids, first).argmax(-1).tolist()     # first step eager, then capture
        if eng.device.type == "cuda":
            runners[name].capture()
    device_s = {n: [] for n in engines}
    step_s = {n: [] for n in engines}
    for k in range(warmup + steps):
        for name, r in runners.items():
            if r.graph is not None:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            r._load_inputs(ids, last[name])
            if r.graph is not None:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                r.graph.replay()
                end.record()
                logits = r.logits
                last[name] = logits.argmax(-1).tolist()                  # waits for the replay
                dev = start.elapsed_time(end) / 1e3
            else:
                t1 = time.perf_counter()
                logits = r._forward()
                dev = time.perf_counter() - t1
                last[name] = logits.argmax(-1).tolist()
            if k >= warmup:
                device_s[name].append(dev)
                step_s[name].append(time.perf_counter() - t0)
    for eng in engines.values():
        for i in ids:
            eng.free(i)
    return {n: {"device": Timing(device_s[n]), "step": Timing(step_s[n])} for n in engines}
