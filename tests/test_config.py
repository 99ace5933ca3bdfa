"""Site profiles: every reference site loads; every kind of broken profile stops start-up with exit 2
and a message naming the file, the key and its line."""
import re
from pathlib import Path

import pytest

from controller.cli import main
from controller.config import SITES_DIR, load_site
from controller.schema import ProfileError

REFERENCE = Path(SITES_DIR / "inner-mongolia-mine.toml").read_text()


def broken(tmp_path, old, new):
    assert old in REFERENCE, old
    path = tmp_path / "site.toml"
    path.write_text(REFERENCE.replace(old, new, 1))
    return path


def line_of(path, needle):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("name", ["inner-mongolia-mine", "gansu-edge", "nordic-wind"])
def test_reference_sites_load(name):
    cfg = load_site(name)
    assert cfg.name == name
    assert cfg.all_simulated
    assert cfg["battery"]["soc_min_pct"] < cfg["battery"]["soc_max_pct"]


@pytest.mark.parametrize("old,new,key,expect", [
    ("reserve_pct = 35.0", "reserve_pct = 35.0\nreserv_pct = 30.0", "battery.reserv_pct", "unknown key"),
    ("capacity_kwh = 500.0", 'capacity_kwh = "500"', "battery.capacity_kwh", "expected a number > 0"),
    ("soc_min_pct = 10.0", "soc_min_pct = 96.0", "battery.soc_min_pct", "must be below battery.soc_max_pct"),
    ("capacity_kwh = 500.0", "capacity_kwh = -5.0", "battery.capacity_kwh", "expected a number > 0"),
    ('bus = "sim"\nunit = 3', 'bus = "rs485_9"\nunit = 3', "devices[2].bus", "not defined under [buses]"),
    ("period_s = 1.0", "period_s = 30.0", "control.period_s", "<= 5.0"),
    ('timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus"', "site.timezone", "IANA time zone"),
])
def test_broken_profile_exit_2_names_key_and_line(tmp_path, capsys, old, new, key, expect):
    path = broken(tmp_path, old, new)
    assert main(["check", "--site", str(path)]) == 2
    err = capsys.readouterr().err
    assert f": {key}: " in err, err
    assert expect in err
    leaf = key.rsplit(".", 1)[-1]
    needle = next(line for line in new.splitlines() if line.split("=")[0].strip() == leaf)
    assert f"{path}:{line_of(path, needle)}: {key}" in err, err


def test_run_refuses_broken_profile_before_starting(tmp_path, capsys):
    path = broken(tmp_path, "soc_min_pct = 10.0", "soc_min_pct = 96.0")
    assert main(["run", "--site", str(path), "--cycles", "1"]) == 2
    assert "nothing was started" in capsys.readouterr().err


def test_every_problem_reported_at_once(tmp_path):
    path = broken(tmp_path, "capacity_kwh = 500.0", "capacity_kwh = true\nvoltage = 3")
    with pytest.raises(ProfileError) as exc:
        load_site(path)
    keys = {p.key for p in exc.value.problems}
    assert {"battery.capacity_kwh", "battery.voltage"} <= keys


def test_toml_syntax_error_gives_line(tmp_path, capsys):
    path = broken(tmp_path, "soc_max_pct = 95.0", "soc_max_pct = = 95.0")
    assert main(["check", "--site", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err and re.search(r"line \d+", err)


def test_missing_required_key(tmp_path, capsys):
    path = broken(tmp_path, "charge_max_kw = 250.0\n", "")
    assert main(["check", "--site", str(path)]) == 2
    assert "battery.charge_max_kw: missing" in capsys.readouterr().err


def test_low_voltage_can_profile_rejected_for_the_240_cell_pack(tmp_path, capsys):
    """The reference pack (240 cells, up to 852 V) does not fit the 0x356 frame's 327.67 V."""
    path = broken(tmp_path, 'profile = "pylon_sma_bms"\nbus = "sim"\nsimulated = true',
                  'profile = "pylon_sma_bms"\nbus = "can0"\nsimulated = false')
    assert main(["check", "--site", str(path)]) == 2
    err = capsys.readouterr().err
    assert "devices[5].profile" in err and "327.67 V" in err and "852 V" in err, err


def test_missing_file(capsys):
    assert main(["check", "--site", "/nonexistent/site.toml"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bad_carbon_contract_stops_start_up(tmp_path, capsys):
    """Market-based contracts live in the site profile's [carbon] table; a bad one is a profile problem."""
    path = tmp_path / "site.toml"
    path.write_text(REFERENCE + '\n[[carbon.contracts]]\nname = "Ordos PPA"\nkind = "ppa"\nkw = 20.0\n'
                    'valid_from = "next spring"\n')
    assert main(["check", "--site", str(path)]) == 2
    err = capsys.readouterr().err
    assert "carbon.contracts[0].valid_from" in err and "ISO 8601" in err, err
    good = tmp_path / "good.toml"
    good.write_text(REFERENCE + '\n[carbon]\nresidual_mix_kg_per_kwh = 0.70\n\n[[carbon.contracts]]\n'
                    'name = "Ordos PPA"\nkind = "ppa"\nkw = 20.0\nvalid_from = "2026-01-01T00:00:00Z"\n')
    cfg = load_site(good)
    assert cfg["carbon"]["residual_mix_kg_per_kwh"] == 0.70 and cfg["carbon"]["contracts"][0]["kw"] == 20.0
