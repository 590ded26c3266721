"""Benchmark: ``deqa serve`` under concurrent clients on loopback, against ``deqa score`` on the same photos.

Side by side in one run, alternating over ``--rounds``:

* ``deqa score``: its own scoring loop (``deqa.commands.score._score_all``: ``Scorer.iter_score``
  with the command's defaults, rows written to a JSON Lines file) on ``--count`` real JPEGs, in a
  child process, model load timed apart; the whole command's wall time is reported once as well;
* ``serve batched``: a ``deqa serve`` process (``--max-batch``) and ``--clients`` client threads
  in this process, each posting one photo per request (multipart, a kept-alive connection),
  until every photo has been scored once, after a warm-up of ``2 x clients`` requests;
* ``serve --encode-in threads``: the same, uploads encoded in the decoding threads (the default
  ``auto`` encodes in the model thread on a CPU without two spare cores);
* ``serve unbatched``: the same with ``--max-batch 1`` (one request at a time through the model);
* once: ``serve batched`` with a single client on the first ``--single-count`` photos (latency
  without queueing).

Reported per variant: images/s, p50/p99 request latency, mean batch size, CPU ms per image of the
server and of the clients, peak RSS of the server (``VmHWM``), errors, and the largest difference
of any score field from ``deqa score``'s rows. Every request goes to 127.0.0.1 only; the run is
bounded by ``--count`` requests per variant and ``--timeout`` seconds in all (clients stop then).

    .venv/bin/python bench/bench_serve.py --model models/deqa [--count 500] [--clients 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
BIQ = REPO.parent / "shared" / "realdata" / "biq2021" / "images"
FIELDS = ("score", "std", "p_bad", "p_poor", "p_fair", "p_good", "p_excellent")
HOST = "127.0.0.1"  # loopback only


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


# -- deqa score -----------------------------------------------------------------------------------
def child_score(argv: list[str]) -> int:
    """In a child process: load the model, run deqa score's loop on the listed photos, print timings."""
    model, listing, out, threads, batch = argv
    import torch

    torch.set_num_threads(int(threads))
    from deqa.commands.score import _score_all
    from deqa.score_files import ResultWriter
    from deqa.scoring import Scorer

    paths = Path(listing).read_text().split("\n")
    t0 = time.perf_counter()
    scorer = Scorer.from_pretrained(model, batch_size=int(batch))
    t1, c1 = time.perf_counter(), time.process_time()
    ns = argparse.Namespace(batch_size=int(batch), decoder="auto", no_progress=True, quiet=1, output=out)
    with ResultWriter(out, "jsonl") as writer:
        _score_all(scorer, paths, writer, ns)
    t2, c2 = time.perf_counter(), time.process_time()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"load_s": t1 - t0, "score_s": t2 - t1, "cpu_s": c2 - c1, "rss_mib": rss}))
    return 0


