"""A tiny OpenAI-compatible *streaming* server with known timings, for testing the client and the manager.

Every streamed request: wait --ttft seconds, send the first token chunk, then one chunk every --itl seconds
until max_tokens chunks were sent, then a usage chunk and [DONE]. So TTFT ~= ttft, every ITL ~= itl and
E2EL ~= ttft + (max_tokens - 1) * itl. Requests are independent (one thread each).

Also: GET /health, GET /v1/models, GET /metrics (vLLM-style Prometheus names, with --old-metric-names the
pre-0.11 ones). Test knobs: --fail-after S (exit with code 3 after S s, before ever being healthy),
--ignore-sigterm (forces the manager to SIGKILL), --spawn-child (a grandchild that must also be stopped),
--health-delay S (become healthy only after S s).

Standard library only, so it starts in well under a second.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None
STATE = {"running": 0, "served": 0, "t0": time.time(), "lock": threading.Lock()}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"        # body ends when the connection closes: simplest streaming

    def log_message(self, fmt, *args):   # quiet
        pass

    def _json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            healthy = time.time() - STATE["t0"] >= ARGS.health_delay
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": ARGS.model, "object": "model"}]})
        elif self.path == "/metrics":
            kv = "vllm:gpu_cache_usage_perc" if ARGS.old_metric_names else "vllm:kv_cache_usage_perc"
            with STATE["lock"]:
                running = STATE["running"]
            text = (f"# HELP {kv} KV-cache usage.\n# TYPE {kv} gauge\n"
                    f'{kv}{{engine="0",model_name="{ARGS.model}"}} {min(1.0, running / 10):.3f}\n'
                    f'vllm:num_requests_running{{engine="0",model_name="{ARGS.model}"}} {running}\n'
                    f'vllm:num_requests_waiting{{engine="0",model_name="{ARGS.model}"}} 0.0\n'
                    f'vllm:num_preemptions_total{{engine="0",model_name="{ARGS.model}"}} 0.0\n'
                    f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="64",engine="0"}} 1.0\n')
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        req = json.loads(self.rfile.read(n) or b"{}")
        chat = self.path == "/v1/chat/completions"
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            return self._json(404, {"error": "not found"})
        if req.get("model") != ARGS.model:
            return self._json(404, {"error": f"model {req.get('model')!r} not served"})
        max_tokens = int(req.get("max_completion_tokens") or req.get("max_tokens") or 16)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        with STATE["lock"]:
            STATE["running"] += 1
        try:
            def send(obj):
                self.wfile.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")
                self.wfile.flush()

            if not ARGS.no_ping:
                self.wfile.write(b": ping\n\n")    # an SSE comment: clients must skip it
            time.sleep(ARGS.ttft)
            for i in range(max_tokens):
                if i:
                    time.sleep(ARGS.itl)
                piece = f" t{i}"
                choice = ({"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece})
                send({"id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                      "choices": [choice]})
            usage = {"prompt_tokens": 7, "completion_tokens": max_tokens, "total_tokens": 7 + max_tokens}
            if ARGS.usage_in_last_choice:     # llama.cpp, transformers serve: a closing chunk without text
                last = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else \
                       {"index": 0, "text": "", "finish_reason": "length"}
                time.sleep(ARGS.itl)
                send({"id": "x", "choices": [last], "usage": usage})
            else:                             # vLLM: a chunk of its own, no choices
                send({"id": "x", "choices": [], "usage": usage})
            send(b"[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with STATE["lock"]:
                STATE["running"] -= 1
                STATE["served"] += 1


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="fake-model")
    p.add_argument("--ttft", type=float, default=0.05)
    p.add_argument("--itl", type=float, default=0.01)
    p.add_argument("--health-delay", type=float, default=0.0)
    p.add_argument("--fail-after", type=float, default=None)
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--spawn-child", action="store_true")
    p.add_argument("--old-metric-names", action="store_true")
    p.add_argument("--usage-in-last-choice", action="store_true")
    # vLLM's own benchmark client strips each network read before splitting SSE messages, so a comment that
    # arrives alone (": ping") sticks to the next message and that request fails: its test runs without pings
    p.add_argument("--no-ping", action="store_true")
    ARGS = p.parse_args()
    print(f"fake server pid {os.getpid()} on {ARGS.host}:{ARGS.port}", flush=True)
    if ARGS.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if ARGS.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child pid {child.pid}", flush=True)
    if ARGS.fail_after is not None:
        time.sleep(ARGS.fail_after)
        print("fake server: simulated crash during start-up (CUDA out of memory)", flush=True)
        sys.exit(3)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 1024   # a real server (uvicorn) listens with a backlog of 2048
    ThreadingHTTPServer((ARGS.host, ARGS.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
