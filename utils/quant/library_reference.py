"""The maintained library's GPTQ and AWQ on the course's model and calibration tokens, scored by the course's code.

llm-compressor (vLLM project) lives in a virtual environment of its own: it pins compressed-tensors==0.19.0 and
vLLM pins another version (`bash .ci/install_quant_lib.sh` creates it). `library_perplexity` writes the course's
calibration token ids to a file, runs THIS file with that venv's python (the `__main__` part, which imports only
torch and the library), reads the compressed-tensors checkpoint it saves back into the course's model as
dequantized weights, and calls the course's `perplexity` on the course's held-out windows: the course's method and
the library's see the same samples and are scored by the same code.
"""
from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":   # run as a script in the library's venv: this folder's awq.py, gptq.py, ... must not
    sys.path.pop(0)          # shadow packages of those names (transformers checks whether an `awq` is installed)
import torch  # noqa: E402

LIBRARY, PACKAGE = "llm-compressor", "llmcompressor"
DEFAULT_VENV = Path.home() / ".cache" / "inference-course" / "venvs" / "llmcompressor"
INSTALL_COMMAND = "bash .ci/install_quant_lib.sh"


class LibraryUnavailable(RuntimeError):
    pass


def library_python() -> Path:
    return Path(os.environ.get("COURSE_QUANT_LIB_PYTHON") or DEFAULT_VENV / "bin" / "python")


def library_versions() -> dict[str, str]:
    """Versions in the library's venv, or LibraryUnavailable saying which command installs it."""
    return dict(_versions_of(str(library_python())))


@functools.lru_cache(maxsize=None)   # one probe (an import of the library, seconds) per python, not one per run
def _versions_of(python: str) -> tuple:
    py = Path(python)
    probe = ("import json; from importlib.metadata import version as v; import llmcompressor; "
             "print(json.dumps({p: v(p) for p in ('llmcompressor', 'compressed-tensors', 'torch', 'transformers')}))")
    why = f"no python at {py}" if not py.exists() else None
    if why is None:
        r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=300)
        why = None if r.returncode == 0 else f"{py} cannot import {PACKAGE}: {r.stderr.strip().splitlines()[-1:]}"
        if why is None:
            return tuple(json.loads(r.stdout.strip().splitlines()[-1]).items())
    raise LibraryUnavailable(f"{LIBRARY} is not available ({why}). Install it in its own venv with "
                             f"`{INSTALL_COMMAND}` (or point COURSE_QUANT_LIB_PYTHON at a python that has it).")


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """compressed-tensors' pack_to_int32 undone: element k of a row in word k*bits//32, bits (k*bits)%32 upward,
    stored + 2^(bits-1). Only widths that divide 32 (2, 4, 8). Returns signed codes (rows, cols), int16."""
    if 32 % bits:
        raise ValueError(f"{bits}-bit codes straddle int32 words; this reader handles 2, 4 and 8 bits")
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    u = (packed.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)     # int64: no sign trouble
    return (u.reshape(packed.shape[0], -1)[:, :cols] - (1 << (bits - 1))).to(torch.int16)


def read_compressed_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """{Linear name: dequantized weight (out x in), float32} from a pack-quantized compressed-tensors checkpoint
    with group (or channel) scales; symmetric, or asymmetric with packed zero points. No act-order g_idx."""
    from safetensors.torch import load_file
    folder = Path(folder)
    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    if qcfg.get("format") != "pack-quantized":
        raise ValueError(f"expected compressed-tensors format 'pack-quantized', got {qcfg.get('format')!r}")
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    (group,) = qcfg["config_groups"].values()
    bits = group["weights"]["num_bits"]
    out = {}
    for key in (k for k in state if k.endswith(".weight_packed")):
        name = key[: -len(".weight_packed")]
        if f"{name}.weight_g_idx" in state:
            raise ValueError(f"{name} has a g_idx (act-order groups): not supported by this reader")
        rows, cols = (int(x) for x in state[f"{name}.weight_shape"])
        scale = state[f"{name}.weight_scale"].float()                             # (rows, groups)
        q = unpack_int32(state[key], bits, cols).float()
        zp = state.get(f"{name}.weight_zero_point")                               # packed along dim 0
        zero = unpack_int32(zp.T.contiguous(), bits, rows).T.float() if zp is not None else torch.zeros_like(scale)
        g = cols // scale.shape[1]
        out[name] = (q - zero.repeat_interleave(g, 1)) * scale.repeat_interleave(g, 1)
    return out


