"""What a new user hit, as checks that fail if it comes back: committed GPU results overwritten by a learner's
run, the course citing the machines it was built on, widget progress bars that print warnings in Jupyter."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from utils.measure import provenance

ROOT = Path(__file__).resolve().parents[1]


def _tracked(*suffixes):
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return [ROOT / f for f in out if f.endswith(suffixes) and (ROOT / f).is_file()]


def _source(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n".join("".join(c.get("source", "")) for c in json.loads(path.read_text())["cells"])
    return path.read_text(errors="replace")


def test_a_learners_run_never_writes_the_committed_results(monkeypatch, tmp_path):
    monkeypatch.delenv(provenance.RESULTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    committed = tmp_path / "results" / "00_START_HERE.json"
    committed.write_text('{"gpu": "NVIDIA H200"}')
    path = provenance.save_results("00_START_HERE.ipynb", {"x": 1}, env={"cpu": "test"})
    assert committed.read_text() == '{"gpu": "NVIDIA H200"}'
    assert path.resolve() == (tmp_path / "results" / "my_runs" / "00_START_HERE.json").resolve()
    # ... and that folder is ignored by git in the course repo
    check = subprocess.run(["git", "check-ignore", "-q", "results/my_runs/00_START_HERE.json"], cwd=ROOT)
    assert check.returncode == 0, "results/my_runs/ must be git-ignored"


def test_results_record_commit_dirty_flag_and_settings(monkeypatch, tmp_path):
    monkeypatch.setenv(provenance.RESULTS_ENV, str(tmp_path))
    monkeypatch.setenv("COURSE_QUICK", "1")
    doc = json.loads(provenance.save_results("99_x.ipynb", {}, settings={"batch": 8}, quiet=True).read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", doc["provenance"]["git_commit"])
    assert isinstance(doc["provenance"]["git_dirty"], bool)
    assert doc["settings"]["batch"] == 8 and doc["settings"]["COURSE_QUICK"] == "1"
    assert "source_commit" not in doc["provenance"]
    # a copied tree run on another machine: the copier names the commit its files came from
    monkeypatch.setenv("COURSE_SOURCE_COMMIT", "0123abc")
    doc = json.loads(provenance.save_results("99_x.ipynb", {}, quiet=True).read_text())
    assert doc["provenance"]["source_commit"] == "0123abc"


@pytest.mark.parametrize("path", _tracked(".py", ".md", ".ipynb", ".sh", ".txt"), ids=lambda p: p.name)
def test_the_course_speaks_of_itself_alone(path):
    if path.parts[-2] in ("tests", ".ci"):
        return
    leaks = re.findall(r"devkit|shared/device|\bkit README\b|\bthe kit\b|\.devkit|/tmp/devkit", _source(path))
    assert not leaks, f"{path.name} cites the machines the course was built on: {sorted(set(leaks))}"


@pytest.mark.parametrize("path", _tracked(".py", ".ipynb"), ids=lambda p: p.name)
def test_no_widget_progress_bars(path):
    # tqdm.auto picks the Jupyter widget bar, which prints "IProgress not found" without ipywidgets.
    if path.name == "test_course_hygiene.py":
        return
    assert "tqdm.auto" not in _source(path), f"{path.name}: use `from tqdm import tqdm` (text bars)"


@pytest.mark.parametrize("path", sorted(ROOT.glob("0*.ipynb")), ids=lambda p: p.name)
def test_every_notebook_is_valid_and_ready_for_a_classroom(path):
    import warnings
    import nbformat
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # a cell without an id is a warning today, an error later
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "## Takeaways" in md, f"{path.name}: no Takeaways cell"
    assert re.search(r"\*\*Next[:*]", md), f"{path.name}: no Next link"
    checkers = [s for s in code if re.search(r"\bdef my_\w+|# YOUR CODE|raise NotImplementedError", s)]
    assert len(checkers) >= 2, f"{path.name}: {len(checkers)} exercise cells with a checker (2-4 expected)"
