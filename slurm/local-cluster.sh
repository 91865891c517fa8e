#!/usr/bin/env bash
# slurm/local-cluster.sh - a real Slurm cluster (munged + slurmctld + one slurmd per node) on this
# Debian machine, as root, without systemd, cgroups or accounting: for contributors and CI to run
# the sbatch scripts for real (tests/test_slurm.py).
#
#   sudo bash slurm/local-cluster.sh up      # install the packages if missing, start, wait until idle (~12 s)
#   sudo bash slurm/local-cluster.sh down    # stop only the daemons `up` started; --purge also clears the state
#   sudo bash slurm/local-cluster.sh status
#
# From the project's reference set-up (shared/reference/slurm-up.sh and slurm-down.sh), kept
# together. Measured on these machines: from nothing to an idle node in about 12 s; `sbatch
# --wait` polls every 2 s only if MinJobAge <= 5 (XIULIAN_SLURM_FAST=1 sets it); a requeued job
# waits cred_expire (30 s here) before it runs again, or `scontrol update JobId=N StartTime=now`;
# `--signal=USR1@N` reaches the srun tasks, `B:USR1@N` the batch shell, possibly a minute early;
# no memory or CPU limits are enforced (no cgroups).
#
# Tunables (environment), up:
#   SLURM_UP_STATE        dir for our pid files              (/run/slurm-up)
#   SLURM_UP_NODE         node name                          ($(hostname -s))
#   SLURM_UP_NODES        simulated nodes: N > 1 starts N slurmd daemons on this host (Slurm's
#                         multiple-slurmd mode: nodes <node>-n1..<node>-nN, each its own port,
#                         spool, log and pid file, all at 127.0.0.1)          (1)
#   SLURM_UP_CPUS         CPUs of the node                   ($(nproc))
#   SLURM_UP_MEM_MB       RealMemory                         (MemTotal MB - 1024)
#   SLURM_UP_PARTITION    partition name                     (debug)
#   SLURM_UP_CRED_EXPIRE  AuthInfo cred_expire, seconds; also the delay before a
#                         requeued job may start again (Slurm default 120)  (30)
#   SLURM_UP_MIN_JOB_AGE  MinJobAge, seconds a finished job stays visible   (300; 5 with XIULIAN_SLURM_FAST=1)
#   (XIULIAN_SLURM_FAST=1 also sets cred_expire to 10 s: a requeued job restarts 10 s later)
#   SLURM_UP_TIMEOUT      seconds to wait for the node to become idle        (90)
# down: SLURM_DOWN_KEEP_JOBS=1 leaves running jobs alone.
CMD=${1:-up}
shift || true
case "$CMD" in
  up)
    if [ "${XIULIAN_SLURM_FAST:-0}" = 1 ]; then  # tests: finished jobs vanish fast, requeued ones restart soon
      export SLURM_UP_MIN_JOB_AGE=${SLURM_UP_MIN_JOB_AGE:-5} SLURM_UP_CRED_EXPIRE=${SLURM_UP_CRED_EXPIRE:-10}
    fi
    ;;
  down) ;;
  status)
    sinfo 2>/dev/null && squeue 2>/dev/null; exit $? ;;
  *) echo "usage: $0 up|down [--purge]|status" >&2; exit 2 ;;
esac

