"""The project image, built here without a registry (devtools/images/build.py), run as the
chart runs it.

The session builds (or reuses) ``localhost/thp-checker:<version>`` from the debootstrap base and
its oci-archive for containerd. Then: the image's user and entrypoint, the agent pod's idle main
container, and the agent itself against loop-mounted btrfs and ext4, privileged and with the
DaemonSet's least-privilege settings, compared field by field with a local ``thpcheck check`` of
the same path. Needs root, podman, runc and debootstrap; skips saying why, or fails under
``THPCHECK_REQUIRE_IMAGES=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.host.loopfs import MKFS, loop_mount
from devtools.images import build
from tests.host.agent import check_json, listing
from tests.support.require import skip_or_fail

pytestmark = pytest.mark.images

TIER = "images"
APT = "apt-get install podman buildah debootstrap skopeo runc containerd"
FILESYSTEMS = ("btrfs", "ext4")
# The DaemonSet's read-only host mounts (docs/operator-design.md, "The agent in a pod").
HOST_MOUNTS = ("/proc", "/sys", "/boot", "/lib/modules", "/etc/os-release")
# podman's --read-only also mounts tmpfs on /tmp, /var/tmp and /run; Kubernetes'
# readOnlyRootFilesystem does not, so neither do these runs.
READ_ONLY = ("--read-only", "--read-only-tmpfs=false")
LEAST_PRIVILEGE = ("--user", "0", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                   *READ_ONLY)


def _require_tools() -> None:
    if os.geteuid() != 0:
        skip_or_fail(TIER, "building and running the images needs root")
    missing = [t for t in ("podman", "runc", "debootstrap", "tar") if shutil.which(t) is None]
    if missing:
        skip_or_fail(TIER, f"{', '.join(missing)} not installed ({APT})")


@pytest.fixture(scope="session")
def image() -> build.Built:
    """The built image and its oci-archive (cached under $THPCHECK_CACHE/images)."""
    _require_tools()
    try:
        built = build.build()
        build.export_archive(built)
    except build.BuildError as exc:
        pytest.fail(f"image build failed: {exc}", pytrace=False)
    return built


def podman_run(image: build.Built, *args: str, timeout: float = 300,
               ) -> subprocess.CompletedProcess[str]:
    """``podman run --rm --network none ARGS`` with a unique name, removed on any exit."""
    name = f"thpcheck-test-{uuid.uuid4().hex[:12]}"
    try:
        return build.podman("run", "--rm", "--pull=never", "--name", name, "--network", "none",
                            *args, check=False, timeout=timeout)
    finally:
        build.podman("rm", "--force", "--ignore", name, check=False)


# ---- the image itself ----------------------------------------------------------------------

def test_default_user_is_nonroot(image: build.Built) -> None:
    user = build.podman("image", "inspect", "--format", "{{.Config.User}}", image.image)
    assert user.stdout.strip() == "65532:65532"
    result = podman_run(image, *READ_ONLY, "--entrypoint", "id", image.image)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["uid=65532(thpcheck)", "gid=65532(thpcheck)"]


def test_version_runs_read_only_without_capabilities(image: build.Built) -> None:
    result = podman_run(image, "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                        *READ_ONLY, image.image, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"thpcheck {image.version}"
    assert result.stderr == ""


def test_entrypoint_labels_and_env(image: build.Built) -> None:
    config = json.loads(build.podman("image", "inspect", image.image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/opt/thpcheck/bin/thpcheck"]
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "thp-checker"
    assert labels["org.opencontainers.image.version"] == image.version
    assert labels["org.opencontainers.image.revision"] == image.revision
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.base.name"] == build.BASE_IMAGE


def test_runtime_venv_is_lean(image: build.Built) -> None:
    """No pip, no setuptools, no build context, no wheels in the runtime image."""
    script = ("import importlib.util as u, os, sys; "
              "print(sorted(m for m in ('pip', 'setuptools', 'kubernetes.aio') "
              "if u.find_spec(m.split('.')[0]) and u.find_spec(m)), "
              "os.path.exists('/src'), os.path.exists('/opt/pip'))")
    result = podman_run(image, *READ_ONLY, "--entrypoint", "/opt/thpcheck/bin/python",
                        image.image, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False False"
    assert image.size_bytes < 300e6, f"image grew to {image.size_bytes / 1e6:.0f} MB"


def test_idle_main_container_stops_at_once(image: build.Built) -> None:
    """The agent pod's main container: /bin/sh and sleep exist, SIGTERM exits 0 at once."""
    name = f"thpcheck-test-{uuid.uuid4().hex[:12]}"
    try:
        build.podman("run", "--detach", "--pull=never", "--name", name, "--network", "none",
                     *LEAST_PRIVILEGE, "--entrypoint", "/bin/sh", image.image, "-c",
                     "trap 'exit 0' TERM; sleep infinity & wait")
        state = build.podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert state == "running"
        started = time.monotonic()
        build.podman("stop", "--time", "10", name)
        stopped_in = time.monotonic() - started
        code = build.podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0"
        assert stopped_in < 5, f"took {stopped_in:.1f} s: SIGTERM was not handled"
    finally:
        build.podman("rm", "--force", "--ignore", name, check=False)


