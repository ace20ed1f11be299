"""utils.serving.sglang_server: the command line, the separate environment (COURSE_SGLANG_PATH / _PYTHON), the
not-installed message, and the process wiring (a stand-in `sglang` package on the server's PYTHONPATH that starts
the course's fake OpenAI server). Where a real SGLang is installed, its own parser must accept our command."""
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils.serving import sglang_server as sg
from utils.serving.process import free_port, port_in_use

FAKE_SERVER = Path(__file__).with_name("fake_openai_server.py")


def _fake_sglang(folder: Path, version: str = "0.5.16") -> Path:
    """A --target folder with sglang's metadata and a `sglang.launch_server` that checks SGLang's flag names
    strictly (argparse exits 2 on an unknown one) and then runs the fake OpenAI server under the served name."""
    (folder / f"sglang-{version}.dist-info").mkdir(parents=True)
    (folder / f"sglang-{version}.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sglang\n"
                                                                     f"Version: {version}\n")
    (folder / "sglang").mkdir()
    (folder / "sglang" / "__init__.py").write_text("")
    (folder / "sglang" / "launch_server.py").write_text(textwrap.dedent(f"""
        import argparse, os, sys
        p = argparse.ArgumentParser(allow_abbrev=False)
        p.add_argument("--model-path", required=True)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--served-model-name")
        p.add_argument("--mem-fraction-static", type=float)
        p.add_argument("--load-format", choices=["auto", "dummy"])
        p.add_argument("--enable-metrics", action="store_true")
        a = p.parse_args()
        os.execv(sys.executable, [sys.executable, {str(FAKE_SERVER)!r}, "--port", str(a.port), "--host", a.host,
                                  "--model", a.served_model_name or a.model_path])
    """))
    return folder


def test_command_uses_sglang_flag_names_and_binds_loopback():
    cmd = sg.sglang_command("/models/smol", 31234, served_model_name="course-model", mem_fraction_static=0.25,
                            load_format="dummy", python="/venv/bin/python", context_length=2048,
                            disable_radix_cache=False)
    assert cmd[:3] == ["/venv/bin/python", "-m", "sglang.launch_server"]
    pairs = dict(zip(cmd[3::1], cmd[4::1]))
    assert pairs["--model-path"] == "/models/smol" and pairs["--host"] == "127.0.0.1" and pairs["--port"] == "31234"
    assert pairs["--served-model-name"] == "course-model" and pairs["--mem-fraction-static"] == "0.25"
    assert pairs["--load-format"] == "dummy" and pairs["--context-length"] == "2048"
    assert "--enable-metrics" in cmd and cmd[cmd.index("--enable-metrics") + 1].startswith("--")   # a bare flag
    assert "--disable-radix-cache" not in cmd                                       # False -> omitted
    plain = sg.sglang_command("/m", 1, enable_metrics=False, python="py")
    assert "--enable-metrics" not in plain and "--load-format" not in plain and "--served-model-name" not in plain
    with pytest.raises(ValueError, match="load_format"):
        sg.sglang_command("/m", 1, load_format="random")


def test_runtime_and_env_come_from_the_environment(tmp_path):
    assert sg.sglang_runtime({}) == (sys.executable, None)
    env = {sg.PATH_ENV: str(tmp_path), sg.PYTHON_ENV: "/venv/bin/python", "PYTHONPATH": "/overlay"}
    assert sg.sglang_runtime(env) == ("/venv/bin/python", str(tmp_path))
    out = sg.sglang_env(env)
    assert out["PYTHONPATH"] == os.pathsep.join([str(tmp_path), "/overlay"])   # sglang's pins shadow the overlay
    assert out["HF_HUB_OFFLINE"] == "1"
    assert sg.sglang_env({sg.PATH_ENV: str(tmp_path)})["PYTHONPATH"] == str(tmp_path)
    assert "PYTHONPATH" not in sg.sglang_env({"HOME": "/root"})                  # nothing set: nothing added


