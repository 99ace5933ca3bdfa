"""The carbon ledger: append-only, hash-chained, Ed25519-signed records, one per line.

Line format (UTF-8, one record per line, in the spirit of OCMF's `OCMF|{payload}|{signature}`):

    {payload JSON, keys sorted, no spaces}|{base64 Ed25519 signature over the payload bytes}\\n

Every payload carries `v` (format 1), `n` (a counter: 0 for the genesis record, +1 per record, so a
removed or inserted record shows), `prev` (hex SHA-256 of the previous record's line without its
newline; 64 zeros for genesis), `kind` (genesis | interval | recovery), `gw` (gateway id) and `clock`
(synchronised | unsynchronised | unknown | simulated). The genesis record holds the public key
(base64 raw 32 bytes) and its fingerprint, the site, the factors and their sources.

Crash tolerance: a record is one write() on an O_APPEND descriptor followed by fsync. A SIGKILL or
power loss mid-write leaves a torn tail. On the next open the writer finds the last record that
parses and verifies; the bytes after it (the torn fragment) are kept, terminated with a newline, and
the next record is a `recovery` record naming the fragment's offset, length and SHA-256, chained to
the last good record with the next counter: nothing is deleted and the chain continues. `verify`
accepts a fragment only when the record right after it is that recovery record; a torn fragment at
the very end of the file (crash, not yet reopened) is reported, not counted as a failure.

What a hash chain cannot show: records cut from the end together (truncation). The uplink sends each
record as it closes, so the cloud copy is the anchor for the tail.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controller.diskio import fsync_dir, write_all as _write_all
from controller.carbon.keys import fingerprint, public_b64, public_from_b64
from drivers.isotime import utc_epoch

FORMAT = 1
GENESIS_PREV = "0" * 64


def canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


class LineError(Exception):
    pass


def parse_line(line: bytes) -> tuple[dict, bytes, bytes]:
    """-> (payload, payload bytes, signature). Raises LineError when it is not a complete record."""
    head, sep, sig_b64 = line.rpartition(b"|")
    if not sep:
        raise LineError("no '|' separating payload and signature")
    try:
        payload = json.loads(head)
        sig = base64.b64decode(sig_b64, validate=True)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:   # RecursionError: a crafted deep nesting
        raise LineError(f"not a complete record ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or len(sig) != 64:
        raise LineError("not a complete record (payload or signature malformed)")
    if base64.b64encode(sig) != sig_b64:       # the last base64 digit has unused bits: one changed byte
        raise LineError("signature is not canonical base64")   # there could still decode to the same 64 bytes
    return payload, head, sig


def _lines(data: bytes):
    """(offset, line bytes without newline, has newline) for every line of the file."""
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            yield pos, data[pos:], False
            return
        yield pos, data[pos:nl], True
        pos = nl + 1


class LedgerWriter:
    """Appends signed records. Opening an existing ledger recovers a torn tail (see module doc).

    A write that fails (ENOSPC, EIO, a failing fsync) raises OSError to the caller and leaves the writer
    `broken`: the bytes that did reach the file are a torn fragment like a crash's. The next `append`
    first reopens (re-scans the file, writes the `recovery` record for the fragment), so a full disk that
    frees up later continues the one chain; nothing written before is touched.
    """

    # False only for a simulated gateway's throwaway ledger (tools/sim/carbon.py): a year run appends 35 000
    # records and their fsyncs cost minutes on a busy disk; a gateway's ledger is always fsync'd
    durable = True

    def __init__(self, path: str | Path, key: Ed25519PrivateKey, genesis: dict, clock_status=lambda: "unknown"):
        self.path = Path(path)
        self.key = key
        self.pub = key.public_key()
        self.clock_status = clock_status
        self.genesis = genesis
        self.gw = genesis.get("gateway_id", "")
        self.recovered: dict | None = None
        self.last_line: bytes = b""            # the signed line of the last record written (for the uplink)
        self.fd = -1
        self.broken: OSError | None = None
        try:                                   # a full or failing disk at start: broken, retried by append
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            self._break(exc)

    def _open(self) -> None:
        self.n = -1
        self.prev = GENESIS_PREV
        self.last: dict | None = None          # last payload written or found
        self.last_interval: dict | None = None
        size, good_end, frag = self._scan_tail()
        if size and self.n < 0:                 # nothing usable (torn genesis): keep it aside, start over
            self.path.rename(self.path.with_name(self.path.name + f".torn-{int(time.time())}"))
            size, good_end, frag = 0, 0, b""
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.broken = None
        try:
            if not size:
                fsync_dir(self.path.parent)
                self.append("genesis", {**self.genesis, "pubkey": public_b64(self.pub),
                                        "key_fingerprint": fingerprint(self.pub), "format": FORMAT})
            elif frag:
                if frag.endswith(b"\n"):
                    body = frag[:-1]
                else:
                    body = frag
                    _write_all(self.fd, b"\n")
                self.recovered = {"torn_offset": good_end, "torn_len": len(body),
                                  "torn_sha256": hashlib.sha256(body).hexdigest(),
                                  "after_n": self.n, "last_t_end": (self.last_interval or {}).get("t_end")}
                self.append("recovery", dict(self.recovered))
        except OSError as exc:
            self._break(exc)
            raise

    TAIL_BYTES = 1 << 20

    def _scan_tail(self) -> tuple[int, int, bytes]:
        """Find the last record that parses and verifies with our key, reading from the end of the file
        (a year of intervals is ~100 MB: re-verifying all of it at every start would take minutes on a
        gateway; `ledger verify` is the full check). Sets n / prev / last / last_interval.
        Returns (file size, byte offset after that record, the bytes after it: a torn fragment)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return 0, 0, b""
        with f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - self.TAIL_BYTES)
            while True:
                f.seek(start)
                data = f.read(size - start)
                lines = list(_lines(data))
                if start > 0:
                    lines = lines[1:]           # it may begin mid-line
                found, last_iv = None, None
                for off, line, has_nl in reversed(lines):
                    if not has_nl:
                        continue                # the torn tail itself
                    try:
                        payload, head, sig = parse_line(line)
                        self.pub.verify(sig, head)
                    except (LineError, InvalidSignature):
                        continue                # a documented old tear, or the torn tail
                    if found is None:
                        found = (start + off + len(line) + 1, line, payload)
                    if payload.get("kind") == "interval":
                        last_iv = payload
                        break
                if (found is not None and last_iv is not None) or start == 0:
                    break
                start = max(0, start - 8 * self.TAIL_BYTES)
            if found is None:
                return size, 0, b""
            good_end, line, payload = found
            self.n, self.prev, self.last = payload["n"], line_hash(line), payload
            self.last_interval = last_iv
            f.seek(good_end)
            return size, good_end, f.read()

    def _break(self, exc: OSError) -> None:
        self.broken = exc
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def reopen(self) -> None:
        """After a failed write: re-scan and recover the fragment it left. Raises OSError if that fails."""
        self._break(self.broken or OSError("reopen"))
        self._open()

    def append(self, kind: str, body: dict) -> dict:
        if self.broken is not None or self.fd < 0:
            self.reopen()
        payload = {**body, "v": FORMAT, "n": self.n + 1, "prev": self.prev, "kind": kind, "gw": self.gw,
                   "clock": self.clock_status()}
        head = canonical(payload)
        line = head + b"|" + base64.b64encode(self.key.sign(head))
        try:
            _write_all(self.fd, line + b"\n")
            if self.durable:
                os.fsync(self.fd)
        except OSError as exc:
            self._break(exc)
            raise
        self.last_line = line
        self.n, self.prev, self.last = payload["n"], line_hash(line), payload
        if kind == "interval":
            self.last_interval = payload
        return payload

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class VerifyResult:
    ok: bool
    records: int = 0
    message: str = ""
    bad_n: int | None = None           # counter of the first bad record (when it has one)
    bad_line: int | None = None        # 1-based line of the first bad record
    torn_tail: str = ""
    recoveries: int = 0
    intervals: int = 0
    missing_intervals: int = 0         # 15-minute slots between the first and last interval with no record
    key_source: str = ""
    payloads: list = field(default_factory=list)


