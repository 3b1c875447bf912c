"""Security properties of the packages: nothing unpickles a file, runs a shell, or listens beyond loopback.

The source checks read the code's syntax tree (not its text), so comments and docstrings that mention pickle do
not count, and ``torch.load(..., weights_only=True)`` does.
"""

from __future__ import annotations

import ast
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import dask.config
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "graphs", "storage", "torch_bridge")

#: Modules whose loaders run code from the bytes they read.
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
#: Calls that run code from their input or through a shell, by their dotted name.
UNSAFE_CALLS = {
    "eval",
    "exec",
    "os.system",
    "os.popen",
    "pandas.read_pickle",
    "pd.read_pickle",
    "yaml.load",
    "yaml.load_all",
    "yaml.full_load",
    "yaml.unsafe_load",
}


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ``""``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool | None:
    """Whether keyword ``name`` is the literal ``value``; None when it is not given."""
    for kw in call.keywords:
        if kw.arg == name:
            return isinstance(kw.value, ast.Constant) and kw.value.value is value
    return None


def findings(source: str, filename: str = "<source>") -> Iterator[str]:
    """Every unsafe construct in ``source``, as ``file:line: what``."""
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    yield f"{where}: imports {name} (its loaders run code from the file)"
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in UNSAFE_CALLS:
            yield f"{where}: calls {name}"
        if (
            name.split(".")[-1] == "load"
            and name.split(".")[0] == "torch"
            and not _keyword_is(node, "weights_only", True)
        ):
            yield f"{where}: {name} without weights_only=True"
        if _keyword_is(node, "allow_pickle", False) is False:
            yield f"{where}: {name} with allow_pickle other than False"
        if _keyword_is(node, "shell", False) is False:
            yield f"{where}: {name} with shell= other than False"


def package_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_packages_hold_python_files():
    assert len(package_files()) > 20


def test_no_unpickling_no_eval_no_shell_in_the_packages():
    found = [f for path in package_files() for f in findings(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "code",
    [
        "import pickle",
        "from pickle import loads",
        "import cloudpickle as cp",
        "x = torch.load(path)",
        "x = torch.load(path, weights_only=False)",
        "x = torch.load(path, weights_only=flag)",
        "x = np.load(path, allow_pickle=True)",
        "subprocess.run(cmd, shell=True)",
        "subprocess.run(cmd, shell=flag)",
        "os.system(cmd)",
        "yaml.load(text)",
        "eval(text)",
    ],
)
def test_the_scan_catches_each_unsafe_construct(code: str):
    assert list(findings(code)), code


@pytest.mark.parametrize(
    "code",
    [
        "x = torch.load(path, weights_only=True)",
        "x = np.load(path, mmap_mode='r', allow_pickle=False)",
        "x = np.load(path)",
        "subprocess.run(['sbatch', script], check=True)",
        "subprocess.run(cmd, shell=False)",
        "yaml.safe_load(text)",
        "s = 'import pickle; torch.load(p)'  # pickle in a string or a comment",
    ],
)
def test_the_scan_passes_safe_constructs(code: str):
    assert not list(findings(code)), code


# ---------------------------------------------------------------- the dashboard


def _addresses(node: object, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _addresses(v, f"{key}.{k}" if key else str(k))
    elif key.endswith("dashboard-address"):
        yield key, str(node)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def test_every_default_dashboard_address_is_loopback():
    defaults = yaml.safe_load((ROOT / "engine" / "zarrforge.yaml").read_text())
    addresses = list(_addresses(defaults))
    assert addresses, "no dashboard-address in engine/zarrforge.yaml"
    for key, address in addresses:
        host = address.rsplit(":", 1)[0] if ":" in address else ""
        assert _is_loopback(host), f"{key}: {address!r} listens beyond this machine by default"


def _listening(pids: set[int]) -> set[tuple[int, str, int]]:
    out = set()
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    out.add((pid, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_a_local_cluster_listens_on_loopback_only(processes: bool):
    from engine.clusters import connect

    me = psutil.Process()
    before = _listening({me.pid})
    settings = {
        "zarrforge.local.processes": processes,
        "zarrforge.local.n-workers": 1,
        "zarrforge.local.threads-per-worker": 1,
    }  # the dashboard address is the packaged default
    with dask.config.set(settings), connect("local") as client:
        pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
        opened = _listening(pids) - before
        link = client.dashboard_link
    assert link.startswith("http://127.0.0.1:"), link
    assert len(opened) >= 2, opened  # the scheduler and the dashboard, at least
    assert not processes or any(pid != me.pid for pid, _, _ in opened), "the worker process was not seen"
    assert all(_is_loopback(ip) for _, ip, _ in opened), sorted(opened)
