"""Automatic prefix caching on a paged KV cache: hash-chained full blocks, reference counts, LRU eviction.

The idea (vLLM's "automatic prefix caching", vllm/v1/core/kv_cache_utils.py + block_pool.py; ~100 lines in
nano-vllm's block_manager.py): a *full* block of `block_size` tokens is named by

    hash(block i) = H(hash(block i-1), tokens of block i)          (block -1 has a fixed seed hash)

so a block's name depends on the whole prefix before it, not only on its own tokens. Two requests whose first
k blocks have equal hashes share the KV of those k blocks: the second one skips their prefill.

Bookkeeping, as vLLM's BlockPool does it:
  * a table hash -> block ids of *cached* blocks (full blocks whose KV has been computed);
  * each block has a reference count (how many running requests use it);
  * a block whose count drops to 0 goes to the tail of a free queue but KEEPS its hash and KV: a later
    request with the same prefix can still hit it ("touch": it leaves the free queue again);
  * a new block is taken from the head of the free queue (least recently freed). If that block still holds a
    cached hash, the hash is dropped from the table: that is the eviction, least-recently-used first;
  * a request's blocks are freed tail first, so a request's last blocks are evicted before its first ones
    (the first ones are the most shareable).

Hit accounting matches vLLM v1 (kv_cache_manager.get_computed_blocks): only full blocks are cached, the lookup
stops at the first miss, and at most `num_tokens - 1` tokens may hit (the last prompt token is always computed,
its logits give the first output token). vLLM's counters `vllm:prefix_cache_queries` / `prefix_cache_hits` add
each newly scheduled request's prompt tokens / hit tokens.

Built on `utils.kv.block_manager`: the BlockAllocator (ref counts, allocate/share/release) with its free list
replaced by an ordered queue that supports removing a block from the middle (a hit on a free cached block).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from .block_manager import BlockAllocator, BlockTable, OutOfBlocksError

__all__ = ["check_block_size", "check_prompt_fits", "hash_block", "block_hashes", "FreeQueue", "PrefixCache",
           "PrefixCacheStats", "OutOfBlocksError", "vllm_hit_tokens", "vllm_prefix_counters", "vllm_cache_geometry",
           "vllm_frees_uncached_first"]

ROOT_HASH = hashlib.sha256(b"course-prefix-cache-root").digest()     # the parent of block 0 (vLLM: NONE_HASH)


def check_block_size(block_size) -> int:
    """Block sizes must be positive powers of two (vLLM offers 1, 8, 16, 32, 64, 128; kernels rely on it)."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0 \
            or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a positive power of two (e.g. 16 as vLLM uses on GPUs, 128 on its "
                         f"CPU build), got {block_size!r}. Pick the nearest power of two.")
    return block_size


def check_prompt_fits(num_tokens: int, max_model_len: int | None, what: str = "prompt") -> None:
    """A prompt longer than the model's context cannot be served: say so before any work is done."""
    if max_model_len is not None and num_tokens > max_model_len:
        raise ValueError(f"the {what} has {num_tokens} tokens but the model's context (max_model_len) is "
                         f"{max_model_len} tokens. Shorten the {what} (or truncate it), or use a model with a "
                         f"longer context.")


def hash_block(parent: bytes, tokens) -> bytes:
    """H(parent hash, tokens): sha256 over the parent's digest and the token ids (vLLM's default is sha256 too,
    over a serialized (parent, tokens, extra_keys) tuple; any collision-resistant hash works)."""
    h = hashlib.sha256(parent)
    h.update(b"".join(int(t).to_bytes(4, "little", signed=False) for t in tokens))
    return h.digest()


def block_hashes(tokens, block_size: int, parent: bytes = ROOT_HASH) -> list[bytes]:
    """Chained hashes of the FULL blocks of `tokens` (a trailing partial block has no hash)."""
    check_block_size(block_size)
    out = []
    for i in range(len(tokens) // block_size):
        parent = hash_block(parent, tokens[i * block_size:(i + 1) * block_size])
        out.append(parent)
    return out


def vllm_hit_tokens(num_matching_blocks: int, num_tokens: int, block_size: int) -> int:
    """vLLM's hit count for a prompt of `num_tokens` whose first `num_matching_blocks` full blocks are cached:
    whole blocks only, and never the last prompt token (max_cache_hit_length = num_tokens - 1)."""
    return min(num_matching_blocks, (num_tokens - 1) // block_size) * block_size if num_tokens > 0 else 0


class FreeQueue:
    """The free list as an ordered set: popleft() takes the least recently freed block, append() puts a block at
    the tail, remove() takes a block out of the middle in O(1) (vLLM: FreeKVCacheBlockQueue, a doubly linked
    list). Has the deque methods BlockAllocator uses, so it drops into it."""

    def __init__(self, ids=()):
        self._d: OrderedDict[int, None] = OrderedDict((i, None) for i in ids)

    def popleft(self) -> int:
        return self._d.popitem(last=False)[0]

    def append(self, block: int) -> None:
        self._d[block] = None

    def remove(self, block: int) -> None:
        del self._d[block]

    def prepend_n(self, blocks) -> None:
        """Put blocks at the head, in the given order (they are reused first)."""
        for b in reversed(list(blocks)):
            self._d[b] = None
            self._d.move_to_end(b, last=False)

    def __contains__(self, block) -> bool:
        return block in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self):
        return iter(self._d)


@dataclass
class PrefixCacheStats:
    requests: int = 0
    queries: int = 0          # prompt tokens looked up (vllm:prefix_cache_queries)
    hits: int = 0             # of those, tokens found in the cache (vllm:prefix_cache_hits)
    evictions: int = 0        # cached blocks whose hash was dropped to reuse the block

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


@dataclass
class _Seq:
    table: BlockTable
    tokens: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)     # hashes of its full, computed blocks
    num_cached_blocks: int = 0                            # how many of its blocks are registered in the table