def verify(path: str | Path | bytes, pubkey: Ed25519PublicKey | None = None, keep: bool = False) -> VerifyResult:
    """Check every line, hash link, counter and signature of a ledger file (or its bytes). `pubkey`: the key
    the auditor trusts; without it the genesis record's own key is used (integrity, not origin)."""
    data = bytes(path) if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    res = VerifyResult(ok=False, key_source="--pubkey" if pubkey is not None else "genesis record (not independent)")
    key = pubkey
    n_expect, prev = 0, GENESIS_PREV
    frag_start, frag_line = None, None
    last_iv: dict | None = None
    for lineno, (off, line, has_nl) in enumerate(_lines(data), start=1):
        where = f"line {lineno}"
        try:
            payload, head, sig = parse_line(line)
        except LineError as exc:
            if not has_nl:
                res.torn_tail = (f"torn tail at byte {off} ({len(line)} bytes, after record n={n_expect - 1}): "
                                 "an incomplete write (crash); not a record, not verified")
                break
            if frag_start is None:
                frag_start, frag_line = off, lineno
            res.torn_tail = f"{where}: {exc}"
            continue
        n = payload.get("n")
        where = f"record n={n} ({where})"
        if frag_start is not None:
            body = data[frag_start:off - 1]
            if not (payload.get("kind") == "recovery" and payload.get("torn_offset") == frag_start
                    and payload.get("torn_sha256") == hashlib.sha256(body).hexdigest()):
                return _fail(res, n_expect, frag_line,
                             f"line {frag_line} (where record n={n_expect} belongs): not a complete record, "
                             "and no recovery record accounts for it")
            frag_start = None
            res.torn_tail = ""
        if n_expect == 0:
            if payload.get("kind") != "genesis" or "pubkey" not in payload:
                return _fail(res, n, lineno, f"{where}: the first record is not a genesis record")
            try:
                own = public_from_b64(payload["pubkey"])
            except Exception:  # noqa: BLE001 - any decoding problem is a bad record
                return _fail(res, n, lineno, f"{where}: genesis public key unreadable")
            if key is None:
                key = own
            elif payload["pubkey"] != public_b64(key):
                return _fail(res, n, lineno, f"{where}: genesis names key {payload.get('key_fingerprint')}, "
                                             f"not the trusted key {fingerprint(key)}")
        if n != n_expect:
            why = ("records removed or reordered" if isinstance(n, int) and n > n_expect
                   else "a record inserted or reordered")
            return _fail(res, n, lineno, f"{where}: counter is {n}, expected {n_expect} ({why})")
        if payload.get("prev") != prev:
            return _fail(res, n, lineno, f"{where}: hash link broken (prev does not match the SHA-256 of "
                                         f"record n={n_expect - 1})")
        try:
            key.verify(sig, head)
        except InvalidSignature:
            return _fail(res, n, lineno, f"{where}: signature does not verify with key {fingerprint(key)} "
                                         "(content changed or signed by another key)")
        if payload.get("kind") == "recovery":
            res.recoveries += 1
        elif payload.get("kind") == "interval":
            bad = interval_type_problem(payload) or _check_interval(payload, last_iv, res)
            if bad:
                return _fail(res, n, lineno, f"{where}: {bad}")
            if bad is not None:
                last_iv = payload
        if keep:
            res.payloads.append(payload)
        prev = line_hash(line)
        n_expect += 1
        res.records += 1
    if frag_start is not None:
        return _fail(res, n_expect, frag_line, f"{res.torn_tail}; and no recovery record follows it")
    if res.records == 0:
        return _fail(res, None, 1, "no records")
    res.ok = True
    res.message = (f"{res.records} records verified (hashes, links, counter 0..{res.records - 1}, signatures; "
                   f"key from {res.key_source}); {res.recoveries} recovered tear(s); {res.intervals} "
                   f"interval(s), none written twice, {res.missing_intervals} 15-min slot(s) without a record "
                   f"(controller down)")
    return res


