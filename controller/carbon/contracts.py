"""The `[carbon]` sub-table of a site profile: market-based contracts, residual mix, CFE inputs.

The site schema (controller/config.py SITE_SCHEMA) does not carry this table yet; until it does, the
carbon code validates it here with the same declarative schema (controller/schema.py), so a profile
problem reads the same way. To adopt it, add one line to SITE_SCHEMA:

    "carbon": CARBON_SCHEMA,            # from controller.carbon.contracts import CARBON_SCHEMA

Format (every key optional; an absent table means: no contracts, residual mix = the location factor):

    [carbon]
    residual_mix_kg_per_kwh = 0.58     # market-based factor for grid kWh no contract covers
    residual_mix_source = "..."        # where that number comes from, and its year
    residual_mix_year = 2023
    grid_cfe_pct = 0.0                 # the grid's carbon-free share when none is pushed (24/7 CFE); 0 = none
    battery_initial_kg_per_kwh = 0.6361  # intensity of the energy already in the battery at first start
                                         # (unknown history: default the location grid factor, conservative)

    [[carbon.contracts]]
    name = "Ordos PV PPA 2026"
    kind = "ppa"                       # "ppa": a block of kW (or 24 kW values by UTC hour) delivered
                                       #        with the grid supply; "certificate": a volume of kWh
                                       #        (GEC / I-REC / GO) consumed as grid energy arrives
    factor_kg_per_kwh = 0.0            # the instrument's own emission factor
    kw = 20.0                          # ppa: constant block
    profile_kw = [..24 values..]       # ppa: per UTC hour instead of kw
    volume_kwh = 100000.0              # certificate: total volume
    carbon_free = true                 # counts as carbon-free energy in the hourly CFE score ...
    hourly_matched = true              # ... only when matched hourly (ppa default true, certificate false)
    renewable = true                   # counts in REF / renewable share
    valid_from = "2026-01-01T00:00:00Z"
    valid_to = "2027-01-01T00:00:00Z"
    source = "contract no. / registry id"

Market-based Scope 2 (GHG Protocol Scope 2 guidance): per 15-minute interval the grid import is
covered by the contracts in profile order (a PPA block covers at most kw x 0.25 h of the interval's
import; a certificate covers import until its volume is spent), covered kWh carry the contract
factor, the rest the residual mix. The PPA block is matched per 15 minutes: stricter than hourly.
"""
from __future__ import annotations

from controller.schema import ArrayOf, Field as F, ProfileError, Table, Validator
from drivers.isotime import utc_epoch

CONTRACT_SCHEMA = Table({
    "name": F("string", required=True),
    "kind": F("string", required=True, choices=("ppa", "certificate")),
    "factor_kg_per_kwh": F("number", default=0.0, min=0, max=2),
    "kw": F("number", default=0.0, min=0),
    "profile_kw": F("numbers", default=None, min=0, length=(24,)),
    "volume_kwh": F("number", default=0.0, min=0),
    "carbon_free": F("boolean", default=True),
    "hourly_matched": F("boolean", default=None),
    "renewable": F("boolean", default=True),
    "valid_from": F("string", default=""),
    "valid_to": F("string", default=""),
    "source": F("string", default=""),
})

CARBON_SCHEMA = Table({
    "residual_mix_kg_per_kwh": F("number", default=None, min=0, max=2),
    "residual_mix_source": F("string", default=""),
    "residual_mix_year": F("integer", default=0, min=0, max=2100),
    "grid_cfe_pct": F("number", default=0.0, min=0, max=100),
    "battery_initial_kg_per_kwh": F("number", default=None, min=0, max=2),
    "contracts": ArrayOf(CONTRACT_SCHEMA),
})


def _epoch(text: str, key: str, v: Validator) -> float | None:
    if not text:
        return None
    try:
        return utc_epoch(text)
    except ValueError:
        v.problem(key, f"expected an ISO 8601 UTC time like 2026-01-01T00:00:00Z, got {text!r}")
        return None


def _given(x):
    """The table without its None entries, at every depth (a default-filled table walks like the original)."""
    if isinstance(x, dict):
        return {k: _given(val) for k, val in x.items() if val is not None}
    if isinstance(x, list):
        return [_given(val) for val in x]
    return x


