"""A radix tree over token ids: SGLang's RadixAttention (Zheng et al., "SGLang: Efficient Execution of Structured
Language Model Programs", NeurIPS 2024), reduced to its bookkeeping.

Every cached sequence is a path from the root; an edge holds a run of tokens and the KV slots of those tokens
(one slot per token: SGLang's default page size is 1). Sequences that share a prefix share the path up to where
they diverge, and the tree splits an edge exactly there, so a new request reuses its longest cached prefix to
the TOKEN, not to the block as the hash-chained cache does.

  * match(tokens): walk down from the root; the matched length is the reuse (capped so that at least one token
    is computed: its logits give the first output token);
  * insert(tokens): add the whole sequence (prompt + generated tokens), splitting the edge where it diverges;
  * lock/unlock: a running request holds a reference on every node of its path (they cannot be evicted);
  * evict(n): free at least n token slots by removing unreferenced LEAVES, least recently used first (SGLang
    keeps them in a heap keyed by last access time); a parent whose last child goes may become a leaf itself.
"""
from __future__ import annotations

import heapq
import itertools

from .prefix_cache import check_prompt_fits

__all__ = ["RadixCache", "RadixNode"]


class RadixNode:
    __slots__ = ("key", "slots", "children", "parent", "ref", "last_access", "uid")
    _ids = itertools.count()

    def __init__(self, key=(), slots=(), parent=None):
        self.key: tuple[int, ...] = tuple(key)       # tokens on the edge into this node
        self.slots: list[int] = list(slots)          # their KV slots
        self.children: dict[int, RadixNode] = {}     # first token of the child's edge -> child
        self.parent = parent
        self.ref = 0
        self.last_access = 0
        self.uid = next(RadixNode._ids)

    def __lt__(self, other):                         # heap order: oldest access first
        return (self.last_access, self.uid) < (other.last_access, other.uid)


class RadixCache:
    """Token-level prefix cache with `capacity` KV slots.

        rc = RadixCache(capacity=4096)
        hit, node = rc.match(prompt)       # reused tokens, and the deepest node (lock it while running)
        rc.lock(node); ...; rc.insert(prompt + output); rc.unlock(node)
    or simply `rc.run_sequentially(requests)` (admit, run, insert, release one request at a time).
    """

    def __init__(self, capacity: int, *, max_model_len: int | None = None):
        if capacity <= 0:
            raise ValueError(f"capacity must be a positive number of token slots, got {capacity}")
        self.capacity, self.max_model_len = capacity, max_model_len
        self.root = RadixNode()
        self.root.ref = 1                            # never evicted
        self.free_slots = list(range(capacity - 1, -1, -1))
        self.clock = 0
        self.queries = self.hits = self.evicted_tokens = 0

    # ------------------------------------------------------------------------------ helpers
    @property
    def num_cached_tokens(self) -> int:
        return self.capacity - len(self.free_slots)

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    @staticmethod
    def _common(a, b) -> int:
        n = min(len(a), len(b))
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        return i

    def _split(self, node: RadixNode, at: int) -> RadixNode:
        """Cut node's edge after `at` tokens: a new parent holds the first part."""
        top = RadixNode(node.key[:at], node.slots[:at], node.parent)
        top.ref, top.last_access = node.ref, node.last_access
        node.parent.children[node.key[0]] = top
        node.key, node.slots, node.parent = node.key[at:], node.slots[at:], top
        top.children[node.key[0]] = node
        return top

    def _walk(self, tokens, split: bool):
        """Longest cached prefix: (matched length, deepest node, slots). split=True cuts a partly matched edge."""
        node, i, slots, now = self.root, 0, [], self._tick()
        node.last_access = now
        while i < len(tokens) and tokens[i] in node.children:
            child = node.children[tokens[i]]
            c = self._common(child.key, tokens[i:])
            if c < len(child.key):
                if not split:
                    slots += child.slots[:c]
                    i += c
                    child.last_access = now
                    break                             # a partial edge: `node` stays the last whole node
                child = self._split(child, c)
            child.last_access = now
            slots += child.slots
            i += c
            node = child
        return i, node, slots

    # ---------------------------------------------------------------------------- interface
    def match(self, tokens, record: bool = True):
        """(hit tokens, deepest fully matched node). At most len(tokens) - 1 tokens hit."""
        tokens = list(tokens)
        check_prompt_fits(len(tokens), self.max_model_len)
        n, node, _ = self._walk(tokens[:max(len(tokens) - 1, 0)], split=True)
        if record:
            self.queries += len(tokens)
            self.hits += n
        return n, node

    def lock(self, node: RadixNode) -> None:
        while node is not None:
            node.ref += 1
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        while node is not None:
            node.ref -= 1
            assert node.ref >= 0
            node = node.parent

    def _leaves(self):
        stack, out = [self.root], []
        while stack:
            n = stack.pop()
            if not n.children and n is not self.root:
                out.append(n)
            stack.extend(n.children.values())
        return out

    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens slots by dropping unreferenced leaves, least recently used first."""
        heap = [n for n in self._leaves() if n.ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            leaf = heapq.heappop(heap)
            self.free_slots.extend(leaf.slots)
            freed += len(leaf.slots)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            if not parent.children and parent.ref == 0 and parent is not self.root:
                heapq.heappush(heap, parent)
        self.evicted_tokens += freed
        return freed

    def _alloc(self, n: int) -> list[int]:
        if n > len(self.free_slots):
            self.evict(n - len(self.free_slots))
        if n > len(self.free_slots):
            raise MemoryError(f"radix cache: {n} token slots needed, {len(self.free_slots)} free after evicting "
                              f"every unreferenced leaf; the running requests hold the rest")
        out = self.free_slots[-n:] if n else []
        del self.free_slots[len(self.free_slots) - n:]
        return out

    def insert(self, tokens) -> RadixNode:
        """Cache a computed sequence; only the part not already in the tree takes new slots."""
        tokens = list(tokens)
        n, node, _ = self._walk(tokens, split=True)
        if n < len(tokens):
            node.ref += 1                            # keep the path alive while we may evict
            try:
                slots = self._alloc(len(tokens) - n)
            finally:
                node.ref -= 1
            leaf = RadixNode(tokens[n:], slots, node)
            leaf.last_access = self._tick()
            node.children[tokens[n]] = leaf
            node = leaf
        return node

    def run_sequentially(self, requests, keep_generated: bool = False) -> list[int]:
        """Admit, run, cache and release each request in turn (a list of prompt ids, or (prompt, generated)
        pairs): the hit tokens per request. As with the paged cache, the last generated token has no KV."""
        out = []
        for r in requests:
            prompt, gen = (r if isinstance(r, tuple) else (r, []))
            hit, node = self.match(prompt)
            self.lock(node)                          # running: its cached prefix cannot be evicted
            seq = list(prompt) + (list(gen)[:-1] if keep_generated else [])
            self.insert(seq)
            self.unlock(node)
            out.append(hit)
        return out
