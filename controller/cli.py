"""`edge-ems` command line: one entry point for the gateway, the lab and the technician.

Exit codes: 0 ok, 1 a check failed (replay mismatch, ...), 2 bad input (profile, instance, arguments).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controller.schema import ProfileError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _die_bad_input(message: str) -> int:
    print(f"edge-ems: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _need_sim():
    """The simulator's dependencies are an extra: say how to get them instead of a traceback. Looked up,
    not imported: `run` computes the pvlib series in a child process and must not load them itself."""
    from importlib.util import find_spec
    for name in ("pvlib", "pandas"):
        if find_spec(name) is None:
            raise SystemExit(_die_bad_input(f"simulated devices need the simulator extra ({name} is missing): "
                                            "pip install 'edge-ems[sim]'"))


def cmd_check(args) -> int:
    from controller.config import load_site
    cfg = load_site(args.site)
    print(f"{cfg.path}: ok ({cfg.name}, {len(cfg['devices'])} devices, "
          f"{'all simulated' if cfg.all_simulated else 'field devices'})")
    return EXIT_OK


def _start_uplink(cfg, args, clock_status: str, account=None):
    """([hook], uplink) for `--mqtt URL` (spool in --data-dir, else OUT/uplink), or ([], None) without it.
    A bad URL exits with EXIT_BAD_INPUT and a message naming the command and the option."""
    if not args.mqtt:
        return [], None
    from controller.uplink import make_uplink_hook
    try:
        hook, uplink = make_uplink_hook(cfg, args.mqtt, args.data_dir or Path(args.out or ".") / "uplink",
                                        clock_status=clock_status, account=account)
    except ValueError as exc:
        raise SystemExit(_die_bad_input(f"{args.command} --mqtt: {exc}"))
    return [hook], uplink


def _ledger_to_uplink(uplink):
    """The carbon ledger's intervals go up as they close (`provisional: false`, with the signed line)."""
    if uplink is None:
        return None
    return lambda body: uplink.spool.put("interval", body["end_s"], body)


def _close_uplink(uplink) -> None:
    if uplink is not None:
        drained = uplink.close(drain_timeout_s=60.0)
        print(json.dumps({"uplink": uplink.stats(), "drained": drained}), file=sys.stderr)


def cmd_run(args) -> int:
    """The gateway's entry point: the site runtime with the field provider (controller/runtime/field.py).
    A profile whose devices are all `simulated = true` runs the same runtime with the simulator as its
    provider (needs the `sim` extra); a profile that mixes both is refused until a composite provider exists."""
    from controller.config import load_site
    cfg = load_site(args.site)
    simulated = [d["name"] for d in cfg["devices"] if d["simulated"]]
    if simulated and len(simulated) < len(cfg["devices"]):
        return _die_bad_input(
            f"{cfg.path}: devices {', '.join(simulated)} are simulated and the others are field devices; a site "
            "runs either on its real devices (simulated = false everywhere) or in simulation (edge-ems sim / lab)")
    if not simulated:
        from controller.runtime.field import run_field
        return run_field(cfg, data_dir=args.data_dir, mqtt=args.mqtt, socket_arg=args.socket,
                         cycles=args.cycles, strategy=args.strategy)
    return _run_simulated(cfg, args)