STATE=${SLURM_UP_STATE:-/run/slurm-up}
# alive PID COMM -> true if PID runs (not a zombie: PID 1 here reaps orphans late)
# and its /proc comm equals COMM (guards against PID reuse)
alive() {
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  [ "$(cat /proc/"$1"/comm 2>/dev/null)" = "$2" ] || return 1
  local st; st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
pid_of_file() { [ -s "$1" ] && tr -dc '0-9' < "$1" || true; }

if [ "$CMD" = up ]; then
set -euo pipefail

NODE=${SLURM_UP_NODE:-$(hostname -s)}
NODES=${SLURM_UP_NODES:-1}
CPUS=${SLURM_UP_CPUS:-$(nproc)}
MEM_MB=${SLURM_UP_MEM_MB:-$(( $(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo) - 1024 ))}
PARTITION=${SLURM_UP_PARTITION:-debug}
CRED_EXPIRE=${SLURM_UP_CRED_EXPIRE:-30}
MIN_JOB_AGE=${SLURM_UP_MIN_JOB_AGE:-300}
TIMEOUT=${SLURM_UP_TIMEOUT:-90}
CONF=/etc/slurm/slurm.conf
CTLD_PIDFILE=/run/slurmctld.pid
SLURMD_PIDFILE=/run/slurmd.pid
if [ "$NODES" -gt 1 ]; then  # one slurmd per node: %n is the node's name
  SLURMD_PIDFILE=/run/slurmd-%n.pid SLURMD_SPOOL=/var/spool/slurmd/%n SLURMD_LOG=/var/log/slurm/slurmd-%n.log
  NODE_NAMES=$(for i in $(seq "$NODES"); do printf '%s-n%d ' "$NODE" "$i"; done)
  NODE_LINES=$(for i in $(seq "$NODES"); do
    echo "NodeName=${NODE}-n$i NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN"
  done)
  NODE_LIST=${NODE}-n[1-${NODES}]
else
  SLURMD_SPOOL=/var/spool/slurmd SLURMD_LOG=/var/log/slurm/slurmd.log NODE_NAMES=$NODE NODE_LIST=$NODE
  NODE_LINES="NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN"
fi
MUNGE_PIDFILE=/run/munge/munged.pid
MUNGE_SOCKET=/run/munge/munge.socket.2

T_START=$(date +%s.%N)
log() { printf '[slurm-up %s] %s\n' "$(date +%T)" "$*"; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$STATE"


# ---------------------------------------------------------------- 1. packages
PKGS=(munge slurmctld slurmd slurm-client)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Without an init system the packages' postinst scripts must not try to start
  # the daemons (slurmctld/slurmd would fail: no slurm.conf yet). Docker-style
  # images already ship a policy-rc.d that says 101; add a temporary one if not.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  # other processes may hold the apt/dpkg locks: wait for them, and retry
  apt_ok=0
  for try in 1 2 3 4 5; do
    if apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null &&
       apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "${missing[@]}"; then
      apt_ok=1; break
    fi
    log "apt attempt $try failed, retrying in 10 s"; sleep 10
  done
  [ "$apt_ok" = 1 ] || die "apt-get install failed"
else
  log "packages already installed"
fi
log "versions: $(dpkg-query -W -f='${Package}=${Version} ' "${PKGS[@]}")"

# ---------------------------------------------------------------- 2. munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
for d in /run/munge /var/log/munge /var/lib/munge; do mkdir -p "$d"; chown munge:munge "$d"; done
chmod 0755 /run/munge; chmod 0700 /var/log/munge /var/lib/munge

munge_ok() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
if munge_ok; then
  log "munged already running (pid $(pid_of_file $MUNGE_PIDFILE))"
else
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged ||
    { log "munged refused to start, retrying with --force"; runuser -u munge -- /usr/sbin/munged --force; }
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munged does not answer (see /var/log/munge/munged.log)"
  cp "$MUNGE_PIDFILE" "$STATE/munged.pid"
fi

# ---------------------------------------------------------------- 3. slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chmod 0755 /var/spool/slurmctld /var/spool/slurmd
NEWCONF=$(mktemp)
cat > "$NEWCONF" <<EOF
# written by slurm-up.sh: CI cluster of ${NODES} node(s) on one host
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=${CRED_EXPIRE}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
MinJobAge=${MIN_JOB_AGE}
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${CTLD_PIDFILE}
SlurmdPidFile=${SLURMD_PIDFILE}
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=${SLURMD_LOG}
${NODE_LINES}
PartitionName=${PARTITION} Nodes=${NODE_LIST} Default=YES MaxTime=INFINITE State=UP
EOF
CONF_CHANGED=0
if ! cmp -s "$NEWCONF" "$CONF"; then
  [ -f "$CONF" ] && [ ! -f "$CONF.before-slurm-up" ] && cp -p "$CONF" "$CONF.before-slurm-up"
  install -m 0644 "$NEWCONF" "$CONF"; CONF_CHANGED=1
  log "wrote $CONF"
fi
rm -f "$NEWCONF"

# ---------------------------------------------------------------- 4. daemons
# start_daemon NAME[:LABEL] PIDFILE CMD...   (the daemons fork themselves into the background;
# LABEL names our pid file, $STATE/LABEL.pid: slurmd-<node> when there are several)
start_daemon() {
  local name=${1%%:*} label=${1#*:} pidfile=$2; shift 2
  local pid; pid=$(pid_of_file "$pidfile")
  if alive "$pid" "$name"; then
    if [ "$CONF_CHANGED" = 1 ] && [ "$(pid_of_file "$STATE/$label.pid")" = "$pid" ]; then
      log "$name (pid $pid, ours) restarting for new slurm.conf"
      kill -TERM "$pid"; for _ in $(seq 100); do alive "$pid" "$name" || break; sleep 0.1; done
    else
      [ "$CONF_CHANGED" = 1 ] && log "WARNING: $name (pid $pid) was not started by slurm-up; not restarting it"
      log "$name already running (pid $pid)"; return 0
    fi
  fi
  log "starting $name"
  rm -f "$pidfile"
  "$@" || die "$name failed to start (see /var/log/slurm/$name.log)"
  for _ in $(seq 100); do pid=$(pid_of_file "$pidfile"); alive "$pid" "$name" && break; sleep 0.1; done
  alive "$pid" "$name" || die "$name did not stay up (see /var/log/slurm/$name.log)"
  echo "$pid" > "$STATE/$label.pid"
  log "$label pid $pid"
}

start_daemon slurmctld "$CTLD_PIDFILE" /usr/sbin/slurmctld
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer (see /var/log/slurm/slurmctld.log)"
if [ "$CONF_CHANGED" = 1 ]; then  # the slurmd daemons we started for another set of nodes
  for f in "$STATE"/slurmd*.pid; do
    [ -f "$f" ] || continue
    pid=$(pid_of_file "$f")
    if alive "$pid" slurmd; then
      log "$(basename "$f" .pid) (pid $pid, ours) stopping for new slurm.conf"
      kill -TERM "$pid"; for _ in $(seq 100); do alive "$pid" slurmd || break; sleep 0.1; done
    fi
    rm -f "$f"
  done
fi
for n in $NODE_NAMES; do
  if [ "$NODES" -gt 1 ]; then
    mkdir -p "/var/spool/slurmd/$n"
    start_daemon "slurmd:slurmd-$n" "/run/slurmd-$n.pid" /usr/sbin/slurmd -N "$n"
  else
    start_daemon slurmd "$SLURMD_PIDFILE" /usr/sbin/slurmd -N "$n"
  fi
done

# ---------------------------------------------------------------- 5. wait for idle
deadline=$(( $(date +%s) + TIMEOUT ))
for n in $NODE_NAMES; do
  resumed=0
  while :; do
    st=$(sinfo -h -n "$n" -o '%T' 2>/dev/null | head -n1 || true)
    case "$st" in
      idle|mixed|allocated|completing) break ;;
      *drain*|*down*|*inval*|*fail*)
        if [ "$resumed" = 0 ]; then
          log "node $n state '$st', resuming it"
          scontrol update NodeName="$n" State=RESUME 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || { sinfo -R || true; tail -n 20 /var/log/slurm/slurmd*.log || true; die "node $n not idle after ${TIMEOUT}s (state '$st')"; }
    sleep 0.5
  done
done
sinfo
log "cluster up: $NODES node(s) (${NODE_NAMES% }) idle after $(elapsed)s"

exit 0
fi

# ================================================================ down
set -uo pipefail

PURGE=0; [ "${1:-}" = "--purge" ] && PURGE=1
log() { printf '[slurm-down %s] %s\n' "$(date +%T)" "$*"; }

stop() {   # stop NAME[:LABEL] [WAIT_SECONDS]   (our pid file: $STATE/LABEL.pid)
  local name=${1%%:*} label=${1#*:} wait_s=${2:-30} pid
  local f="$STATE/$label.pid"
  [ -f "$f" ] || { log "$label: not started by slurm-up (no $f), leaving it"; return 0; }
  pid=$(pid_of_file "$f")
  if alive "$pid" "$name"; then
    log "$label: SIGTERM to pid $pid"
    kill -TERM "$pid"
    for _ in $(seq $((wait_s * 10))); do alive "$pid" "$name" || break; sleep 0.1; done
    if alive "$pid" "$name"; then log "$label: still alive, SIGKILL to pid $pid"; kill -KILL "$pid"; sleep 0.2; fi
  else
    log "$label: pid ${pid:-?} from $f is not running (or is no longer $name)"
  fi
  rm -f "$f"
}

ours_ctld=$(pid_of_file "$STATE/slurmctld.pid")
if [ "${SLURM_DOWN_KEEP_JOBS:-0}" != 1 ] && alive "$ours_ctld" slurmctld; then
  jobs=$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 60); do [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && break; sleep 1; done
  fi
fi

several=0
for f in "$STATE"/slurmd-*.pid; do [ -f "$f" ] && { several=1; stop "slurmd:$(basename "$f" .pid)" 30; }; done
[ "$several" = 1 ] || stop slurmd 30
stop slurmctld 30
stop munged 10

if [ "$PURGE" = 1 ]; then
  log "purging /var/spool/slurmctld and /var/spool/slurmd"
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*  # (per-node spools are under it)
fi
rmdir "$STATE" 2>/dev/null || true
log "done"
