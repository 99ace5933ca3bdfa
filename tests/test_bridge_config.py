"""`edge-ems bridge --config FILE`: a bad configuration exits 2 naming every bad key (file:line: key),
nothing started; the shipped example is valid; a scheduler whose commands are missing is named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "profiles" / "bridge" / "example.toml"


@pytest.fixture
def bridge(capsys):
    """`edge-ems bridge ARGS` in this process (controller.cli.main): (exit code, stdout, stderr)."""
    def run(*args: str) -> subprocess.CompletedProcess:
        code = main(["bridge", *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return run


def test_the_example_config_is_valid_through_the_installed_command_line():
    p = subprocess.run([sys.executable, "-m", "controller.cli", "bridge", "--config", str(EXAMPLE), "--check"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{EXAMPLE}: ok"


@pytest.mark.parametrize("edit, key, says", [
    (("timeout_s = 5", "timeot_s = 5"), "prometheus.timeot_s", "unknown key (known keys here: max_bytes, source"),
    (('into = "nodes"', 'into = "node"'), "power.query[2].into", "expected one of 'jobs', 'nodes'"),
    (('deferrable_by = "partition"', 'deferrable_by = "partitions"'), "slurm.deferrable_by",
     "expected one of 'partition', 'qos', 'comment'"),
    (('deferrable_partitions = ["flex"]', 'deferrable_partitions = "flex"'), "slurm.deferrable_partitions",
     "expected an array of non-empty strings"),
    (("power_period_s = 15", "power_period_s = 120"), "bridge.power_period_s", "<= 60.0"),
    (('label = "Hostname"', 'label = ""'), "power.query[2].label", "needs the series label"),
    (('mqtt = "mqtt://127.0.0.1:1883"', 'mqtt = "http://127.0.0.1:1883"'), "bridge.mqtt", "broker URL must be"),
    (('gateway = "imm-gw-01"', 'gateway = "imm/gw"'), "bridge.gateway", "cannot be an MQTT topic level"),
    (("per_gpu_kw = 0.40", "per_gpu_kw = -1"), "slurm.kw.flex.per_gpu_kw", ">= 0"),
    (('url = "http://127.0.0.1:9090"', 'url = "127.0.0.1:9090"'), "prometheus.url", "expected http://HOST:PORT"),
])
def test_a_bad_key_exits_2_naming_it(bridge, tmp_path, edit, key, says):
    text = EXAMPLE.read_text()
    assert edit[0] in text, edit
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(text.replace(edit[0], edit[1], 1))
    p = bridge("--config", str(cfg))
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "nothing was started" in p.stderr
    line = next((line for line in p.stderr.splitlines() if f": {key}: " in line), None)
    assert line is not None, p.stderr
    assert says in line and line.strip().startswith(f"{cfg}:"), line
    assert not (tmp_path / "actions.jsonl").exists()


def test_every_problem_at_once_and_syntax_errors(bridge, tmp_path):
    cfg = tmp_path / "bridge.toml"
    cfg.write_text('[bridge]\nsite = "s"\ncolour = "red"\n[slurm]\nkw = 3\n')
    p = bridge("--config", str(cfg))
    assert p.returncode == 2
    for key in ("bridge.gateway: missing", "bridge.mqtt: missing", "bridge.colour: unknown key",
                "slurm.deferrable_by: missing", "slurm.kw: expected a table"):
        assert key in p.stderr, p.stderr
    cfg.write_text("[bridge\n")
    p = bridge("--config", str(cfg))
    assert p.returncode == 2 and "(syntax): not valid TOML" in p.stderr
    p = bridge("--config", str(tmp_path / "nope.toml"))
    assert p.returncode == 2 and "no such file" in p.stderr


def test_missing_slurm_commands_are_named(bridge, tmp_path):
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(EXAMPLE.read_text().replace('conf = ""', f'conf = ""\nbin_dir = "{tmp_path}"', 1))
    p = bridge("--config", str(cfg), "--check")
    assert p.returncode == 2
    assert f"slurm.bin_dir: squeue not found in {tmp_path}" in p.stderr
