"""The compute platform's bridge (`edge-ems bridge --config bridge.toml`, docs/bridge.md, issue 17).

A separate small process that runs next to the compute platform (or on the gateway) and speaks the
cabinet's compute topics (drivers/compute.py) on its behalf:

- power.py + prom.py: PromQL instant queries against a Prometheus server's HTTP API (Kepler per-pod /
  container energy counters as rates, DCGM's per-GPU power, a rack PDU's kW), mapped to jobs, nodes and
  racks by a configured label, published as ``compute/power``;
- jobs.py + slurm.py: the scheduler's queue as ``compute/job`` announcements (kW estimate, earliest start,
  duration = time limit, deadline, deferrable);
- defer.py: the cabinet's ``compute/defer`` requests and ``compute/headroom`` applied to the scheduler
  through an adapter (adapter.py: the interface; slurm.py: Slurm; Kubernetes on paper), each action
  logged with its reason (actions.py);
- config.py (the TOML file, every problem named), messages.py (the cabinet's payloads), mqtt.py,
  run.py (the loop and the CLI block).

It never imports the controller's kernels or the simulator: the gateway does not need it and the
compute side does not need numba.
"""
