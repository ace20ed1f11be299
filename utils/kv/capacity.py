"""How many tokens of KV cache fit: the calculator that vLLM's reported capacity is checked against.

The calculator is vLLM's own arithmetic for a model whose layers are all full attention:
    page bytes (one block, one layer) = 2 (K and V) * block_size * kv_heads * head_dim * bytes/elem
    num_blocks = kv_memory_bytes // (page bytes * num_layers)
    token capacity = num_blocks * block_size
so the capacity is the byte budget divided by bytes/token, rounded *down to whole blocks*.

Where vLLM keeps the result (checked on 0.32.0 here; the same attributes exist in the V1 engine of 0.26.0):
  * `llm.llm_engine.vllm_config.cache_config.num_gpu_blocks` - set in the front-end process from the
    engine core's start-up handshake (or in place when the engine core runs in-process,
    VLLM_ENABLE_V1_MULTIPROCESSING=0). The name says GPU; on the CPU build it counts CPU blocks.
  * `cache_config.block_size` - synced from the engine core too (CPU build default: 128; CUDA: 16).
  * `cache_config.kv_cache_size_tokens` - only on newer versions, and only where the engine core ran;
    otherwise capacity = num_blocks * block_size (exact for models whose layers all use full attention).
  * the log line "GPU KV cache size: N tokens" ("CPU KV cache size" on the CPU build) says the same.
`utils.vllm_engine.kv_capacity(llm)` reads these attributes.
"""
from __future__ import annotations

from ..measure.memory import kv_cache_bytes_for


def vllm_blocks(config, kv_memory_bytes: float, block_size: int, dtype="bf16") -> int:
    """KV blocks vLLM carves out of `kv_memory_bytes` for a full-attention model."""
    # one block across all layers = K and V of block_size tokens: the same formula as bytes per token
    return int(kv_memory_bytes // kv_cache_bytes_for(config, block_size, dtype))


def token_capacity(config, kv_memory_bytes: float, block_size: int = 1, dtype="bf16") -> int:
    """Tokens of KV that fit in `kv_memory_bytes`, in whole blocks of `block_size`."""
    return vllm_blocks(config, kv_memory_bytes, block_size, dtype) * block_size


def fits(config, gpu_bytes: float, weight_bytes: float, context: int, *, dtype="bf16",
         usable_fraction: float = 0.9) -> dict:
    """What fits on one GPU after the weights: KV budget, token capacity, max batch at `context` tokens.

    `usable_fraction` plays the role of vLLM's gpu_memory_utilization (activations and the CUDA context need
    the rest; this simple estimate ignores activation memory, so real capacities are a little lower).
    """
    budget = usable_fraction * gpu_bytes - weight_bytes
    per_token = kv_cache_bytes_for(config, 1, dtype)
    tokens = int(max(0.0, budget) // per_token)
    return {"kv_budget_bytes": max(0.0, budget), "kv_bytes_per_token": per_token, "token_capacity": tokens,
            "max_batch": tokens // context}