class PrefixCache:
    """A paged block manager with automatic prefix caching.

        pc = PrefixCache(num_blocks=64, block_size=16)
        hit = pc.allocate("a", prompt_ids)     # tokens whose KV is reused; prefill computes the rest
        pc.append_token("a", next_id)          # decode: a block that fills up becomes cached
        pc.free("a")                           # blocks stay cached (ref count 0) until evicted

    `reserve_null_block=True` sets one block aside as vLLM's BlockPool does (its block 0, the "null block"),
    so that the same num_blocks gives the same eviction behaviour as a vLLM engine with that many blocks.
    `uncached_first=True`: a freed block that holds no cached prefix (a request's last, partial block) goes to
    the HEAD of the free queue, to be reused before any cached block is evicted (newer vLLM's BlockPool.free_blocks;
    `vllm_frees_uncached_first()` tells which behaviour an installed vLLM has). False: every freed block goes
    to the tail (nano-vllm, older vLLM).
    """

    def __init__(self, num_blocks: int, block_size: int, *, max_model_len: int | None = None,
                 reserve_null_block: bool = False, uncached_first: bool = False):
        check_block_size(block_size)
        self.uncached_first = uncached_first
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.allocator.free_ids = FreeQueue(range(num_blocks))    # LRU order + removal from the middle
        if reserve_null_block:
            self.allocator.allocate()                             # block 0, never freed
        self.block_size, self.max_model_len = block_size, max_model_len
        self.num_blocks = num_blocks - int(reserve_null_block)
        self.cached: dict[bytes, dict[int, None]] = {}            # hash -> block ids (insertion ordered)
        self.block_hash: dict[int, bytes] = {}                    # block id -> its cached hash
        self.seqs: dict[object, _Seq] = {}
        self.stats = PrefixCacheStats()

    # ------------------------------------------------------------------------------ queries
    def _cached_block(self, h: bytes) -> int | None:
        ids = self.cached.get(h)
        return next(iter(ids)) if ids else None

    def match(self, tokens) -> list[int]:
        """The cached blocks a new request with these tokens would reuse (no side effects)."""
        n_max = max(len(tokens) - 1, 0) // self.block_size          # never the last token
        hits = []
        for h in block_hashes(tokens[:n_max * self.block_size], self.block_size):
            b = self._cached_block(h)
            if b is None:
                break
            hits.append(b)
        return hits

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds (cached or not): what vLLM's usage metric counts as free."""
        return self.allocator.num_free

    @property
    def num_cached_blocks(self) -> int:
        return len(self.block_hash)

    def usage(self) -> float:
        """Fraction of blocks held by running requests (vLLM's kv_cache_usage_perc)."""
        return 1.0 - self.allocator.num_free / self.num_blocks

    # ---------------------------------------------------------------------------- internals
    def _take_free_block(self) -> int:
        if self.allocator.num_free == 0:
            raise OutOfBlocksError(f"all {self.num_blocks} KV blocks are held by running requests")
        b = self.allocator.allocate()                 # head of the free queue = least recently freed
        h = self.block_hash.pop(b, None)
        if h is not None:                             # it still held a cached prefix: evict it
            del self.cached[h][b]
            if not self.cached[h]:
                del self.cached[h]
            self.stats.evictions += 1
        return b

    def _touch(self, b: int) -> None:
        """One more user of cached block b (taking it off the free queue if nobody held it)."""
        if self.allocator.ref_count[b] == 0:
            self.allocator.free_ids.remove(b)
            self.allocator.ref_count[b] = 1
        else:
            self.allocator.share(b)

    def _cache_full_blocks(self, s: _Seq, num_computed: int) -> None:
        """Register the blocks of s that are full and computed (vLLM: cache_full_blocks)."""
        n_full = min(num_computed, len(s.tokens)) // self.block_size
        while s.num_cached_blocks < n_full:
            i = s.num_cached_blocks
            parent = s.hashes[i - 1] if i else ROOT_HASH
            if len(s.hashes) <= i:
                s.hashes.append(hash_block(parent, s.tokens[i * self.block_size:(i + 1) * self.block_size]))
            b, h = s.table.blocks[i], s.hashes[i]
            if b not in self.block_hash:              # a hit block is already registered
                self.cached.setdefault(h, {})[b] = None
                self.block_hash[b] = h
            s.num_cached_blocks += 1

    # ---------------------------------------------------------------------------- lifecycle
    def can_allocate(self, tokens) -> bool:
        hits = self.match(tokens)
        idle_hits = sum(1 for b in hits if self.allocator.ref_count[b] == 0)   # they leave the free queue
        new = -(-len(tokens) // self.block_size) - len(hits)
        return new + idle_hits <= self.allocator.num_free

    def allocate(self, seq_id, tokens) -> int:
        """Blocks for a new request's prompt: reuse the cached prefix, allocate the rest, register the full
        blocks (their KV is computed by this prefill). Returns the number of hit tokens."""
        if seq_id in self.seqs:
            raise ValueError(f"sequence {seq_id!r} already has blocks")
        tokens = list(tokens)
        if not tokens:
            raise ValueError("a prompt needs at least one token")
        check_prompt_fits(len(tokens), self.max_model_len)
        if not self.can_allocate(tokens):
            raise OutOfBlocksError(f"sequence {seq_id!r} needs more blocks than the {self.allocator.num_free} "
                                   f"free ones; wait for a request to finish or use a bigger cache")
        hits = self.match(tokens)
        for b in hits:
            self._touch(b)
        n_blocks = -(-len(tokens) // self.block_size)
        blocks = hits + [self._take_free_block() for _ in range(n_blocks - len(hits))]
        s = _Seq(BlockTable(blocks, len(tokens)), tokens)
        s.hashes = block_hashes(tokens, self.block_size)
        s.num_cached_blocks = len(hits)
        self.seqs[seq_id] = s
        self._cache_full_blocks(s, len(tokens))
        hit_tokens = len(hits) * self.block_size
        self.stats.requests += 1
        self.stats.queries += len(tokens)
        self.stats.hits += hit_tokens
        return hit_tokens

    def append_token(self, seq_id, token: int) -> None:
        """Decode: the sequence gets one more token (its KV is computed in the step that feeds it)."""
        s = self.seqs[seq_id]
        check_prompt_fits(len(s.tokens) + 1, self.max_model_len, what="sequence")
        if len(s.tokens) % self.block_size == 0:
            s.table.blocks.append(self._take_free_block())
        s.tokens.append(int(token))
        s.table.num_tokens += 1
        self._cache_full_blocks(s, len(s.tokens))

    def free(self, seq_id) -> None:
        """The request is done: its blocks lose one user each, tail first (the tail is evicted first); with
        uncached_first, blocks without a cached prefix go to the head of the free queue instead."""
        to_head = []
        for b in reversed(self.seqs.pop(seq_id).table.blocks):
            self.allocator.release(b)
            if self.uncached_first and self.allocator.ref_count[b] == 0 and b not in self.block_hash:
                to_head.append(b)
        self.allocator.free_ids.prepend_n(to_head)

    def run_sequentially(self, requests, keep_generated: bool = False) -> list[int]:
        """Each request (a list of prompt ids, or a (prompt ids, generated ids) pair) is admitted, run and freed
        before the next: the hit tokens per request. vLLM computes the KV of every generated token but the last,
        so with keep_generated those (all but the last) are appended and cached too."""
        out = []
        for i, r in enumerate(requests):
            prompt, gen = (r if isinstance(r, tuple) else (r, []))
            key = ("seq", i, id(r))
            out.append(self.allocate(key, prompt))
            if keep_generated:
                for t in list(gen)[:-1]:
                    self.append_token(key, t)
            self.free(key)
        return out


# ------------------------------------------------------------------------------------------------------------
# vLLM's side of the comparison (offline LLM built with enable_prefix_caching=True, disable_log_stats=False).
def vllm_prefix_counters(llm) -> dict:
    """vLLM's cumulative prefix-cache counters: {'queries': vllm:prefix_cache_queries, 'hits':
    vllm:prefix_cache_hits} (tokens). Needs disable_log_stats=False, or the counters do not exist."""
    got = {}
    for m in llm.get_metrics():
        if m.name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
            got[m.name.split("_")[-1]] = got.get(m.name.split("_")[-1], 0) + int(getattr(m, "value", 0))
    if len(got) != 2:
        raise RuntimeError("vLLM exported no prefix-cache counters: build the LLM with enable_prefix_caching=True "
                           "and disable_log_stats=False")
    return got


def vllm_cache_geometry(llm) -> tuple[int, int]:
    """(block size, number of KV blocks) that this engine really uses -- read, never assumed."""
    cc = llm.llm_engine.vllm_config.cache_config
    return int(cc.block_size), int(cc.num_gpu_blocks)


def vllm_frees_uncached_first() -> bool:
    """Whether the installed vLLM puts freed blocks WITHOUT a cached hash at the head of its free queue (read from
    its source: BlockPool.free_blocks calls prepend_n), which changes which cached blocks get evicted."""
    import inspect
    from vllm.v1.core.block_pool import BlockPool
    return "prepend_n" in inspect.getsource(BlockPool.free_blocks)
