"""Test-wide settings: never touch the hub, never overwrite committed results."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
# Notebook kernels started by nbval inherit this: results/<nb>.json of a CPU test run go to a temp folder.
os.environ.setdefault("COURSE_RESULTS_DIR", tempfile.mkdtemp(prefix="course-results-"))
