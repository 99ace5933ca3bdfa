"""The bridge against a real Prometheus (Debian's package) scraping a Kepler- and DCGM-format exporter the
test drives, and a real Mosquitto: what it publishes on compute/power is what the exporter's counters
and gauges say, mapped to jobs, nodes and racks, and the gateway's own consumer accepts it.

One Prometheus, exporter and broker per module; the bridge is a real `edge-ems bridge` process.
"""
from __future__ import annotations

import json
import time

import pytest

from bridge_env import BridgeProcess, Cabinet, GATEWAY, SITE, network_inputs
from prom_env import Exporter, Prometheus
from uplink_broker import Broker, wait_for

from controller.bridge.prom import PromClient, PromError
from controller.compute.jobs import JobBook
from drivers.isotime import utc_epoch

WINDOW = "3s"            # rate() window of the test's queries: 6 samples at the 0.5 s scrape
SERIES = [
    # Kepler: RAPL zones of two jobs' pods. `core` is inside `package`: the query must not add it.
    {"name": "kepler_pod_cpu_joules_total", "labels": {"zone": "package", "slurm_job_id": "7", "pod_name": "p7"},
     "watts": 350.0},
    {"name": "kepler_pod_cpu_joules_total", "labels": {"zone": "core", "slurm_job_id": "7", "pod_name": "p7"},
     "watts": 300.0},
    {"name": "kepler_pod_cpu_joules_total", "labels": {"zone": "dram", "slurm_job_id": "7", "pod_name": "p7"},
     "watts": 50.0},
    {"name": "kepler_pod_cpu_joules_total", "labels": {"zone": "package", "slurm_job_id": "8", "pod_name": "p8"},
     "watts": 120.0},
    {"name": "kepler_pod_cpu_joules_total", "labels": {"zone": "package", "pod_name": "system"}, "watts": 40.0},
    # DCGM: board power per GPU (W), the job from dcgm-exporter's HPC job mapping (hpc_job)
    {"name": "DCGM_FI_DEV_POWER_USAGE", "labels": {"gpu": "0", "Hostname": "gpu-01", "hpc_job": "7"}, "value": 250.0},
    {"name": "DCGM_FI_DEV_POWER_USAGE", "labels": {"gpu": "1", "Hostname": "gpu-01", "hpc_job": "8"}, "value": 180.0},
    {"name": "DCGM_FI_DEV_POWER_USAGE", "labels": {"gpu": "0", "Hostname": "gpu-02"}, "value": 60.0},
    # the rack PDUs, kW
    {"name": "pdu_active_power_kw", "labels": {"rack": "r1"}, "value": 2.5},
    {"name": "pdu_active_power_kw", "labels": {"rack": "r2"}, "value": 1.5},
]
EXPECT = {"jobs": {"slurm-7": 0.35 + 0.05 + 0.25, "slurm-8": 0.12 + 0.18},
          "nodes": {"gpu-01": 0.43, "gpu-02": 0.06}, "racks": {"r1": 2.5, "r2": 1.5}, "total_kw": 4.0}


def config(tmp, broker, prom, queries: str, period: float = 1.0) -> str:
    path = tmp / "bridge.toml"
    path.write_text(f"""[bridge]
site = "{SITE}"
gateway = "{GATEWAY}"
mqtt = "{broker.url}"
power_period_s = {period}
action_log = "{tmp / 'actions.jsonl'}"

[prometheus]
url = "{prom.url}"
timeout_s = 5
{queries}""")
    return path


QUERIES = f"""
[[power.query]]
name = "kepler-cpu"
query = 'sum by (slurm_job_id) (rate(kepler_pod_cpu_joules_total{{zone=~"package|dram"}}[{WINDOW}]))'
into = "jobs"
label = "slurm_job_id"
prefix = "slurm-"

[[power.query]]
name = "dcgm-gpu-jobs"
query = 'sum by (hpc_job) (DCGM_FI_DEV_POWER_USAGE)'
into = "jobs"
label = "hpc_job"
prefix = "slurm-"

[[power.query]]
name = "dcgm-gpu-nodes"
query = 'sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE)'
into = "nodes"
label = "Hostname"

[[power.query]]
name = "pdu-racks"
query = 'sum by (rack) (pdu_active_power_kw)'
into = "racks"
label = "rack"
scale = 1.0

[[power.query]]
name = "pdu-total"
query = 'sum(pdu_active_power_kw)'
into = "total"
scale = 1.0
required = true
"""


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bridge-prom")
    broker, exporter = Broker(tmp / "broker"), Exporter(tmp)
    prom = Prometheus(tmp / "prom", [exporter.target], scrape_s=0.5)
    try:                                        # whatever fails to start, what did start is stopped
        broker.start()
        exporter.start()
        exporter.set(SERIES)
        prom.start()
        # the rates are full once the window holds its samples: wait for the value, not for time
        wait_for(lambda: any(abs(float(r["value"][1]) - 120.0) < 0.5 for r in prom.query(
            f'sum by (slurm_job_id) (rate(kepler_pod_cpu_joules_total{{zone="package"}}[{WINDOW}]))')),
            30, "prometheus to serve the exporter's rates", poll=0.2)
        yield tmp, broker, exporter, prom
    finally:
        prom.stop()
        exporter.stop()
        broker.kill()


