"""Fuzz: site profiles (controller/config.py, controller/schema.py): every single-line `key = value` of
the reference profiles given a fuzzed TOML value (huge integers, inf / nan, strings that are paths or
zone names, arrays, inline tables, dates), or the file's bytes mutated.

Contract (docs/fuzzing.md): `load_site(path)` returns a profile or raises ProfileError whose problems
each name the file and a key; when one value was changed and the profile is refused, a problem names
that key (its dotted name, `devices[3].unit`, in the key or the message), or the TOML syntax error
and its line. A profile that is accepted builds its kernel parameters (controller/params.py) without
raising. Any other exception is a crash: `edge-ems check` and `run` would print a traceback.
"""
from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

from hypothesis import example, given, strategies as st

import fuzz_harness as H
from controller.config import SITES_DIR, load_site
from controller.schema import ProfileError, key_lines

DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
SITES = ("inner-mongolia-mine", "nordic-wind", "lab")
TEXT = {s: (SITES_DIR / f"{s}.toml").read_text() for s in SITES}
_ASSIGN = re.compile(r"^(\s*)([A-Za-z0-9_\-]+)(\s*=\s*)(.*?)(\s*#.*)?$")


def assignments(text: str) -> list[tuple[int, str]]:
    """(0-based line, dotted key) of every single-line `key = value` (a value that parses on its own)."""
    import tomllib
    by_line = {n - 1: k for k, n in key_lines(text).items()}
    out = []
    for i, line in enumerate(text.splitlines()):
        m = _ASSIGN.match(line)
        if not m or i not in by_line:
            continue
        try:
            tomllib.loads(f"x = {m.group(4)}")
        except tomllib.TOMLDecodeError:
            continue                                 # the first line of a multi-line array
        out.append((i, by_line[i]))
    return out


KEYS = {s: assignments(TEXT[s]) for s in SITES}

toml_scalars = st.one_of(
    st.integers().map(str), st.sampled_from(["10" + "0" * 400, "-" + "9" * 500, "9223372036854775808",
                                             "0x7fffffffffffffff", "0o777", "0b1", "+0", "-0"]),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: "nan" if math.isnan(f) else ("inf" if f == math.inf else "-inf" if f == -math.inf else repr(f))),
    st.sampled_from(["inf", "-inf", "nan", "1e308", "1e-320", "5e-324", "-0.0", "true", "false",
                     "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"]),
    st.sampled_from(['""', '" "', '"America"', '"Etc"', '"a/../b"', '"/etc/passwd"', '"' + "a" * 300 + '"',
                     '"Asia/Shanghai"', '"UTC"', '"../../../../etc/localtime"', '"\\u0000"', '"x\\ny"',
                     '"posixrules"', '"/dev/ttyS1"', '"socket://h:1"', '"eastron_sdm630"', '"../devices/x"',
                     '"' + "b" * 5000 + '"', "'lit'"]),
    st.text(max_size=20).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'))
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(st.tuples(st.sampled_from("abcxyz"), inner), max_size=3, unique_by=lambda kv: kv[0]).map(
        lambda kvs: "{" + ", ".join(f"{k} = {v}" for k, v in kvs) + "}")), max_leaves=8)


@st.composite
def profiles(draw):
    site = draw(st.sampled_from(SITES))
    lines = TEXT[site].splitlines()
    if draw(st.integers(0, 9)) == 0:
        return site, None, draw(H.mutated(TEXT[site].encode(), 4))
    i, key = draw(st.sampled_from(KEYS[site]))
    m = _ASSIGN.match(lines[i])
    value = draw(st.one_of(toml_values, st.text(max_size=12)))     # text: mostly a syntax error
    lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{value}"
    return site, key, ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def _example(site: str, key: str, value: str):
    lines = TEXT[site].splitlines()
    i = next(i for i, k in KEYS[site] if k == key)
    m = _ASSIGN.match(lines[i])
    lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{value}"
    return site, key, ("\n".join(lines) + "\n").encode()


def check_profile(site, key, data) -> None:
    path = DIR / f"{site}.toml"
    path.write_bytes(data)
    try:
        cfg = load_site(path)
    except ProfileError as exc:
        assert exc.problems, exc
        for p in exc.problems:
            assert p.file == str(path) and p.key and p.message, p
        if key is None:
            return
        text = " | ".join(str(p) for p in exc.problems)
        syntax = [p for p in exc.problems if p.key in ("(syntax)", "(file)")]
        named = any(key in p.key or key in p.message or p.key in key for p in exc.problems if p.key != "devices")
        assert syntax or named, f"changed {key}, refused without naming it: {text}"
        return
    from controller.params import build_params
    params = build_params(cfg)
    assert all(math.isfinite(x) for x in params), f"{key}: accepted, but params are not finite"


