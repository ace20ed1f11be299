"""Quantized models inside vLLM: what format it loaded, which kernel it picked, how many bytes the weights
really take, and decode throughput at several batch sizes (RANDOM WEIGHTS for the realistic-size runs).

The inspection runs a function inside vLLM's worker (`LLM.apply_model`); with vLLM's multiprocess engine that
needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 (the function is pickled), which `allow_inspection()` sets.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path
from unittest import mock


def allow_inspection() -> None:
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"


def vllm_quant_methods() -> set[str]:
    """Quantization method names this vLLM knows (to refuse an unknown one with a clear message)."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    return set(QUANTIZATION_METHODS)


def check_quantization(name: str | None) -> None:
    if name is None:
        return
    known = vllm_quant_methods()
    if name not in known:
        raise ValueError(f"vLLM cannot load quantization={name!r}: this vLLM knows {sorted(known)}. For a "
                         f"checkpoint, leave quantization=None and let vLLM read config.json's quantization_config.")


def _inspect(model):
    """Runs inside the worker: parameter bytes by dtype, and the quant method / kernel of the first Linear."""
    import torch
    by_dtype, total = {}, 0
    for t in list(model.parameters()) + list(model.buffers()):
        n = t.numel() * t.element_size()
        by_dtype[str(t.dtype).replace("torch.", "")] = by_dtype.get(str(t.dtype).replace("torch.", ""), 0) + n
        total += n
    method = kernel = None
    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        if qm is not None and "layers.0." in name and isinstance(getattr(mod, "weight", getattr(mod, "qweight", None)),
                                                                 (torch.Tensor, type(None))):
            if type(qm).__name__ != "UnquantizedLinearMethod" or method is None:
                method = f"{name}: {type(qm).__name__}"
                k = getattr(qm, "kernel", None) or getattr(getattr(qm, "scheme", None), "kernel", None)
                kernel = type(k).__name__ if k is not None else None
            if type(qm).__name__ != "UnquantizedLinearMethod":
                break
    return {"param_bytes": total, "bytes_by_dtype": by_dtype, "linear_method": method, "kernel": kernel}


def inspect_engine(llm) -> dict:
    """{param_bytes, bytes_by_dtype, linear_method, kernel} of the model inside the engine (or an error)."""
    try:
        return llm.apply_model(_inspect)[0]
    except Exception as e:  # noqa: BLE001 -- older vLLMs, or serialization refused
        return {"error": f"{type(e).__name__}: {e}"}


GPTQ_BLOCK_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def gptq_random_checkpoint(src: str | Path, dest: str | Path, group_size: int = 128) -> Path:
    """A copy of a RANDOM-WEIGHTS config folder that declares a 4-bit GPTQ checkpoint. Loaded with
    load_format="dummy", vLLM allocates the packed int32 qweight / fp16 scales of a real W4A16 model (values
    are arbitrary: for speed only). `inspect_engine` then shows whether the weights really are 4-bit."""
    src, dest = Path(src), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    # Which Linears are quantized must be stated: without `modules_in_block_to_quantize`, vLLM infers them from
    # the safetensors files' dtypes; a random-weight folder has no files, and vLLM 0.26 then loads every layer
    # unquantized, silently (later versions treat the empty list as "unknown" and quantize all).
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "sym": True,
                                  "desc_act": False, "checkpoint_format": "gptq", "lm_head": False,
                                  "modules_in_block_to_quantize": [list(GPTQ_BLOCK_MODULES)]}
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    (dest / "RANDOM_WEIGHTS.txt").write_text("RANDOM WEIGHTS, declared as 4-bit GPTQ g%d: speed only.\n" % group_size)
    return dest


