"""The server under load: a bounded queue (429 beyond it), batching, slow and vanished clients.

Servers run in this process on a free port around the session's tiny random pipeline, with the
worker held at a gate so that the queue's state is known when requests arrive.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra (unclip[serve])")
requests = pytest.importorskip("requests")

from unclip.server import create_app  # noqa: E402
from unclip.server.background import serve_in_thread  # noqa: E402

MODEL = "tiny-test"


class Gate:
    """Holds the worker thread inside ``Worker.generate`` until opened; records each batch's prompts."""

    def __init__(self, worker):
        self.worker, self.inner = worker, worker.generate
        self.opened, self.entered = threading.Event(), threading.Event()
        self.batches: list[list[str]] = []

    def __call__(self, tasks):
        self.batches.append([t.prompt for t in tasks])
        self.entered.set()
        assert self.opened.wait(60), "the test never opened the gate"
        return self.inner(tasks)


@pytest.fixture
def gated(tiny_pipeline):
    app = create_app(tiny_pipeline, steps=1, max_queue=3, model_name=MODEL)
    gate = Gate(app.state.worker)
    app.state.worker.generate = gate
    with serve_in_thread(app) as url:
        yield url, app.state.queue, gate
        gate.opened.set()


def wait_until(condition, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_burst_beyond_the_queue_gets_429_and_every_accepted_request_finishes(gated):
    url, queue, gate = gated

    def post(i):
        body = {"prompt": f"burst {i}", "size": "256x256", "response_format": "b64_json"}
        return requests.post(f"{url}/v1/images/generations", json=body, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(post, 0)
        assert gate.entered.wait(30)  # request 0 runs (held at the gate)
        rest = [pool.submit(post, i) for i in range(1, 8)]
        wait_until(lambda: sum(f.done() for f in rest) >= 5)  # 2 more fit; 5 are refused at once
        wait_until(lambda: len(queue._pending) == 2)  # the 2 accepted ones wait in the queue (not a timed guess)
        refused = [f.result() for f in rest if f.done()]
        gate.opened.set()
        responses = [first.result()] + [f.result() for f in rest]
    accepted = [r for r in responses if r.status_code != 429]
    assert len(refused) == 5
    for response in refused:
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
    assert len(accepted) == 3
    for response in accepted:
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 1
    assert gate.batches[0] == ["burst 0"] and sorted(len(b) for b in gate.batches[1:]) == [2]  # batched
    wait_until(lambda: queue.in_flight == 0)


def test_a_disconnected_client_is_skipped_and_a_slow_one_stalls_nobody(gated):
    url, queue, gate = gated
    body = {"prompt": "first", "size": "256x256", "response_format": "b64_json"}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(requests.post, f"{url}/v1/images/generations", json=body, timeout=120)
        assert gate.entered.wait(30)
        with pytest.raises(requests.exceptions.ReadTimeout):  # gives up while its job waits
            requests.post(f"{url}/v1/images/generations", json={"prompt": "vanished"}, timeout=0.5)
        wait_until(lambda: queue.in_flight == 1)  # its slot came back without running it
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as slow:  # sends half a body, then nothing
            slow.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"prompt\": ")
            wait_until(lambda: queue.in_flight == 2)
            gate.opened.set()
            assert first.result().status_code == 200
            quick = requests.post(f"{url}/v1/images/generations", json={"prompt": "quick", "response_format":
                                                                          "b64_json", "size": "256x256"}, timeout=60)
            assert quick.status_code == 200
    assert [p for batch in gate.batches for p in batch] == ["first", "quick"]
