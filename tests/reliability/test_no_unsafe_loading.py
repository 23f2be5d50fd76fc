"""Every torch.load in the package, benchmarks and tests loads tensors only (weights_only=True):
a results folder from elsewhere cannot run code. The MLflow UI target binds to loopback."""

import ast

from ..conftest import ROOT


def torch_load_calls(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "torch":
                yield node


def test_every_torch_load_is_weights_only():
    unsafe = []
    files = [p for d in ("teddy", "benchmarks", "tests", "workflow") for p in (ROOT / d).rglob("*.py")]
    for path in files:
        for call in torch_load_calls(path):
            flag = {k.arg: k.value for k in call.keywords}.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
    assert len(files) > 30


def test_servers_bind_to_loopback():
    makefile = (ROOT / "Makefile").read_text()
    ui = [line for line in makefile.splitlines() if "mlflow ui" in line]
    assert ui and all("--host 127.0.0.1" in line for line in ui)
