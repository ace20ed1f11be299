"""A minimal ASGI app served by uvicorn (the server vLLM uses): a streamed completion sends one SSE chunk
every ITL_S seconds. For the client's high-concurrency test: a client that cannot keep up with a few hundred
streams shows up as merged chunks (ITL ~ 0) and connection errors, not as the server's true ITL."""
import asyncio
import json

TTFT_S, ITL_S = 0.05, 0.01


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    n = int(json.loads(body or b"{}").get("max_tokens", 16))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await asyncio.sleep(TTFT_S)
    for i in range(n):
        chunk = {"choices": [{"index": 0, "text": f" t{i}"}]}
        await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True})
        await asyncio.sleep(ITL_S)
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}}
    await send({"type": "http.response.body", "body": f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()})
