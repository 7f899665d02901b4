"""llm-throughput@1 on the instance: an OpenAI-compatible server under concurrent, streamed
requests. Standard library only.

throughput = output tokens of every successful request / wall seconds of the whole run
(first request sent to last one finished): what the server delivers, not the mean of each
request's own rate (which overstates it). TTFT is the time to the first streamed content
token of each request. Settings come from the environment (GS_LLM_*); one JSON object is
written to $GPU_SHOPPER_RESULT.
"""

import http.client
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse


def env(name, default):
    return os.environ.get("GS_LLM_" + name) or default


def summarize(records, wall_s):
    """The figures from per-request records {ok, output_tokens, ttft_s} and the wall time."""
    done = [r for r in records if r["ok"]]
    tokens = sum(r["output_tokens"] for r in done)
    ttfts = sorted(r["ttft_s"] for r in done if r.get("ttft_s") is not None)
    total = len(records)
    return {
        "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "output_tokens": tokens,
        "wall_s": wall_s,
        "requests": total,
        "errors": total - len(done),
        "error_rate": (total - len(done)) / total if total else 1.0,
        "ttft_p50_s": ttfts[len(ttfts) // 2] if ttfts else None,
        "ttft_max_s": ttfts[-1] if ttfts else None,
    }


class Client:
    def __init__(self, base_url, timeout):
        parts = urllib.parse.urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout

    def connection(self):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def get_json(self, path):
        conn = self.connection()
        try:
            conn.request("GET", self.prefix + path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
            return json.loads(body)
        finally:
            conn.close()


def wait_ready(client, wait_s):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.get_json("/models")
        except (OSError, ValueError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def one_request(client, model, prompt, max_tokens):
    record: dict = {"ok": False, "output_tokens": 0, "ttft_s": None}
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    started = time.monotonic()
    conn = client.connection()
    try:
        conn.request(
            "POST", client.prefix + "/chat/completions", body, {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            return record
        chunks = 0
        usage: object = None
        finished = False
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                finished = True
                break
            event = json.loads(data)
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if record["ttft_s"] is None:
                        record["ttft_s"] = time.monotonic() - started
                    chunks += 1
        record["output_tokens"] = int(usage) if isinstance(usage, int) else chunks
        record["ok"] = finished and record["output_tokens"] > 0
    except (OSError, ValueError, http.client.HTTPException):
        record["ok"] = False
    finally:
        conn.close()
    return record


def run(client, model, prompt, max_tokens, concurrency, total):
    records = []
    lock = threading.Lock()
    todo = list(range(total))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            found = one_request(client, model, prompt, max_tokens)
            with lock:
                records.append(found)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(max(1, concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarize(records, time.monotonic() - started)


def main():
    server = env("SERVER_CMD", "")
    if server:
        with open("out/gs-llm-server.log", "ab") as log:  # the server keeps its own copy
            subprocess.Popen(shlex.split(server), stdout=log, stderr=log, start_new_session=True)
    client = Client(env("BASE_URL", "http://127.0.0.1:8000/v1"), float(env("TIMEOUT_S", "600")))
    models = wait_ready(client, float(env("WAIT_S", "900")))
    model = env("MODEL", "")
    if not model:
        model = (models.get("data") or [{}])[0].get("id") or "default"
    figures = run(
        client,
        model,
        env("PROMPT", "Write a short story about a GPU that learned to dream."),
        int(env("MAX_TOKENS", "256")),
        int(env("CONCURRENCY", "8")),
        int(env("REQUESTS", "32")),
    )
    result = {
        "metric": "tokens_per_s",
        "value": figures["tokens_per_s"],
        "unit": "tokens/s",
        "higher_is_better": True,
        "extra_metrics": {
            k: v for k, v in figures.items() if k != "tokens_per_s" and v is not None
        },
        "device": "gpu",
        "backend": "openai-compatible " + model[:60],
    }
    with open(os.environ["GPU_SHOPPER_RESULT"], "w") as handle:
        json.dump(result, handle)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
