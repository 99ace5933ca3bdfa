"""The bridge's configuration file (TOML), validated with the profiles' declarative schema
(controller/schema.py): every problem at once, each with file:line: key, so a bad key exits 2 naming it.

Reference and example: docs/bridge.md, profiles/bridge/example.toml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from controller.config import load_checked
from controller.schema import ArrayOf, Field as F, MapOf, Table, Validator, _type_name

INTO = ("jobs", "nodes", "racks", "total", "cooling", "aux")
MAP_INTO = ("jobs", "nodes", "racks")           # one entry per label value
DEFERRABLE_BY = ("partition", "qos", "comment")


class Strings(F):
    """An array of non-empty strings (partition names, QOS names)."""

    def __init__(self, default=None, doc: str = ""):
        super().__init__("string", default=list(default or []), doc=doc)

    def expected(self) -> str:
        return "an array of non-empty strings"

    def check(self, value: Any):
        if not isinstance(value, list) or any(not isinstance(v, str) or not v for v in value):
            return None, f"expected {self.expected()}, got {_type_name(value)} {value!r}"
        return list(value), None


QUERY = Table({
    "name": F("string", required=True, doc="a name for logs"),
    "query": F("string", required=True, doc="PromQL, evaluated as an instant query"),
    "into": F("string", required=True, choices=INTO, doc="where its series go in compute/power"),
    "label": F("string", default="", doc="jobs/nodes/racks: the series label naming the entry"),
    "prefix": F("string", default="", doc="prepended to the label's value (job ids as announced)"),
    "scale": F("number", default=0.001, min=0, min_exclusive=True, doc="to kW: 0.001 for W, 1 for kW"),
    "required": F("boolean", default=False, doc="an empty result skips that cycle's compute/power"),
})

KW = Table({
    "base_kw": F("number", default=0.0, min=0),
    "per_node_kw": F("number", default=0.0, min=0),
    "per_cpu_kw": F("number", default=0.0, min=0),
    "per_gpu_kw": F("number", default=0.0, min=0),
})

SCHEMA = Table({
    "bridge": Table({
        "site": F("string", required=True),
        "gateway": F("string", required=True),
        "mqtt": F("string", required=True, doc="mqtt[s]://[user:pass@]host[:port][?ca=&cert=&key=]"),
        "client_id": F("string", default=""),
        "power_period_s": F("number", default=15.0, min=1.0, max=60.0),
        "queue_period_s": F("number", default=30.0, min=1.0, max=600.0),
        "announce_every_s": F("number", default=300.0, min=5.0, max=3600.0),
        "action_log": F("string", default="bridge-actions.jsonl"),
        "state_file": F("string", default="bridge-holds.json"),   # without one no job is ever held
        "max_request_age_s": F("number", default=600.0, min=1.0),
        "release_when_silent_s": F("number", default=900.0, min=0.0),
    }, required=True),
    "prometheus": Table({
        "url": F("string", required=True),
        "timeout_s": F("number", default=5.0, min=0, min_exclusive=True, max=60.0),
        "max_bytes": F("integer", default=4 * 1024 * 1024, min=1024, max=64 * 1024 * 1024),
        "source": F("string", default="kepler+dcgm+pdu"),
    }),
    "power": Table({
        "query": ArrayOf(QUERY),
    }),
    "slurm": Table({
        "deferrable_by": F("string", required=True, choices=DEFERRABLE_BY),
        "deferrable_partitions": Strings(),
        "deferrable_qos": Strings(),
        "comment_tag": F("string", default="edge-ems:deferrable"),
        "suspend_running": F("boolean", default=False),
        "job_id_prefix": F("string", default="slurm-"),
        "conf": F("string", default="", doc="SLURM_CONF for the commands ('' = Slurm's default)"),
        "bin_dir": F("string", default="", doc="where squeue/scontrol are ('' = PATH)"),
        "squeue": F("string", default="auto", choices=("auto", "json", "text")),
        "command_timeout_s": F("number", default=10.0, min=0, min_exclusive=True, max=120.0),
        "max_output_bytes": F("integer", default=32 * 1024 * 1024, min=4096),
        "default_duration_min": F("number", default=240.0, min=1.0, max=10080.0),
        "default_deadline_h": F("number", default=0.0, min=0.0, max=168.0),
        "max_hold_h": F("number", default=12.0, min=0, min_exclusive=True, max=168.0),
        "guard_s": F("number", default=60.0, min=0.0),
        "resume_on_headroom": F("boolean", default=True),
        "min_hold_s": F("number", default=900.0, min=0.0),
        "headroom_margin": F("number", default=0.1, min=0.0, max=10.0),
        "kw": MapOf(KW),
    }),
})


def load_bridge_config(path: str | Path) -> dict:
    """The validated configuration; ProfileError listing every problem (the CLI exits 2 with them)."""
    path = Path(path)
    cfg = load_checked(path, SCHEMA, _cross_checks)
    cfg["path"] = str(path)
    return cfg


def _cross_checks(cfg: dict, v: Validator) -> None:
    from controller.uplink.client import BrokerConfig
    b = cfg["bridge"]
    for key in ("site", "gateway"):
        if not b[key] or any(c in b[key] for c in "/+#\0"):
            v.problem(f"bridge.{key}", f"cannot be an MQTT topic level (empty, or has / + # NUL): {b[key]!r}")
    try:
        BrokerConfig.from_url(b["mqtt"])
    except ValueError as exc:
        v.problem("bridge.mqtt", str(exc))
    prom = cfg["prometheus"]
    if prom is None and cfg["power"]["query"]:
        v.problem("prometheus", "missing: [[power.query]] needs [prometheus] url")
    if prom is not None:
        u = urlparse(prom["url"])
        if u.scheme not in ("http", "https") or not u.hostname:
            v.problem("prometheus.url", f"expected http://HOST:PORT (or https), got {prom['url']!r}")
    names = set()
    for i, q in enumerate(cfg["power"]["query"]):
        key = f"power.query[{i}]"
        if q["name"] in names:
            v.problem(f"{key}.name", f"duplicate query name {q['name']!r}")
        names.add(q["name"])
        if not q["query"].strip():
            v.problem(f"{key}.query", "empty PromQL")
        if q["into"] in MAP_INTO and not q["label"]:
            v.problem(f"{key}.label", f"into = {q['into']!r} needs the series label naming each entry "
                      "(e.g. 'slurm_job_id', 'hpc_job', 'pod_name', 'Hostname', 'rack')")
        if q["into"] not in MAP_INTO and (q["label"] or q["prefix"]):
            v.problem(f"{key}.label", f"into = {q['into']!r} is one number: label/prefix do not apply "
                      "(wrap the query in sum())")
    s = cfg["slurm"]
    if s is not None:
        need = {"partition": "deferrable_partitions", "qos": "deferrable_qos", "comment": "comment_tag"}
        field = need[s["deferrable_by"]]
        if not s[field]:
            v.problem(f"slurm.{field}", f"deferrable_by = {s['deferrable_by']!r} needs {field}")
        for name in s["kw"]:
            if not name:
                v.problem("slurm.kw", "a partition name cannot be empty")
    if not cfg["power"]["query"] and s is None:
        v.problem("power.query", "nothing to do: no [[power.query]] and no [slurm] table")
