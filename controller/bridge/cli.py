"""The `edge-ems bridge` block of the command line (controller/cli.py calls `add_bridge_parser`); the
bridge itself (paho, the adapters) is imported only when the command runs, so the other commands do not
pay for it."""
from __future__ import annotations


def add_bridge_parser(sub) -> None:
    p = sub.add_parser("bridge", help="the compute platform's bridge: Prometheus power and the Slurm queue to "
                       "the cabinet's MQTT topics, its defer requests to Slurm (docs/bridge.md)")
    p.add_argument("--config", required=True, help="the bridge's TOML file (profiles/bridge/example.toml)")
    p.add_argument("--check", action="store_true", help="validate the configuration and find the scheduler's "
                   "commands, then exit (0 ok, 2 bad)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from controller.bridge.run import main
    return main(args.config, args.check)