def _run_simulated(cfg, args) -> int:
    """`run` on an all-simulated profile: real time against the simulator (the bench's and tests' path)."""
    _need_sim()
    from tools.sim.scenario import list_scenarios, load_scenario
    if args.scenario:
        scn = load_scenario(args.scenario)
    else:
        match = [s for s in list_scenarios() if load_scenario(s)["scenario"]["site"] == cfg.name]
        if not match:
            return _die_bad_input(f"no scenario drives site {cfg.name!r}; pass --scenario NAME|FILE")
        scn = load_scenario(match[0])
    scn.site = cfg
    # the simulator precomputes its series for the run: --cycles 0 on a simulated site means one simulated
    # week (a field site's --cycles 0 runs until stopped)
    hours = args.cycles * cfg["control"]["period_s"] / 3600.0 if args.cycles else 24.0 * 7
    print(f"edge-ems run: site {cfg.name} (gateway {cfg['site']['gateway_id']}), simulated devices from "
          f"scenario {scn.name}, period {cfg['control']['period_s']} s, {hours:g} h", flush=True)
    from tools.sim.exogenous import start_series_apart
    series = start_series_apart(scn, hours, args.seed)   # pvlib in a child process, meanwhile the kernels load
    from controller.warmup import compile_apart, warmup
    compile_apart()                           # a cold numba cache compiles in a child, not in the controller
    warmup()
    from tools.sim.runner import run_sim
    from controller.llvm_pages import release_after_first_cycle
    from controller.watchdog import SystemdNotifier
    notifier = SystemdNotifier()
    from controller.carbon.account import EnergyAccount
    account = EnergyAccount(cfg)              # one integration: ledger, uplink's provisional interval, TUI's today
    up_hooks, uplink = _start_uplink(cfg, args, "sim", account)  # the cloud, when --mqtt is given
    from controller.ipc import start_ipc_for_run
    ipc = start_ipc_for_run(cfg, args, account=account)   # the TUI's socket (None with --socket none or on failure)
    if ipc is not None and uplink is not None:
        ipc.attach_uplink(uplink)             # technicians' actions reach the cloud's audit trail
    from controller.dcim.run import start_dcim
    dcim = start_dcim(cfg, uplink=uplink, account=account)   # the DCIM's Modbus TCP server, when [dcim] enables it
    try:
        result = run_sim(scn, hours=hours, seed=args.seed, strategy=args.strategy, out_dir=args.out,
                         speed=args.speed, install_signals=True,
                         hooks=[release_after_first_cycle(), *([ipc.hook] if ipc else []),
                                *([dcim.hook] if dcim else []), *up_hooks, notifier.hook],
                         wire=args.wire, ledger_on_record=_ledger_to_uplink(uplink), series=series(),
                         account=account)
    finally:
        if dcim is not None:
            dcim.close()
        if ipc is not None:
            ipc.close()
        _close_uplink(uplink)
    notifier.stopping()
    print(json.dumps(result.loop.stats.as_dict()))
    return EXIT_OK


