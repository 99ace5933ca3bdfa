"""The ledger's tamper evidence and crash tolerance (hash chain, counter, Ed25519 signatures, torn tail)."""
import base64
import os
import signal
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.carbon.keys import generate_key, load_public_key, load_or_create_key, write_public_key
from controller.carbon.ledger import LedgerWriter, canonical, line_hash, parse_line, verify
from controller.cli import main

GENESIS = {"gateway_id": "gw-test", "site": "test"}


def make_ledger(path, key, n=6):
    w = LedgerWriter(path, key, GENESIS, lambda: "synchronised")
    for i in range(n):
        w.append("interval", {"t_start": f"2026-01-01T00:{15 * i:02d}:00Z", "co2_kg": {"scope1": 1.5 * i}})
    w.close()
    return path


@pytest.fixture
def ledger(tmp_path):
    key = generate_key(tmp_path / "gw.key")
    write_public_key(key, tmp_path / "ledger.pub")
    return make_ledger(tmp_path / "ledger", key), key


def lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path, ls):
    path.write_bytes(b"\n".join(ls) + b"\n")


def test_intact_ledger_verifies_with_the_exported_key(ledger, tmp_path):
    path, key = ledger
    res = verify(path, load_public_key(tmp_path / "ledger.pub"))
    assert res.ok and res.records == 7, res.message
    assert main(["ledger", "verify", str(path), "--pubkey", str(tmp_path / "ledger.pub")]) == 0


@pytest.mark.parametrize("where", [b'"co2_kg":{"scope1":6', b'"t_start":"2026-01-01T01:00', b'"clock":"synchronised"'])
def test_one_changed_byte_fails_naming_the_record(ledger, where, capsys):
    path, _ = ledger
    data = bytearray(path.read_bytes())
    start = data.index(b'"co2_kg":{"scope1":6.0}')      # record n=5 (line 6)
    start = data.rindex(b"\n", 0, start) + 1
    i = data.index(where[:8], start) + len(where) - 1   # a byte inside that record
    data[i] = ord("7") if data[i] != ord("7") else ord("8")
    path.write_bytes(bytes(data))
    res = verify(path)
    assert not res.ok
    assert res.bad_n == 5 and res.bad_line == 6, res.message     # the record holding scope1 6.0
    assert main(["ledger", "verify", str(path)]) == 1
    assert "first bad record" in capsys.readouterr().out


def test_every_single_byte_change_fails_naming_its_record(tmp_path):
    """Exhaustive: each byte of a ledger changed (two ways) -> verify fails at the record holding that byte
    (named by its line: a changed counter digit makes the record claim another n).
    The one exception is the file's last newline: the last record then reads as a torn tail (a crash
    signature), which verify reports and does not count: the same as a record cut from the end."""
    path = make_ledger(tmp_path / "ledger", Ed25519PrivateKey.generate(), n=2)
    data = path.read_bytes()
    owner = []                                    # record index of every byte (its newline included)
    for n, line in enumerate(data.split(b"\n")[:-1]):
        owner += [n] * (len(line) + 1)
    assert len(owner) == len(data)
    for i in range(len(data)):
        for new in (data[i] ^ 0x01, ord("A") if data[i] != ord("A") else ord("B")):
            res = verify(data[:i] + bytes([new]) + data[i + 1:])
            if i == len(data) - 1:
                assert res.ok and res.records == 2 and "torn tail" in res.torn_tail
            else:
                assert not res.ok and res.bad_line == owner[i] + 1, (i, chr(data[i]), chr(new), res.message)
                assert f"line {owner[i] + 1}" in res.message


def test_dropped_record_fails(ledger):
    path, _ = ledger
    ls = lines(path)
    write_lines(path, ls[:3] + ls[4:])             # n=3 removed
    res = verify(path)
    assert not res.ok and res.bad_n == 4 and "counter is 4, expected 3" in res.message


def test_swapped_records_fail(ledger):
    path, _ = ledger
    ls = lines(path)
    ls[2], ls[3] = ls[3], ls[2]
    write_lines(path, ls)
    res = verify(path)
    assert not res.ok and res.bad_n == 3 and res.bad_line == 3, res.message


def test_record_resigned_with_another_key_fails(ledger):
    path, _ = ledger
    other = Ed25519PrivateKey.generate()
    ls = lines(path)
    payload, head, _ = parse_line(ls[5])
    ls[5] = head + b"|" + base64.b64encode(other.sign(head))
    write_lines(path, ls)
    res = verify(path)
    assert not res.ok and res.bad_n == 5 and "signature does not verify" in res.message


def test_whole_ledger_resigned_with_another_key_fails_against_the_trusted_key(ledger, tmp_path):
    path, key = ledger
    forged = tmp_path / "forged"
    make_ledger(forged, Ed25519PrivateKey.generate())
    assert verify(forged).ok                       # self-consistent: the genesis key alone proves no origin
    res = verify(forged, key.public_key())
    assert not res.ok and res.bad_n == 0 and "not the trusted key" in res.message
    assert main(["ledger", "verify", str(forged), "--pubkey", str(tmp_path / "ledger.pub")]) == 1


def test_edited_payload_resigned_by_attacker_breaks_the_link(ledger):
    """Even a record re-signed with the right key (stolen) but edited breaks the next record's hash link."""
    path, key = ledger
    ls = lines(path)
    payload, head, _ = parse_line(ls[3])
    payload["co2_kg"]["scope1"] = 0.0
    head = canonical(payload)
    ls[3] = head + b"|" + base64.b64encode(key.sign(head))
    write_lines(path, ls)
    res = verify(path)
    assert not res.ok and res.bad_n == 4 and "hash link broken" in res.message


