#!/usr/bin/env bash
# Optional: the maintained GPTQ/AWQ library that notebook 02 compares the course's own GPTQ against
# (utils/quant/library_reference.py), in a virtual environment of its own:  bash .ci/install_quant_lib.sh
# Why apart: llm-compressor 0.14.0.1 pins compressed-tensors==0.19.0 and vLLM pins another version, so the two
# never share the course's environment; the course calls this venv's python in a subprocess.
# Not part of .ci/install.sh: 1.5 GB on disk, ~3 min to install (measured on 2 busy CPU cores with the CPU torch
# wheel at hand), and the comparison itself adds ~4-5 min to 02 on a CPU. Where: COURSE_QUANT_LIB_VENV (default
# ~/.cache/inference-course/venvs/llmcompressor); the course finds its python there, or at COURSE_QUANT_LIB_PYTHON.
set -euo pipefail
PY="${PYTHON:-python3}"
VENV="${COURSE_QUANT_LIB_VENV:-$HOME/.cache/inference-course/venvs/llmcompressor}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

"$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
# torch first, the CPU build where it can be had (a local wheel or PyTorch's CPU index): the default PyPI wheel
# pulls ~3 GB of CUDA libraries that a CPU machine never uses. The same torch as the course's CPU requirements.
if [ "${FORCE_GPU:-0}" != 1 ] && ! nvidia-smi -L >/dev/null 2>&1 && \
   "$PY" -c "import urllib.request as u; u.urlopen('$TORCH_CPU_INDEX/torch/', timeout=5)" 2>/dev/null; then
  "$VPY" -m pip install -q torch==2.13.0 --extra-index-url "$TORCH_CPU_INDEX"
else
  "$VPY" -m pip install -q torch==2.13.0
fi
"$VPY" -m pip install -q llmcompressor==0.14.0.1 compressed-tensors==0.19.0 transformers==5.17.0
"$VPY" -c "
from importlib.metadata import version as v
print('install_quant_lib: ' + ', '.join(f'{p} {v(p)}' for p in ('llmcompressor', 'compressed-tensors', 'torch', 'transformers')))"
echo "install_quant_lib: python at $VPY"
if [ "$VENV" != "$HOME/.cache/inference-course/venvs/llmcompressor" ]; then
  echo "install_quant_lib: not the default place: export COURSE_QUANT_LIB_PYTHON=$VPY"
fi
