"""A Kepler- and DCGM-format exporter driven by the simulated compute platform's per-job power, for a real
Prometheus to scrape and `edge-ems bridge` to read (issue 17's end-to-end measurement).

    python -m tools.sim.exporter --port 9102            # prints "listening" once it serves

The simulation POSTs `/power` with `{"t": UTC s (simulated), "jobs": {id: kW}, "total_kw": kW}` on every
change and sample (tools/sim/compute_platform.py power sinks; `ExporterPush` below). Between two POSTs each
job's power is held, and its counters are integrated in **simulated** time, so the joules served are the
energy the simulated jobs drew: at a speed-up of X, Prometheus' `rate()` (per wall second) is X times the
power, and the bridge's query scale is 0.001 / X (the gauge below is a power and needs no such factor).

What it serves at `/metrics` (the text format, 0.0.4), per job `ID` (label `pod_name` and `slurm_job_id`
= ID, the mapping a Slurm-on-Kubernetes Kepler has; dcgm-exporter's `hpc_job` = ID):

- `kepler_pod_cpu_joules_total{zone=...}` counters: `package` (CPU_SHARE of the job's power), inside it
  `core` and `uncore` (70 % and 10 % of package: a query that adds them counts twice), and `dram`;
- `DCGM_FI_DEV_POWER_USAGE` (W, gauge, one GPU per job) = the rest (GPU_SHARE), and the matching
  `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (mJ since start, counter), as dcgm-exporter names them;
- `pdu_active_power_kw{rack="r1"}`: the IT total (a rack PDU's reading).

`GET /totals` returns the exporter's own counters per job as JSON: Kepler package + dram joules, DCGM
joules, and their sum in kWh, as of the last POST: what the ledger's per-job kWh is compared with.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CPU_SHARE, DRAM_SHARE = 0.35, 0.05       # of a job's power; the GPU draws the rest
GPU_SHARE = 1.0 - CPU_SHARE - DRAM_SHARE
CORE_OF_PACKAGE, UNCORE_OF_PACKAGE = 0.70, 0.10
NODE = "sim-node-1"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(d: dict) -> str:
    return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in sorted(d.items())) + "}"


class Counters:
    """Per-job power held between POSTs and integrated in the POSTs' own (simulated) time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.t: float | None = None
        self.kw: dict[str, float] = {}
        self.cpu_j: dict[str, float] = {}        # package joules
        self.dram_j: dict[str, float] = {}
        self.gpu_j: dict[str, float] = {}
        self.gpu: dict[str, int] = {}            # job -> GPU index
        self.total_kw = 0.0
        self.posts = 0

    def post(self, d: dict) -> None:
        t, jobs = d.get("t"), d.get("jobs", {})
        if not isinstance(t, (int, float)) or not isinstance(jobs, dict):
            raise ValueError("expected {'t': seconds, 'jobs': {id: kW}}")
        for job, kw in jobs.items():
            if not isinstance(job, str) or not job or isinstance(kw, bool) or not isinstance(kw, (int, float)) \
                    or kw < 0:
                raise ValueError(f"jobs.{job}: expected kW >= 0")
        with self.lock:
            if self.t is not None:
                if t < self.t:
                    raise ValueError(f"t {t} is before the last POST's {self.t}")
                dt = t - self.t
                for job, kw in self.kw.items():      # the power held since the last POST
                    w = kw * 1000.0
                    self.cpu_j[job] += w * CPU_SHARE * dt
                    self.dram_j[job] += w * DRAM_SHARE * dt
                    self.gpu_j[job] += w * GPU_SHARE * dt
            self.t = float(t)
            for job in list(self.kw):
                self.kw[job] = 0.0                     # a job left out of a POST draws nothing
            for job, kw in jobs.items():
                if job not in self.gpu:
                    self.gpu[job] = len(self.gpu)
                    self.cpu_j[job] = self.dram_j[job] = self.gpu_j[job] = 0.0
                self.kw[job] = float(kw)
            if isinstance(d.get("total_kw"), (int, float)):
                self.total_kw = float(d["total_kw"])
            self.posts += 1

    def text(self) -> str:
        out = ["# TYPE kepler_pod_cpu_joules_total counter"]
        with self.lock:
            jobs = sorted(self.gpu)
            for job in jobs:
                base = {"pod_name": job, "slurm_job_id": job, "container_namespace": "edge-ems-sim"}
                pkg = self.cpu_j[job]
                for zone, j in (("package", pkg), ("core", pkg * CORE_OF_PACKAGE),
                                ("uncore", pkg * UNCORE_OF_PACKAGE), ("dram", self.dram_j[job])):
                    out.append(f"kepler_pod_cpu_joules_total{_labels({**base, 'zone': zone})} {j!r}")
            out.append("# TYPE DCGM_FI_DEV_POWER_USAGE gauge")
            for job in jobs:
                g = self._gpu_labels(job)
                out.append(f"DCGM_FI_DEV_POWER_USAGE{_labels(g)} {self.kw.get(job, 0.0) * 1000.0 * GPU_SHARE!r}")
            out.append("# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter")
            for job in jobs:
                out.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{_labels(self._gpu_labels(job))} "
                           f"{self.gpu_j[job] * 1000.0!r}")
            out.append("# TYPE pdu_active_power_kw gauge")
            out.append(f'pdu_active_power_kw{{rack="r1"}} {self.total_kw!r}')
        return "\n".join(out) + "\n"

    def _gpu_labels(self, job: str) -> dict:
        i = self.gpu[job]
        return {"gpu": str(i), "UUID": f"GPU-sim-{i:04d}", "Hostname": NODE, "modelName": "simulated",
                "hpc_job": job}

    def totals(self) -> dict:
        with self.lock:
            return {"t": self.t, "posts": self.posts, "jobs": {
                job: {"kepler_j": self.cpu_j[job] + self.dram_j[job], "dcgm_j": self.gpu_j[job],
                      "kwh": (self.cpu_j[job] + self.dram_j[job] + self.gpu_j[job]) / 3.6e6}
                for job in sorted(self.gpu)}}


