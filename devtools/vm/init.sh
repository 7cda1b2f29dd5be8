#!/bin/sh
# /init of the thp-checker matrix guest (busybox sh).
#
# Mounts the pseudo filesystems, loads modules listed in /etc/modules.load (Debian
# binary kernels), finds the job on the config disk (a raw disk starting with
# "#THPVM-JOB"), sources it, and reports every step on the console as framed
# records:
#   @@THPVM BEGIN <name> rc=<rc> dur=<seconds>
#   @@THPVM OUT <base64 of stdout>        (many lines)
#   @@THPVM ERR <base64 of stderr>        (many lines)
#   @@THPVM END <name> md5=<md5 of the OUT base64 lines then the ERR ones>
# then "@@THPVM DONE", and reboots (qemu runs with -no-reboot, so it exits).
# Kernel messages are kept off the console while records are printed; the
# ring buffer is reported at the end as the record "dmesg".
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
export HOME=/root PYTHONPATH=/opt/thpcheck PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8

/bin/busybox mount -t proc proc /proc
# The arm64 base ships busybox alone (its applet list cannot be asked on the build host).
[ -e /bin/mount ] || /bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run /mnt
exec </dev/console >/dev/console 2>&1

now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# emit NAME RC DURATION OUTFILE ERRFILE: one framed, checksummed record.
emit() {
    base64 "$4" | sed 's/^/@@THPVM OUT /' > /tmp/.rec
    base64 "$5" | sed 's/^/@@THPVM ERR /' >> /tmp/.rec
    sum=$(sed 's/^@@THPVM ... //' /tmp/.rec | tr -d '\n' | md5sum | cut -d' ' -f1)
    echo "@@THPVM BEGIN $1 rc=$2 dur=$3"
    cat /tmp/.rec
    echo "@@THPVM END $1 md5=$sum"
}

# vm_run NAME TIMEOUT_S ARGV...: run a command, report its output and exit code.
vm_run() {
    name=$1 limit=$2
    shift 2
    t0=$(now)
    timeout -s KILL "$limit" "$@" > /tmp/.out 2> /tmp/.err
    rc=$?
    emit "$name" "$rc" "$(elapsed "$t0" "$(now)")" /tmp/.out /tmp/.err
}

# vm_sh NAME TIMEOUT_S SCRIPT: like vm_run for a shell snippet.
vm_sh() { vm_run "$1" "$2" sh -c "$3"; }

# vm_mount LABEL FSTYPE DIR: mount the test disk labelled LABEL.
vm_mount() {
    vm_sh "mount:$3" 60 "dev=\$(findfs LABEL=$1) && mkdir -p $3 && mount -t $2 \$dev $3 \
        && grep \" $3 \" /proc/mounts"
}

# vm_knob PATH VALUE: write a sysfs/procfs knob, then read it back.
vm_knob() { vm_sh "knob:$1" 30 "echo $2 > $1 && cat $1"; }

if [ -s /etc/modules.load ]; then
    while read -r mod; do insmod "$mod" || echo "insmod $mod failed"; done < /etc/modules.load
    sleep 1
fi

echo "@@THPVM BOOTED $(uname -r) $(now)"
echo 1 4 1 7 > /proc/sys/kernel/printk

job=
for i in 1 2 3 4 5 6 7 8 9 10; do
    for dev in /dev/vd?; do
        [ -b "$dev" ] || continue
        if [ "$(head -c 10 "$dev")" = "#THPVM-JOB" ]; then job=$dev; break 2; fi
    done
    sleep 1
done
if [ -n "$job" ]; then
    tr -d '\000' < "$job" > /run/job.sh
    . /run/job.sh
else
    echo "@@THPVM ERROR no job disk found"
fi

vm_run dmesg 30 dmesg
echo "@@THPVM DONE"
sync
reboot -f
sleep 5
echo o > /proc/sysrq-trigger 2>/dev/null