def test_power_from_prometheus_reaches_the_gateway_as_measured(peers):
    tmp, broker, exporter, prom = peers
    cab = Cabinet(broker.port)
    book = JobBook()
    inputs = network_inputs([book])
    bridge = BridgeProcess(config(tmp, broker, prom, QUERIES))
    try:
        wait_for(lambda: len(cab.messages("compute/power")) >= 3, 20, f"three compute/power\n{bridge.stderr()}")
        for payload in cab.messages("compute/power"):
            assert inputs.feed("compute/power", payload), inputs.stats()["compute/power"]
        d = json.loads(cab.messages("compute/power")[-1])
        assert d["source"] == "kepler+dcgm+pdu"
        assert d["total_kw"] == pytest.approx(EXPECT["total_kw"], abs=1e-6)
        assert d["racks"] == pytest.approx(EXPECT["racks"], abs=1e-6)
        assert d["nodes"] == pytest.approx(EXPECT["nodes"], abs=1e-6)
        assert set(d["jobs"]) == set(EXPECT["jobs"])              # the system pod has no job label: not a job
        for job, kw in EXPECT["jobs"].items():                     # counters -> rate: within 1 %
            assert d["jobs"][job] == pytest.approx(kw, rel=0.01), (job, d["jobs"])
        assert abs(time.time() - utc_epoch(d["t"])) < 10           # the instant the queries were evaluated at
        st = inputs.stats()["compute/power"]
        assert st["errors"] == 0 and st["accepted"] == st["received"] >= 3
        assert inputs.compute.power.total_kw == pytest.approx(4.0)
        assert book.power_at(time.time())["slurm-7"] == pytest.approx(0.65, rel=0.01)   # the ledger's per-job kW
        # a change at the exporter reaches the payload (the gauge at once, the rate within its window)
        exporter.set([{**SERIES[5], "value": 400.0}])
        wait_for(lambda: json.loads(cab.messages("compute/power")[-1])["nodes"]["gpu-01"] == pytest.approx(0.58),
                 10, "the new DCGM reading in compute/power")
    finally:
        exporter.set([{**SERIES[5], "value": 250.0}])
        assert bridge.stop() == 0, bridge.stderr()
        cab.close()


def test_a_failing_query_publishes_nothing_and_says_why(peers):
    """A PromQL error (or Prometheus down) is not a smaller total: that cycle's compute/power is not sent."""
    tmp, broker, exporter, prom = peers
    cab = Cabinet(broker.port)
    bad = QUERIES + """
[[power.query]]
name = "broken"
query = 'sum(rate(kepler_pod_cpu_joules_total[3s])'
into = "aux"
"""
    bridge = BridgeProcess(config(tmp, broker, prom, bad))
    try:
        line = bridge.wait_line("prometheus:")
        assert "power.query 'broken'" in line and "bad_data" in line, line
        assert bridge.stop() == 0, bridge.stderr()
        stats = json.loads(bridge.wait_line("stopped:").split("stopped: ", 1)[1])
        assert stats["power_skipped"] >= 1 and stats["power_published"] == 0, stats
        assert cab.messages("compute/power") == [], "a cycle with a failed query was published"
    finally:
        assert bridge.stop() == 0, bridge.stderr()
        cab.close()


def test_prom_client_is_bounded_and_typed(peers):
    _, _, _, prom = peers
    c = PromClient(prom.url, timeout_s=5, max_bytes=1 << 20)
    got = c.query('sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE)')
    assert {s.labels["Hostname"]: s.value for s in got} == {"gpu-01": 430.0, "gpu-02": 60.0}
    with pytest.raises(PromError, match="expected an instant vector"):
        c.query("DCGM_FI_DEV_POWER_USAGE[5s]")                  # a range vector is not a reading
    with pytest.raises(PromError, match="over 200 bytes"):
        PromClient(prom.url, max_bytes=200).query("DCGM_FI_DEV_POWER_USAGE")
    with pytest.raises(PromError, match="bad_data"):
        c.query("sum(")
    assert c.query("scalar(sum(pdu_active_power_kw))")[0].value == pytest.approx(4.0)
    with pytest.raises(PromError, match="cannot reach"):
        PromClient("http://127.0.0.1:9", timeout_s=1).query("up")
