"""A real Prometheus (Debian's `prometheus`) scraping a small exporter the test drives, for the bridge's tests.

The exporter (`python tests/prom_env.py PORT`, its own process) serves Kepler- and DCGM-format metric
text at /metrics. The test sets what it serves with a POST to /set: counters are given as a power
(W), and the exporter integrates them (joules = previous joules + W x elapsed time, at each scrape), so
``rate(kepler_pod_cpu_joules_total[5s])`` in Prometheus is that power; gauges (DCGM's
``DCGM_FI_DEV_POWER_USAGE`` in W, a PDU's kW) are served as given.

    with Exporter(tmp) as exp, Prometheus(tmp, [exp.target]) as prom:
        exp.set([{"name": "kepler_pod_cpu_joules_total", "labels": {"zone": "package", "slurm_job_id": "7"},
                  "watts": 350.0}, {"name": "DCGM_FI_DEV_POWER_USAGE", "labels": {"gpu": "0"}, "value": 250.0}])
        prom.wait_series('rate(kepler_pod_cpu_joules_total[5s])', 1)
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from uplink_broker import free_port, wait_for  # noqa: E402

PROMETHEUS = "prometheus"


def _labels(d: dict) -> str:
    if not d:
        return ""
    esc = lambda v: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")   # noqa: E731
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(d.items())) + "}"


class _State:
    """The exporter's series: (name, labels) -> [type, joules or value, watts, since]."""

    def __init__(self):
        self.lock = threading.Lock()
        self.series: dict = {}

    def set(self, items: list[dict]) -> None:
        now = time.time()
        with self.lock:
            for s in self.series.values():                   # integrate every counter up to now
                if s[0] == "counter":
                    s[1] += s[2] * (now - s[3])
                    s[3] = now
            for it in items:
                key = (it["name"], tuple(sorted(it.get("labels", {}).items())))
                if "watts" in it:
                    old = self.series.get(key)
                    self.series[key] = ["counter", old[1] if old else float(it.get("joules", 1000.0)),
                                        float(it["watts"]), now]
                else:
                    self.series[key] = ["gauge", float(it["value"]), 0.0, now]

    def text(self) -> str:
        now = time.time()
        lines, typed = [], set()
        with self.lock:
            for (name, labels), (kind, x, w, since) in sorted(self.series.items()):
                if name not in typed:
                    lines.append(f"# TYPE {name} {kind}")
                    typed.add(name)
                v = x + w * (now - since) if kind == "counter" else x
                lines.append(f"{name}{_labels(dict(labels))} {v!r}")
        return "\n".join(lines) + "\n"


def serve(port: int) -> None:
    state = _State()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = state.text().encode() if self.path.startswith("/metrics") else b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            state.set(json.loads(self.rfile.read(n)))
            self.send_response(204)
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    print("listening", flush=True)
    srv.serve_forever()


class Exporter:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Exporter":
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "listening", f"exporter did not start: {line}{self.proc.stdout.read()}"
        return self

    def set(self, series: list[dict]) -> None:
        req = urllib.request.Request(f"http://{self.target}/set", data=json.dumps(series).encode(), method="POST")
        urllib.request.urlopen(req, timeout=5).close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Prometheus:
    """prometheus on 127.0.0.1:PORT scraping `targets` every second, TSDB in the temporary directory."""

    def __init__(self, workdir: Path, targets: list[str], scrape_s: float = 1.0):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "prometheus.yml"
        ms = f"{int(round(scrape_s * 1000))}ms"       # Prometheus durations: no fractions ("500ms", not "0.5s")
        self.conf.write_text(f"""global:
  scrape_interval: {ms}
  evaluation_interval: {ms}
scrape_configs:
  - job_name: exporter
    scrape_interval: {ms}
    scrape_timeout: {ms}
    static_configs:
      - targets: {json.dumps(targets)}
""")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Prometheus":
        exe = shutil.which(PROMETHEUS)
        assert exe, "prometheus missing - `make test` installs it (Debian package prometheus)"
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen([exe, f"--config.file={self.conf}", f"--storage.tsdb.path={self.dir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                                      "--storage.tsdb.retention.time=1h"],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def ready():
            assert self.proc.poll() is None, f"prometheus exited {self.proc.returncode}: {self.logs()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ready, 30, "prometheus /-/ready", poll=0.1)
        return self

    def logs(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def wait_series(self, expr: str, n: int, timeout: float = 20.0) -> list[dict]:
        """Wait (bounded) until the query API returns at least `n` series for `expr`."""
        def enough():
            r = self.query(expr)
            return r if len(r) >= n else None
        return wait_for(enough, timeout, f"prometheus to return {n} series for {expr}", poll=0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