def cmd_sim(args) -> int:
    _need_sim()
    from rich.progress import Progress
    from tools.sim.scenario import load_scenario
    from tools.sim.runner import run_sim
    scn = load_scenario(args.scenario)
    if args.objective:                              # --objective overrides the profile's [control] objective
        scn.site["control"]["objective"] = args.objective
    if args.strategy == "oracle":                   # perfect foresight: one MILP over the run (tools/sim/oracle.py)
        from tools.sim.oracle import write_oracle
        flex = args.flex if args.flex is not None else bool(scn["compute"].get("flex", False))   # jobs as decisions
        print(json.dumps(write_oracle(scn, args.hours, args.seed, args.out, flex=flex), indent=2))
        return EXIT_OK
    from controller.carbon.account import EnergyAccount
    from tools.sim.study import STUDY_PERIOD_S, STUDY_REPLAN_S, study_problem
    period_s = args.period_s if args.period_s is not None else STUDY_PERIOD_S if args.study else None
    replan_s = args.replan_s if args.replan_s is not None else STUDY_REPLAN_S if args.study else None
    if (bad := study_problem(period_s, replan_s)) is not None:
        return _die_bad_input(bad)
    account = EnergyAccount(scn.site)
    hooks, uplink = _start_uplink(scn.site, args, "sim", account)
    with Progress(transient=True) as bar:
        task = bar.add_task(f"{scn.name} {args.strategy}", total=1.0)
        result = run_sim(scn, hours=args.hours, seed=args.seed, strategy=args.strategy, out_dir=args.out,
                         speed=args.speed, progress=lambda f: bar.update(task, completed=f), hooks=hooks,
                         wire=args.wire, wire_baud=args.wire_baud, ledger_on_record=_ledger_to_uplink(uplink),
                         as_profiles=args.as_profiles, account=account,
                         compute={"flex": args.flex} if args.flex is not None else None,
                         period_s=period_s, replan_s=replan_s)
    _close_uplink(uplink)
    print(json.dumps(result.kpis, indent=2))
    if result.report is not None:                   # the ledger's months / years (OUT/ledger-report.json)
        from controller.carbon.report import to_text
        print(to_text(result.report), file=sys.stderr, end="")
    if args.out:
        problems = list(result.kpis.get("output_errors", []))
        if "recording_degraded" in result.kpis:
            rec = result.kpis["recording_degraded"]
            problems.append(f"{rec['error'] or Path(args.out) / 'recording'}: {rec['dropped']} records not stored")
        if "ledger_degraded" in result.kpis:
            led = result.kpis["ledger_degraded"]
            problems.append(f"{Path(args.out) / 'ledger'}: {led['unwritten_records'] + led['dropped_intervals']} "
                            f"records not stored ({led['error']})")
        if problems:                                 # the figures above are whole; some files are not
            for line in problems:
                print(f"edge-ems sim: {line}", file=sys.stderr)
            return EXIT_FAILED
        print(f"wrote {Path(args.out) / 'kpis.json'} and {Path(args.out) / 'recording'}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args) -> int:
    _need_sim()
    from tools.sim.demo import run_demo
    return run_demo(args.out, hours=args.hours, seed=args.seed, strategy=args.strategy)


def cmd_lab(args) -> int:
    """The simulated cabinet as separate processes (tools/sim/lab.py): `edge-ems run --site lab.toml` then
    runs against it exactly as on a gateway."""
    _need_sim()
    from tools.sim.lab import main as lab_main
    return lab_main(args.lab_args)


def cmd_replay(args) -> int:
    from controller.limits_check import check_limits, format_report
    from controller.replay import RecordingError, verify
    if not (args.verify or args.check_limits):
        return _die_bad_input("replay needs --verify and/or --check-limits")
    ok = True
    try:
        if args.verify:
            result = verify(args.recording)
            if result.torn:
                print(f"note: {result.torn}: dropped, replayed up to the tear", file=sys.stderr)
            print(("ok: " if result.ok else "MISMATCH: ") + result.message)
            ok = ok and result.ok
        if args.check_limits:
            report = check_limits(args.recording)
            print(format_report(report))
            ok = ok and report.ok
    except (RecordingError, OSError) as exc:
        return _die_bad_input(str(exc))
    return EXIT_OK if ok else EXIT_FAILED


def cmd_plan(args) -> int:
    from controller.core.plan_instance import plan_main
    return plan_main(args.instance)


def cmd_read(args) -> int:
    """One line and exit 1 when the unit does not answer, exit 2 for a profile/unit/port that cannot be."""
    from drivers.commissioning import BadInput, NotAnswering, read_device
    try:
        got = read_device(args.port, args.profile, args.unit, args.baud, timeout_s=args.timeout)
    except BadInput as exc:
        return _die_bad_input(f"read: {exc}")
    except NotAnswering as exc:
        print(f"edge-ems: read: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(got, indent=2))
    return EXIT_OK


def cmd_selftest(args) -> int:
    from controller.selftest import selftest
    return selftest(args.site, args.data_dir)


def cmd_scan(args) -> int:
    """The unit ids that answer with data, as JSON; exit 1 when none does, 2 for a bad port or range."""
    from drivers.commissioning import BadInput, NotAnswering, scan_bus
    try:
        lo, _, hi = args.units.partition("-")
        units = range(int(lo), int(hi or lo) + 1)
    except ValueError:
        return _die_bad_input(f"scan --units {args.units!r}: expected FIRST-LAST, like 1-247")
    try:
        found = scan_bus(args.port, args.baud, units=units, timeout_s=args.timeout)
    except BadInput as exc:
        return _die_bad_input(f"scan: {exc}")
    except NotAnswering as exc:
        print(f"edge-ems: scan: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(found))
    if not found:
        print(f"edge-ems: scan: no unit in {units.start}-{units.stop - 1} answered with data on {args.port}",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-ems", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a site profile")
    p.add_argument("--site", required=True, help="profile name (profiles/sites/NAME.toml) or path")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="run the controller (the gateway's entry point)")
    p.add_argument("--site", required=True)
    p.add_argument("--scenario", help="scenario driving simulated devices (default: the site's own)")
    p.add_argument("--cycles", type=int, default=0, help="stop after N cycles (0: run until stopped)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated devices only: times real time")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="directory for the recording and KPIs")
    p.add_argument("--socket", default=None, help="the TUI's local socket (default /run/edge-ems/ipc.sock or "
                   "$XDG_RUNTIME_DIR/edge-ems/ipc.sock; 'none': no socket)")
    p.add_argument("--wire", action="store_true", help="simulated devices only: Modbus on a pty RS-485 bus and "
                   "the BMS on virtual CAN, read by the real drivers (as `sim --wire`)")
    p.add_argument("--mqtt", default=None, metavar="mqtt[s]://HOST:PORT",
                   help="the cloud uplink (as `sim --mqtt`; store-and-forward in --data-dir)")
    p.add_argument("--data-dir", default=None,
                   help="field sites: the data directory (keys, ledger, recording, spool, state; default "
                        "$EDGE_EMS_DATA_DIR or /var/lib/edge-ems); simulated sites: the uplink spool")
    p.add_argument("--strategy", choices=("rule", "none", "mpc"), default=None,
                   help="override [control] strategy")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sim", help="the real controller against a simulated site")
    p.add_argument("--scenario", required=True, help="name (profiles/scenarios/NAME.toml) or file")
    p.add_argument("--hours", type=float, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--strategy", choices=("rule", "none", "mpc", "oracle"), default="rule",
                   help="oracle: the perfect-foresight optimum of the run (no controller, a benchmark)")
    p.add_argument("--objective", choices=("cost", "carbon"), default=None,
                   help="override [control] objective for mpc and oracle: cost, or carbon (kg CO2e first, "
                        "cost the tie-breaker; docs/objectives.md)")
    p.add_argument("--speed", type=float, default=0.0, help="times real time (0: as fast as possible)")
    p.add_argument("--out", default=None, help="writes OUT/kpis.json, OUT/recording, OUT/events.jsonl")
    p.add_argument("--wire", action="store_true",
                   help="Modbus devices on a pty RS-485 bus and the BMS on virtual CAN, read by the real drivers")
    p.add_argument("--wire-baud", type=int, default=None, help="with --wire: pace the RS-485 bytes at this baud")
    p.add_argument("--as-profiles", action="store_true",
                   help="in-process devices limited to what their profiles carry (no genset kW setpoint on "
                        "GenComm, no available PV on SunSpec): the in-process twin of a --wire run")
    p.add_argument("--mqtt", default=None, metavar="mqtt[s]://HOST:PORT",
                   help="publish the uplink to this broker (mqtts: ?ca=&cert=&key= files; user:pass@ in the URL; "
                        "&confirm=cloud: delete spooled rows on the cloud's .../ack receipts, not on PUBACK)")
    p.add_argument("--data-dir", default=None, help="uplink spool directory (default OUT/uplink or ./uplink)")
    flex = p.add_mutually_exclusive_group()
    flex.add_argument("--flex", dest="flex", action="store_const", const=True, default=None,
                      help="the compute platform may hold the scenario's deferrable jobs when the cabinet asks "
                           "([compute] flex = true; the reference scenarios ship with it off, docs/compute.md)")
    flex.add_argument("--no-flex", dest="flex", action="store_const", const=False,
                      help="every job announced not deferrable ([compute] flex = false): the baseline")
    p.add_argument("--study", action="store_true",
                   help="a long study (a year): control period 10 s, MPC re-plan every 900 s (field: the profile's "
                        "period, 60 s); their effect on the KPIs is measured in docs/year.md")
    p.add_argument("--period-s", type=float, default=None, help="the control period of this run (overrides --study)")
    p.add_argument("--replan-s", type=float, default=None, help="seconds between MPC plans (overrides --study)")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("demo", help="a simulated day at the inner-mongolia-mine site, live, with a report")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--strategy", choices=("mpc", "rule"), default="mpc",
                   help="the controller compared against no control (default mpc)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("lab", help="the simulated cabinet as separate processes on ptys, TCP, slcan and MQTT "
                       "(docs/lab.md); arguments go to python -m tools.sim.lab", add_help=False)
    p.add_argument("lab_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("replay", help="re-run step on a recording")
    p.add_argument("recording")
    p.add_argument("--verify", action="store_true", help="exit 0 only if every command matches bit for bit")
    p.add_argument("--check-limits", action="store_true",
                   help="exit 0 only if no recorded command exceeds a limit (an independent checker)")
    p.set_defaults(func=cmd_replay)

    from controller.carbon.report import add_ledger_parser
    add_ledger_parser(sub)                 # ledger verify | report (controller/carbon/report.py)

    from controller.tui.app import add_tui_parser
    add_tui_parser(sub)                    # tui [--socket PATH] [--ascii] [--demo] (controller/tui/app.py)

    from controller.bridge.cli import add_bridge_parser
    add_bridge_parser(sub)                 # bridge --config FILE [--check] (controller/bridge/, docs/bridge.md)

    p = sub.add_parser("plan", help="solve one planning instance (JSON) and print the plan")
    p.add_argument("instance", help="FILE.json, or - for a stream: one instance per line on stdin, one plan per line out")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("read", help="read one Modbus device's points (commissioning)")
    p.add_argument("--port", required=True, help="serial path, pyserial URL, or tcp://HOST[:PORT]")
    p.add_argument("--profile", required=True)
    p.add_argument("--unit", type=int, required=True)
    p.add_argument("--baud", type=int, default=None, help="default: the profile's")
    p.add_argument("--timeout", type=float, default=None, help="seconds per request (default: the profile's)")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("scan", help="list Modbus unit ids that answer with data on a port")
    p.add_argument("--port", required=True, help="serial path, pyserial URL, or tcp://HOST[:PORT]")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--units", default="1-247", help="FIRST-LAST (default 1-247)")
    p.add_argument("--timeout", type=float, default=0.1, help="seconds per probe (default 0.1)")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("selftest", help="is this gateway ready? profile, ports, clock, disk, keys, kernels")
    p.add_argument("--site", default="/etc/edge-ems/site.toml", help="profile name or path")
    p.add_argument("--data-dir", default=None, help="default $EDGE_EMS_DATA_DIR or /var/lib/edge-ems")
    p.set_defaults(func=cmd_selftest)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lab"]:                       # every option after `lab` is the lab's own
        return cmd_lab(argparse.Namespace(lab_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ProfileError as exc:
        print(f"edge-ems: {len(exc.problems)} problem(s) in the profile, nothing was started:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
