import json

import pytest

from utils.measure import provenance, roofline


def test_ridge_and_attainable():
    assert roofline.ridge_point(1e12, 1e11) == 10
    assert roofline.attainable(1, 1e12, 1e11) == 1e11       # memory-bound side
    assert roofline.attainable(100, 1e12, 1e11) == 1e12     # compute-bound side


def test_forward_cost_decode_intensity_tracks_batch():
    n = 1_000_000_000
    one = roofline.forward_cost(n, 2, kv_bytes_per_token=0, batch=1, new_tokens=1, context=0)
    many = roofline.forward_cost(n, 2, kv_bytes_per_token=0, batch=64, new_tokens=1, context=0)
    assert one.intensity == pytest.approx(1.0)              # 2 FLOP per 2-byte weight
    assert many.intensity == pytest.approx(64.0)
    with_kv = roofline.forward_cost(n, 2, kv_bytes_per_token=131072, batch=64, new_tokens=1, context=4096)
    assert with_kv.intensity < many.intensity               # the KV cache adds bytes, not FLOPs


def test_forward_cost_counts_the_embedding_as_a_gather_and_the_head_per_logit_row():
    n, table = 1_000, 300
    kw = dict(weight_bytes_per_param=2, kv_bytes_per_token=0, batch=2, new_tokens=8, context=0)
    assert roofline.forward_cost(n, **kw).flops == 2 * n * 16                  # no table given: every param per token
    tied = roofline.forward_cost(n, **kw, embedding_params=table, logit_tokens=2)
    assert tied.flops == 2 * (n - table) * 16 + 2 * table * 2                 # body per token, head per logit row
    untied = roofline.forward_cost(n, **kw, embedding_params=table, tied_embeddings=False, logit_tokens=2)
    assert untied.flops == 2 * (n - 2 * table) * 16 + 2 * table * 2           # input table and head both in n
    assert tied.bytes == untied.bytes == roofline.forward_cost(n, **kw).bytes  # bytes: the whole model, as before
    with pytest.raises(ValueError):
        roofline.forward_cost(n, **kw, embedding_params=600, tied_embeddings=False)


def test_forward_cost_attention_is_causal_over_the_new_tokens():
    kw = dict(n_params=0, weight_bytes_per_param=2, kv_bytes_per_token=0, attn_flops_per_token_per_ctx=1.0)
    assert roofline.forward_cost(**kw, batch=3, new_tokens=4, context=0).flops == 3 * (1 + 2 + 3 + 4)
    assert roofline.forward_cost(**kw, batch=3, new_tokens=1, context=10).flops == 3 * 11   # cache + itself


def test_measured_ceilings_are_positive_and_plausible_on_cpu():
    bw = roofline.measure_bandwidth("cpu", nbytes=64 << 20, repeat=5)
    mm = roofline.measure_matmul_flops("cpu", n=256, repeat=5)
    assert 1e8 < bw.value < 1e13 and 1e8 < mm.value < 1e15


def test_save_results_writes_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.RESULTS_ENV, str(tmp_path))
    import numpy as np
    path = provenance.save_results("99_test.ipynb", {"x": np.float32(1.5), "nan": float("nan"), "rows": [{"a": 1}]})
    doc = json.loads(path.read_text())
    assert path == tmp_path / "99_test.json"
    assert doc["results"] == {"x": 1.5, "nan": None, "rows": [{"a": 1}]}
    assert doc["provenance"]["torch"] and "cpu" in doc["provenance"]


def test_device_label():
    assert provenance.device_label({"gpu": "NVIDIA H200"}) == "NVIDIA H200"
    assert provenance.device_label({"cpu": "X", "cpu_cores": 2}) == "CPU: X (2 cores)"


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="no CPU affinity API on this OS")
def test_usable_cpus_follows_the_affinity_not_the_machine():
    """A process pinned to one CPU (as each half of the test run is) must size its threads for one, whatever
    os.cpu_count() says."""
    import os
    import subprocess
    import sys
    one = sorted(os.sched_getaffinity(0))[:1]
    code = ("import os, sys; os.sched_setaffinity(0, {%d}); sys.path.insert(0, %r); "
            "from utils.measure.provenance import usable_cpus, environment; "
            "print(usable_cpus(), os.cpu_count(), environment().get('usable_cpus'))") % (
        one[0], str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    usable, total, reported = out.stdout.split()
    assert usable == "1"
    assert reported == ("None" if total == "1" else "1")      # the environment names the share only when it differs
