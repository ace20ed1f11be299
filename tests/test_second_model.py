"""The course works with the model a learner picks: every notebook, top to bottom, with a second real model.

Qwen2.5-Coder-0.5B-Instruct differs from the default where it matters: attention biases, a 151,936-token
vocabulary, 14 query / 2 KV heads, another chat template, and an instruct model that stops at once on random
prompts. The notebooks run in quick mode (COURSE_QUICK=1: every section, smaller sizes), in a fresh kernel whose
environment selects the model, exactly as a learner would (COURSE_MODEL=qwen2.5-coder-0.5b jupyter lab).
A cell that raises or an assert that fails fails the test, as under nbval-lax.
"""
import configparser
import os
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECOND_MODEL = os.environ.get("COURSE_SECOND_MODEL", "qwen2.5-coder-0.5b")
# Notebooks whose models are not chosen by COURSE_MODEL: the pass would repeat their default run.
MODEL_INDEPENDENT = {
    "04_speculative_decoding.ipynb": "its target and draft are set by SPECDEC_TARGET / SPECDEC_DRAFT (by default "
                                     "Qwen2.5-Coder-1.5B and -0.5B: already two real models other than the default)",
}


def _course_notebooks() -> list[str]:
    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    return [p for p in ini["pytest"]["testpaths"].split() if p.endswith(".ipynb")]


def cell_seconds(nb) -> list[tuple[int, float, str]]:
    """(index, seconds, first line) of each executed code cell, from nbclient's timing metadata."""
    out = []
    for i, cell in enumerate(nb.cells):
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            a, b = (datetime.fromisoformat(ex[k].replace("Z", "+00:00")) for k in ("iopub.execute_input", "shell.execute_reply"))
            out.append((i, (b - a).total_seconds(), (cell.source.splitlines() or [""])[0][:60]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("notebook", _course_notebooks())
def test_notebook_runs_with_the_second_model(notebook, monkeypatch, tmp_path, request):
    import nbformat
    from nbclient import NotebookClient
    if notebook in MODEL_INDEPENDENT:
        pytest.skip(f"{notebook}: {MODEL_INDEPENDENT[notebook]}")
    from utils.models import OFFLINE_MODELS, offline_model_dir
    assert SECOND_MODEL in OFFLINE_MODELS
    offline_model_dir(SECOND_MODEL)                          # converted once (install does it; here if not)
    monkeypatch.setenv("COURSE_MODEL", SECOND_MODEL)
    monkeypatch.setenv("COURSE_QUICK", "1")
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    nb = nbformat.read(ROOT / notebook, as_version=4)
    client = NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()                                     # raises CellExecutionError on the first failing cell
    finally:   # where the time went, printed in the run's summary (tests/course_env.py): the CI budget is tight
        slowest = sorted(cell_seconds(nb), key=lambda r: -r[1])[:5]
        request.node.user_properties.append(("slowest_cells", slowest))
    assert (tmp_path / "results" / f"{Path(notebook).stem}.json").is_file(), "the notebook did not reach its end"