@H.budget(ci=150, long=10000)
@given(profiles())
@example(_example("inner-mongolia-mine", "site.timezone", '"America"'))          # IsADirectoryError
@example(_example("inner-mongolia-mine", "site.timezone", '"' + "a" * 300 + '"'))  # OSError: name too long
@example(_example("inner-mongolia-mine", "battery.capacity_kwh", "1" + "0" * 400))  # OverflowError in float()
@example(_example("inner-mongolia-mine", "devices[0].profile", '"' + "a" * 300 + '"'))
@example(_example("inner-mongolia-mine", "devices[0].profile", '"\\u0000"'))
@example(_example("nordic-wind", "site.latitude", "1e308"))
@example(_example("nordic-wind", "battery.cells_series", "9" * 5000))            # tomllib's int() ValueError
@example(_example("nordic-wind", "tariff.export_price_per_kwh", "[" + "1" + "0" * 400 + "]"))
def test_site_profile_values(case):
    H.hit("config.site_profiles")
    check_profile(*case)


# -- device profiles (drivers/modbus/profile.py): the register maps a site's devices name ----------------
from drivers.modbus.profile import PROFILE_DIR, ProfileError as DeviceProfileError, load_profile  # noqa: E402
from test_fuzz_modbus import FakeBus, _Draws, sunspec_memory  # noqa: E402  (the Modbus target's bus stand-in)

DEVICE_TEXT = {p.stem: p.read_text() for p in sorted(PROFILE_DIR.glob("*.toml"))}
DEVICE_KEYS = {n: assignments(t) for n, t in DEVICE_TEXT.items()}


@st.composite
def device_profiles(draw):
    name = draw(st.sampled_from(sorted(DEVICE_TEXT)))
    lines = DEVICE_TEXT[name].splitlines()
    i, key = draw(st.sampled_from(DEVICE_KEYS[name]))
    m = _ASSIGN.match(lines[i])
    lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{draw(st.one_of(toml_values, st.text(max_size=12)))}"
    return name, (key, m.group(4)), ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def check_device_profile(name, key, data) -> None:
    """load_profile returns a profile a ModbusDevice can be built, planned, read and written from, or
    raises the profile's ProfileError naming the file and the key (its last part: 'points[3].scale')."""
    from drivers.modbus.device import ModbusDevice
    path = DIR / f"{name}.toml"
    path.write_bytes(data)
    key, old = key
    try:
        prof = load_profile(path)
    except DeviceProfileError as exc:
        text = str(exc)
        assert str(path) in text, text
        leaf = key.rsplit(".", 1)[-1]
        # the key, or - for a renamed point - the reference that now names nothing ('status_flags' is not
        # a point of this profile: the old name, quoted)
        assert leaf in text or "not valid TOML" in text or key.split(".")[0] in text or \
            (old.startswith('"') and f"'{old.strip(chr(34))}'" in text), (key, text)
        return

    draws = _Draws(**{"chain fuzz": 5, "len fuzz": 5, "sf": 0})
    memory = sunspec_memory(draws, prof) if prof.discovery == "sunspec" else {}
    dev = ModbusDevice("dev", prof, FakeBus(draws, memory, False), 1)    # plans its blocks
    for cycle in range(2):                   # every register word 100: what the map makes of a live unit
        dev.acquire(float(cycle), lambda *a: None)
        dev.actuate({c: 10.0 for c in dev.supported_commands}, float(cycle))


@H.budget(ci=150, long=8000)
@given(device_profiles())
@example(("eastron_sdm630", "points[0].scale", "1" + "0" * 400))
@example(("eastron_sdm630", "device.timeout_s", "1" + "0" * 400))
@example(("eastron_sdm630", "device.max_registers_per_read", "1"))
@example(("chint_dtsu666", "derived[0].of", "[]"))                    # mean of nothing: ZeroDivisionError
@example(("byd_battery_box_c130", "derived[0].bit", "-1"))             # negative shift count: ValueError
@example(("deepsea_gencomm", "commands.run.key_register", '"x"'))      # a string register: TypeError
def test_device_profile_values(case):
    H.hit("config.device_profiles")
    name, key, value = case
    if isinstance(value, str):                 # an @example: (name, key, TOML literal)
        lines = DEVICE_TEXT[name].splitlines()
        i = next(i for i, k in DEVICE_KEYS[name] if k == key)
        m = _ASSIGN.match(lines[i])
        lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{value}"
        key, value = (key, m.group(4)), ("\n".join(lines) + "\n").encode()
    check_device_profile(name, key, value)