INTERVAL_S = 900.0


# The numeric fields of an interval record that `ledger report` sums: a signature proves who wrote a
# record, not that it is well-formed, so such a field present with the wrong type is a bad record.
# (Other fields may legitimately be null, e.g. energy_kwh.soc_delta without a measured SOC.)
_NUMERIC_FIELDS = tuple(tuple(f.split(".")) for f in (
    *(f"energy_kwh.sources.{k}" for k in ("pv", "pv_direct", "battery_discharge", "grid", "diesel")),
    *(f"energy_kwh.sinks.{k}" for k in ("it", "cooling", "aux", "battery_charge", "export", "curtailment")),
    "energy_kwh.e_dc", "energy_kwh.fuel", "energy_kwh.battery_loss_model", "energy_kwh.closure.residual_pct",
    *(f"co2_kg.{k}" for k in ("scope1_diesel", "scope2_location", "scope2_market", "loads_location", "loads_market")),
    *(f"cfe.{k}" for k in ("onsite_kwh", "contract_kwh", "grid_kwh", "load_kwh")),
    "renewable_kwh", "diesel_l", "estimated_s", "covered_s"))


# No interval of a cabinet comes near 1e9 kWh, kg or litres; a signed value beyond it is a writer's bug or
# a forgery, and summed by `ledger report` two of 1.7e308 printed Infinity (not JSON).
MAX_FIELD_ABS = 1e9


