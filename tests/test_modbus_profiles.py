"""Every device profile, read by our minimalmodbus driver from a pymodbus RTU server over a pty pair.

Real bytes and CRCs: the server holds register images built from engineering values, the driver
decodes them back; both directions must agree for every profile, including SunSpec discovery, scale
factors and not-implemented markers, DTSU666 CT/PT ratios and the Deep Sea control key writes.
"""
import math

import pytest

from drivers.base import CANONICAL_POINTS, QUALITY_OK
from drivers.modbus import ModbusBus, ModbusDevice, ProfileError, load_profile
from drivers.modbus.decode import decode_raw, encode_raw, is_not_implemented
from drivers.modbus.plan import coalesce, plan
from drivers.modbus.profile import PROFILE_DIR, PointSpec, parse_profile
from tools.sim.modbus_server import SimBus

VALUES = {
    "eastron_sdm630": (1, {"power_kw": -12.5, "voltage_l1_v": 231.0, "voltage_l2_v": 229.0, "voltage_l3_v": 230.0,
                           "current_l1_a": 10.0, "current_l2_a": 11.0, "current_l3_a": 12.5, "pf": 0.97,
                           "frequency_hz": 50.01, "import_kwh": 123456.5, "export_kwh": 42.25,
                           "power_l1_kw": -4.0, "power_l2_kw": -4.5, "power_l3_kw": -4.0}),
    "eastron_sdm120": (2, {"power_kw": 3.2, "voltage_v": 228.5, "current_a": 14.0, "pf": 0.99,
                           "frequency_hz": 49.98, "import_kwh": 10.5, "export_kwh": 9876.0}),
    "chint_dtsu666": (3, {"ct_ratio": 40, "pt_ratio": 1, "power_kw": 80.0, "voltage_a_v": 230.0,
                          "voltage_b_v": 231.0, "voltage_c_v": 232.0, "current_a_a": 100.0, "current_b_a": 120.0,
                          "current_c_a": 140.0, "pf": 0.95, "frequency_hz": 50.0, "import_kwh": 5000.0,
                          "export_kwh": 12.0}),
    "sunspec_storage_pcs": (4, {"power_kw": -45.6, "state": 4, "soc_pct": 63.0, "soh_pct": 97.0,
                                "energy_avail_kwh": 120.0, "ac_current_a": 66.0, "voltage_an_v": 230.1,
                                "frequency_hz": 50.02, "energy_kwh": 98765.0, "wchamax_kw": 100.0,
                                "storctl_mod": 0, "out_rate_pct": 0.0, "in_rate_pct": 0.0}),
    "deepsea_gencomm": (5, {"control_mode": 1, "alarm_bits": 1 << 11, "oil_pressure_kpa": 350,
                            "coolant_c": -8.0, "fuel_pct": 71.0, "battery_v": 26.4, "engine_rpm": 1500,
                            "frequency_hz": 50.1, "power_l1_kw": 20.0, "power_l2_kw": 21.0, "power_l3_kw": -1.5,
                            "run_hours_h": 1234.0, "energy_kwh": 45678.9, "starts": 321}),
    "generic_modbus_bms": (6, {"soc_pct": 55, "soh_pct": 96, "voltage_v": 51.2, "current_a": -85.3,
                               "temp_c": -3.5, "cvl_v": 56.8, "ccl_a": 100.0, "dcl_a": 150.0, "dvl_v": 46.0,
                               "cell_v_max": 3.345, "cell_v_min": 3.301, "cell_temp_max_c": 24.5,
                               "cell_temp_min_c": -2.0, "request_flags": 0b1100_0000, "alarm_bits": 0,
                               "warning_bits": 4}),
    "sunspec_pv_inverter": (7, {"power_kw": 87.5, "state": 5, "wmax_kw": 150.0, "wmaxlim_pct": 60.0,
                                "wmaxlim_ena": 1}),
    # a 240-cell pack: 787.6 V would not fit the generic template's u16 x 0.01 V
    "byd_battery_box_c130": (9, {"voltage_v": 787.6, "current_a": -120.5, "work_state": 2, "soc_pct": 64,
                                 "soh_pct": 97, "cell_v_max": 3.312, "cell_v_min": 3.268, "cell_temp_max_c": 31.5,
                                 "cell_temp_min_c": -4.0, "status_flags": 2, "warning_bits": 1, "alarm_bits": 0,
                                 "ccl_a": 150.0, "dcl_a": 200.0}),
}
EXPECTED_DERIVED = {
    "eastron_sdm630": {"voltage_v": 230.0, "current_a": 33.5},
    "chint_dtsu666": {"voltage_v": 231.0, "current_a": 360.0},
    "sunspec_storage_pcs": {"setpoint_kw": 0.0},
    "deepsea_gencomm": {"power_kw": 39.5, "running": 1.0, "available": 1.0},
    "generic_modbus_bms": {"charge_enable": 1.0, "discharge_enable": 1.0, "force_charge": 0.0},
    "sunspec_pv_inverter": {"limit_kw": 90.0},
    "byd_battery_box_c130": {"force_charge": 1.0},
}


