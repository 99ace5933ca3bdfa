"""The scan cycle's side of the DCIM server: one cycle's published values -> one register block.

The mapping is compiled once from the register map (regmap.py): one `struct.Struct` for the whole block
(big-endian, every entry's type at its address, each gap one field of 0xFFFF words) and, per entry, where its value
comes from (an image slot, a command slot, a params slot, a constant, or one of the derived values below)
with its scale and raw range. A cycle converts the image to lists once, computes the ~20 derived values,
walks the entries and packs the block in one call: no numpy per entry, no allocation beyond the lists
and the block itself (measured: `Dcim.stats()` hook_p50/p99_us, docs/dcim.md). The block is an immutable
`bytes`; the server thread only ever takes the latest reference (`Publisher.latest`, one tuple
assignment), so it never sees half a cycle and never blocks the loop. (A numpy version, gathers and casts
per type group, took 129 us a build against 36 us for this one on the test machine: a dozen small numpy
calls cost more than 64 scalar steps and one pack.)

Derived values (`derived:NAME` in the map):
  heartbeat            the image's scan counter (cycle since start), mod 2^32
  t_s                  the image's UTC epoch seconds
  age                  filled by the server per request: seconds since this block was published
  status               bits: data fresh, writes enabled, kernel alarm active / unacked, host alarm active
  not_available_count  entries of this block that read not available
  host_alarms          active host alarms (controller/runtime/health.py HostAlarms)
  load_kw              the step's load estimate this cycle (state S_LOAD_KW); not available when neither
                       the meter balance nor the compute telemetry is fresh (the estimate is then held)
  reserve              the reserve SOC in force: the operator input when set (clamped to the SOC window,
                       as the step does), else the profile's
  headroom_*           the latest green headroom (compute hook, every 60 s): now / 1 h / 4 h IT kW, short_kw,
                       state (0 green, 1 neutral, 2 short), age; not available once older than its
                       validity (2 x the compute period, the retained message's valid_until)
  interval_*           the 15-min interval in progress of the controller's EnergyAccount (the ledger's
                       integration): CO2e g/kWh of grid + PV + diesel supplied so far, PV share, start,
                       seconds covered; not available before anything was integrated / supplied
  grid_intensity       the grid factor the ledger applies now (pushed intensity when fresh, else the profile's)
  grid_intensity_source  1 pushed, 0 profile
  grid_cfe             the grid's carbon-free share (%) the ledger applies now (pushed `cfe_pct` when fresh, else
                       the profile's [carbon] grid_cfe_pct)
  grid_cfe_source      1 pushed, 0 profile
"""
from __future__ import annotations

import json
import math
import struct
import time
from collections import deque

from controller.core import layout as L
from controller.dcim.regmap import RAW_RANGE, MapError, RegisterMap, const_value, encode
from controller.points import INDEX, Q_OK

DERIVED = ("heartbeat", "t_s", "age", "status", "not_available_count", "host_alarms", "load_kw", "reserve",
           "headroom_now_kw", "headroom_1h_kw", "headroom_4h_kw", "short_kw", "headroom_state", "headroom_age",
           "interval_intensity", "interval_renewable_share", "interval_start_s", "interval_covered",
           "grid_intensity", "grid_intensity_source", "grid_cfe", "grid_cfe_source")
KEEP_WHEN_STALE = ("const", "param", "derived:heartbeat", "derived:t_s")   # true whatever the loop does
HEADROOM_VALID_PERIODS = 2.0        # drivers/compute.encode_headroom: valid_until = t + 2 x period
GAP_WORD = 0xFFFF                   # an address between entries (OpenEMS: a reserved uint16 reads undefined)

ST_FRESH, ST_WRITES, ST_ALARM, ST_UNACKED, ST_HOST = (1 << i for i in range(5))

_GRID, _PV, _BAT, _IT, _COOL, _OPRES = (INDEX[n] for n in (
    "grid_kw", "pv_kw", "battery_kw", "it_kw", "cooling_kw", "op_reserve_pct"))