# A ratio, not a sum: an interval whose sources read ~1e-9 kWh (a stale meter) has a huge residual that our
# own writer signs; it is only compared (the report's maximum), never added.
_UNBOUNDED = {"energy_kwh.closure.residual_pct"}
# the per-job figures `ledger report` sums (controller/carbon/report.py)
JOB_FIELDS = ("it_kwh", "kwh", "kg_location", "kg_market", "renewable_kwh", "measured_s", "announced_s", "deferred_s")


def _bad_number(value, where: str) -> str | None:
    # an int is compared exactly: math.isfinite of a 400-digit JSON integer raises OverflowError
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        shown = repr(value) if isinstance(value, float) else type(value).__name__
        return f"{where}: expected a finite number, got {shown}"
    if isinstance(value, int) and where in _UNBOUNDED and abs(value) > 1e300:
        return f"{where}: expected a finite number, got a {len(str(abs(value)))}-digit integer"
    if where not in _UNBOUNDED and not -MAX_FIELD_ABS <= value <= MAX_FIELD_ABS:
        return f"{where}: expected a magnitude of at most {MAX_FIELD_ABS:g}, got {str(value)[:40]}"
    return None


def interval_type_problem(p: dict) -> str | None:
    """The first summed field of an interval record (and of its jobs) that is present but not a finite
    number, as 'energy_kwh.sources.grid: expected a finite number, got str'; None when all are."""
    for path in _NUMERIC_FIELDS:
        node, ok = p, True
        for i, key in enumerate(path):
            if not isinstance(node, dict):
                return f"{'.'.join(path[:i])}: expected an object, got {type(node).__name__}"
            if key not in node:
                ok = False
                break
            node = node[key]
        if ok:
            bad = _bad_number(node, ".".join(path))
            if bad:
                return bad
    jobs = p.get("jobs")
    if jobs is not None:
        if not isinstance(jobs, dict):
            return f"jobs: expected an object, got {type(jobs).__name__}"
        for job, d in jobs.items():
            if not isinstance(d, dict):
                return f"jobs.{job}: expected an object, got {type(d).__name__}"
            for k in JOB_FIELDS:
                bad = _bad_number(d[k], f"jobs.{job}.{k}") if k in d else None
                if bad:
                    return bad
    return None


def _check_interval(p: dict, last: dict | None, res: VerifyResult) -> str | None:
    """Each 15-minute interval at most once, in order, on the grid: what makes a restart visible and
    never double-counted (a restart inside an interval resumes it from its checkpoint, see
    controller/carbon/hook.py). Records without a parseable t_start (test ledgers, other tools) are not
    interval-checked: their signatures still are."""
    try:
        t = utc_epoch(p["t_start"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    res.intervals += 1
    if t % INTERVAL_S:
        return f"interval {p['t_start']} does not start on the 15-minute grid"
    cov = p.get("covered_s")
    if isinstance(cov, (int, float)) and cov > INTERVAL_S + 1e-3:
        return f"interval {p['t_start']} covers {cov} s, more than its 900 s (counted twice)"
    if last is not None:
        t_last = utc_epoch(last["t_start"])
        if t <= t_last:
            return (f"interval {p['t_start']} written again after record n={last['n']} ({last['t_start']}): "
                    "an interval counted twice or out of order")
        res.missing_intervals += int(round((t - t_last) / INTERVAL_S)) - 1
    return ""


def _fail(res: VerifyResult, n, lineno, message: str) -> VerifyResult:
    res.ok, res.bad_n, res.bad_line, res.message = False, n, lineno, message
    return res


def read_payloads(path: str | Path) -> list[dict]:
    """Every record that parses, in file order (no verification)."""
    out = []
    for _, line, has_nl in _lines(Path(path).read_bytes()):
        try:
            out.append(parse_line(line)[0])
        except LineError:
            continue
    return out
