"""Serving that holds: `psp-deploy serve` driven for a while by a mix of clients, with faults.

    .venv/bin/python benchmarks/serving_soak.py [--minutes 10] [--clients 8] [--servers 1] [--bundle DIR]

Each client sends, back to back, a mix of good photos, photos without a face, undecodable bytes, wrong
shapes (Triton refuses those itself), 100-megapixel images, and requests given up after 50 ms (the client
disconnects mid-request). Meanwhile, a quarter of the way through, a burst of more requests at once than the
queue holds, each sent once (refusals counted and timed); half-way through, the first server is SIGKILLed,
every process of it, and started again on its ports. Clients retry (PspClient's policy), so nothing may be
lost: every good photo answered, every bad request answered with its own reason, which the servers'
psp_deploy_requests_total must count. With --servers 2 clients spread over two servers and one is killed.

Writes <machine>-serving-soak.{json,md,png} (--servers 2: -serving-soak-2) into --output (default
benchmarks/results): top level `lost`, `memory_growth` (fraction, minute 5 or a third of a server's life
to its end, on its longest life) and `minutes`, beside per-minute sent / ok / error / refused / retried /
lost / abandoned counts, p50 and p99 latency of good requests, and each server's resident memory.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from common import RESULTS, bundle, checkpoint, say
from PIL import Image

from psp_deploy.benchmark.harness import benchmark_photo
from psp_deploy.files import write_json
from psp_deploy.machine import cpu_info, library_versions, machine_slug
from psp_deploy.serving.client import NO_RETRY, PspClient, RemoteError, RetryPolicy, ServerUnavailable, encode_png
from psp_deploy.serving.server import free_ports

# kind: (weight in the mix, the reason its answer must carry; None: answered with images)
KINDS = {
    "good": (10, None),
    "no_face": (2, "no_face"),
    "undecodable": (2, "decode"),
    "huge": (1, "too_large"),
    "wrong_shape": (1, "shape"),  # refused by Triton against the declared input: no model reason
    "disconnect": (1, None),  # gives up after 50 ms: answered or abandoned
}
PAGE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT_S = 900


@dataclass
class Record:
    kind: str
    start: float
    end: float
    outcome: str  # ok, error (answered with the expected reason), refused (burst), abandoned, lost
    reason: str = ""
    retried: int = 0
    server: str | None = None  # the URL that answered
    detail: str = ""


class Served:
    """One `psp-deploy serve` in a session of its own, so that a kill ends every process of it."""

    def __init__(self, root: Path, options: list[str], log: Path) -> None:
        self.root, self.options, self.log = root, options, log
        self.ports = free_ports(4)
        self.life, self.started = 0, time.monotonic()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        http, grpc, metrics, app = self.ports
        cmd = [sys.executable, "-m", "psp_deploy.cli", "serve", str(self.root), "--host", "127.0.0.1"]
        cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
        cmd += ["--app-metrics-port", str(app), *self.options]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with PspClient(self.url, retry=NO_RETRY) as client:
            while not client.ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start; its log: {self.log}")
                time.sleep(0.5)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.life += 1

    def rss(self) -> int:
        """Resident bytes of every process of the server (Python, tritonserver, its backend stubs)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == self.proc.pid:  # its session
                total += int(fields[21]) * PAGE
        return total

    def failures(self) -> dict[str, float]:
        """psp_deploy_requests_total of failed requests by reason, all models, this life of the server."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports[3]}/metrics", timeout=30).read().decode()
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "psp_deploy_requests_total" and sample.labels["outcome"] == "failed":
                    counts[sample.labels["reason"]] = counts.get(sample.labels["reason"], 0) + sample.value
        return counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def payloads(photo: np.ndarray) -> dict[str, bytes]:
    huge = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(huge, format="PNG")  # 100 megapixels in a few kB
    return {
        "good": encode_png(photo),
        "no_face": encode_png(np.full((256, 256, 3), 90, np.uint8)),
        "undecodable": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "huge": huge.getvalue(),
    }


@dataclass
class Soak:
    servers: list[Served]
    clients: int
    seconds: float
    deadline_s: float
    data: dict[str, bytes]
    records: list[Record] = field(default_factory=list)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # (t, server, life, rss)
    events: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)

    def send(self, client: PspClient, kind: str) -> Record:
        start, retried = time.monotonic(), client.retried
        urls = [s.url for s in self.servers]
        try:
            if kind == "disconnect":
                with PspClient(urls, timeout=0.05, retry=NO_RETRY) as quick:
                    quick.run(self.data["good"])
            elif kind == "wrong_shape":
                client.encode(np.zeros((100, 100, 3), np.uint8))
            else:
                client.run(self.data[kind])
            outcome, reason, detail = "ok", "", ""
        except ServerUnavailable as err:
            outcome, reason, detail = ("abandoned" if kind == "disconnect" else "lost"), "", str(err)
        except RemoteError as err:
            outcome, reason, detail = "error", err.reason or "shape", str(err)
        expected = KINDS[kind][1]
        if outcome != "abandoned" and reason != (expected or ""):
            outcome = "lost"  # a good photo not answered, or a bad one answered with another reason
        server = client.answered_by if kind != "disconnect" else None
        return Record(kind, start, time.monotonic(), outcome, reason, client.retried - retried, server, detail[:300])

    def client(self, index: int, end: float) -> None:
        rng = random.Random(index)
        names, weights = list(KINDS), [w for w, _ in KINDS.values()]
        retry = RetryPolicy(deadline_s=self.deadline_s)
        with PspClient([s.url for s in self.servers], timeout=120, retry=retry) as client:
            while time.monotonic() < end:
                self.add(self.send(client, rng.choices(names, weights)[0]))

    def burst(self, n: int) -> None:
        """``n`` requests at once, each sent once: beyond the queue they are refused, and must be at once."""

        def once(_: int) -> None:
            start = time.monotonic()
            with PspClient(self.servers[-1].url, retry=NO_RETRY) as client:
                try:
                    client.run(self.data["good"])
                    self.add(Record("burst", start, time.monotonic(), "ok", server=client.answered_by))
                except ServerUnavailable as err:
                    full = "Exceeds maximum queue size" in str(err)
                    self.add(Record("burst", start, time.monotonic(), "refused" if full else "lost", detail=str(err)))

        threads = [threading.Thread(target=once, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def sample(self, stop: threading.Event, t0: float) -> None:
        while not stop.wait(5.0):
            for i, server in enumerate(self.servers):
                if server.proc.poll() is None:
                    self.samples.append((time.monotonic() - t0, i, server.life, server.rss()))

    def run(self, burst: int, kill_at: float) -> float:
        t0 = time.monotonic()
        end = t0 + self.seconds
        stop = threading.Event()
        sampler = threading.Thread(target=self.sample, args=(stop, t0), daemon=True)
        sampler.start()
        workers = [threading.Thread(target=self.client, args=(i, end)) for i in range(self.clients)]
        for worker in workers:
            worker.start()
        self.at(t0 + 0.25 * self.seconds, lambda: self.burst(burst), "burst", t0)
        self.at(t0 + kill_at * self.seconds, self.kill_and_restart, "kill", t0)
        for worker in workers:
            worker.join()
        stop.set()
        sampler.join()
        return t0

    def at(self, when: float, action, name: str, t0: float) -> None:
        time.sleep(max(0.0, when - time.monotonic()))
        start = time.monotonic()
        action()
        self.events.append({"event": name, "at_s": round(start - t0, 1), "took_s": round(time.monotonic() - start, 1)})
        say(f"{name} at {start - t0:.0f} s, {time.monotonic() - start:.1f} s")

    def kill_and_restart(self) -> None:
        server = self.servers[0]
        server.kill()
        server.start()
        server.wait_ready()


def minute_rows(soak: Soak, t0: float) -> list[dict]:
    rows = []
    last = max([r.end for r in soak.records] + [t0])
    for minute in range(int((last - t0) // 60) + 1):
        lo, hi = t0 + 60 * minute, t0 + 60 * (minute + 1)
        done = [r for r in soak.records if lo <= r.end < hi]
        good = np.array([r.end - r.start for r in done if r.kind == "good" and r.outcome == "ok"])
        row = {"minute": minute, "sent": sum(lo <= r.start < hi for r in soak.records)}
        for outcome in ("ok", "error", "refused", "abandoned", "lost"):
            row[outcome] = sum(r.outcome == outcome for r in done)
        row["retried"] = sum(r.retried for r in done)
        row["p50_s"] = float(np.percentile(good, 50)) if len(good) else None
        row["p99_s"] = float(np.percentile(good, 99)) if len(good) else None
        for i in range(len(soak.servers)):
            rss = [s[3] for s in soak.samples if s[1] == i and 60 * minute <= s[0] < 60 * (minute + 1)]
            row[f"rss_mb_{i}"] = round(max(rss) / 2**20, 1) if rss else None
        rows.append(row)
    return rows


def memory_growth(soak: Soak) -> dict:
    """Growth of resident memory over the longest server life, from minute 5 of it (or a third of it, if
    shorter) to its last sample."""
    lives = {}
    for t, server, life, rss in soak.samples:
        lives.setdefault((server, life), []).append((t, rss))
    (server, life), samples = max(lives.items(), key=lambda kv: kv[1][-1][0] - kv[1][0][0])
    begin = samples[0][0] + min(300.0, (samples[-1][0] - samples[0][0]) / 3)
    first = next(s for s in samples if s[0] >= begin)
    growth = (samples[-1][1] - first[1]) / first[1]
    return {"growth": growth, "server": server, "life": life, "from_s": first[0], "to_s": samples[-1][0]}


def accounting(soak: Soak, t0: float) -> dict:
    """Per reason: failures the clients saw answered by each server's last life, against what that life's
    psp_deploy_requests_total counts. A request in flight across the kill may be counted by either life:
    the server's count must lie between the clients' and the clients' plus those."""
    kill = next(e for e in soak.events if e["event"] == "kill")
    restarted = kill["at_s"] + kill["took_s"]
    table: dict[str, dict] = {}
    for i, server in enumerate(soak.servers):
        counted = server.failures()
        since = restarted if i == 0 else -1.0
        for reason in {r for _, r in KINDS.values() if r and r != "shape"}:
            mine = [r for r in soak.records if r.server == server.url and r.outcome == "error" and r.reason == reason]
            after = [r for r in mine if r.start - t0 >= since]
            straddled = [r for r in mine if r.start - t0 < since <= r.end - t0]
            entry = table.setdefault(reason, {"clients": 0, "server": 0, "across_kill": 0})
            entry["clients"] += len(after)
            entry["server"] += int(counted.get(reason, 0))
            entry["across_kill"] += len(straddled)
    for entry in table.values():
        entry["ok"] = entry["clients"] <= entry["server"] <= entry["clients"] + entry["across_kill"]
    return table


