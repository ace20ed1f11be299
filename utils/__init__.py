"""Shared code for the Inference Optimization & Model Serving course, one folder per concern:

    models/     which model runs: offline GGUF models from PyPI (default SmolLM2-135M-Instruct; Qwen2.5-Coder
                0.5B/1.5B), the COURSE_MODEL switch, random-weight shapes of published configs, loading
    measure/    timing with spread, memory (allocator / RSS / NVML), roofline ceilings, forward phases,
                provenance + results JSON, one plot style
    kv/         the KV cache: block manager, paged attention (PyTorch + Triton), decode engines on HF weights,
                trace replay, capacity, prefix caching (hash chain and radix tree), a chunked-prefill scheduler
    serving/    servers as processes (start / health / stop / reaper), vLLM server and offline engine helpers,
                Prometheus metrics, the streaming benchmark client, load sweeps / SLOs / cost
    quant/      RTN, AWQ, GPTQ, FP8, GGUF I/O, mixed-bit allocation, checkpoint export (notebook 02)
    specdec/    speculative decoding: draft-verify loop, drafters, exactness tests, theory (notebook 04)
    workload    one Request type, seeded synthetic workloads from text that ships with Python, ShareGPT reader
"""
