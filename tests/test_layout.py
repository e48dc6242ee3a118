"""The shape of the code, held by tests (issue 34): the import graph has no cycle; nothing imports a stage only to
time a network or read a checkpoint; the CLI is a thin layer whose printing lives in one module; no function is
too long to read whole; one registry of backends and one table of formats; only the trusted upgrade unpickles."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("hsconas_cli", "exporters")
CLI = ROOT / "hsconas_cli" / "cli"
MAX_FUNCTION_LINES = 80
MAX_CLI_MODULE_LINES = 250
CLI_SHARE = 0.08  # of the lines of the package pyproject.toml installs (hsconas_cli and exporters, the cli included)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of the imports under ``if TYPE_CHECKING:`` (never executed)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def imports(module: str) -> set[str]:
    """The modules of the two packages that ``module`` imports anywhere (a function's lazy import counts too)."""
    tree = ast.parse(MODULES[module].read_text())
    skip, out = _type_checking_only(tree), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and node.lineno not in skip:
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.lineno not in skip and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m in MODULES and m != module}


def test_the_import_graph_has_no_cycle():
    graph = {m: imports(m) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join(path[path.index(n):] + [n] if n in path else path + [n])
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_nothing_imports_a_stage_to_time_a_network_or_read_a_checkpoint():
    """Timing one network is meter.py's, reading a checkpoint checkpoint.py's: calibrate and train are imported only
    where a calibration or a training runs."""
    calibrators = {m for m in MODULES if "hsconas_cli.calibrate" in imports(m)}
    trainers = {m for m in MODULES if "hsconas_cli.train" in imports(m)}
    assert calibrators == {"hsconas_cli.transfer", "hsconas_cli.drift", "hsconas_cli.pipeline"}
    # halving fine-tunes its finalists
    assert trainers == {"hsconas_cli.shrink", "hsconas_cli.pipeline", "hsconas_cli.cli.train", "hsconas_cli.halving"}
    for m in ("search", "closed_loop", "fleet", "export", "drift", "meter", "evaluate", "checkpoint"):
        assert "hsconas_cli.train" not in imports(f"hsconas_cli.{m}"), m


def test_the_cli_is_thin():
    """No cli module but render.py builds a table, parses JSON or reads the environment; each is short, and all of
    them together are a small share of the package."""
    for path in CLI.glob("*.py"):
        text = path.read_text()
        if path.name != "render.py":
            for needle in ("Table(", "json.loads", "os.environ"):
                assert needle not in text, f"{path.name} holds {needle}: that is render.py's or the library's"
        assert len(text.splitlines()) <= MAX_CLI_MODULE_LINES, path.name
    cli = sum(len(p.read_text().splitlines()) for p in CLI.glob("*.py"))
    package = sum(len(p.read_text().splitlines()) for p in MODULES.values())
    assert cli < CLI_SHARE * package, (cli, package)


def test_every_function_is_short_enough_to_read_whole():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{module}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_only_the_trusted_upgrade_unpickles():
    """Every torch.load in the package reads tensors only (weights_only=True), but the one behind
    ``hsconas checkpoint upgrade --trust``."""
    unpickling = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for call in [n for n in ast.walk(fn) if isinstance(n, ast.Call)]:
                f = call.func
                if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch":
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in call.keywords)
                    if not safe:
                        unpickling.append(f"{module}.{fn.name}")
    assert unpickling == ["hsconas_cli.checkpoint._unpickle_trusted"], unpickling


def test_one_registry_of_backends_and_one_table_of_formats():
    """The schema and the CLI's help read the backends from ``backends.BACKENDS``; the pipeline's export format and the
    export's latency check read ``exporters.FORMATS``."""
    import typing

    from exporters import FORMATS, deployed_format
    from hsconas_cli.backends import BACKENDS
    from hsconas_cli.cli import options
    from hsconas_cli.schema import DeviceSchema

    assert typing.get_args(DeviceSchema.model_fields["backend"].annotation) == tuple(BACKENDS)
    assert all(name in options.Backend.help for name in BACKENDS)
    assert {f.runs_on for f in FORMATS.values()} - {None} <= set(BACKENDS)
    assert [deployed_format(b) for b in BACKENDS] == ["onnx", "onnx", "onnx", "openvino", "pte"]
    for path in MODULES.values():  # no second list of the names anywhere in the package
        assert '"onnxruntime", "torch", "tensorrt"' not in path.read_text(), path