def summary(soak: Soak, t0: float, minutes: float, burst: int) -> dict:
    rows = minute_rows(soak, t0)
    refused = np.array([r.end - r.start for r in soak.records if r.outcome == "refused"])
    p99 = [row["p99_s"] for row in rows if row["p99_s"] is not None]
    lost = [asdict(r) for r in soak.records if r.outcome == "lost"]
    memory = memory_growth(soak)
    return {
        "lost": len(lost),
        "memory_growth": memory["growth"],
        "minutes": minutes,
        "sent": len(soak.records),
        "by_kind": {k: sum(r.kind == k for r in soak.records) for k in [*KINDS, "burst"]},
        "by_outcome": {o: sum(r.outcome == o for r in soak.records) for o in ("ok", "error", "refused", "abandoned")},
        "retried": sum(r.retried for r in soak.records),
        "refusal_s": {
            "count": len(refused),
            "burst": burst,
            **({"p50": float(np.median(refused)), "max": float(refused.max())} if len(refused) else {}),
        },
        "p99_last_over_first": p99[-1] / p99[0] if len(p99) > 1 else None,
        "memory": memory,
        "accounting": accounting(soak, t0),
        "events": soak.events,
        "per_minute": rows,
        "lost_requests": lost[:20],
    }


def write_report(result: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["per_minute"]
    minutes = [r["minute"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for outcome in ("ok", "error", "refused", "abandoned", "lost"):
        axes[0].plot(minutes, [r[outcome] for r in rows], marker="o", label=outcome)
    axes[0].set_ylabel("requests / minute")
    axes[0].legend()
    for key in ("p50_s", "p99_s"):
        axes[1].plot(minutes, [r[key] for r in rows], marker="o", label=key.removesuffix("_s"))
    axes[1].set_ylabel("good request latency (s)")
    axes[1].legend()
    for key in [k for k in rows[0] if k.startswith("rss_mb_")]:
        axes[2].plot(minutes, [r[key] for r in rows], marker="o", label=f"server {key[-1]}")
    axes[2].set_ylabel("server RSS (MB)")
    axes[2].set_xlabel("minute")
    axes[2].legend()
    for event in result["events"]:
        for ax in axes:
            ax.axvline(event["at_s"] / 60, color="grey", linestyle=":")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=100)
    plt.close(fig)

    memory, refusals = result["memory"], result["refusal_s"]
    head = ["minute", "sent", "ok", "error", "refused", "abandoned", "retried", "lost", "p50_s", "p99_s"]
    head += [k for k in rows[0] if k.startswith("rss_mb_")]
    lines = [
        f"# Serving soak: {result['minutes']:g} min, {result['settings']['clients']} clients, "
        f"{result['settings']['servers']} server(s)",
        "",
        f"`{result['command']}` on {result['machine']['model']}",
        "",
        f"- lost: **{result['lost']}** of {result['sent']} requests; retried attempts {result['retried']}",
        f"- server memory growth: {result['memory_growth']:+.1%} (server {memory['server']}, life {memory['life']}, "
        f"{memory['from_s']:.0f} s to {memory['to_s']:.0f} s of the run)",
        f"- overload burst: {refusals['burst']} requests at once, {refusals['count']} refused"
        + (f" (p50 {refusals['p50'] * 1e3:.0f} ms, max {refusals['max'] * 1e3:.0f} ms)" if refusals["count"] else ""),
        f"- p99 of good requests, last minute over the first: {_cell(result['p99_last_over_first'])}",
        "- events: " + ", ".join(f"{e['event']} at {e['at_s']:g} s (took {e['took_s']:g} s)" for e in result["events"]),
        "",
        "Failed requests by reason, clients against the server's psp_deploy_requests_total (last life of each):",
        "",
        "| reason | clients | server | in flight across the kill | agrees |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {k} | {v['clients']} | {v['server']} | {v['across_kill']} | {v['ok']} |"
            for k, v in result["accounting"].items()
        ),
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
        *("| " + " | ".join(_cell(r[k]) for k in head) + " |" for r in rows),
        "",
        f"![soak]({stem.with_suffix('.png').name})",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--servers", type=int, choices=(1, 2), default=1)
    parser.add_argument("--bundle", type=Path, default=None, help="default: the synthetic FFHQ 1024 scaled bundle")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--max-queue-size", type=int, default=8)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the run")
    parser.add_argument("--retry-deadline", type=float, default=900.0, help="seconds a client retries one request")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    root = args.bundle or bundle(checkpoint(), "scaled")
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"{machine_slug()}-serving-soak{'-2' if args.servers == 2 else ''}"
    options = ["--backend", args.backend, "--max-batch", str(args.max_batch)]
    options += ["--max-queue-size", str(args.max_queue_size)]
    servers = [Served(root, options, stem.with_name(f"{stem.name}-server{i}.log")) for i in range(args.servers)]
    try:
        for server in servers:
            server.wait_ready()
        soak = Soak(servers, args.clients, 60 * args.minutes, args.retry_deadline, payloads(benchmark_photo()))
        t0 = soak.run(burst=args.max_queue_size + args.max_batch + 8, kill_at=args.kill_at)
        result = {
            **summary(soak, t0, args.minutes, args.max_queue_size + args.max_batch + 8),
            "command": " ".join(["python", *sys.argv]),
            "machine": cpu_info(),
            "versions": library_versions(),
            "bundle": str(root),
            "settings": {**{k: v for k, v in vars(args).items() if k not in ("bundle", "output")}, "kinds": KINDS},
        }
    finally:
        for server in servers:
            server.stop()
    write_json(stem.with_suffix(".json"), result)
    write_report(result, stem)
    say(f"lost {result['lost']}, memory growth {result['memory_growth']:+.1%}, written {stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