def serve(port: int, host: str = "127.0.0.1") -> None:
    state = Counters()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; version=0.0.4") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/metrics"):
                self._send(200, state.text().encode())
            elif self.path.startswith("/totals"):
                self._send(200, json.dumps(state.totals()).encode(), "application/json")
            else:
                self._send(404, b"not found\n")

        def do_POST(self):
            if not self.path.startswith("/power"):
                return self._send(404, b"not found\n")
            n = int(self.headers.get("Content-Length", "0"))
            try:
                state.post(json.loads(self.rfile.read(min(n, 1 << 20))))
            except (ValueError, TypeError) as exc:
                return self._send(400, f"{exc}\n".encode())
            self._send(204, b"")

    srv = ThreadingHTTPServer((host, port), H)
    print("listening", flush=True)
    srv.serve_forever()


class ExporterPush:
    """A power sink for tools/sim/compute_platform.SimPlatform: POSTs each change and sample to the
    exporter (a failed POST is counted, never raised into the scan cycle)."""

    def __init__(self, url: str, timeout_s: float = 2.0):
        self.url, self.timeout_s = url.rstrip("/") + "/power", timeout_s
        self.sent = self.failed = 0
        self.last_error = ""

    def __call__(self, t_utc: float, jobs_kw: dict, total_kw: float | None = None) -> None:
        body = {"t": t_utc, "jobs": jobs_kw}
        if total_kw is not None:
            body["total_kw"] = total_kw
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=self.timeout_s).close()
            self.sent += 1
        except OSError as exc:
            self.failed += 1
            self.last_error = str(exc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args(argv)
    try:
        serve(a.port, a.host)
    except OSError as exc:
        print(f"exporter: cannot listen on {a.host}:{a.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