def run_score(args, paths: list[str], work: Path) -> tuple[dict, dict]:
    listing, out = work / "paths.txt", work / "score.jsonl"
    listing.write_text("\n".join(paths))
    cmd = [sys.executable, __file__, "--child-score", args.model, str(listing), str(out), str(args.threads), "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=args.timeout, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"deqa score child failed:\n{proc.stderr[-3000:]}")
    t = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    n = len(paths)
    return {
        "images_per_s": n / t["score_s"],
        "cpu_ms_per_image": 1000 * t["cpu_s"] / n,
        "rss_mib": t["rss_mib"],
        "load_s": t["load_s"],
        "errors": sum("error" in r for r in rows.values()),
    }, rows


def run_score_command(args, paths: list[str], work: Path) -> float:
    """Wall seconds of the whole ``deqa score`` command (start-up and model load included)."""
    listing = work / "paths.txt"
    listing.write_text("\n".join(paths))
    cmd = [sys.executable, "-m", "deqa.cli", "score", "--model", args.model, str(listing), "-o", str(work / "cmd.csv")]
    t = time.perf_counter()
    subprocess.run([*cmd, "--threads", str(args.threads), "-q"], env=_env(), timeout=args.timeout, check=True)
    return time.perf_counter() - t


# -- deqa serve -----------------------------------------------------------------------------------
def start_server(args, max_batch: int, encode_in: str = "auto"):
    cmd = [sys.executable, "-m", "deqa.cli", "serve", "--model", args.model, "--host", HOST, "--port", "0"]
    cmd += ["--threads", str(args.threads), "--max-batch", str(max_batch), "--max-queue", "1024"]
    cmd += ["--max-requests", "256", "--decode-threads", str(args.decode_threads), "--encode-in", encode_in]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "listening on http://" in line:
            port = int(line.split(f"{HOST}:")[1].split("/")[0])
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, port
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("deqa serve did not start")


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Client:
    """One kept-alive connection posting one photo per request as multipart."""

    def __init__(self, port: int):
        self.port, self.conn = port, None

    def post(self, name: str, data: bytes) -> tuple[int, dict]:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                self.conn.request("POST", "/score", body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, json.loads(r.read())
            except (OSError, http.client.HTTPException):
                self.conn = None  # the server closed a kept-alive connection: reconnect once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def load(port: int, items: list[tuple[str, bytes]], clients: int, deadline: float) -> dict:
    """Post every item once from ``clients`` threads; latencies, rows and failures."""
    lock, nxt = threading.Lock(), [0]
    latencies, rows, failures = [], {}, []

    def work() -> None:
        client = Client(port)
        while time.monotonic() < deadline:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(items):
                return
            t = time.perf_counter()
            try:
                status, answer = client.post(*items[i])
            except Exception as exc:
                failures.append(f"{items[i][0]}: {type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t)
            row = answer["results"][0] if status == 200 else {"error": f"HTTP {status}: {answer}"}
            if "error" in row:
                failures.append(f"{items[i][0]}: {row['error']}")
            rows[items[i][0]] = row

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "rows": rows, "failures": failures}


def health(port: int) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def run_serve(args, paths, blobs, reference: dict, max_batch: int, clients: int, encode_in: str = "auto") -> dict:
    proc, port = start_server(args, max_batch, encode_in)
    deadline = time.monotonic() + args.timeout
    try:
        warm = [(paths[i % len(paths)], blobs[i % len(paths)]) for i in range(2 * clients)]
        load(port, warm, clients, deadline)
        before, cpu0, me0 = health(port)["served"], proc_cpu_s(proc.pid), resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        out = load(port, list(zip(paths, blobs, strict=True)), clients, deadline)
        wall = time.perf_counter() - t
        after, cpu1, me1 = health(port)["served"], proc_cpu_s(proc.pid), resource.getrusage(resource.RUSAGE_SELF)
        rss = peak_rss_mib(proc.pid)
    finally:
        stop_server(proc)
    n, lat = len(out["latencies"]), sorted(out["latencies"])
    diffs = [abs(r[f] - reference[p][f]) for p, r in out["rows"].items() if "error" not in r for f in FIELDS]
    client_cpu = (me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime)
    return {
        "images_per_s": n / wall,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "mean_batch": (after["images"] - before["images"]) / max(1, after["batches"] - before["batches"]),
        "cpu_ms_per_image": 1000 * (cpu1 - cpu0) / max(1, n),
        "client_cpu_ms_per_image": 1000 * client_cpu / max(1, n),
        "rss_mib": rss,
        "errors": len(out["failures"]) + (len(paths) - n),
        "max_diff": max(diffs) if diffs else float("nan"),
        "first_failures": out["failures"][:3],
    }


# -- the report -------------------------------------------------------------------------------------
def summary(results: dict[str, list[dict]], command_wall: float, args, n: int) -> str:
    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    lines = [
        "| variant | images/s (median of rounds) | p50 / p99 latency | mean batch | CPU ms/image server (clients) | peak RSS | errors | max diff vs deqa score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        runs = ", ".join(f"{r['images_per_s']:.1f}" for r in rs)
        if name == "deqa score":
            lines.append(
                f"| {name} (loop; whole command {n / command_wall:.1f} img/s) | {med(name, 'images_per_s'):.1f} ({runs}) "
                f"| - | 16 | {med(name, 'cpu_ms_per_image'):.1f} | {med(name, 'rss_mib'):.0f} MiB | "
                f"{sum(r['errors'] for r in rs)} | - |"
            )
            continue
        lines.append(
            f"| {name} | {med(name, 'images_per_s'):.1f} ({runs}) | {med(name, 'p50_ms'):.0f} / {med(name, 'p99_ms'):.0f} ms "
            f"| {med(name, 'mean_batch'):.1f} | {med(name, 'cpu_ms_per_image'):.1f} ({med(name, 'client_cpu_ms_per_image'):.1f}) "
            f"| {max(r['rss_mib'] for r in rs):.0f} MiB | {sum(r['errors'] for r in rs)} | {max(r['max_diff'] for r in rs):.1e} |"
        )
    batched, unbatched = f"serve batched, {args.clients} clients", f"serve max batch 1, {args.clients} clients"
    vs_score = med(batched, "images_per_s") / med("deqa score", "images_per_s")
    vs_unbatched = med(batched, "images_per_s") / med(unbatched, "images_per_s")
    lines += [
        "",
        f"serve batched / deqa score: {vs_score:.2f}x (goal >= 0.8x: {'met' if vs_score >= 0.8 else 'NOT met'})",
        f"serve batched / max batch 1: {vs_unbatched:.2f}x (goal >= 1.3x: {'met' if vs_unbatched >= 1.3 else 'NOT met'})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-score"]:
        return child_score(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/deqa")
    ap.add_argument("--images", default=str(BIQ), help="folder of JPEGs (default: ../shared BIQ2021)")
    ap.add_argument("--count", type=int, default=500, help="photos, each scored once per variant")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--decode-threads", type=int, default=0, help="deqa serve --decode-threads (0: automatic)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of deqa score and deqa serve")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--single-count", type=int, default=100, help="photos of the one-client variant")
    ap.add_argument("--timeout", type=float, default=900, help="seconds: the bound of each variant's run")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "serve.json"))
    args = ap.parse_args(argv)
    paths = sorted(str(p) for p in Path(args.images).glob("*.jpg"))[: args.count]
    if len(paths) < args.count:
        raise SystemExit(f"{args.images} holds {len(paths)} JPEGs, fewer than --count {args.count}")
    blobs = [Path(p).read_bytes() for p in paths]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}", flush=True)
    results: dict[str, list[dict]] = {}
    batched, unbatched = f"serve batched, {args.clients} clients", f"serve max batch 1, {args.clients} clients"
    threads = f"serve batched, --encode-in threads, {args.clients} clients"
    with tempfile.TemporaryDirectory(prefix="deqa-bench-serve-") as tmp:
        work = Path(tmp)
        command_wall = run_score_command(args, paths, work)
        for r in range(args.rounds):
            score, reference = run_score(args, paths, work)
            results.setdefault("deqa score", []).append(score)
            names = [p for p in paths if p in reference]  # the rows of deqa score are keyed by path
            assert len(names) == len(paths)
            variants = ((batched, args.max_batch, "auto"), (threads, args.max_batch, "threads"), (unbatched, 1, "auto"))
            for name, batch, where in variants:
                one = run_serve(args, paths, blobs, reference, batch, args.clients, where)
                results.setdefault(name, []).append(one)
            if r == 0:
                k = min(args.single_count, len(paths))
                one = run_serve(args, paths[:k], blobs[:k], reference, args.max_batch, 1)
                results.setdefault("serve batched, 1 client", []).append(one)
            print(
                f"round {r + 1}: load {os.getloadavg()}", json.dumps({k: v[-1] for k, v in results.items()}), flush=True
            )
    text = summary(results, command_wall, args, len(paths))
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"results": results, "summary": text}, indent=1))
    return 0 if all(r["errors"] == 0 for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