@pytest.fixture(scope="module")
def sim():
    with SimBus() as s:
        for name, (unit, values) in VALUES.items():
            s.add_device(unit, name, values)
        s.start()
        yield s


@pytest.fixture(scope="module")
def bus(sim):
    b = ModbusBus(sim.client_path, baud=9600)
    yield b
    b.close()


def read_all(dev, cycles, t0=0.0):
    """Run enough cycles for the round-robin to visit every slow block; return the last readings."""
    out = {}
    for i in range(cycles):
        out = {}
        dev.acquire(t0 + i, lambda d, p, v, t, q: out.__setitem__(p, (v, q)))
    return out


def test_every_profile_file_loads():
    names = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
    assert names == sorted(VALUES)
    for name in names:
        prof = load_profile(name)
        assert prof.source  # every map says where its addresses came from


@pytest.mark.parametrize("profile_name", sorted(VALUES))
def test_profile_round_trip_over_pty(profile_name, sim, bus):
    unit, values = VALUES[profile_name]
    prof = load_profile(profile_name)
    dev = ModbusDevice(profile_name, prof, bus, unit, emit_extras=True, timeout_s=0.5)
    try:
        read_all(dev, 1)  # places SunSpec points
        _fast, slow = dev.blocks()
        out = read_all(dev, len(slow) + 1, t0=10.0)
        for name, value in values.items():
            assert name in out, f"{profile_name}: {name} missing"
            got, quality = out[name]
            assert quality == QUALITY_OK, f"{profile_name}: {name} quality {quality}"
            assert got == pytest.approx(value, rel=1e-4, abs=1e-3), f"{profile_name}: {name}"
        for name, value in EXPECTED_DERIVED.get(profile_name, {}).items():
            assert out[name][0] == pytest.approx(value, rel=1e-4, abs=1e-3), f"{profile_name}: {name}"
    finally:
        dev.close()


def test_device_emits_only_canonical_points_by_default(sim, bus):
    unit, _ = VALUES["eastron_sdm630"]
    dev = ModbusDevice("site_meter", load_profile("eastron_sdm630"), bus, unit)
    try:
        out = read_all(dev, 3)
        assert set(out) == set(CANONICAL_POINTS["meter"])
    finally:
        dev.close()


def test_values_follow_the_server(sim, bus):
    unit, _ = VALUES["eastron_sdm120"]
    dev = ModbusDevice("pv_meter", load_profile("eastron_sdm120"), bus, unit)
    try:
        sim.set_values(unit, {"power_kw": 7.75})
        assert read_all(dev, 1)["power_kw"] == (pytest.approx(7.75), QUALITY_OK)
        sim.set_values(unit, {"power_kw": 0.5})
        assert read_all(dev, 1, t0=1.0)["power_kw"][0] == pytest.approx(0.5)
    finally:
        sim.set_values(unit, {"power_kw": VALUES["eastron_sdm120"][1]["power_kw"]})
        dev.close()