def test_torn_last_record_is_detected_and_the_chain_continues(ledger):
    path, key = ledger
    data = path.read_bytes()
    cut = len(data) - 40                          # a write cut short in the last record
    path.write_bytes(data[:cut])
    res = verify(path)
    assert res.ok and res.records == 6 and "torn tail" in res.torn_tail    # n=0..5 hold; n=6 torn
    w = LedgerWriter(path, key, GENESIS)
    assert w.recovered["after_n"] == 5 and w.n == 6
    w.append("interval", {"t_start": "2026-01-01T02:00:00Z"})
    w.close()
    res = verify(path, keep=True)
    assert res.ok and res.recoveries == 1, res.message
    assert [p["n"] for p in res.payloads] == list(range(8))
    assert res.payloads[6]["kind"] == "recovery" and res.payloads[6]["torn_len"] == cut - data.rfind(b"\n", 0, cut) - 1
    # the kept fragment is evidence: altering it is caught
    raw = bytearray(path.read_bytes())
    raw[cut - 5] ^= 0x01
    path.write_bytes(bytes(raw))
    bad = verify(path)
    assert not bad.ok and "no recovery record accounts for it" in bad.message


WRITER = r"""
import sys, itertools
from controller.carbon.keys import load_or_create_key
from controller.carbon.ledger import LedgerWriter
w = LedgerWriter(sys.argv[1], load_or_create_key(sys.argv[2]), {"gateway_id": "gw-kill"})
print("ready", flush=True)
pad = "x" * int(sys.argv[3])
for i in itertools.count():
    w.append("interval", {"i": i, "pad": pad})
"""


def _kill_writer(path, keyp, pad, min_growth):
    """Start a real writer process, let the file grow by min_growth bytes, SIGKILL it mid-stream."""
    size0 = path.stat().st_size if path.exists() else 0
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(keyp), str(pad)], stdout=subprocess.PIPE,
                            cwd=os.getcwd())
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 20
        while path.stat().st_size < size0 + min_growth and time.monotonic() < deadline:
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def test_sigkill_tears_the_last_record_detected_and_the_chain_continues(tmp_path, capsys):
    """A real SIGKILL of a writer in the middle of write(): Linux stops a large write to a regular file at a
    page boundary when a fatal signal is pending, so 4 MB records get torn by about every other kill
    (records of ~3 KB practically never are; a power loss can tear them, the same recovery applies).
    Kill until a tear happens (bounded), check verify reports it, then a restart chains on."""
    path, keyp = tmp_path / "ledger", tmp_path / "gw.key"
    for attempt in range(40):
        _kill_writer(path, keyp, 4_000_000, 2_000_000)
        res = verify(path)
        assert res.ok, res.message                  # a torn tail is reported, never a failure
        if res.torn_tail:
            break
    else:
        pytest.fail("40 SIGKILLs mid-write and not one torn record")
    data = path.read_bytes()
    assert not data.endswith(b"\n")                 # the tear: the last record's line is incomplete
    assert "torn tail at byte" in res.torn_tail and f"after record n={res.records - 1}" in res.torn_tail
    assert main(["ledger", "verify", str(path)]) == 0
    assert "torn tail" in capsys.readouterr().err
    good = res.records
    w = LedgerWriter(path, load_or_create_key(keyp), {"gateway_id": "gw-kill"})
    assert w.recovered["after_n"] == good - 1 and w.recovered["torn_offset"] == data.rindex(b"\n") + 1
    w.append("interval", {"i": -1})
    w.close()
    res = verify(path, keep=True)
    assert res.ok and res.recoveries == 1 and not res.torn_tail, res.message
    assert [p["n"] for p in res.payloads] == list(range(good + 2))
    assert res.payloads[good]["kind"] == "recovery" and res.payloads[good + 1]["i"] == -1
    path.unlink()                                   # 4 MB records: do not keep them around


def test_repeated_sigkill_with_real_sized_records_keeps_the_chain(tmp_path):
    """Interval-sized records (~3 KB), killed three times mid-stream: each restart continues the chain."""
    path, keyp = tmp_path / "ledger", tmp_path / "gw.key"
    for _ in range(3):
        _kill_writer(path, keyp, 3000, 300_000)
        res = verify(path)
        assert res.ok, res.message
    w = LedgerWriter(path, load_or_create_key(keyp), {"gateway_id": "gw-kill"})
    w.append("interval", {"i": -1})
    w.close()
    res = verify(path, keep=True)
    assert res.ok, res.message
    assert [p["n"] for p in res.payloads] == list(range(res.records))


def test_line_hash_is_over_the_whole_line(ledger):
    path, _ = ledger
    ls = lines(path)
    assert parse_line(ls[1])[0]["prev"] == line_hash(ls[0])


def test_bad_input_is_a_clear_error(ledger, tmp_path, capsys):
    path, key = ledger
    (tmp_path / "notakey").write_text("hello, auditor\n")
    assert main(["ledger", "verify", str(path), "--pubkey", str(tmp_path / "notakey")]) == 2
    assert "notakey: not an Ed25519 public key" in capsys.readouterr().err
    assert main(["ledger", "report", str(path), "--from", "2026-13"]) == 2
    assert "--from: expected a UTC time" in capsys.readouterr().err
    assert main(["ledger", "verify", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    raw = tmp_path / "raw.hex"                     # the raw key as hex is accepted too
    raw.write_text(key.public_key().public_bytes_raw().hex())
    assert main(["ledger", "verify", str(path), "--pubkey", str(raw)]) == 0
