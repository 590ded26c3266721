"""``deqa serve``: the real server on a free loopback port, every endpoint, every bad input.

The module's server is the ``deqa serve`` command itself in a subprocess (stopped with SIGTERM at
the end, which must exit 0); the API-key and overload servers run the same app with uvicorn in a
thread, over the module's ``Scorer``, so a test can hold the model's forward pass. Scores are
compared with ``deqa score`` on the same files. Skipped when the serve extra is not installed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

for _module in ("fastapi", "uvicorn", "fastapi_offline", "multipart"):
    pytest.importorskip(_module, reason="the serve extra is not installed (pip install 'deqa[serve]')")

from chromium_pipe import Chromium  # noqa: E402
from deqa import LEVELS  # noqa: E402
from deqa.cli import main as cli  # noqa: E402
from deqa.report.browser import find_chromium, ink_share  # noqa: E402
from deqa.scoring import Scorer  # noqa: E402
from model_fixtures import trained_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("score", "std", *[f"p_{lv}" for lv in LEVELS])
MAX_PIXELS = 200_000  # the module server's decompression-bomb limit
SERVER_ARGS = [
    "--threads", "1", "--max-batch", "8", "--max-wait-ms", "20", "--max-images", "4",
    "--max-request-mb", "1", "--max-pixels", str(MAX_PIXELS), "--max-queue", "16", "--max-requests", "12", "--encode-in", "threads",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# HTTP helpers (standard library only)
# ---------------------------------------------------------------------------------------------
def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None, timeout=120):
    """(status, headers, body bytes) of one request to ``url`` (http://127.0.0.1:PORT/path)."""
    host, _, path = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def multipart(files: list[tuple[str, str, bytes]]) -> tuple[bytes, dict]:
    """A multipart/form-data body from (field, file name, bytes); a None file name is a text field."""
    boundary = uuid.uuid4().hex
    parts = []
    for field, filename, data in files:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode())
        if filename is not None:
            parts.append(b"Content-Type: application/octet-stream\r\n")
        parts.append(b"\r\n" + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_images(url: str, named: list[tuple[str, bytes]], headers: dict | None = None):
    body, h = multipart([("image", name, data) for name, data in named])
    status, head, raw = request(url + "/score", "POST", body, {**h, **(headers or {})})
    return status, head, json.loads(raw)


def post_json(url: str, doc, headers: dict | None = None):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    status, head, raw = request(url + "/score", "POST", body, {"Content-Type": "application/json", **(headers or {})})
    return status, head, json.loads(raw)


def same_scores(row: dict, expected: dict, tol: float = 1e-5) -> bool:
    return "error" not in row and all(abs(row[f] - float(expected[f])) <= tol for f in FIELDS)


# ---------------------------------------------------------------------------------------------
# fixtures: a trained tiny model, test images, the deqa score reference, the servers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory) -> dict[str, Path]:
    """Good images (the fixture PNGs, a 16-bit PNG, an EXIF-rotated PNG) and bad ones."""
    from PIL import Image

    from test_images import write_png16

    out = tmp_path_factory.mktemp("uploads")
    pngs = sorted(trained["images"].glob("*.png"))
    good = {f"img{i}.png": p for i, p in enumerate(pngs[:6])}
    grey = np.asarray(Image.open(pngs[0]).convert("L"))
    write_png16(out / "grey16.png", grey.astype(np.uint16) * 257)
    upright = Image.open(pngs[1]).convert("RGB").crop((0, 0, 64, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; viewers (and deqa) rotate it upright
    upright.transpose(Image.Transpose.ROTATE_90).save(out / "rotated.png", exif=exif.tobytes())
    upright.save(out / "upright.png")
    good |= {n: out / n for n in ("grey16.png", "rotated.png", "upright.png")}
    data = pngs[2].read_bytes()
    (out / "cut.png").write_bytes(data[: len(data) // 2])
    (out / "empty.png").write_bytes(b"")
    (out / "notes.png").write_text("not an image at all")
    Image.new("RGB", (500, 500), (90, 120, 200)).save(out / "huge.png")  # 250,000 px > MAX_PIXELS
    bad = {n: out / n for n in ("cut.png", "empty.png", "notes.png", "huge.png")}
    return {"good": good, "bad": bad}


@pytest.fixture(scope="module")
def expected(trained, files, tmp_path_factory) -> dict[str, dict]:
    """``deqa score`` (the command) on the good files: file name -> row."""
    out = tmp_path_factory.mktemp("reference") / "scores.json"
    paths = [str(p) for p in files["good"].values()]
    assert cli(["score", "--model", str(trained["model"]), *paths, "-o", str(out), "--no-progress", "-q"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    by_name = {name: rows[p.name] for name, p in files["good"].items()}
    assert abs(by_name["rotated.png"]["score"] - by_name["upright.png"]["score"]) < 1e-5
    return by_name


def _start_cli_server(args: list[str], env: dict | None = None, timeout: float = 300):
    """``deqa serve ... --port 0`` in a subprocess; (process, base URL, stderr lines)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "deqa.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "listening on http://" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or proc.poll() is not None:
        proc.kill()
        raise AssertionError("deqa serve did not start:\n" + "\n".join(lines))
    url = next(ln for ln in lines if "listening on http://" in ln).split("listening on ")[1].split("/ ")[0]
    return proc, url.rstrip("/"), lines


@pytest.fixture(scope="module")
def server(trained):
    proc, url, lines = _start_cli_server(["--model", str(trained["model"]), *SERVER_ARGS])
    yield url
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert code == 0, "deqa serve did not stop cleanly on SIGTERM:\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def scorer(trained):
    return Scorer.from_pretrained(trained["model"])


@pytest.fixture(autouse=True)
def _restore_pillow_guard():
    """A ScoringService sets Pillow's process-wide bomb guard; the other test modules expect Pillow's own."""
    from PIL import Image

    pixels, filters = Image.MAX_IMAGE_PIXELS, warnings.filters[:]
    yield
    Image.MAX_IMAGE_PIXELS = pixels
    warnings.filters[:] = filters


@contextmanager
def thread_server(make_service, **app_options):
    """The app on uvicorn in a thread on a free port: (base URL, the service)."""
    import uvicorn

    from deqa.serve.app import bind, create_app

    service = make_service()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(service, **app_options), log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(timeout=60)


# ---------------------------------------------------------------------------------------------
# endpoints
# ---------------------------------------------------------------------------------------------
def test_health_openapi_and_docs_pages(server):
    status, _, raw = request(server + "/health")
    health = json.loads(raw)
    assert status == 200 and health["status"] == "ok" and health["device"] == "cpu"
    assert health["model"].endswith("model") and health["encode_in"] == "threads"
    assert health["limits"]["max_pixels"] == MAX_PIXELS and health["limits"]["max_batch"] == 8
    status, _, raw = request(server + "/openapi.json")
    spec = json.loads(raw)
    assert status == 200 and set(spec["paths"]) == {"/health", "/score"}
    body = spec["paths"]["/score"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(body)
    assert {"200", "400", "401", "413", "415", "503"} <= set(spec["paths"]["/score"]["post"]["responses"])
    for page in ("/docs", "/redoc"):
        status, head, raw = request(server + page)
        assert status == 200 and head["content-type"].startswith("text/html")
        scripts = [s.split('"')[0] for s in raw.decode().split('src="')[1:]]
        assert scripts and all(s.startswith("/static-offline-docs/") for s in scripts), scripts  # no CDN
        for s in scripts:
            status, _, js = request(server + s)
            assert status == 200 and len(js) > 100_000
    status, head, raw = request(server + "/")
    assert status == 200 and b'id="files"' in raw and b"hidden" in raw  # no key field without a key
    status, _, raw = request(server + "/nowhere")
    assert status == 404 and "error" in json.loads(raw)


def test_scores_equal_deqa_score_in_every_request_form(server, files, expected):
    named = [(name, path.read_bytes()) for name, path in files["good"].items()]
    rows = []
    for i in range(0, len(named), 4):  # multipart, up to --max-images per request
        status, _, answer = post_images(server, named[i : i + 4])
        assert status == 200
        rows += answer["results"]
    assert [r["name"] for r in rows] == [n for n, _ in named]
    for row in rows:
        assert same_scores(row, expected[row["name"]]), row
        assert 1 <= row["score"] <= 5 and abs(sum(row[f"p_{lv}"] for lv in LEVELS) - 1) < 1e-6
    # JSON with base64 (a plain string, a data: URL, a named object) and a raw image body
    b64 = {n: base64.b64encode(d).decode() for n, d in named}
    doc = {
        "images": [
            b64["img0.png"],
            "data:image/png;base64," + b64["grey16.png"],
            {"name": "r", "data": b64["rotated.png"]},
        ]
    }
    status, _, answer = post_json(server, doc)
    assert status == 200 and [r["name"] for r in answer["results"]] == ["0", "1", "r"]
    for row, name in zip(answer["results"], ("img0.png", "grey16.png", "rotated.png"), strict=True):
        assert same_scores(row, expected[name]), row
    status, _, raw = request(server + "/score", "POST", dict(named)["img3.png"], {"Content-Type": "image/png"})
    assert status == 200 and same_scores(json.loads(raw)["results"][0], expected["img3.png"])


def test_bad_uploads_are_their_own_errors_and_the_rest_is_scored(server, files, expected):
    good = files["good"]
    named = [("img1.png", good["img1.png"].read_bytes())] + [(n, p.read_bytes()) for n, p in files["bad"].items()]
    status, _, answer = post_images(server, named[:4])
    status2, _, answer2 = post_images(server, named[4:] + [("img2.png", good["img2.png"].read_bytes())])
    assert status == status2 == 200
    rows = {r["name"]: r for r in answer["results"] + answer2["results"]}
    assert same_scores(rows["img1.png"], expected["img1.png"]) and same_scores(rows["img2.png"], expected["img2.png"])
    assert "truncated" in rows["cut.png"]["error"]
    assert "empty upload" in rows["empty.png"]["error"]
    assert "not an image" in rows["notes.png"]["error"]
    assert "too many pixels" in rows["huge.png"]["error"] and str(MAX_PIXELS) in rows["huge.png"]["error"]
    assert all("score" not in rows[n] for n in files["bad"])
    doc = {"images": ["@@not base64@@", {"name": "x"}, base64.b64encode(named[0][1]).decode()]}
    status, _, answer = post_json(server, doc)
    rows = answer["results"]
    assert status == 200 and "not valid base64" in rows[0]["error"] and "not a base64 string" in rows[1]["error"]
    assert same_scores(rows[2], expected["img1.png"])
    status, _, raw = request(server + "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"


def _raw_exchange(url: str, head: bytes, chunks=(), timeout: float = 60) -> bytes:
    """Send ``head`` then ``chunks`` from a thread while reading the answer (the server may answer early)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)

    def send() -> None:
        try:
            sock.sendall(head)
            for c in chunks:
                sock.sendall(c)
        except OSError:
            pass  # the server answered and closed before the whole body was sent

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
            ready, _, _ = select.select([sock], [], [], timeout)
            chunk = sock.recv(65536) if ready else b""
            if not chunk:
                break
            answer += chunk
    finally:
        sock.close()
        sender.join(timeout)
    return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_bad_requests_get_a_4xx_naming_the_reason(server, files):
    img = files["good"]["img0.png"].read_bytes()

    def refused(status, answer, code, *words):
        assert status == code, (status, answer)
        assert all(w in answer["error"] for w in words), answer["error"]

    status, _, raw = request(server + "/score", "POST", b"hello", {"Content-Type": "text/plain"})
    refused(status, json.loads(raw), 415, "unsupported content type text/plain", "multipart")
    refused(*post_json(server, b"{not json")[::2], 400, "not valid JSON")
    refused(*post_json(server, {"pictures": []})[::2], 400, '{"images"')
    refused(*post_json(server, {"images": []})[::2], 400, "no image")
    refused(*post_json(server, {"images": [base64.b64encode(img).decode()] * 5})[::2], 413, "at most 4", "--max-images")
    refused(*post_images(server, [("a.png", img)] * 5)[::2], 413, "more than 4 images", "--max-images")
    body, h = multipart([("photo", "a.png", img)])
    status, _, raw = request(server + "/score", "POST", body, h)
    refused(status, json.loads(raw), 400, "named 'image'", "photo")
    body, h = multipart([("image", None, b"just text")])
    status, _, raw = request(server + "/score", "POST", body, h)
    refused(status, json.loads(raw), 400, "is text, not a file")
    status, _, raw = request(
        server + "/score", "POST", b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert status == 400 and "error" in json.loads(raw)
    # over --max-request-mb 1: by Content-Length before reading, and counted while reading a chunked body
    big = os.urandom(1_200_000)
    head = b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(big)
    answer = _raw_exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 413") and b"--max-request-mb 1" in answer
    head = b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = [b"%x\r\n%s\r\n" % (100_000, big[i : i + 100_000]) for i in range(0, len(big), 100_000)] + [b"0\r\n\r\n"]
    answer = _raw_exchange(server, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413") and b"--max-request-mb 1" in answer
    status, _, raw = request(server + "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"


def test_concurrent_requests_good_and_bad_all_get_their_own_answers(server, files, expected):
    good = [(n, p.read_bytes()) for n, p in files["good"].items()]
    bad = [(n, p.read_bytes()) for n, p in files["bad"].items()]
    jobs = [[good[i % len(good)]] for i in range(12)]
    jobs += [[good[1], bad[0], good[2]], [bad[1], bad[2]], [bad[3], good[4]], "malformed", "malformed"]
    answers: dict[int, tuple] = {}

    def client(k: int) -> None:
        for j in range(k, len(jobs), 8):
            if jobs[j] == "malformed":
                answers[j] = post_json(server, b"[1, 2")
            else:
                answers[j] = post_images(server, jobs[j])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(answers) == len(jobs)
    for j, job in enumerate(jobs):
        status, _, answer = answers[j]
        if job == "malformed":
            assert status == 400 and "not valid JSON" in answer["error"]
            continue
        assert status == 200 and [r["name"] for r in answer["results"]] == [n for n, _ in job]
        for row in answer["results"]:
            if row["name"] in expected:
                assert same_scores(row, expected[row["name"]]), row
            else:
                assert "error" in row and "score" not in row
    status, _, raw = request(server + "/health")
    served = json.loads(raw)["served"]
    assert status == 200 and served["images"] >= 12 + 7 and served["batches"] <= served["images"]


# ---------------------------------------------------------------------------------------------
# servers in a thread: API key, overload, micro-batching (the model's forward pass held)
# ---------------------------------------------------------------------------------------------
def test_api_key_guards_score_but_not_health(scorer, files, expected):
    from deqa.serve.service import Limits, ScoringService

    img = [("img0.png", files["good"]["img0.png"].read_bytes())]
    make = lambda: ScoringService(scorer, Limits(encode_in="model"))  # noqa: E731 (batches encoded by the processor)
    with thread_server(make, api_key="s3cret", model="m") as (url, _):
        status, head, answer = post_images(url, img)
        assert status == 401 and "needs an API key" in answer["error"] and head["www-authenticate"] == "Bearer"
        status, _, answer = post_images(url, img, {"X-API-Key": "wrong"})
        assert status == 401 and answer["error"] == "wrong API key"
        for headers in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
            status, _, answer = post_images(url, img, headers)
            assert status == 200 and same_scores(answer["results"][0], expected["img0.png"])
        assert request(url + "/health")[0] == 200
        status, _, page = request(url + "/")
        assert status == 200 and b'id="key"' in page and b"hidden" not in page


class _Gate:
    """Holds every forward pass of ``scorer`` until :meth:`open`; records the batch sizes."""

    def __init__(self, scorer, monkeypatch):
        self.sizes, self.event, self.forward = [], threading.Event(), scorer.forward
        monkeypatch.setattr(scorer, "forward", self)

    def __call__(self, enc, pos):
        self.sizes.append(len(pos))
        assert self.event.wait(120), "the test never opened the gate"
        return self.forward(enc, pos)

    def open(self) -> None:
        self.event.set()


def _wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_overload_answers_503_with_retry_after_and_memory_stays_bounded(scorer, files, expected, monkeypatch):
    from deqa.serve.service import Limits, ScoringService

    gate = _Gate(scorer, monkeypatch)
    limits = Limits(max_batch=4, max_queue=4, max_images=4, max_requests=3, max_wait_ms=0)
    img = [(n, files["good"][n].read_bytes()) for n in ("img0.png", "img1.png", "img2.png", "img3.png")]
    with thread_server(lambda: ScoringService(scorer, limits)) as (url, service):
        first: dict = {}
        holder = threading.Thread(target=lambda: first.update(answer=post_images(url, img)))
        holder.start()
        _wait_for(lambda: service.pending == 4 and gate.sizes)
        status, head, answer = post_images(url, img[:1])  # the queue is full: refused whole, at once
        assert status == 503 and "queue is full" in answer["error"] and "--max-queue" in answer["error"]
        assert int(head["retry-after"]) >= 1
        assert request(url + "/health")[0] == 200  # liveness answers during overload
        # two requests still uploading + the held one = --max-requests 3: the next is refused before its body
        head = b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
        slow = [socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) for _ in range(2)]
        for s in slow:
            s.sendall(head + b"x" * 10)
        _wait_for(lambda: json.loads(request(url + "/health")[2])["requests_in_flight"] == 3)
        status, head, answer = post_images(url, img[:1])
        assert status == 503 and "--max-requests" in answer["error"] and int(head["retry-after"]) >= 1
        for s in slow:
            s.close()
        gate.open()
        holder.join(timeout=120)
        status, _, answer = first["answer"]
        assert status == 200 and all(same_scores(r, expected[r["name"]]) for r in answer["results"])
        _wait_for(lambda: service.pending == 0)
        status, _, answer = post_images(url, img[:1])
        assert status == 200 and same_scores(answer["results"][0], expected["img0.png"])
    assert service.served["refused"] == 1 and max(gate.sizes) <= 4


@pytest.mark.parametrize("encode_in", ["threads", "model", "inline"])
def test_concurrent_requests_are_scored_in_one_batch(scorer, files, expected, monkeypatch, encode_in):
    from deqa.serve.service import Limits, ScoringService

    gate = _Gate(scorer, monkeypatch)
    names = ["img0.png", "img1.png", "img2.png", "notes.png", "img4.png", "grey16.png", "rotated.png"]
    data = {n: (files["good"] | files["bad"])[n].read_bytes() for n in names}
    service = ScoringService(scorer, Limits(max_batch=8, max_wait_ms=0, decode_threads=2, encode_in=encode_in)).start()
    assert service.encoder.where == encode_in
    try:
        futures = service.submit([(names[0], data[names[0]])])
        _wait_for(lambda: gate.sizes == [1])  # the model is busy with the first image
        futures += [service.submit([(n, data[n])])[0] for n in names[1:]]
        # prepared while the model ran; the unreadable one is answered by its decoding thread (inline: later)
        _wait_for(lambda: service._waiting.qsize() == (6 if encode_in == "inline" else 5))
        gate.open()
        rows = [f.result(timeout=120) for f in futures]
    finally:
        service.close()
    assert gate.sizes == [1, 5], "the five readable images that arrived during the first batch form one batch"
    assert [r["name"] for r in rows] == names and "not an image" in rows[3]["error"]
    assert all(same_scores(r, expected[r["name"]]) for r in rows if r["name"] != "notes.png")


def test_decoded_images_waiting_for_the_model_stay_within_two_batches(scorer, files, expected, monkeypatch):
    from deqa.serve.service import Limits, ScoringService

    gate = _Gate(scorer, monkeypatch)
    service = ScoringService(scorer, Limits(max_batch=2, max_wait_ms=0, decode_threads=2, encode_in="model")).start()
    names = sorted(files["good"])
    try:
        futures = service.submit([(n, files["good"][n].read_bytes()) for n in names])
        _wait_for(lambda: gate.sizes and service._waiting.qsize() == 4)
        time.sleep(0.3)  # the decoding threads had time to go on: they wait instead
        assert service._waiting.qsize() == 4 and service.pending == len(names)
        gate.open()
        rows = [f.result(timeout=120) for f in futures]
    finally:
        service.close()
    assert [r["name"] for r in rows] == names and all(same_scores(r, expected[r["name"]]) for r in rows)


def test_a_batch_that_breaks_the_model_is_retried_image_by_image(scorer, files, expected, monkeypatch):
    import torch

    from deqa.serve.service import Limits, ScoringService

    forward = scorer.forward
    service = ScoringService(scorer, Limits(max_batch=8, max_wait_ms=200, encode_in="threads"))
    poison = service.encoder.prepare(files["good"]["img2.png"].read_bytes())["pixel_values"][0]

    def fragile(enc, pos):  # fails on any batch that holds the poisoned image's pixels
        if any(torch.equal(enc["pixel_values"][i], poison) for i in range(len(pos))):
            raise RuntimeError("synthetic failure")
        return forward(enc, pos)

    monkeypatch.setattr(scorer, "forward", fragile)
    service.start()
    try:
        names = ["img0.png", "img1.png", "img2.png", "img3.png"]
        rows = [f.result(timeout=120) for f in service.submit([(n, files["good"][n].read_bytes()) for n in names])]
    finally:
        service.close()
    assert "the model failed on this image: synthetic failure" in rows[2]["error"]
    assert all(same_scores(rows[i], expected[names[i]]) for i in (0, 1, 3))


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def test_cli_errors_are_one_line_and_exit_2(trained, tmp_path, capsys):
    assert cli(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["serve", "--model", str(trained["model"]), "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err
    assert cli(["serve", "--model", str(trained["model"]), "--max-images", "9", "--max-queue", "4"]) == 2
    assert "--max-images (9) cannot exceed --max-queue (4)" in capsys.readouterr().err


def test_without_the_serve_extra_the_command_says_how_to_install(trained, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "deqa.serve.app", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # as if not installed
    assert cli(["serve", "--model", str(trained["model"])]) == 2
    err = capsys.readouterr().err
    assert "needs the serve extra (fastapi_offline is missing): pip install 'deqa[serve]'" in err


def test_a_busy_port_is_one_line_and_exit_2(trained, server):
    port = server.rsplit(":", 1)[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "deqa.cli", "serve", "--model", str(trained["model"]), "--port", port]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# the pages in headless Chromium (driven over its DevTools pipe: a real file upload; chromium_pipe.py)
# ---------------------------------------------------------------------------------------------
_PAGE_STATE = """JSON.stringify({
  status: document.getElementById("status").textContent,
  results: Array.from(document.querySelectorAll(".result")).map(r => ({
    name: r.querySelector(".name").textContent,
    score: (r.querySelector(".score") || {}).textContent,
    error: (r.querySelector(".error") || {}).textContent,
    bars: Array.from(r.querySelectorAll(".bar")).map(b => [b.dataset.level, parseFloat(b.style.width)]),
    thumb: (im => im && im.complete ? im.naturalWidth : 0)(r.querySelector("img")),
  })),
})"""


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium (apt-get install chromium)")
def test_upload_page_and_api_docs_in_headless_chromium(server, files, expected, tmp_path):
    browser = Chromium(find_chromium())
    try:
        browser.open(server + "/")
        root = browser.page("DOM.getDocument")["root"]["nodeId"]
        node = browser.page("DOM.querySelector", nodeId=root, selector="#files")["nodeId"]
        upload = [str(files["good"]["img5.png"]), str(files["bad"]["notes.png"])]
        browser.page("DOM.setFileInputFiles", nodeId=node, files=upload)
        browser.wait('document.getElementById("status").textContent.startsWith("scored")')
        state = json.loads(browser.value(_PAGE_STATE))
        shot = tmp_path / "page.png"
        shot.write_bytes(base64.b64decode(browser.page("Page.captureScreenshot", format="png")["data"]))
        browser.open(server + "/docs")
        operations = browser.wait(
            'Array.from(document.querySelectorAll(".opblock-summary-path")).map(e => e.textContent).join(" ")'
        )
    finally:
        browser.close()
    good, bad = state["results"]
    want = expected["img5.png"]
    assert (
        good["name"] == files["good"]["img5.png"].name
        and good["score"] == f"{want['score']:.2f}"
        and good["thumb"] == 64
    )
    assert [lv for lv, _ in good["bars"]] == list(LEVELS)
    assert all(abs(width - 100 * want[f"p_{lv}"]) < 0.06 for lv, width in good["bars"])
    assert bad["name"] == "notes.png" and "not an image" in bad["error"] and not bad.get("score") and not bad["thumb"]
    assert ink_share(shot) > 0.02
    assert "/score" in operations and "/health" in operations  # Swagger UI ran from the local files