def library_quantize(method: str, model_path, calib_ids: torch.Tensor, spec, out_dir, *, dtype: str = "float32",
                     percdamp: float = 0.01, act_order: bool = False, n_grid: int = 20, timeout: int = 1800) -> dict:
    """The library's "gptq" or "awq" of the model folder `model_path` on exactly `calib_ids` (samples x tokens) with
    `spec`, run by the library's venv python; its compressed-tensors checkpoint goes to `out_dir`. Returns settings
    and seconds (quantize_s: the library's own call; subprocess_s / _cpu_s: the whole process, imports included)."""
    versions = library_versions()
    settings = dict(method=method, bits=spec.bits, group_size=spec.group_size, sym=spec.sym, dtype=dtype,
                    calib_samples=len(calib_ids), calib_len=calib_ids.shape[1], pipeline="sequential",
                    threads=torch.get_num_threads(),      # the caller's: 2 threads on 2 busy cores ran 80x slower
                    **(dict(dampening_frac=percdamp, actorder="static" if act_order else None, block_size=128)
                       if method == "gptq" else dict(n_grid=n_grid, duo_scaling=False)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = out_dir / "course_job.json"       # the token ids travel in this file: both sides see the same samples
    job.write_text(json.dumps({"model": str(model_path), "out": str(out_dir), "calib_ids": calib_ids.tolist(),
                               **settings}))
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([str(library_python()), __file__, str(job)], capture_output=True, text=True,
                       timeout=timeout, cwd=out_dir)
    wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise RuntimeError(f"{LIBRARY} {method} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return {"library": f"{LIBRARY} {versions['llmcompressor']}", "versions": versions, "settings": settings,
            "quantize_s": json.loads((out_dir / "course_seconds.json").read_text())["seconds"],
            "subprocess_s": wall, "subprocess_cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime}


def library_perplexity(method: str, model, model_path, calib_ids: torch.Tensor, held: torch.Tensor, spec,
                       **kw) -> dict:
    """`library_quantize` of `model_path`, its checkpoint read into `model` as dequantized weights (decoder Linears,
    and norms for AWQ, which folds its scales into them), `perplexity(model, held)` (the course's code), then
    `model`'s own weights put back. Returns the run with "ppl"."""
    from safetensors.torch import load_file
    from .calib import perplexity
    from .rtn import decoder_linears
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")          # load it as the course does
    with tempfile.TemporaryDirectory(prefix="quantlib-ref-") as tmp:
        run = library_quantize(method, model_path, calib_ids, spec, tmp, dtype=dtype, **kw)
        weights = {f"{n}.weight": w for n, w in read_compressed_tensors(tmp).items()}
        others = {k: v for f in Path(tmp).glob("*.safetensors") for k, v in load_file(f).items()
                  if k.endswith("norm.weight")}
    lins = {f"{n}.weight" for n in decoder_linears(model)}
    if set(weights) != lins:
        raise ValueError(f"the library quantized other Linears than the course: {sorted(set(weights) ^ lins)[:4]}")
    new = {**others, **weights}
    params = dict(model.named_parameters())
    saved = {k: params[k].detach().clone() for k in new}
    try:
        with torch.no_grad():
            for k, w in new.items():
                params[k].copy_(w)
        run["ppl"] = perplexity(model, held)
    finally:
        with torch.no_grad():
            for k, w in saved.items():
                params[k].copy_(w)
    return run


def _run_library(job: dict) -> None:
    """Runs inside the library's venv: the job's method and settings, compressed-tensors checkpoint to job['out']."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(job["threads"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=getattr(torch, job["dtype"]))
    weights = {"num_bits": job["bits"], "type": "int", "symmetric": job["sym"],
               **({"strategy": "channel"} if job["group_size"] == -1 else
                  {"strategy": "group", "group_size": job["group_size"]})}
    quant = dict(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}}, ignore=["lm_head"])
    # GPTQ as the course's gptq_quantize_model: 1% dampening of the mean diagonal, blocks of 128 columns, no
    # act-order by default. AWQ as the course's: scales from activations only (duo_scaling=False), n_grid points.
    # Both differ by design where the library has no switch: scales come from a min-max observer on the weights
    # before GPTQ starts (the course, like the paper's reference, takes each group's scale from the already
    # updated weights), and symmetric scales are absmax / 7.5 with codes -8..7 (the course: absmax / 7). The
    # GPTQ Hessian is normalised per sample, not per token (a constant factor); AWQ scores each scale on the
    # output of the whole attention / MLP block (the course: on each Linear's output).
    recipe = ([GPTQModifier(**quant, dampening_frac=job["dampening_frac"], actorder=job["actorder"],
                            block_size=job["block_size"])] if job["method"] == "gptq" else
              [AWQModifier(duo_scaling=job["duo_scaling"], n_grid=job["n_grid"]), QuantizationModifier(**quant)])
    if not torch.cuda.is_available():   # 0.14.0.1's AWQ pins cached activations for faster copies to a GPU, and
        from llmcompressor.pipelines.cache import IntermediatesCache     # pin_memory() raises without one: skip it
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    ids = job["calib_ids"]
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    t0 = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=len(ids[0]),
            shuffle_calibration_samples=False, pipeline=job["pipeline"])
    seconds = time.perf_counter() - t0
    model.save_pretrained(job["out"], save_compressed=True)
    (Path(job["out"]) / "course_seconds.json").write_text(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    _run_library(json.loads(Path(sys.argv[1]).read_text()))