def _slot(module_prefix: str, name: str, names: list[str], where: str) -> int:
    if name not in names:
        raise MapError(f"{where}: unknown {module_prefix} {name!r}")
    return getattr(L, f"{module_prefix}_{name.upper()}")


class Headroom:
    """The latest green headroom, handed over by the compute hook's publish (`tee`): (t_s, figures)."""

    def __init__(self, period_s: float = 60.0):
        self.period_s = period_s
        self.latest: tuple[float, dict] | None = None
        self.bad = 0

    def tee(self, publish):
        """Wrap ComputeHook's `publish(kind, payload, retain)`: a compute/headroom payload is also kept here
        (decoded once a minute), and the wrapped publish runs as before."""
        from drivers.compute import HEADROOM
        from drivers.isotime import utc_epoch

        def both(kind, payload, retain=False):
            if kind == HEADROOM:
                try:
                    h = json.loads(payload)
                    self.latest = (utc_epoch(h["t"]), h)
                except Exception:          # noqa: BLE001 - a payload we cannot read costs the headroom, not the cycle
                    self.bad += 1
            return publish(kind, payload, retain) if publish is not None else True
        return both


_FMT = {"uint16": "H", "int16": "h", "uint32": "I", "float32": "f"}
_NA_RAW = {"uint16": 0xFFFF, "int16": -0x8000, "uint32": 0xFFFFFFFF, "float32": math.nan}
PT, CMD, PAR, CONST, DER = range(5)
_INF = math.inf


