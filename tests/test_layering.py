"""The product is what runs on a cabinet: nothing under controller/ or drivers/ imports the simulator
(tools/) but the CLI's commands that pick the simulated provider (sim, demo, lab, and run on a profile
whose devices are all marked simulated). Checked on the source, so a stray import fails here, not on a
gateway that lacks pvlib."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {("controller/cli.py", f) for f in ("cmd_sim", "cmd_demo", "cmd_lab", "_run_simulated", "_need_sim")}


def _tools_imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if not any(n == "tools" or n.startswith("tools.") for n in names):
            continue
        fn, up = None, parents.get(node)
        while up is not None:
            if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fn = up.name
            up = parents.get(up)
        yield node.lineno, fn, names


def test_controller_and_drivers_never_import_the_simulator():
    bad = []
    for top in ("controller", "drivers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, fn, names in _tools_imports(path):
                if (rel, fn) not in ALLOWED:
                    bad.append(f"{rel}:{line} ({fn or 'module level'}) imports {', '.join(names)}")
    assert not bad, "simulator imports outside the CLI's sim/demo/lab commands:\n" + "\n".join(bad)


def test_the_field_runtime_loads_no_simulator_module():
    """Importing everything `edge-ems run` uses on a field site pulls in no pvlib, pandas or tools."""
    import subprocess
    import sys
    code = ("import sys, controller.runtime.field, controller.runtime.site, drivers.factory, controller.netinputs, "
            "controller.segments, controller.uplink, controller.ipc, controller.compute.hook, controller.carbon.hook;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pvlib', 'pandas', 'tools'));"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
