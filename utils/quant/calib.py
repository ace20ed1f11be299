"""Calibration and evaluation text (both ship with Python, no download), perplexity, and a layer-by-layer
runner that feeds each decoder block the activations of the blocks before it (what GPTQ and AWQ need).

Calibration text: the Python language reference (`pydoc_data.topics`, via `utils.workload.text_passages`).
Held-out text: a DIFFERENT text, the docstrings of a fixed list of standard-library modules (English prose
about other topics: e-mail, HTTP, calendars, ...). Calibrating on one and measuring perplexity on the other
keeps a method from looking good because it memorised its own calibration set.
"""
from __future__ import annotations

import importlib
import math
import random

import torch

HELDOUT_MODULES = ("argparse", "asyncio", "calendar", "collections", "csv", "datetime", "decimal", "difflib",
                   "email", "fractions", "ftplib", "functools", "gettext", "heapq", "http.client", "imaplib",
                   "inspect", "ipaddress", "logging", "mailbox", "pathlib", "pickle", "poplib", "random",
                   "shutil", "smtplib", "statistics", "string", "subprocess", "tarfile", "textwrap",
                   "threading", "turtle", "unittest", "urllib.request", "uuid", "wave", "zipfile")


def calibration_text() -> str:
    from utils.workload import text_passages
    return "\n\n".join(text_passages())


def heldout_text() -> str:
    """Module and public-function docstrings of HELDOUT_MODULES (deterministic for a given Python)."""
    parts = []
    for name in HELDOUT_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:              # e.g. turtle without tkinter
            continue
        if mod.__doc__:
            parts.append(mod.__doc__.strip())
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr, None)
            doc = getattr(obj, "__doc__", None) if not attr.startswith("_") else None
            if callable(obj) and getattr(obj, "__module__", None) == mod.__name__ and doc and len(doc) > 200:
                parts.append(doc.strip())
    text = "\n\n".join(parts)
    if len(text) < 20_000:
        raise RuntimeError("Too little held-out text: this Python has no docstrings (run without -OO).")
    return text


def calibration_batch(tokenizer, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """n_samples random windows of seq_len tokens from the calibration text (seeded): (n_samples, seq_len)."""
    ids = tokenizer(calibration_text(), return_tensors="pt")["input_ids"][0]
    if len(ids) < seq_len + 1:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than seq_len={seq_len}")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seq_len) for _ in range(n_samples)]
    return torch.stack([ids[s:s + seq_len] for s in starts])


def heldout_ids(tokenizer, seq_len: int, n_windows: int) -> torch.Tensor:
    """The first n_windows non-overlapping windows of the held-out text: (n_windows, seq_len)."""
    ids = tokenizer(heldout_text(), return_tensors="pt")["input_ids"][0]
    n = min(n_windows, len(ids) // seq_len)
    if n < 1:
        raise ValueError(f"held-out text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean next-token negative log-likelihood) over all windows (each window scored independently)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        ids = windows[i:i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                 reduction="sum")
        nll += float(loss)
        count += ids[:, 1:].numel()
    return math.exp(nll / count)


# --------------------------------------------------------------------------------- layer-by-layer runner
class _Stop(Exception):
    pass


@torch.no_grad()
def first_layer_inputs(model, calib_ids: torch.Tensor):
    """Hidden states entering decoder block 0 and the keyword arguments every block receives
    (position embeddings, attention mask, ...), captured by running the model until block 0 is called."""
    layers = model.model.layers
    captured = {}

    def hook(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=calib_ids.to(next(model.parameters()).device), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    kw = captured["kw"]
    kw["use_cache"] = False
    kw.pop("past_key_values", None)
    kw.pop("past_key_value", None)
    return captured["h"], kw


def run_layer(layer, h: torch.Tensor, kw: dict) -> torch.Tensor:
    out = layer(h, **kw)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def capture_linear_inputs(layer, h: torch.Tensor, kw: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """Run one block and record the input of each named Linear inside it, flattened to (tokens, in_features)."""
    seen, handles = {}, []
    for name in names:
        mod = layer.get_submodule(name)
        handles.append(mod.register_forward_pre_hook(
            lambda m, args, name=name: seen.__setitem__(name, args[0].reshape(-1, args[0].shape[-1]).float())))
    try:
        run_layer(layer, h, kw)
    finally:
        for hd in handles:
            hd.remove()
    return seen


LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
