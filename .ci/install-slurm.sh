#!/usr/bin/env bash
# Install Slurm and start a one-node cluster on this machine, for the tests that run a
# study through Slurm for real (tests/pipeline/engines/test_slurm.py). Idempotent: safe to run
# again where any part of it is done; it restarts nothing that already answers.
#
# Result: munged, slurmctld and slurmd running as root, without systemd; one node (this
# host, all its CPUs) in the default partition `debug`; no accounting database, so
# `sacct` answers only from the job-completion file (`sacct -c`). Where this cannot run (no root, no Debian packages), the Slurm tests skip and say
# why.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  echo "installing slurm-wlm and munge (Debian packages, about 60 MB) ..." >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a key shared by every daemon and client (one machine: generate it once)
if [ ! -s /etc/munge/munge.key ]; then
  as_root mkdir -p /etc/munge
  as_root dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
as_root chown munge:munge /etc/munge/munge.key 2>/dev/null || true
as_root chmod 400 /etc/munge/munge.key
as_root mkdir -p /run/munge /var/log/munge /var/lib/munge
as_root chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  as_root su -s /bin/sh munge -c munged 2>/dev/null || as_root munged --force
fi

HOST="$(hostname -s)"
CPUS="$(nproc)"
MEMORY_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
CONF=/etc/slurm/slurm.conf
as_root mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
WANT="$(cat <<EOF
# Written by ofexp's .ci/install-slurm.sh: a one-node cluster for tests.
ClusterName=ofexp
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)"
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$WANT" ]; then
  printf '%s\n' "$WANT" | as_root tee "$CONF" >/dev/null
  # a changed config: restart the daemons that read the old one
  as_root pkill -x slurmd 2>/dev/null || true
  as_root pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 1 30); do pgrep -x 'slurmd|slurmctld' >/dev/null || break; sleep 1; done
fi

# (re)start each daemon that is not running; one killed just before may still be exiting, so
# check again on every round until the node answers idle
for _ in $(seq 1 60); do
  pgrep -x slurmctld >/dev/null || as_root slurmctld
  pgrep -x slurmd >/dev/null || as_root slurmd
  if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "Slurm $(sinfo --version | awk '{print $2}'): node $HOST idle, $CPUS CPUs, partition debug" >&2
    exit 0
  fi
  sleep 1
done
echo "error: the Slurm node did not come up idle; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