def test_sunspec_not_implemented_points_are_left_out(sim, bus):
    unit, values = VALUES["sunspec_storage_pcs"]
    dev = ModbusDevice("pcs", load_profile("sunspec_storage_pcs"), bus, unit, emit_extras=True)
    try:
        sim.set_values(unit, {"soh_pct": None, "state": None})
        out = read_all(dev, 8)
        assert "soh_pct" not in out and "state" not in out
        assert out["soc_pct"][0] == pytest.approx(values["soc_pct"])
        assert 40000 in (dev.models.get(1, 0) - 2 - 2, dev.models.get(1, 0) - 4)
    finally:
        sim.set_values(unit, {"soh_pct": values["soh_pct"], "state": values["state"]})
        dev.close()


def test_sunspec_setpoint_written_as_storage_rates(sim, bus):
    unit, _ = VALUES["sunspec_storage_pcs"]
    dev = ModbusDevice("pcs", load_profile("sunspec_storage_pcs"), bus, unit, emit_extras=True)
    try:
        read_all(dev, 8)
        dev.actuate({"setpoint_kw": -30.0}, 100.0)
        model124 = dev.models[124]
        assert sim.registers(unit, 3, model124 + 3, 1) == [3]
        out = read_all(dev, 8, t0=101.0)
        assert out["setpoint_kw"][0] == pytest.approx(-30.0)
        assert out["out_rate_pct"][0] == pytest.approx(-30.0)
        assert out["in_rate_pct"][0] == pytest.approx(30.0)
    finally:
        dev.close()


def test_sunspec_pv_limit_written_as_wmaxlimpct_with_enable(sim, bus):
    unit, values = VALUES["sunspec_pv_inverter"]
    dev = ModbusDevice("pv", load_profile("sunspec_pv_inverter"), bus, unit)
    try:
        read_all(dev, 8)
        dev.actuate({"limit_kw": 45.0}, 100.0)                   # 30 % of WMax 150 kW
        out = read_all(dev, 8, t0=101.0)
        assert out["limit_kw"][0] == pytest.approx(45.0)
        start = dev.models[123]
        assert sim.registers(unit, 3, start + 7, 1) == [1]      # WMaxLim_Ena in the same write
        dev.actuate({"limit_kw": 500.0}, 200.0)                  # beyond WMax: 100 %, never more
        assert read_all(dev, 8, t0=201.0)["limit_kw"][0] == pytest.approx(150.0)
    finally:
        sim.set_values(unit, {"wmaxlim_pct": values["wmaxlim_pct"], "wmaxlim_ena": values["wmaxlim_ena"]})
        dev.close()


def test_deepsea_keys_with_ones_complement(sim, bus):
    unit, _ = VALUES["deepsea_gencomm"]
    dev = ModbusDevice("genset", load_profile("deepsea_gencomm"), bus, unit)
    try:
        before = len(sim.writes(unit))
        dev.actuate({"run": 1.0}, 1.0)
        dev.actuate({"run": 1.0}, 2.0)     # unchanged: keys are edge-triggered
        dev.actuate({"run": 0.0}, 3.0)
        writes = sim.writes(unit)[before:]
        assert writes == [(0x1008, [35702, 0xFFFF ^ 35702]), (0x1008, [35705, 0xFFFF ^ 35705]),
                          (0x1008, [35700, 0xFFFF ^ 35700])]
    finally:
        dev.close()


def test_dtsu666_ratio_scaling(sim, bus):
    unit, _ = VALUES["chint_dtsu666"]
    # raw register holds secondary-side Pt x0.1 W: 80 kW / 40 (CT) = 2 kW = 20000 x 0.1 W
    raw = decode_raw(sim.registers(unit, 3, 0x2012, 2), "float32")
    assert raw == pytest.approx(20000.0)


# --- pure units: decoding, planning, validation --------------------------------------------------------
@pytest.mark.parametrize("type_name,value", [("float32", -1.5), ("int16", -2), ("uint16", 65000),
                                             ("int32", -70000), ("uint32", 4_000_000_000)])
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_decode_inverts_encode(type_name, value, byte_order, word_order):
    regs = encode_raw(value, type_name, byte_order, word_order)
    assert decode_raw(regs, type_name, byte_order, word_order) == value


