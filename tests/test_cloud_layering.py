"""The cloud is kept apart from the gateway (issue 18): nothing under controller/ or drivers/ imports cloud/,
and the gateway bundle's wheel is built without it."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_controller_and_drivers_never_import_the_cloud():
    bad = []
    for top in ("controller", "drivers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                if any(n == "cloud" or n.startswith("cloud.") for n in names):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {', '.join(names)}")
    assert not bad, "the gateway must not depend on the cloud:\n" + "\n".join(bad)


def test_the_gateway_bundle_carries_no_cloud_package():
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_bundle", ROOT / "tools" / "gateway" / "build_bundle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert "cloud" not in mod.SOURCE_ITEMS and "controller" in mod.SOURCE_ITEMS
    # the gateway's wheel declares neither the cloud's command (it would fail on import there) nor its extra
    import tomllib
    source = (ROOT / "pyproject.toml").read_text()
    assert "edge-ems-cloud" in tomllib.loads(source)["project"]["scripts"]
    gateway = tomllib.loads(mod.gateway_pyproject(source, "9.9.9"))["project"]
    assert gateway["version"] == "9.9.9" and set(gateway["scripts"]) == {"edge-ems"}
    assert "cloud" not in gateway["optional-dependencies"] and "sim" in gateway["optional-dependencies"]


def test_cloud_imports_only_pure_controller_helpers():
    """cloud/ may use the controller's formats and checks, never its runtime (loop, uplink client thread,
    spool, kernels)."""
    allowed = {"controller.carbon.hook", "controller.carbon.ledger", "controller.carbon.report", "controller.carbon.keys", "controller.uplink.topics",
               "controller.uplink.commands", "controller.uplink.client", "controller.config", "controller.schema",
               "drivers.isotime"}
    bad = []
    for path in sorted((ROOT / "cloud").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for n in names:
                if n.split(".")[0] in ("controller", "drivers", "tools") and n not in allowed:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {n}")
    assert not bad, "\n".join(bad)
