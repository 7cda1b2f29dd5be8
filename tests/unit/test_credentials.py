"""One credential order for every command (thpcheck.controller.credentials), and the start-up
failures that need no cluster: each one line, its own exit code, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from thpcheck.controller import credentials
from thpcheck.controller.credentials import StartupError, StartupExit

REPO = Path(__file__).resolve().parents[2]


def kubeconfig(path: Path, server: str = "https://127.0.0.1:9") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    empty = tmp_path / "home"
    empty.mkdir()
    return empty


def test_the_flag_wins_over_everything(tmp_path: Path, home: Path) -> None:
    flag = kubeconfig(tmp_path / "flag")
    env = kubeconfig(tmp_path / "env")
    kubeconfig(home / ".kube" / "config")
    source = credentials.choose_source(str(flag), {"KUBECONFIG": str(env),
                                                   "KUBERNETES_SERVICE_HOST": "10.0.0.1"}, home)
    assert source == credentials.Source(f"--kubeconfig {flag}", str(flag))


def test_then_kubeconfig_then_home_then_in_cluster(tmp_path: Path, home: Path) -> None:
    env = kubeconfig(tmp_path / "env")
    in_pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert credentials.choose_source(None, {"KUBECONFIG": str(env), **in_pod}, home).path == \
        str(env)
    assert credentials.choose_source(None, in_pod, home).path is None  # no ~/.kube/config
    default = kubeconfig(home / ".kube" / "config")
    assert credentials.choose_source(None, in_pod, home).path == str(default)


def test_a_kubeconfig_list_is_passed_whole(tmp_path: Path, home: Path) -> None:
    a, b = kubeconfig(tmp_path / "a"), kubeconfig(tmp_path / "b")
    source = credentials.choose_source(None, {"KUBECONFIG": f"{a}:{b}"}, home)
    assert source.path == f"{a}:{b}"


@pytest.mark.parametrize(("flag", "env", "message"), [
    ("/nonexistent/kubeconfig", {}, "--kubeconfig /nonexistent/kubeconfig: no such file"),
    (None, {"KUBECONFIG": "/nonexistent/k"}, "KUBECONFIG=/nonexistent/k: no such file"),
    (None, {}, "no Kubernetes configuration: pass --kubeconfig FILE"),
])
def test_a_named_source_that_is_missing_is_an_error(home: Path, flag: str | None,
                                                    env: dict[str, str], message: str) -> None:
    """Never a silent fall-through to the next source."""
    with pytest.raises(StartupError, match=message) as raised:
        credentials.choose_source(flag, {**env, "KUBERNETES_SERVICE_HOST": ""}, home)
    assert raised.value.exit is StartupExit.BAD_CONFIG


def test_a_directory_is_not_a_kubeconfig(tmp_path: Path, home: Path) -> None:
    with pytest.raises(StartupError, match="not a file"):
        credentials.choose_source(str(tmp_path), {}, home)


def test_load_passes_the_path_explicitly(tmp_path: Path) -> None:
    """The client fixes its default path at import; ours must be read regardless."""
    path = kubeconfig(tmp_path / "k", server="https://example.invalid:6443")
    config = credentials.load(credentials.Source("test", str(path)))
    assert config.host == "https://example.invalid:6443"
    assert credentials.bearer_token(config) == ("Bearer", "t")


@pytest.mark.parametrize(("status", "exit"), [(401, StartupExit.UNAUTHORIZED),
                                              (403, StartupExit.FORBIDDEN)])
def test_http_failures_are_classified(status: int, exit: StartupExit) -> None:
    error = credentials.http_failure(status, b'{"message": "no\\n way"}', "https://s",
                                     "list nodes")
    assert error.exit is exit
    assert "\n" not in str(error) and "no way" in str(error)


def _thpcheck(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thpcheck", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, check=False,
                          env={"PYTHONPATH": str(REPO / "operator"), "HOME": str(home),
                               "THPCHECK_METRICS_PORT": "0", "THPCHECK_HEALTH_PORT": "0"})


def _one_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"thpcheck {command}: ")
    return lines[0]


@pytest.mark.parametrize("command", ["operator", "preflight"])
@pytest.mark.parametrize(("content", "exit", "message"), [
    (None, StartupExit.BAD_CONFIG, "no such file"),
    ("just text", StartupExit.BAD_CONFIG, "not a usable kubeconfig"),
    ("unreachable", StartupExit.UNREACHABLE,
     "cannot reach the API server at https://127.0.0.1:9"),
])
def test_startup_failures_without_a_cluster(tmp_path: Path, home: Path, command: str,
                                            content: str | None, exit: StartupExit,
                                            message: str) -> None:
    path = tmp_path / "kubeconfig"
    if content == "unreachable":
        kubeconfig(path)
    elif content is not None:
        path.write_text(content)
    result = _thpcheck(home, command, "--kubeconfig", str(path))
    assert result.returncode == exit, result.stderr
    assert message in _one_line(result, command)


@pytest.mark.parametrize("command", ["operator", "preflight"])
def test_no_configuration_at_all(home: Path, command: str) -> None:
    result = _thpcheck(home, command)
    assert result.returncode == StartupExit.BAD_CONFIG
    assert "no Kubernetes configuration: pass --kubeconfig FILE" in _one_line(result, command)
