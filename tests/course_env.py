"""Loaded by pytest.ini (`-p tests.course_env`) before anything is collected, so it also covers the notebooks
at the top level (a tests/conftest.py would only cover tests/): never touch the hub, never overwrite the
committed GPU results with a test run, and leave nothing behind in /tmp."""
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
# One scratch folder per test run; notebook kernels started by nbval inherit these variables.
_SCRATCH = tempfile.mkdtemp(prefix="course-test-run-")
os.environ.setdefault("COURSE_RESULTS_DIR", os.path.join(_SCRATCH, "results"))
os.environ.setdefault("COURSE_LOG_DIR", os.path.join(_SCRATCH, "logs"))
# vLLM's engine processes talk over IPC sockets it creates in VLLM_RPC_BASE_PATH (default /tmp) and never removes.
os.environ.setdefault("VLLM_RPC_BASE_PATH", os.path.join(_SCRATCH, "ipc"))
os.makedirs(os.environ["VLLM_RPC_BASE_PATH"], exist_ok=True)


def pytest_unconfigure(config):
    """Remove this run's scratch folder (results JSON and server logs) when the run ends."""
    shutil.rmtree(_SCRATCH, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    """The slowest cells of each notebook run in a fresh kernel (the second-model pass), after pytest's durations."""
    if getattr(terminalreporter.config, "_course_cells_reported", False):   # conftest re-imports this module
        return
    terminalreporter.config._course_cells_reported = True
    lines = []
    for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for key, cells in getattr(rep, "user_properties", []):
            if key == "slowest_cells" and rep.when == "call":
                lines.append(f"{rep.nodeid.split('[')[-1].rstrip(']')}: " +
                             "; ".join(f"cell {i} {s:.0f} s ({first!r})" for i, s, first in cells))
    if lines:
        terminalreporter.write_sep("=", "slowest cells of the notebooks run in their own kernel")
        for line in lines:
            terminalreporter.write_line(line)
