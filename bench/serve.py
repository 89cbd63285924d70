"""Images per second of ``unclip serve`` at several concurrencies and ``--max-batch`` values.

    python bench/serve.py [--checkpoint checkpoints/shapes | --random-from configs/tiny]
                          [--concurrency 1 4 8] [--max-batch 1 4] [--requests 16] [--steps N] [--json]

For each ``--max-batch`` a server is started on loopback (a subprocess, ``python -m unclip serve``),
warmed up with one request, then sent ``--requests`` text → 256×256 generations (``n`` = 1,
``b64_json``, distinct prompts) by ``c`` client threads at a time for each ``--concurrency`` c, and
stopped. Reported: images per second over the whole burst (first request sent to last answer) and
the median latency of one request. With ``--json`` the last line is one JSON object
``{"rows": [{"max_batch", "concurrency", "requests", "seconds", "images_per_s", "median_latency_s"}]}``.
Nothing else should run on the machine meanwhile: the figures are timings.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a purple circle",
           "an orange square", "a red triangle", "a blue star"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(source: list[str], port: int, max_batch: int, steps: list[str], timeout: float) -> subprocess.Popen:
    """``unclip serve`` on 127.0.0.1:port, returned once ``/health`` answers."""
    command = [sys.executable, "-m", "unclip", "serve", *source, "--port", str(port), "--max-batch", str(max_batch),
               "--max-queue", "64", *(["--steps", *steps] if steps else [])]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped (exit {server.returncode}):\n{server.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def generate(port: int, prompt: str) -> float:
    """One text → 256×256 request; its latency in seconds."""
    body = json.dumps({"prompt": prompt, "n": 1, "size": "256x256", "response_format": "b64_json"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/images/generations", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as response:
        answer = json.loads(response.read())
    if len(answer.get("data", [])) != 1:
        raise SystemExit(f"unexpected answer: {str(answer)[:300]}")
    return time.perf_counter() - start


def burst(port: int, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """(seconds from the first request to the last answer, each request's latency)."""
    prompts = [PROMPTS[i % len(PROMPTS)] + f", take {i}" for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda p: generate(port, p), prompts))
    return time.perf_counter() - start, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default="checkpoints/shapes")
    source.add_argument("--random-from", help="random weights from a config folder (a smoke run)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=16, help="requests per (max-batch, concurrency) burst")
    parser.add_argument("--steps", nargs="+", default=[], help="passed to unclip serve --steps")
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the rows")
    args = parser.parse_args(argv)
    if min(args.concurrency + args.max_batch + [args.requests]) < 1:
        parser.error("--concurrency, --max-batch and --requests must be at least 1")

    where = ["--random-from", args.random_from] if args.random_from else ["--checkpoint", args.checkpoint]
    print(f"unclip serve {' '.join(where)}, text → 256, {args.requests} requests per burst")
    print(f"{'max batch':>9} {'concurrency':>11} {'seconds':>8} {'images/s':>9} {'median latency s':>17}")
    rows = []
    for max_batch in args.max_batch:
        port = free_port()
        server = start_server(where, port, max_batch, args.steps, args.start_timeout)
        try:
            generate(port, "warm-up")
            for concurrency in args.concurrency:
                seconds, latencies = burst(port, args.requests, concurrency)
                row = {"max_batch": max_batch, "concurrency": concurrency, "requests": args.requests,
                       "seconds": seconds, "images_per_s": args.requests / seconds,
                       "median_latency_s": statistics.median(latencies)}
                rows.append(row)
                print(f"{max_batch:>9} {concurrency:>11} {seconds:>8.2f} {row['images_per_s']:>9.3f} "
                      f"{row['median_latency_s']:>17.2f}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
