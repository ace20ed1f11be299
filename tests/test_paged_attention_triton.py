"""The Triton paged-attention kernel against the textbook reference, run by Triton's CPU interpreter."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import os, torch
    os.environ["TRITON_INTERPRET"] = "1"          # must be set before the kernel is defined
    from utils.kv.paged_attention import reference_attention
    from utils.kv.paged_attention_triton import paged_decode_attention_triton, paged_decode_attention_split_k
    from tests.paged_setup import ragged_paged_case
    torch.manual_seed(0)
    for heads, kv_heads, block in ((4, 4, 4), (9, 3, 16), (8, 1, 8)):
        lens = [1, 7, 33, 20]
        q, cache, m, ks, vs = ragged_paged_case(heads, kv_heads, block, lens)
        out = paged_decode_attention_triton(q, cache.k[0], cache.v[0], m.block_table_tensor(range(len(lens))),
                                            torch.tensor(lens))
        tables = m.block_table_tensor(range(len(lens)))
        # split-K: one chunk (= the plain kernel), uneven chunks, more chunks than a short sequence has blocks
        outs = [out] + [paged_decode_attention_split_k(q, cache.k[0], cache.v[0], tables, torch.tensor(lens),
                                                       num_splits=s) for s in (1, 3, 16)]
        for o in outs:
            for i in range(len(lens)):
                torch.testing.assert_close(o[i], reference_attention(q[i:i + 1], ks[i], vs[i])[0], atol=1e-5, rtol=1e-4)
    try:
        paged_decode_attention_split_k(q, cache.k[0], cache.v[0], tables, torch.tensor(lens), num_splits=-1)
        raise AssertionError("num_splits=-1 was accepted")
    except ValueError as e:
        assert "num_splits" in str(e)
    print("OK")
""")


def test_triton_kernel_matches_reference_in_interpreter():
    # a fresh process: TRITON_INTERPRET must be set before triton.jit decorates the kernel
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