def test_not_installed_messages_name_the_install_command(tmp_path):
    empty = {sg.PATH_ENV: str(tmp_path)}
    reason = sg.sglang_available(empty)
    assert reason and "not installed" in reason and f"sglang=={sg.PINNED}" in reason and sg.PATH_ENV in reason
    assert "is not a folder" in sg.sglang_available({sg.PATH_ENV: str(tmp_path / "missing")})
    assert "not an executable" in sg.sglang_available({sg.PYTHON_ENV: str(tmp_path / "nope" / "python")})
    port = free_port()
    old = os.environ.get(sg.PATH_ENV)
    os.environ[sg.PATH_ENV] = str(tmp_path)
    try:
        with pytest.raises(ModuleNotFoundError, match=r"pip install .*sglang==0\.5\.16"):
            sg.SGLangServer("/models/smol", port=port)
    finally:
        os.environ.pop(sg.PATH_ENV) if old is None else os.environ.__setitem__(sg.PATH_ENV, old)
    assert not port_in_use(port)                                                 # nothing was started


def test_version_from_a_target_folder_and_from_another_interpreter(tmp_path):
    site = _fake_sglang(tmp_path / "site", version="0.5.16")
    assert sg.sglang_version({sg.PATH_ENV: str(site)}) == "0.5.16"
    assert sg.sglang_available({sg.PATH_ENV: str(site)}) is None
    venv_python = tmp_path / "python"                   # stands for a venv's interpreter that has sglang
    venv_python.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    venv_python.chmod(venv_python.stat().st_mode | stat.S_IXUSR)
    assert sg.sglang_version({sg.PYTHON_ENV: str(venv_python)}) == "0.5.16"
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I \"$@\"\n")             # -I: no PYTHONPATH, no sglang
    bare.chmod(bare.stat().st_mode | stat.S_IXUSR)
    assert "not installed" in sg.sglang_available({sg.PYTHON_ENV: str(bare)})


def test_server_starts_from_its_own_pythonpath_serves_our_name_and_stops(tmp_path, monkeypatch):
    site = _fake_sglang(tmp_path / "site")
    monkeypatch.setenv(sg.PATH_ENV, str(site))
    monkeypatch.setenv("COURSE_LOG_DIR", str(tmp_path / "logs"))
    srv = sg.SGLangServer("/models/smol", served_model_name="course-model", mem_fraction_static=0.3,
                          load_format="dummy", startup_timeout_s=60)
    with srv:
        import httpx
        ids = [m["id"] for m in httpx.get(srv.url("/v1/models"), trust_env=False).json()["data"]]
        assert ids == ["course-model"] and srv.model_name == "course-model"
        assert srv.startup_s is not None and srv.host == "127.0.0.1"
    assert srv.leftovers(gpu_wait_s=0)["pids"] == []
    assert not port_in_use(srv.port)


def test_a_server_of_another_model_on_the_way_is_not_ours(tmp_path, monkeypatch):
    site = _fake_sglang(tmp_path / "site")
    monkeypatch.setenv(sg.PATH_ENV, str(site))
    monkeypatch.setenv("COURSE_LOG_DIR", str(tmp_path / "logs"))
    srv = sg.SGLangServer("/models/smol", served_model_name="course-model", startup_timeout_s=60)
    srv.served_model = "another-model"                    # what a stranger serving something else looks like
    from utils.serving.process import ServerStartError
    with pytest.raises(ServerStartError, match="not the sglang we started"):
        srv.start()
    assert srv.leftovers(gpu_wait_s=0)["pids"] == []


@pytest.mark.skipif(sg.sglang_available() is not None, reason="SGLang is not installed here (COURSE_SGLANG_PATH / "
                    "COURSE_SGLANG_PYTHON): its own parser cannot be asked")
def test_real_sglang_parser_accepts_our_command():
    python, _ = sg.sglang_runtime()
    cmd = sg.sglang_command("/models/smol", 31234, served_model_name="course-model", mem_fraction_static=0.3,
                            load_format="dummy")
    code = ("import argparse, json, sys; from sglang.srt.server_args import ServerArgs; p = argparse.ArgumentParser();"
            " ServerArgs.add_cli_args(p); a = p.parse_args(sys.argv[1:]); print(json.dumps({k: getattr(a, k) for k in"
            " ('model_path', 'host', 'port', 'served_model_name', 'mem_fraction_static', 'load_format',"
            " 'enable_metrics')}))")
    out = subprocess.run([python, "-c", code, *cmd[3:]], capture_output=True, text=True, env=sg.sglang_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "model_path": "/models/smol", "host": "127.0.0.1", "port": 31234, "served_model_name": "course-model",
        "mem_fraction_static": 0.3, "load_format": "dummy", "enable_metrics": True}
