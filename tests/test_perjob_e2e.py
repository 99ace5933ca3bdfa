"""Per-job evidence end to end, with real peers: the simulated platform's per-job power drives a Kepler- and
DCGM-format exporter (tools/sim/exporter.py, its own process); a real Prometheus (Debian's) scrapes it;
`edge-ems bridge` (a real process) reads it over the HTTP API with PromQL and publishes compute/power on a
real Mosquitto; the gateway's consumer (controller/netinputs.py) hands it to the job book the simulated
gateway's ledger reads. Over an hour of simulated time the ledger's per-job kWh is within 1 % of the
exporter's own counters.

Time. The simulation runs at SPEED x real time (an hour in 180 s), the exporter integrates the simulated
power in simulated time, so the Kepler counters' rate per wall second is SPEED x the power: the bridge's
Kepler query has scale 0.001 / SPEED (DCGM's gauge is a power, scale 0.001). Resolution: Prometheus
scrapes every 0.5 s (10 simulated s), the rate window is 2 s (40 s), the bridge samples every 1 s (20 s);
each sample is stamped on arrival with the simulated clock. At each start and stop a job's figure can be
off by up to half a bridge period x its kW; two 45-minute jobs keep that under 0.6 % by construction.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bridge_env import BridgeProcess, GATEWAY, SITE, network_inputs
from prom_env import Prometheus
from uplink_broker import Broker, free_port, wait_for

from controller.carbon.ledger import read_payloads
from controller.carbon.report import build_report
from tools.sim.compute_platform import Arrivals
from tools.sim.exporter import ExporterPush
from tools.sim.runner import run_sim
from tools.sim.scenario import load_scenario

pytestmark = pytest.mark.slow          # ~3.5 min: the simulated hour at 20 x, Prometheus' start-up

ROOT = Path(__file__).resolve().parents[1]
SPEED = 20.0
JOBS = {"job1": (20.0, 0.05, 45.0), "job2": (12.0, 0.10, 45.0)}     # kW, start h, minutes
SCENARIO = """
[scenario]
name = "perjob-e2e"
site = "nordic-wind"
start_utc = "2026-01-20T10:00:00Z"
hours = 1.0

[pv]
kwp = 40.0

[load]
it_idle_kw = 60.0
it_nameplate_kw = 130.0
training_jobs_per_day = 0.0
aux_kw = 4.0

[compute]
flex = false                   # no holds here: the measurement path alone
power_period_s = 15.0
""" + "".join(f"""
[[events]]
kind = "job_announce"
at_h = 0.0
start_h = {start}
duration_min = {minutes}
kw = {kw}
deferrable = true
""" for kw, start, minutes in JOBS.values())


class GatewaySide:
    """The cabinet's MQTT subscription of compute/power, fed to the gateway's own consumer."""

    def __init__(self, port: int, arrivals: Arrivals):
        self.inputs = network_inputs([arrivals])
        self.n = 0
        self.ready = threading.Event()
        base = f"edge-ems/v1/{SITE}/{GATEWAY}"
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-e2e", protocol=MQTTProtocolVersion.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{base}/compute/power", 0)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        wait_for(self.ready.is_set, 10, "the gateway's subscription")

    def _msg(self, client, userdata, msg):
        self.inputs.feed("compute/power", bytes(msg.payload))
        self.n += 1

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def bridge_config(tmp: Path, broker: Broker, prom: Prometheus) -> Path:
    path = tmp / "bridge.toml"
    path.write_text(f"""[bridge]
site = "{SITE}"
gateway = "{GATEWAY}"
mqtt = "{broker.url}"
power_period_s = 1
action_log = "{tmp / 'actions.jsonl'}"

[prometheus]
url = "{prom.url}"

[[power.query]]
name = "kepler"                # package already holds core and uncore: never add them
query = 'sum by (slurm_job_id) (rate(kepler_pod_cpu_joules_total{{zone=~"package|dram"}}[2s]))'
into = "jobs"
label = "slurm_job_id"
scale = {0.001 / SPEED!r}      # joules of simulated time per wall second: W x SPEED

[[power.query]]
name = "dcgm"
query = 'sum by (hpc_job) (DCGM_FI_DEV_POWER_USAGE)'
into = "jobs"
label = "hpc_job"

[[power.query]]
name = "pdu"
query = 'sum(pdu_active_power_kw)'
into = "total"
scale = 1.0
required = true
""")
    return path


def test_ledger_per_job_kwh_matches_the_exporters_counters_through_prometheus_and_the_bridge(tmp_path):
    scn_path = tmp_path / "perjob-e2e.toml"
    scn_path.write_text(SCENARIO)
    scn = load_scenario(scn_path)
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "tools.sim.exporter", "--port", str(port)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    broker = Broker(tmp_path / "broker")
    prom = Prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"], scrape_s=0.5)
    bridge = gw = None
    try:
        assert exporter.stdout.readline().strip() == "listening"
        push = ExporterPush(f"http://127.0.0.1:{port}")
        push(scn.start.timestamp(), {j: 0.0 for j in JOBS}, 60.0)     # the jobs' series exist from the start
        broker.start()
        prom.start()
        prom.wait_series('kepler_pod_cpu_joules_total{zone="package"}', len(JOBS), timeout=30)
        arrivals = Arrivals()
        gw = GatewaySide(broker.port, arrivals)
        bridge = BridgeProcess(bridge_config(tmp_path, broker, prom))
        wait_for(lambda: gw.n >= 2, 30, f"compute/power from the bridge\n{bridge.stderr()}")
        res = run_sim(scn, hours=1.0, seed=1, strategy="rule", out_dir=tmp_path / "sim", speed=SPEED,
                      compute={"power_sinks": [push], "sink_period_s": 1.0, "arrivals": arrivals})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/totals", timeout=5) as r:
            totals = json.load(r)["jobs"]
    finally:
        if bridge is not None:
            assert bridge.stop() == 0, bridge.stderr()
        if gw is not None:
            gw.close()
        prom.stop()
        broker.kill()
        exporter.terminate()
        exporter.wait(5)
    assert push.failed == 0, push.last_error
    assert gw.inputs.stats()["compute/power"]["errors"] == 0, gw.inputs.stats()
    assert arrivals.received >= 0.9 * 3600 / SPEED, arrivals.received          # ~one sample a wall second
    assert res.kpis["wall_s"] == pytest.approx(3600 / SPEED, rel=0.05)          # the pace the scale assumes
    rep = build_report(read_payloads(tmp_path / "sim" / "ledger"))
    for job, (kw, start_h, minutes) in JOBS.items():
        truth = kw * minutes / 60.0
        assert totals[job]["kwh"] == pytest.approx(truth, rel=1e-3), totals      # the exporter's own counters
        line = rep["jobs"][job]
        assert line["basis"] in ("measured", "mixed") and line["measured_h"] >= 0.95 * minutes / 60, line
        assert line["it_kwh"] == pytest.approx(totals[job]["kwh"], rel=0.01), (job, line["it_kwh"], totals[job])
        print(f"{job}: ledger {line['it_kwh']:.3f} kWh, exporter {totals[job]['kwh']:.3f} kWh "
              f"({100 * (line['it_kwh'] / totals[job]['kwh'] - 1):+.2f} %), basis {line['basis']}")
