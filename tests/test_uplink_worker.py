"""The uplink's MQTT side as a worker process: restarted when it dies (nothing lost, every seq once, in
order), gone when the controller is SIGKILLed (no orphan, the broker publishes the last will)."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from controller.config import load_site
from controller.uplink import make_uplink_hook
from controller.uplink.commands import MAX_BYTES
from controller.uplink.proc import UplinkProcess
from controller.uplink.topics import ALARM, TELEMETRY
from controller.uplink.worker import CMD_CAP
from uplink_broker import Broker, Subscriber, wait_for

CFG = load_site("inner-mongolia-mine")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_worker_is_a_child_process_restarted_after_sigkill_and_loses_nothing(tmp_path):
    assert CMD_CAP > MAX_BYTES                    # an oversize command still reaches the verifier's refusal
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    hook, up = make_uplink_hook(CFG, broker.url, tmp_path / "data", clock_status="test")
    try:
        wait_for(sub.subscribed.is_set, 10, "subscriber")
        assert isinstance(up.mqtt, UplinkProcess)
        wait_for(up.mqtt.connected.is_set, 15, "worker connected")
        first = up.mqtt.pid
        assert first != os.getpid() and _alive(first)
        assert not [t for t in threading.enumerate() if t.name == "uplink-mqtt"], "no MQTT thread in the controller"
        spool = up.spool
        for i in range(40):
            spool.put(TELEMETRY if i % 4 else ALARM, 1.7e9 + i, {"i": i})
        spool.flush()
        wait_for(lambda: len(sub.seqs()) >= spool.last_seq, 10, "records through the worker")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not up.mqtt.connected.is_set(), 10, "the controller notices")
        for i in range(40, 120):                      # committed while no worker runs
            spool.put(TELEMETRY if i % 4 else ALARM, 1.7e9 + i, {"i": i})
        spool.flush()
        wait_for(lambda: up.mqtt.restarts == 1 and up.mqtt.pid != first and up.mqtt.connected.is_set(), 15,
                 "worker restarted")
        last = spool.last_seq
        wait_for(lambda: len(sub.seqs()) >= last, 15, "the backlog after the restart")
        assert sub.seqs() == set(range(1, last + 1)), "every committed seq once after de-dup"
        sub.assert_in_order()
        wait_for(lambda: spool.pending_rows == 0, 10, "quota accounting back to zero")
        # the new worker sent the 80 rows committed while none ran (its counters reach us every 0.5 s)
        wait_for(lambda: up.mqtt.worker_stats.get("records_acked", 0) >= 80, 5, "the new worker's counters")
        st = up.stats()["mqtt"]
        assert st["worker_restarts"] == 1 and st["batches"] >= 1 and st["worker_pid"] == up.mqtt.pid
        assert not _alive(first)
    finally:
        up.close()
        sub.close()
        broker.kill()
    assert not _alive(up.mqtt.pid), "a clean close stops the worker"


CONTROLLER = textwrap.dedent("""
    import sys, time
    from controller.config import load_site
    from controller.uplink import make_uplink_hook
    hook, up = make_uplink_hook(load_site("inner-mongolia-mine"), sys.argv[1], sys.argv[2])
    deadline = time.monotonic() + 30
    while not up.mqtt.connected.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(up.mqtt.pid, flush=True)
    time.sleep(120)
""")


def test_a_sigkilled_controller_leaves_no_orphan_worker(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    ctl = subprocess.Popen([sys.executable, "-c", CONTROLLER, broker.url, str(tmp_path / "data")],
                           stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for(sub.subscribed.is_set, 10, "subscriber")
        worker = int(ctl.stdout.readline())
        assert _alive(worker)
        status = f"edge-ems/v1/inner-mongolia-mine/{CFG['site']['gateway_id']}/status"
        wait_for(lambda: sub.retained.get(status, {}).get("state") == "online", 10, "online")
        ctl.send_signal(signal.SIGKILL)
        ctl.wait(10)
        t0 = time.monotonic()
        wait_for(lambda: not _alive(worker), 5, "the worker dies with its controller")
        print(f"\nworker gone {1000 * (time.monotonic() - t0):.0f} ms after the controller's SIGKILL")
        wait_for(lambda: sub.retained.get(status, {}).get("state") == "offline", 10, "last will offline")
    finally:
        if ctl.poll() is None:
            ctl.kill()
        sub.close()
        broker.kill()
