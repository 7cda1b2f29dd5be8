"""`scripts/cluster up|down|status|env`: the test cluster for people.

`up` builds the binaries if needed (cached), starts the servers detached (each in its own
session) and returns once the cluster is ready; `down`, from any shell, stops the recorded
processes. State, kubeconfig and logs live in the cluster dir (default `.cluster/` in the repo
root, git-ignored).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from devtools.cluster.harness import (
    REPO_ROOT,
    STATE_FILE,
    BinariesMissing,
    Cluster,
    ClusterError,
    build_binaries,
    default_bin_dir,
    missing_binaries,
)

DEFAULT_DIR = REPO_ROOT / ".cluster"
# What a cluster creates in its dir; `up` clears these from an earlier run and `down` keeps
# only logs/, so a user-chosen --dir is never wiped wholesale.
OWNED = ("etcd", "pki", "home", "tmp", "client", "apiserver", "kcm", "scheduler",
         "kubeconfig", "kube-controller-manager.kubeconfig", "kube-scheduler.kubeconfig",
         "kwok.kubeconfig", "kwok-stages.yaml", STATE_FILE)


def _clean(workdir: Path, keep_logs: bool) -> None:
    for name in (*OWNED, *(() if keep_logs else ("logs",))):
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _recorded(workdir: Path) -> Cluster | None:
    return Cluster.load(workdir) if (workdir / STATE_FILE).exists() else None


def _usage(cluster: Cluster) -> str:
    q = shlex.quote
    return "\n".join([
        f"  export KUBECONFIG={q(str(cluster.kubeconfig))}",
        f"  export PATH={q(str(cluster.bin_dir))}:\"$PATH\"   # kubectl, helm, kwokctl",
        "  kubectl get nodes",
        f"stop it with: scripts/cluster{_dir_arg(cluster.workdir)} down",
    ])


def _dir_arg(workdir: Path) -> str:
    return "" if workdir == DEFAULT_DIR.resolve() else f" --dir {shlex.quote(str(workdir))}"


def cmd_up(workdir: Path, nodes: int, build: bool) -> int:
    """Start a detached cluster unless one is already running there."""
    existing = _recorded(workdir)
    if existing is not None and existing.running_servers():
        print(f"cluster already up in {workdir} (apiserver {existing.server_url})")
        print(_usage(existing))
        return 0
    if existing is not None:
        existing.stop()  # a half-dead cluster: end any survivors before starting afresh
    if build:
        bin_dir = build_binaries()
    else:
        bin_dir = default_bin_dir()
        missing = missing_binaries(bin_dir)
        if missing:
            raise BinariesMissing(f"missing in {bin_dir}: {', '.join(missing)}; "
                                  "run without --no-build or devtools/cluster/tools/build.sh")
    _clean(workdir, keep_logs=False)
    cluster = Cluster(workdir, bin_dir=bin_dir, nodes=nodes, detach=True).start()
    pids = ", ".join(f"{s.name}={s.pid}" for s in cluster.servers)
    print(f"cluster up: Kubernetes {cluster.k8s_version}, {nodes} kwok node(s), "
          f"apiserver {cluster.server_url}")
    print(f"  pids: {pids}; logs: {cluster.logs_dir}")
    print(_usage(cluster))
    return 0


def cmd_down(workdir: Path) -> int:
    """Stop every recorded server; keep only the logs."""
    cluster = _recorded(workdir)
    if cluster is None:
        print(f"no cluster recorded in {workdir}")
        return 0
    running = cluster.running_servers()
    cluster.stop()
    _clean(workdir, keep_logs=True)
    names = ", ".join(f"{s.name}={s.pid}" for s in running) or "none were running"
    print(f"cluster down: stopped {names}; logs kept in {cluster.logs_dir}")
    return 0


def cmd_status(workdir: Path) -> int:
    cluster = _recorded(workdir)
    if cluster is None:
        print(f"no cluster recorded in {workdir}")
        return 1
    for s in cluster.servers:
        print(f"{s.name:<24} pid {s.pid:<8} {'running' if s.alive() else 'STOPPED'}")
    return 0 if len(cluster.running_servers()) == len(cluster.servers) else 1


def cmd_env(workdir: Path) -> int:
    """Print `export` lines, for eval "$(scripts/cluster env)"."""
    cluster = _recorded(workdir)
    if cluster is None:
        print(f"no cluster recorded in {workdir}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}")
    print(f"export PATH={shlex.quote(str(cluster.bin_dir))}:\"$PATH\"")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="cluster dir (default: .cluster in the repo root)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and return when it is ready")
    up.add_argument("--nodes", type=int, default=3, help="kwok fake nodes (default 3)")
    up.add_argument("--no-build", action="store_true",
                    help="fail instead of building missing binaries")
    sub.add_parser("down", help="stop the cluster started by up")
    sub.add_parser("status", help="show the recorded servers")
    sub.add_parser("env", help="print export lines for the cluster")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workdir: Path = args.dir.resolve()
    try:
        if args.command == "up":
            return cmd_up(workdir, args.nodes, build=not args.no_build)
        if args.command == "down":
            return cmd_down(workdir)
        if args.command == "status":
            return cmd_status(workdir)
        return cmd_env(workdir)
    except ClusterError as exc:
        print(f"scripts/cluster {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