def validate_carbon(table: dict | None, grid_kg_per_kwh: float, file: str = "(site profile)") -> dict:
    """Validate and complete a `[carbon]` table (None -> defaults). Raises ProfileError."""
    v = Validator(file, "")
    # None is the schema's "not given" (after the site schema filled defaults): walk what was given
    data = v.walk(CARBON_SCHEMA, _given(table or {}), "carbon")
    if v.problems:
        raise ProfileError(v.problems)
    if data["residual_mix_kg_per_kwh"] is None:
        data["residual_mix_kg_per_kwh"] = grid_kg_per_kwh
        data["residual_mix_source"] = data["residual_mix_source"] or \
            "no residual mix published for the site: location factor used (GHG Protocol Scope 2 fallback)"
    if data["battery_initial_kg_per_kwh"] is None:
        data["battery_initial_kg_per_kwh"] = grid_kg_per_kwh
    names = set()
    for i, c in enumerate(data["contracts"]):
        key = f"carbon.contracts[{i}]"
        if c["name"] in names:
            v.problem(f"{key}.name", f"duplicate contract name {c['name']!r}")
        names.add(c["name"])
        if c["hourly_matched"] is None:
            c["hourly_matched"] = c["kind"] == "ppa"
        if c["kind"] == "ppa" and c["kw"] <= 0 and not c["profile_kw"]:
            v.problem(f"{key}.kw", "a ppa needs kw > 0 or profile_kw (24 values by UTC hour)")
        if c["kind"] == "certificate" and c["volume_kwh"] <= 0:
            v.problem(f"{key}.volume_kwh", "a certificate needs volume_kwh > 0")
        c["from_s"] = _epoch(c["valid_from"], f"{key}.valid_from", v)
        c["to_s"] = _epoch(c["valid_to"], f"{key}.valid_to", v)
    if v.problems:
        raise ProfileError(v.problems)
    return data


def contract_active(c: dict, t_s: float) -> bool:
    return (c["from_s"] is None or t_s >= c["from_s"]) and (c["to_s"] is None or t_s < c["to_s"])


def ppa_block_kwh(c: dict, t_start_s: float, hours: float) -> float:
    """The PPA's delivered volume over an interval starting at t_start_s (UTC), kWh."""
    if c["profile_kw"]:
        kw = c["profile_kw"][int(t_start_s // 3600) % 24]
    else:
        kw = c["kw"]
    return kw * hours


def settle_market(contracts: list[dict], remaining: dict[str, float], grid_kwh: float, t_start_s: float,
                  hours: float, residual_kg_per_kwh: float) -> dict:
    """Cover one interval's grid import with the contracts. Mutates `remaining` (certificate volumes).

    Returns covered kWh by contract, residual kWh, market kg, the kWh that count as carbon-free for
    24/7 CFE (hourly-matched carbon-free volume, counted in full: the CFE score caps it per hour), and
    the renewable-covered kWh (for REF).
    """
    left = grid_kwh
    covered: dict[str, float] = {}
    kg = 0.0
    renewable = 0.0
    cfe_volume = 0.0
    for c in contracts:
        if not contract_active(c, t_start_s):
            continue
        if c["kind"] == "ppa":
            volume = ppa_block_kwh(c, t_start_s, hours)
            take = min(left, volume)
            if c["carbon_free"] and c["hourly_matched"]:
                cfe_volume += volume
        else:
            take = min(left, remaining.get(c["name"], 0.0))
            remaining[c["name"]] = remaining.get(c["name"], 0.0) - take
            if c["carbon_free"] and c["hourly_matched"]:
                cfe_volume += take
        if take > 0.0:
            covered[c["name"]] = take
            kg += take * c["factor_kg_per_kwh"]
            if c["renewable"]:
                renewable += take
            left -= take
    kg += left * residual_kg_per_kwh
    return {"covered_kwh": covered, "residual_kwh": left, "kg": kg, "cfe_volume_kwh": cfe_volume,
            "renewable_kwh": renewable}