# ---- the archive containerd imports --------------------------------------------------------

def test_oci_archive_names_the_image(image: build.Built) -> None:
    assert image.archive is not None and image.archive_format == "oci-archive"
    with tarfile.open(image.archive) as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == image.image
        blob = f"blobs/sha256/{entry['digest'].removeprefix('sha256:')}"
        manifest = json.load(archive.extractfile(blob))  # type: ignore[arg-type]
    assert manifest["config"]["digest"] == f"sha256:{image.image_id}"


@contextlib.contextmanager
def private_containerd(workdir: Path) -> Iterator[dict[str, str]]:
    """A containerd of our own (root, state, socket, opt dir under workdir); env for ctr.

    containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir; that
    directory goes again afterwards when this test created it.
    """
    run_dir_existed = Path("/run/containerd").exists()
    config = subprocess.run(["containerd", "config", "default"], check=True, text=True,
                            capture_output=True).stdout
    replacements = {
        'root = "/var/lib/containerd"': f'root = "{workdir}/root"',
        'state = "/run/containerd"': f'state = "{workdir}/state"',
        'address = "/run/containerd/containerd.sock"': f'address = "{workdir}/containerd.sock"',
        'path = "/opt/containerd"': f'path = "{workdir}/opt"',
    }
    for old, new in replacements.items():
        assert old in config, f"containerd's default config changed: no {old!r}"
        config = config.replace(old, new)
    (workdir / "config.toml").write_text(config)
    env = {**os.environ, "CONTAINERD_ADDRESS": str(workdir / "containerd.sock"),
           "CONTAINERD_NAMESPACE": "k8s.io"}
    with open(workdir / "containerd.log", "w") as log:
        daemon = subprocess.Popen(["containerd", "--config", str(workdir / "config.toml")],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["ctr", "version"], env=env, capture_output=True,
                             check=False).returncode != 0:
            assert daemon.poll() is None, (workdir / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not start in 20 s"
            time.sleep(0.1)
        yield env
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if not run_dir_existed:
            with contextlib.suppress(OSError):
                os.rmdir("/run/containerd/s")
                os.rmdir("/run/containerd")


def test_containerd_imports_and_runs_the_archive(image: build.Built, tmp_path: Path) -> None:
    """What the real-node tier does: ``ctr -n k8s.io images import`` then run it."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        skip_or_fail(TIER, f"containerd is not installed ({APT})")
    assert image.archive is not None
    with private_containerd(tmp_path) as env:
        imported = subprocess.run(["ctr", "images", "import", image.archive], env=env,
                                  text=True, capture_output=True, check=False, timeout=300)
        assert imported.returncode == 0, imported.stderr
        names = subprocess.run(["ctr", "images", "ls", "--quiet"], env=env, text=True,
                               capture_output=True, check=True).stdout.split()
        assert image.image in names
        ran = subprocess.run(
            ["ctr", "run", "--rm", "--read-only", "--fifo-dir", str(tmp_path / "fifo"),
             "--runc-root", str(tmp_path / "runc"), image.image,
             f"thpcheck-test-{uuid.uuid4().hex[:12]}", "thpcheck", "--version"],
            env=env, text=True, capture_output=True, check=False, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == f"thpcheck {image.version}"


# ---- the agent against real filesystems ----------------------------------------------------

@pytest.fixture(scope="module")
def loopfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A loop-mounted btrfs and ext4, unmounted and detached at the end of the module."""
    if os.geteuid() != 0:
        skip_or_fail(TIER, "loop-mounted filesystems need root")
    if not os.path.exists("/dev/loop-control"):
        skip_or_fail(TIER, "this machine has no loop devices (/dev/loop-control missing)")
    for tool in ("losetup", "mount", "umount", *(MKFS[fs][0] for fs in FILESYSTEMS)):
        if shutil.which(tool) is None:
            skip_or_fail(TIER, f"{tool} is not installed (apt-get install btrfs-progs)")
    workdir = tmp_path_factory.mktemp("images-loopfs")
    with contextlib.ExitStack() as stack:
        yield {fs: stack.enter_context(loop_mount(workdir, fs)) for fs in FILESYSTEMS}


@pytest.fixture
def scratch(loopfs: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on the parametrized filesystem; must be left empty by the agent."""
    path = loopfs[request.param] / f"scratch-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    leftovers = listing(path)
    shutil.rmtree(path)
    assert leftovers == [], f"the agent left files behind: {leftovers}"


def agent_in_container(image: build.Built, path: Path, *security: str,
                       ) -> subprocess.CompletedProcess[str]:
    """``thpcheck check --json --host-root /host PATH`` with the DaemonSet's mounts."""
    mounts = [f"{path}:/host{path}:rw"]
    mounts += [f"{m}:/host{m}:ro" for m in HOST_MOUNTS if os.path.exists(m)]
    return podman_run(image, *security, *(a for m in mounts for a in ("--volume", m)),
                      image.image, "check", "--json", "--host-root", "/host", str(path))


# Differ between two runs seconds apart: timestamps, durations, live counters, and the
# hostname, which /proc/sys/kernel/hostname gives for the reader's UTS namespace (the
# container's; a pod's unless it uses the host network).
VOLATILE = {"checked_at", "duration_s", "evidence", "hostname", "full_scans", "pages_collapsed"}


def essential(value: Any) -> Any:
    """The report without the fields that differ between runs (VOLATILE)."""
    if isinstance(value, dict):
        return {k: essential(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [essential(v) for v in value]
    return value


def assert_same_verdict(container: subprocess.CompletedProcess[str], path: Path) -> None:
    code, local = check_json(str(path))
    assert container.stdout, container.stderr
    remote = json.loads(container.stdout)
    assert container.returncode == code, container.stderr
    # The must-show fields first, so a failure names the first one that differs.
    assert remote["verdict"] == local["verdict"]
    assert remote["kernel"] == local["kernel"]
    (rp,), (lp,) = remote["paths"], local["paths"]
    for key in ("path", "fstype", "mount_point", "verdict", "rule", "reason"):
        assert rp[key] == lp[key], key
    for key in ("outcome", "step", "errno", "madv_collapse_known", "bad_bytes"):
        assert rp["repro"][key] == lp["repro"][key], f"repro.{key}"
    assert essential(remote) == essential(local)


@pytest.mark.parametrize("scratch", FILESYSTEMS, indirect=True)
def test_privileged_agent_matches_local_check(image: build.Built, scratch: Path) -> None:
    result = agent_in_container(image, scratch, "--privileged", "--user", "0")
    assert_same_verdict(result, scratch)


@pytest.mark.parametrize("scratch", FILESYSTEMS, indirect=True)
def test_least_privilege_agent_matches_local_check(image: build.Built, scratch: Path) -> None:
    """The DaemonSet's settings: uid 0, no capabilities, no new privileges, read-only root.

    Nothing the agent does needs a capability: it writes into a root-owned hostPath as its
    owner (no CAP_DAC_OVERRIDE), reads /host/proc/1/mountinfo (mode 0444, no ptrace check),
    /proc/config.gz and sysfs, and calls mmap/madvise(MADV_COLLAPSE), which podman's default
    seccomp profile allows.
    """
    result = agent_in_container(image, scratch, *LEAST_PRIVILEGE)
    assert_same_verdict(result, scratch)


@pytest.mark.parametrize("scratch", ["btrfs"], indirect=True)
def test_pod_mode_result_file_on_read_only_root(image: build.Built, scratch: Path,
                                                tmp_path: Path) -> None:
    """The init container's flags: the compact result goes to the termination-log file."""
    log = tmp_path / "termination-log"
    log.touch()
    mounts = [f"{scratch}:/host{scratch}:rw", f"{log}:/dev/termination-log:rw"]
    mounts += [f"{m}:/host{m}:ro" for m in HOST_MOUNTS if os.path.exists(m)]
    result = podman_run(image, *LEAST_PRIVILEGE, *(a for m in mounts for a in ("--volume", m)),
                        image.image, "check", "--json", "--exit-zero", "--result-file",
                        "/dev/termination-log", "--log-format", "json", "--host-root", "/host",
                        str(scratch))
    assert result.returncode == 0, result.stderr
    compact = json.loads(log.read_text())
    assert len(log.read_bytes()) <= 4096
    assert compact["verdict"] == json.loads(result.stdout)["verdict"]


# ---- arm64: the same Dockerfile under qemu-user, and one multi-arch archive ----------------

QEMU_USER = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")


@pytest.fixture(scope="session")
def arm64_image() -> build.Built:
    """The arm64 image (``--arch arm64``): its debootstrap base and RUN steps ran under
    Debian's qemu-user-static through binfmt_misc."""
    _require_tools()
    if build.native_arch() != "arm64" and not QEMU_USER.exists():
        skip_or_fail(TIER, "qemu-user-static is not installed (apt-get install "
                     "qemu-user-static): arm64 images cannot be built or run here")
    try:
        return build.build(arch="arm64")
    except build.BuildError as exc:
        pytest.fail(f"arm64 image build failed: {exc}", pytrace=False)


def test_arm64_image_is_arm64(arm64_image: build.Built) -> None:
    platform_ = build.podman("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}",
                             arm64_image.tags[1]).stdout.strip()
    assert platform_ == "linux/arm64"
    result = podman_run(arm64_image, *READ_ONLY, "--entrypoint", "/opt/thpcheck/bin/python",
                        arm64_image.tags[1], "-c", "import platform; print(platform.machine())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "aarch64"  # an arm64 interpreter, emulated here


def test_arm64_image_runs_version(arm64_image: build.Built) -> None:
    result = podman_run(arm64_image, "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                        *READ_ONLY, arm64_image.tags[1], "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"thpcheck {arm64_image.version}"


@pytest.mark.parametrize("scratch", ["ext4"], indirect=True)
def test_arm64_image_checks_without_reproducer(arm64_image: build.Built, scratch: Path) -> None:
    """``thpcheck check --no-repro --json`` in the arm64 image, with the DaemonSet's mounts:
    the same facts and prediction as the host's own check of the path (the kernel is the
    host's; only the machine differs: the agent runs as arm64 code)."""
    mounts = [f"{scratch}:/host{scratch}:rw"]
    mounts += [f"{m}:/host{m}:ro" for m in HOST_MOUNTS if os.path.exists(m)]
    result = podman_run(arm64_image, *LEAST_PRIVILEGE,
                        *(a for m in mounts for a in ("--volume", m)), arm64_image.tags[1],
                        "check", "--no-repro", "--json", "--host-root", "/host", str(scratch))
    assert result.stdout, result.stderr
    remote = json.loads(result.stdout)
    code, local = check_json("--no-repro", str(scratch))
    assert result.returncode == code, result.stderr
    assert remote["kernel"]["machine"] == "aarch64"
    assert remote["kernel"]["pmd_size"] == local["kernel"]["pmd_size"]  # the host's sysfs
    remote["kernel"].pop("machine")
    local["kernel"].pop("machine")
    assert remote["verdict"] == local["verdict"] and remote["kernel"] == local["kernel"]
    assert essential(remote["paths"]) == essential(local["paths"])


def test_multiarch_archive_gives_each_node_its_platform(image: build.Built,
                                                        arm64_image: build.Built,
                                                        tmp_path: Path) -> None:
    """One oci-archive, one name (the chart's ``localhost/thp-checker:<version>``), an index
    over amd64 and arm64: containerd on a node of either architecture imports it and runs its
    own platform's image under that name, so the chart needs no per-architecture selector."""
    archive = build.export_multiarch([image, arm64_image])
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == image.image
        blob = f"blobs/sha256/{entry['digest'].removeprefix('sha256:')}"
        image_index = json.load(tar.extractfile(blob))  # type: ignore[arg-type]
    platforms = {(m["platform"]["os"], m["platform"]["architecture"])
                 for m in image_index["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        skip_or_fail(TIER, f"containerd is not installed ({APT})")
    with private_containerd(tmp_path) as env:
        imported = subprocess.run(["ctr", "images", "import", "--all-platforms", str(archive)],
                                  env=env, text=True, capture_output=True, check=False,
                                  timeout=600)
        assert imported.returncode == 0, imported.stderr
        machines = {}
        for platform_ in ("linux/amd64", "linux/arm64"):
            ran = subprocess.run(
                ["ctr", "run", "--rm", "--read-only", "--platform", platform_,
                 "--fifo-dir", str(tmp_path / "fifo"), "--runc-root", str(tmp_path / "runc"),
                 image.image, f"thpcheck-test-{uuid.uuid4().hex[:12]}",
                 "/opt/thpcheck/bin/python", "-c",
                 "import platform, thpcheck; print(platform.machine(), thpcheck.__version__)"],
                env=env, text=True, capture_output=True, check=False, timeout=180)
            assert ran.returncode == 0, ran.stderr
            machines[platform_] = ran.stdout.strip()
    assert machines == {"linux/amd64": f"x86_64 {image.version}",
                        "linux/arm64": f"aarch64 {image.version}"}
