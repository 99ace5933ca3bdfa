"""A real one-node Slurm for the bridge's tests: munged, slurmctld and slurmd (Debian's slurm-wlm, munge)
started as plain daemons in a temporary directory, torn down by pid.

What makes it run without systemd and without any cgroup set-up (this test box is a microVM with no
init system; an unprivileged container has no writable cgroup tree either):
- ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, JobAcctGatherType=jobacct_gather/none: no
  cgroup plugin is loaded, so slurmd needs no cgroup mount and no cgroup.conf;
- SlurmUser / SlurmdUser = the test's user (root here), every state, spool, pid and log file under the
  temporary directory, ports picked free (several test modules, or a second checkout, side by side);
- munged with its own key and socket (``AuthInfo=socket=...``), run with --force (the socket's parent
  /tmp is world-writable);
- SlurmdParameters=config_overrides: the node has the CPUs slurm.conf says (4), whatever the machine
  has, so four one-CPU test jobs run side by side on a 2-core box;
- slurmd -N NAME and NodeAddr=127.0.0.1: no DNS lookups of the host name.
Jobs are ``sbatch --wrap`` one-liners writing to /dev/null. Partitions: ``batch`` (default) and ``flex``
(the deferrable one in the tests' bridge configs).

    with SlurmCluster(tmp_path) as slurm:
        jid = slurm.sbatch("-p", "flex", "-t", "5", "--wrap", "sleep 60")
        slurm.wait_state(jid, "RUNNING")
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from uplink_broker import free_port, wait_for

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "squeue", "sbatch", "scontrol", "scancel")
NODE = "emsnode"
CPUS = 4


class SlurmCluster:
    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        missing = [b for b in BINARIES if shutil.which(b) is None]
        assert not missing, (f"Slurm test peers missing: {', '.join(missing)} - `make test` installs them "
                             "(Debian slurm-wlm, slurm-client, munge)")
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), TZ="UTC")

    # -- set-up --------------------------------------------------------------------------------------
    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("munge", "ctld", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / "munge", 0o755)
        self.ctld_port, self.d_port = free_port(), free_port()
        user = getpass.getuser()
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(f"""ClusterName=emstest
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={self.ctld_port}
SlurmdPort={self.d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d / 'munge' / 'sock'}
StateSaveLocation={d / 'ctld'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'ctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MinJobAge=600
SlurmctldDebug=info
SlurmdDebug=info
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={CPUS} RealMemory=1000 State=UNKNOWN
PartitionName=batch Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=flex Nodes={NODE} MaxTime=INFINITE State=UP
""")

    def _daemon(self, name: str, argv: list[str]) -> None:
        out = open(self.dir / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        out.close()

    def _alive(self, name: str) -> None:
        p = self.procs[name]
        assert p.poll() is None, f"{name} exited with {p.returncode}: {self.logs(name)}"

    def logs(self, name: str) -> str:
        text = ""
        for f in sorted((self.dir / "log").glob(f"{name}*")):
            text += f"\n== {f.name}\n" + f.read_text(errors="replace")[-3000:]
        return text

    def start(self) -> "SlurmCluster":
        self._write_conf()
        m = self.dir / "munge"
        subprocess.run(["mungekey", "-c", "-f", "-k", str(m / "munge.key")], check=True, capture_output=True)
        os.chmod(m / "munge.key", 0o600)
        self._daemon("munged", ["munged", "-F", "--force", f"--key-file={m / 'munge.key'}",
                                f"--socket={m / 'sock'}", f"--pid-file={m / 'munged.pid'}",
                                f"--log-file={self.dir / 'log' / 'munged.log'}", f"--seed-file={m / 'seed'}"])
        wait_for(lambda: self.procs["munged"].poll() is not None or (m / "sock").exists(), 10, "munged's socket")
        self._alive("munged")
        self._daemon("slurmctld", ["slurmctld", "-D", "-c", "-i"])
        self._daemon("slurmd", ["slurmd", "-D", "-N", NODE])
        def idle():
            for name in ("slurmctld", "slurmd"):
                self._alive(name)
            p = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%t"], env=self.env, capture_output=True,
                               text=True, timeout=10)
            return p.returncode == 0 and p.stdout.strip() == "idle"
        try:
            wait_for(idle, 30, "sinfo to show the node idle", poll=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.logs('slurm')}") from None
        return self

    def stop(self) -> None:
        """Cancel every job (their slurmstepd outlive slurmd otherwise), then stop the daemons by pid."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            self.cancel_all()
            try:
                wait_for(lambda: not any(j.get("job_state") in ("RUNNING", "SUSPENDED", "COMPLETING", ["RUNNING"])
                                         for j in self.jobs()), 15, "jobs to end", poll=0.2)
            except (AssertionError, OSError, ValueError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use -----------------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=20)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
        return p

    def sbatch(self, *args: str) -> str:
        out = self.run("sbatch", "--parsable", "-o", "/dev/null", "-e", "/dev/null", *args).stdout.strip()
        return out.split(";")[0]

    def jobs(self) -> list[dict]:
        return json.loads(self.run("squeue", "--json").stdout)["jobs"]

    def job(self, jid: str) -> dict:
        """squeue's view of one job (JSON), {} when gone."""
        return next((j for j in self.jobs() if str(j["job_id"]) == str(jid)), {})

    def state(self, jid: str) -> tuple[str, str]:
        j = self.job(jid)
        s = j.get("job_state", "")
        return (s[0] if isinstance(s, list) else s), j.get("state_reason", "")

    def wait_state(self, jid: str, *states: str, timeout: float = 20.0) -> tuple[str, str]:
        """Poll squeue (bounded) until the job is in one of `states`; its (state, reason)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(jid)
            if st[0] in states:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for job {jid} in "
                                     f"{'/'.join(states)}; it is {st}")
            time.sleep(0.2)

    def cancel_all(self) -> None:
        self.run("scancel", "--full", "-u", getpass.getuser(), check=False)
