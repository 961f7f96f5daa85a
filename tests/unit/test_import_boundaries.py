"""Import boundaries: the web tier loads no model runtime, the model server neither the web tier nor the
exporter, and the exporter only its package and the artifacts module (what its image build stage copies)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.support.environ import clean_environ

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = (
    "numpy",
    "tensorflow",
    "keras",
    "ai_edge_litert",
    "tflite_runtime",
    "torch",
    "jax",
    "services.model",
)

PROBE = textwrap.dedent(
    """
    import json, sys
    import zmq
    contexts = []  # every ZeroMQ context created from here on, wherever it is made
    _init = zmq.Context.__init__
    def _counted(self, *args, **kwargs):
        contexts.append(self)
        _init(self, *args, **kwargs)
    zmq.Context.__init__ = _counted
    import services.web
    app = services.web.create_app()
    with app.test_client() as client:
        status = client.get("/").status_code
    forbidden = json.loads(sys.argv[1])
    loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
    print(json.dumps({"loaded": loaded, "context": bool(contexts), "page": status}))
    """
)

# Every module of the model server, __main__ included (its main() runs only as a script).
MODEL_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import services.model
    for module in pkgutil.iter_modules(services.model.__path__, "services.model."):
        importlib.import_module(module.name)
    forbidden = json.loads(sys.argv[1])
    loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
    print(json.dumps(loaded))
    """
)


def _probe(code: str, forbidden: Iterable[str], **environ: str) -> Any:
    """Run `code` in a fresh interpreter, so nothing this process loaded counts; its last line, parsed."""
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(forbidden))],
        cwd=REPO,
        env=clean_environ(**environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _under(name: str, packages: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The module a `from … import` in `path` names, relative imports resolved against its package."""
    package = path.relative_to(REPO).parent.parts
    base = package[: len(package) - node.level + 1] if node.level else ()
    return ".".join([*base, *([node.module] if node.module else [])])


def _static_imports(package: str) -> set[str]:
    """Every module an import statement in `package` names, inside functions too, and so on through the
    services modules those name: what it can ever load, read from the source without running it (the
    exporter imports TensorFlow, and both packages import some modules only when a function runs)."""
    todo = sorted((REPO / package.replace(".", "/")).glob("*.py"))
    read: set[Path] = set()
    names: set[str] = set()
    while todo:
        path = todo.pop()
        if path in read:
            continue
        read.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(path, node)  # `from pkg import name` may name a module: count pkg.name too
                found = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            else:
                continue
            names.update(found)
            for name in filter(lambda n: _under(n, ["services"]), found):
                base = REPO / name.replace(".", "/")
                todo += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
    return names


def test_web_app_imports_no_model_runtime_and_creates_no_zmq_context() -> None:
    # ZEROLENS_MODEL_SERVER points nowhere; nothing may connect at start.
    result = _probe(PROBE, FORBIDDEN, ZEROLENS_MODEL_SERVER="tcp://127.0.0.1:9")
    assert result == {"loaded": [], "context": False, "page": 200}


def test_model_server_imports_neither_the_web_tier_nor_the_exporter() -> None:
    forbidden = ("flask", "services.web", "services.exporter")
    assert _probe(MODEL_PROBE, forbidden) == []
    assert sorted(n for n in _static_imports("services.model") if _under(n, forbidden)) == []


def test_exporter_imports_only_its_package_and_the_artifacts_module() -> None:
    # Dockerfile.model's build stage copies just these; anything more fails the image build, not this test.
    allowed = ("services.exporter", "services.artifacts")
    ours = (n for n in _static_imports("services.exporter") if _under(n, ["services"]) and n != "services")
    assert sorted(n for n in ours if not _under(n, allowed)) == []