def test_word_and_byte_order_layouts():
    assert encode_raw(0x11223344, "uint32") == [0x1122, 0x3344]
    assert encode_raw(0x11223344, "uint32", word_order="little") == [0x3344, 0x1122]
    assert encode_raw(0x11223344, "uint32", byte_order="little") == [0x2211, 0x4433]


def test_sunspec_sentinels():
    assert is_not_implemented([0x8000], "int16")
    assert is_not_implemented([0xFFFF], "uint16")
    assert is_not_implemented([0, 0], "acc32")
    assert is_not_implemented([0x7FC0, 0x0000], "float32")
    assert not is_not_implemented([0x7FFF], "int16")


def _pt(name, reg, fast=True, type_="uint16", fc=3):
    return PointSpec(name=name, function=fc, type=type_, register=reg, fast=fast, extra=True)


def test_coalesce_respects_gap_and_length():
    pts = [_pt("a", 0), _pt("b", 5), _pt("c", 30), _pt("d", 31, type_="float32"), _pt("e", 0, fc=4)]
    blocks = coalesce(pts, max_registers=10, max_gap=10)
    assert [(b.function, b.start, b.count) for b in blocks] == [(3, 0, 6), (3, 30, 3), (4, 0, 1)]
    blocks = coalesce(pts, max_registers=4, max_gap=10)
    assert [(b.function, b.start, b.count) for b in blocks] == [(3, 0, 1), (3, 5, 1), (3, 30, 3), (4, 0, 1)]


def test_slow_points_ride_in_fast_blocks():
    fast, slow = plan([_pt("a", 0), _pt("b", 4), _pt("s", 2, fast=False), _pt("t", 100, fast=False)], 50, 8)
    assert [p.name for p in fast[0].points] == ["a", "b", "s"]
    assert [(b.start, b.count) for b in slow] == [(100, 1)]


BASE = {"device": {"kind": "meter", "vendor": "v", "model": "m", "source": "s"},
        "points": [{"name": "power_kw", "register": 0, "function": 4, "type": "float32"}]}


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["points"][0].update(type="flaot32"), "points[0].type"),
    (lambda d: d["points"][0].update(name="powr_kw"), "points[0].name"),
    (lambda d: d["points"][0].update(function=6), "points[0].function"),
    (lambda d: d["points"][0].pop("register"), "points[0].register"),
    (lambda d: d["points"][0].update(regster=1), "points[0].regster"),
    (lambda d: d["device"].update(kind="toaster"), "device.kind"),
    (lambda d: d["device"].pop("source"), "device.source"),
    (lambda d: d["device"].update(max_registers_per_read=200), "device.max_registers_per_read"),
    (lambda d: d["points"][0].update(fast="yes"), "points[0].fast"),
])
def test_bad_profile_names_file_and_key(mutate, needle):
    import copy
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ProfileError) as err:
        parse_profile(data, "/x/bad.toml", "bad")
    assert "/x/bad.toml" in str(err.value) and needle in str(err.value)


def test_bad_toml_file_names_file(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text("[device\nkind = 1")
    with pytest.raises(ProfileError, match="broken.toml"):
        load_profile(f)


# --- commissioning ----------------------------------------------------------------------------------------
def test_read_device_and_scan(sim):
    from drivers.commissioning import read_device, scan_bus

    unit, values = VALUES["eastron_sdm630"]
    got = read_device(sim.client_path, "eastron_sdm630", unit, 9600)
    assert got["power_kw"] == pytest.approx(values["power_kw"])
    assert got["voltage_v"] == pytest.approx(230.0) and got["import_kwh"] == pytest.approx(values["import_kwh"])
    pcs_unit, _ = VALUES["sunspec_storage_pcs"]
    assert read_device(sim.client_path, "sunspec_storage_pcs", pcs_unit)["soc_pct"] == pytest.approx(63.0)
    with pytest.raises(ConnectionError):
        read_device(sim.client_path, "eastron_sdm120", 99, timeout_s=0.05)
    assert scan_bus(sim.client_path, 9600, units=range(1, 10), timeout_s=0.05) == sorted(u for u, _ in VALUES.values())