class BlockBuilder:
    def __init__(self, rmap: RegisterMap, *, writes_enabled: bool, account, alarms=None,
                 headroom: Headroom | None = None):
        regs = rmap.registers
        self.rmap, self.size, self.n = rmap, rmap.size, len(regs)
        self.writes_enabled = writes_enabled
        self.account, self.alarms = account, alarms
        self.headroom = headroom or Headroom()
        fmt, vals, plan = [">"], [], []
        self.derived: dict[str, int] = {}        # derived name -> field index in the struct
        self.word_of: dict[str, int] = {}        # derived name -> its register address
        self.params_src: list[int] = []
        self.const_fields: list[tuple[int, float]] = []
        keep_ranges = []
        addr = 0
        for r in regs:                           # sorted by address, no overlaps (load_map)
            if addr < r.address:                 # a gap: one bytes field of 0xFFFF words
                fmt.append(f"{2 * (r.address - addr)}s")
                vals.append(GAP_WORD.to_bytes(2, "big") * (r.address - addr))
                addr = r.address
            where = f"register {r.name} (address {r.address})"
            field_i = len(vals)
            kind, ref = r.kind, r.ref
            if kind == "point":
                if ref not in INDEX:
                    raise MapError(f"{where}: unknown point {ref!r} (controller/points.py)")
                src, code = INDEX[ref], PT
            elif kind == "cmd":
                src, code = _slot("C", ref, L.COMMAND_NAMES, where), CMD
            elif kind == "param":
                self.params_src.append(_slot("P", ref, L.PARAM_NAMES, where))
                src, code = len(self.params_src) - 1, PAR
            elif kind == "const":
                src, code = const_value(r), CONST
                self.const_fields.append((field_i, const_value(r)))
            else:
                if ref not in DERIVED:
                    raise MapError(f"{where}: unknown derived value {ref!r} (controller/dcim/block.py DERIVED)")
                src, code = ref, DER
                self.derived[ref] = field_i
                self.word_of[ref] = r.address
            lo, hi = RAW_RANGE.get(r.type, (-_INF, _INF))
            kept = kind in KEEP_WHEN_STALE or r.source in KEEP_WHEN_STALE
            special = code == DER and ref in ("status", "not_available_count", "age")   # the server's own
            plan.append((field_i, code, src, r.scale, lo, hi, _NA_RAW[r.type], r.type == "float32",
                         not kept and not special))           # reads not available once the block is stale
            if kept:
                keep_ranges.append((2 * r.address, 2 * (r.address + r.words)))
            fmt.append(_FMT[r.type])
            vals.append(_NA_RAW[r.type])
            addr = r.address + r.words
        self.struct = struct.Struct("".join(fmt))
        assert self.struct.size == 2 * self.size
        self.plan = tuple(plan)
        self.vals = vals
        self.buf = bytearray(self.struct.size)
        self.keep_ranges = tuple(keep_ranges)
        self.n_keep = len(keep_ranges)
        self.struct.pack_into(self.buf, 0, *vals)
        self.na = bytes(self.buf)                # every entry not available, gaps 0xFFFF: the stale template
        self.der: dict[str, float | None] = dict.fromkeys(DERIVED)
        self._params: tuple[int, list[float]] = (-1, [])
        self.build_s: deque = deque(maxlen=4096)
        self.builds = 0

    # -- derived values --------------------------------------------------------------------------------
    def _derive(self, loop, image, cmd, v, q) -> None:
        d, der = self.derived, self.der
        t = float(image["t_s"])
        params = loop.params
        der["heartbeat"] = float(int(image["cycle"]) & 0xFFFFFFFF)
        der["t_s"] = math.floor(t)
        der["age"] = 0.0                         # per request, by the server
        der["not_available_count"] = 0.0         # after the walk
        der["host_alarms"] = float(len(self.alarms.active)) if self.alarms is not None else 0.0
        st = ST_FRESH | (ST_WRITES if self.writes_enabled else 0)
        st |= ST_ALARM if cmd[L.C_ALARMS_ACTIVE] else 0
        st |= ST_UNACKED if cmd[L.C_ALARMS_UNACKED] else 0
        st |= ST_HOST if self.alarms is not None and self.alarms.active else 0
        der["status"] = float(st)
        if "load_kw" in d:
            fresh = (q[_GRID] == Q_OK and q[_PV] == Q_OK and q[_BAT] == Q_OK) or (q[_IT] == Q_OK and q[_COOL] == Q_OK)
            der["load_kw"] = float(loop.state[L.S_LOAD_KW]) if fresh else None
        if "reserve" in d:
            op = v[_OPRES]
            if q[_OPRES] == Q_OK and op > 0.0:
                der["reserve"] = min(max(op, float(params[L.P_SOC_MIN_PCT])), float(params[L.P_SOC_MAX_PCT]))
            else:
                der["reserve"] = float(params[L.P_RESERVE_PCT])
        self._derive_headroom(t)
        self._derive_interval(image, v, q, loop)

    def _derive_headroom(self, t: float) -> None:
        der = self.der
        h = self.headroom.latest
        if h is None or t - h[0] > HEADROOM_VALID_PERIODS * self.headroom.period_s:
            for name in ("headroom_now_kw", "headroom_1h_kw", "headroom_4h_kw", "short_kw", "headroom_state",
                         "headroom_age"):
                der[name] = None
            return
        t_h, fig = h
        wins = fig.get("windows_kw") or {}
        now_kw, short = _num(fig.get("now_kw")), _num(fig.get("short_kw"))
        der["headroom_now_kw"], der["short_kw"] = now_kw, short
        der["headroom_1h_kw"], der["headroom_4h_kw"] = _num(wins.get("1h")), _num(wins.get("4h"))
        der["headroom_age"] = max(0.0, t - t_h)
        der["headroom_state"] = (None if now_kw is None or short is None
                                 else 2.0 if short > 0.0 else 0.0 if now_kw > 0.0 else 1.0)

    def _derive_interval(self, image, v, q, loop) -> None:
        der = self.der
        acc = self.account
        if acc is None:
            for name in ("interval_intensity", "interval_renewable_share", "interval_start_s", "interval_covered",
                         "grid_intensity", "grid_intensity_source", "grid_cfe", "grid_cfe_source"):
                der[name] = None
            return
        acc.update(image, loop.period_s)           # idempotent per image: the ledger's call already counted it
        k = acc.k
        f, pushed = k.grid_factor(v, q)                # what the ledger counts this cycle's import at
        der["grid_intensity"], der["grid_intensity_source"] = 1000.0 * f, 1.0 if pushed else 0.0
        c, pushed = k.grid_cfe(v, q)
        der["grid_cfe"], der["grid_cfe_source"] = 100.0 * c, 1.0 if pushed else 0.0
        iv = acc.iv
        if iv is None or iv.covered_s <= 0.0:
            der["interval_start_s"] = der["interval_covered"] = None
            der["interval_intensity"] = der["interval_renewable_share"] = None
            return
        e = iv.e
        der["interval_start_s"], der["interval_covered"] = iv.t_start, iv.covered_s
        supplied = e["grid_import"] + e["pv"] + e["diesel"]
        if supplied > 1e-9:
            der["interval_intensity"] = 1000.0 * (iv.grid_kg_total + iv.diesel_l * k.diesel_kg_per_l) / supplied
            der["interval_renewable_share"] = 100.0 * e["pv"] / supplied
        else:
            der["interval_intensity"] = der["interval_renewable_share"] = None

    # -- one cycle ------------------------------------------------------------------------------------
    def build(self, loop, image, cmd) -> tuple[bytes, int]:
        """The block for this cycle (big-endian words) and how many of its entries read not available once
        it is stale."""
        t0 = time.perf_counter()
        value, quality = image["value"], image["quality"]
        vl, ql, cl = value.tolist(), quality.tolist(), cmd.tolist()
        pid, pl = self._params
        if pid != id(loop.params):               # the params are fixed for a run: read once
            pl = [float(loop.params[i]) for i in self.params_src]
            self._params = (id(loop.params), pl)
        self._derive(loop, image, cl, vl, ql)
        der, vals = self.der, self.vals
        na_now = na_stale = 0
        for field_i, code, src, scale, lo, hi, na, is_float, na_when_stale in self.plan:
            if code == PT:
                x = vl[src]
                good = ql[src] == Q_OK
            elif code == CMD:
                x, good = cl[src], True
            elif code == PAR:
                x, good = pl[src], True
            elif code == CONST:
                x, good = src, True
            else:
                x = der[src]
                good = x is not None
            if good and -_INF < x < _INF:
                if is_float:
                    vals[field_i] = x
                else:
                    raw = round(x * scale)
                    vals[field_i] = lo if raw < lo else hi if raw > hi else raw
                na_stale += na_when_stale
            else:
                vals[field_i] = na
                na_now += 1
                na_stale += 1
        if "not_available_count" in self.derived:
            vals[self.derived["not_available_count"]] = min(na_now, 0xFFFE)
        self.struct.pack_into(self.buf, 0, *vals)
        block = bytes(self.buf)
        self.builds += 1
        self.build_s.append(time.perf_counter() - t0)
        return block, na_stale

    def stale_view(self, block: bytes, stale_na: int) -> bytes:
        """What a block reads once it is older than max_age_s: constants, profile limits, heartbeat and
        timestamp kept (the DCIM sees when the loop stopped), everything else not available, status only
        'writes enabled'."""
        out = bytearray(self.na)
        for a, b in self.keep_ranges:
            out[a:b] = block[a:b]
        self._patch(out, "status", ST_WRITES if self.writes_enabled else 0)
        self._patch(out, "not_available_count", min(stale_na, 0xFFFE))
        return bytes(out)

    def empty(self) -> bytes:
        """Before the first cycle: nothing is known yet (constants only)."""
        out = bytearray(self.na)
        for r in self.rmap.registers:
            if r.kind == "const":
                struct.pack_into(f">{r.words}H", out, 2 * r.address, *encode(r, const_value(r)))
        self._patch(out, "status", ST_WRITES if self.writes_enabled else 0)
        n_na = self.n - sum(1 for r in self.rmap.registers if r.kind == "const") - \
            sum(1 for name in ("status", "not_available_count") if name in self.word_of)
        self._patch(out, "not_available_count", n_na)
        return bytes(out)

    def _patch(self, buf: bytearray, name: str, word: int) -> None:
        a = self.word_of.get(name)
        if a is not None:
            struct.pack_into(">H", buf, 2 * a, word)


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
