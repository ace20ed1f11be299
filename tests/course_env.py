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
    """Where the run's time went (the CI budget is tight): seconds per test file and per notebook, and the slowest
    cells of each notebook run in its own kernel (the second-model pass)."""
    if getattr(terminalreporter.config, "_course_time_reported", False):   # conftest re-imports this module
        return
    terminalreporter.config._course_time_reported = True
    reports = [r for key in ("passed", "failed", "skipped", "error") for r in terminalreporter.stats.get(key, [])
               if hasattr(r, "duration") and hasattr(r, "nodeid")]
    per_file, cells = {}, []
    for rep in reports:
        path, param = rep.nodeid.split("::")[0], rep.nodeid.split("[")[-1].rstrip("]")
        if "test_second_model.py" in path and "[" in rep.nodeid:      # one test per notebook: name it
            path = "second model: " + param
        per_file[path] = per_file.get(path, 0.0) + rep.duration
        for key, value in getattr(rep, "user_properties", []):
            if key == "slowest_cells" and rep.when == "call":
                cells.append(f"{param}: " +
                             "; ".join(f"cell {i} {sec:.0f} s ({first!r})" for i, sec, first in value))
    if per_file:
        terminalreporter.write_sep("=", "seconds per test file and notebook")
        units = sum(v for k, v in per_file.items() if k.startswith("tests/"))
        terminalreporter.write_line(f"unit tests (tests/*.py): {units:.0f} s")
        for path, sec in sorted(per_file.items(), key=lambda kv: -kv[1]):
            if not path.startswith("tests/") or sec >= 20:
                terminalreporter.write_line(f"{sec:7.0f} s  {path}")
    if cells:
        terminalreporter.write_sep("=", "slowest cells of the notebooks run in their own kernel")
        for line in cells:
            terminalreporter.write_line(line)
