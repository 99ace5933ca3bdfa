"""A Prometheus HTTP API client for instant queries (stdlib urllib): bounded, timed, typed.

Why our own and not a client library: the bridge needs one endpoint (``/api/v1/query``), and a
monitoring server on the far side of a site network must not be able to hang it (timeout), fill its
memory (the response is read up to ``max_bytes`` and refused beyond) or crash it with an odd document
(every field is checked; a wrong shape is a `PromError` naming what was expected).

    client = PromClient("http://127.0.0.1:9090", timeout_s=5, max_bytes=4 << 20)
    for s in client.query('sum by (slurm_job_id) (rate(kepler_pod_cpu_joules_total[1m]))', at_s=now):
        s.labels["slurm_job_id"], s.value           # value in the query's unit (W here)

Non-finite values (NaN, +Inf: a division by a zero rate, a stale gauge) are not samples: they are
skipped and counted in ``client.non_finite``.
"""
from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

MAX_LABELS = 64                   # per series: more is not an exporter we know


class PromError(Exception):
    pass


@dataclass(frozen=True)
class Sample:
    labels: dict
    value: float


def _read_bounded(resp, max_bytes: int, what: str, deadline: float | None = None) -> bytes:
    """At most max_bytes, and - with `deadline` (time.monotonic) - by then: the socket timeout bounds each
    read, so a server sending a byte every few seconds would otherwise hold the bridge for hours."""
    if deadline is None:
        body = resp.read(max_bytes + 1)
    else:
        parts, n = [], 0
        while n <= max_bytes:
            if time.monotonic() > deadline:
                raise PromError(f"{what}: response not complete within prometheus.timeout_s")
            chunk = resp.read1(min(65536, max_bytes + 1 - n)) if hasattr(resp, "read1") else resp.read(65536)
            if not chunk:
                break
            parts.append(chunk)
            n += len(chunk)
        body = b"".join(parts)
    if len(body) > max_bytes:
        raise PromError(f"{what}: response over {max_bytes} bytes (prometheus.max_bytes); narrow the query")
    return body


def parse_response(body: bytes, what: str = "query") -> tuple[list[Sample], int]:
    """(samples, non-finite count) of an instant query's JSON; PromError for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PromError(f"{what}: response is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise PromError(f"{what}: response is not a JSON object")
    if doc.get("status") != "success":
        raise PromError(f"{what}: prometheus says {doc.get('errorType', 'error')}: {str(doc.get('error', doc))[:200]}")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise PromError(f"{what}: key 'data': expected an object")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        result = [{"metric": {}, "value": result}]
    elif kind != "vector":
        raise PromError(f"{what}: expected an instant vector or a scalar, got resultType {kind!r} "
                        "(a range selector [5m] needs rate() or similar around it)")
    if not isinstance(result, list):
        raise PromError(f"{what}: key 'data.result': expected an array")
    out, bad = [], 0
    for i, item in enumerate(result):
        if not isinstance(item, dict):
            raise PromError(f"{what}: result[{i}]: expected an object")
        labels, value = item.get("metric"), item.get("value")
        if not isinstance(labels, dict) or len(labels) > MAX_LABELS or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise PromError(f"{what}: result[{i}].metric: expected an object of string labels")
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
            raise PromError(f"{what}: result[{i}].value: expected [time, \"number\"], got {str(value)[:60]}")
        try:
            x = float(value[1])
        except ValueError:
            raise PromError(f"{what}: result[{i}].value: {value[1][:40]!r} is not a number") from None
        if not math.isfinite(x):
            bad += 1
            continue
        out.append(Sample(dict(labels), x))
    return out, bad


class PromClient:
    def __init__(self, url: str, timeout_s: float = 5.0, max_bytes: int = 4 * 1024 * 1024, opener=None):
        self.endpoint = url.rstrip("/") + "/api/v1/query"
        self.timeout_s, self.max_bytes = float(timeout_s), int(max_bytes)
        self.open = opener or urllib.request.urlopen
        self.non_finite = 0

    def query(self, expr: str, at_s: float | None = None, what: str = "query") -> list[Sample]:
        form = {"query": expr}
        if at_s is not None:
            form["time"] = f"{at_s:.3f}"
        req = urllib.request.Request(self.endpoint, data=urllib.parse.urlencode(form).encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              "Accept": "application/json"})
        try:
            deadline = time.monotonic() + self.timeout_s
            with self.open(req, timeout=self.timeout_s) as resp:
                body = _read_bounded(resp, self.max_bytes, what, deadline)
        except urllib.error.HTTPError as exc:      # 400 bad PromQL, 422 execution error, 503 overloaded
            try:
                body = _read_bounded(exc, 64 * 1024, what)
            except (PromError, OSError):
                body = b""
            finally:
                exc.close()
            try:
                parse_response(body, what)
            except PromError as inner:
                raise PromError(f"{inner} (HTTP {exc.code})") from None
            raise PromError(f"{what}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:   # refused, timeout, reset, bad URL
            reason = getattr(exc, "reason", exc)
            raise PromError(f"{what}: cannot reach {self.endpoint}: {reason}") from None
        samples, bad = parse_response(body, what)
        self.non_finite += bad
        return samples
