"""Loaded by pytest.ini (`-p tests.course_env`) before anything is collected, so it also covers the notebooks
at the top level (a tests/conftest.py would only cover tests/): never touch the hub, never overwrite the
committed GPU results with a CPU test run."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
# Notebook kernels started by nbval inherit this: results/<nb>.json of a test run go to a temp folder.
os.environ.setdefault("COURSE_RESULTS_DIR", tempfile.mkdtemp(prefix="course-results-"))
