"""Kernel releases, kernel configs and mountinfo: the parsers the model stands on."""

from __future__ import annotations

import pytest

from thpcheck.model.kconfig import parse_config
from thpcheck.model.kernel import KernelVersion, parse_release
from thpcheck.model.mounts import MountinfoError, parse_mountinfo, resolve


@pytest.mark.parametrize(
    ("release", "proc_version", "expected"),
    [
        ("6.12.95", None, KernelVersion(6, 12, 95)),
        ("6.12.95+bpo-amd64", None, KernelVersion(6, 12, 95)),
        ("6.12.48+deb13-amd64", None, KernelVersion(6, 12, 48)),
        ("6.1.0-28-amd64", None, KernelVersion(6, 1, None)),
        ("6.1.0-28-amd64", "Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) "
         "(gcc-12) #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)", KernelVersion(6, 1, 119)),
        ("5.15.0-316.196.4.1.el9uek.x86_64", None, KernelVersion(5, 15, None)),
        ("6.8.2-300.fc40.x86_64", None, KernelVersion(6, 8, 2)),
        ("6.18.7-arch1-1", None, KernelVersion(6, 18, 7)),
        ("7.2", None, KernelVersion(7, 2, None)),
        ("6.12.0", None, KernelVersion(6, 12, 0)),
    ],
)
def test_parse_release(release: str, proc_version: str | None, expected: KernelVersion) -> None:
    assert parse_release(release, proc_version) == expected


def test_parse_release_rejects_garbage() -> None:
    assert parse_release("not-a-kernel") is None


def test_debian_proc_version_of_another_branch_is_ignored() -> None:
    assert parse_release("6.1.0-28-amd64", "Debian 6.12.5-1").sublevel is None  # type: ignore[union-attr]


def test_parse_config() -> None:
    config = parse_config(
        "# comment\nCONFIG_READ_ONLY_THP_FOR_FS=y\n# CONFIG_BTRFS_EXPERIMENTAL is not set\n"
        'CONFIG_LOCALVERSION="-x"\nCONFIG_EXT4_FS=m\n', "test")
    assert config.enabled("CONFIG_READ_ONLY_THP_FOR_FS")
    assert not config.enabled("CONFIG_BTRFS_EXPERIMENTAL")
    assert config.raw("CONFIG_BTRFS_EXPERIMENTAL") == "n"
    assert config.enabled("CONFIG_EXT4_FS")
    assert config.raw("CONFIG_LOCALVERSION") == "-x"
    assert config.raw("CONFIG_MISSING") is None and not config.enabled("CONFIG_MISSING")


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /var/lib/my\\040data rw,nosuid shared:2 - xfs /dev/vdb rw,attr2
31 22 0:27 / /var/lib/containers/x/merged rw shared:3 - overlay overlay \
rw,lowerdir=/a:/b,upperdir=/var/lib/my\\040data/up,workdir=/w
32 22 0:28 / /mnt/ro ro,relatime - btrfs /dev/vdc rw,space_cache
33 32 0:29 / /mnt/ro/inner rw - tmpfs tmpfs rw
"""


def test_parse_mountinfo_fields_and_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts][:2] == ["/", "/var/lib/my data"]
    assert mounts[1].fstype == "xfs" and mounts[1].super_options == ("rw", "attr2")
    assert mounts[3].read_only and not mounts[0].read_only
    assert mounts[2].super_option("upperdir") == "/var/lib/my data/up"


def test_longest_prefix_and_stacking() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert resolve("/var/lib/my data/x", mounts).mount.fstype == "xfs"  # type: ignore[union-attr]
    assert resolve("/var/lib/my dataX", mounts).mount.fstype == "ext4"  # type: ignore[union-attr]
    assert resolve("/mnt/ro/inner/f", mounts).mount.fstype == "tmpfs"  # type: ignore[union-attr]


def test_overlay_resolves_to_upper_layer() -> None:
    resolved = resolve("/var/lib/containers/x/merged/data", parse_mountinfo(MOUNTINFO))
    assert resolved is not None and resolved.via_overlay
    assert resolved.mount.fstype == "overlay" and resolved.backing.fstype == "xfs"


def test_malformed_mountinfo_names_the_line() -> None:
    with pytest.raises(MountinfoError, match="line 2"):
        parse_mountinfo("22 1 254:0 / / rw - ext4 /dev/vda rw\ngarbage\n")


def test_discover_one_scratch_dir_per_local_writable_filesystem() -> None:
    from thpcheck.model.mounts import discover

    text = """\
22 1 254:0 / / rw - ext4 /dev/vda rw
23 22 254:0 /var/lib/kubelet /var/lib/kubelet rw - ext4 /dev/vda rw
24 22 0:30 / /srv rw - btrfs /dev/vdb rw,subvol=/
25 22 0:31 /home /home rw - btrfs /dev/vdb rw,subvol=/home
26 22 254:16 / /data ro - xfs /dev/vdc ro
27 22 0:5 / /dev rw - devtmpfs udev rw
28 22 0:40 / /run/k3s rw - ext4 /dev/vdd rw
29 22 254:32 / /var/lib/kubelet/pods/x/volumes/v rw - ext4 /dev/vde rw
30 22 0:41 / /tmp rw - tmpfs tmpfs rw
"""
    assert discover(parse_mountinfo(text)).paths == ["/.thpcheck", "/srv/.thpcheck"]