def decode_tok_s(llm, batch: int, *, prompt_len: int = 32, short: int = 8, long: int = 72, repeat: int = 3,
                 seed: int = 0) -> dict:
    """Decode throughput at a batch size: time generating `short` and `long` tokens for the same prompts;
    the difference is pure decode (prefill and fixed costs cancel). tok/s = batch * (long - short) / dt."""
    import random
    from vllm import SamplingParams
    rng = random.Random(seed)
    vocab = 1000
    prompts = [{"prompt_token_ids": [rng.randrange(10, vocab) for _ in range(prompt_len)]} for _ in range(batch)]

    def run(n):
        sp = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.perf_counter() - t0
        assert all(len(o.outputs[0].token_ids) == n for o in outs), "engine did not produce the asked lengths"
        return dt

    run(short)                                     # warm-up
    ts = [run(short) for _ in range(repeat)]
    tl = [run(long) for _ in range(repeat)]
    dt = statistics.median(tl) - statistics.median(ts)
    spread = (max(tl) - min(tl) + max(ts) - min(ts)) / dt if dt > 0 else float("nan")
    return {"batch": batch, "decode_tok_s": batch * (long - short) / dt, "ms_per_step": dt / (long - short) * 1e3,
            "rel_spread": spread, "n": repeat}


FORMATS = {                       # label -> (how the engine is told, what it means)
    "bf16": dict(quantization=None),
    "fp8": dict(quantization="fp8"),                 # W8A8: weights quantized at load, activations per tensor
    "int4-w4a16": dict(quantization=None, gptq=True),  # GPTQ 4-bit g128 declared in config.json; vLLM picks the kernel
    # the same checkpoint with Machete ruled out: on Hopper vLLM 0.26 then falls back to Marlin (published ~3.9x at
    # batch 1-16 over fp16); the engine core is a fresh process, so it reads the variable at its start
    "int4-w4a16-marlin": dict(quantization=None, gptq=True, env={"VLLM_DISABLED_KERNELS": "MacheteLinearKernel"}),
}


def speed_sweep(shape_dir: str | Path, formats=("bf16", "fp8", "int4-w4a16"), batches=(1, 8, 64, 256), *,
                max_model_len: int = 1024, gpu_memory_utilization: float = 0.85, log=print) -> dict:
    """Start one engine per format on a RANDOM-WEIGHT model folder (load_format="dummy"), check what it loaded,
    read its KV capacity, and measure decode tok/s at each batch. One engine at a time (shut down between)."""
    from utils.serving.vllm_offline import engine_kwargs, kv_capacity, make_llm, shutdown
    allow_inspection()
    results = {}
    for fmt in formats:
        spec = FORMATS[fmt]
        check_quantization(spec["quantization"])
        model = str(shape_dir)
        if spec.get("gptq"):
            model = str(gptq_random_checkpoint(shape_dir, Path(shape_dir).parent / (Path(shape_dir).name + "-gptq4")))
        kw = engine_kwargs(model, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                           max_num_seqs=max(batches), load_format="dummy",
                           compilation_config={"cudagraph_capture_sizes": sorted({1, 2, 4, 8, 16, 32, 64, 128,
                                                                                  256, *batches})})
        if spec["quantization"]:
            kw["quantization"] = spec["quantization"]
        with mock.patch.dict(os.environ, spec.get("env", {})):      # the variables are for this engine only
            t0 = time.perf_counter()
            llm = make_llm(**kw)
            start_s = time.perf_counter() - t0
        try:
            info = inspect_engine(llm)
            cap = kv_capacity(llm)
            rows = [decode_tok_s(llm, b) for b in batches]
        finally:
            shutdown(llm)
            del llm
        results[fmt] = {"engine_start_s": start_s, **info, "kv_tokens": cap["kv_tokens"],
                        "decode": {r["batch"]: r for r in rows}}
        log(f"{fmt}: start {start_s:.0f}s, weights {info.get('param_bytes', 0) / 2**30:.2f} GiB "
            f"{info.get('bytes_by_dtype')}, {info.get('linear_method')} / {info.get('kernel')}, KV tokens "
            f"{cap['kv_tokens']}, tok/s " + ", ".join(f"b{r['batch']}={r['decode_tok_s']:.0f}" for r in rows))
    return results
