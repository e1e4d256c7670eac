#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster ("snakemaps-test") on this machine,
# for tests of the SLURM profile (tests/test_slurm_cluster.py).
#
# - Debian/Ubuntu, run as root, no systemd needed: daemons are started directly.
# - Idempotent: a second run only checks that everything is up (well under 1 s).
# - Installs munge, slurmctld, slurmd, slurm-client with apt if they are missing.
# - Writes /etc/munge/munge.key (if absent), /etc/slurm/slurm.conf, /etc/slurm/gres.conf.
#   It refuses to overwrite a slurm.conf it did not write (SNAKEMAPS_SLURM_FORCE=1 overrides).
# - One node (this host), partition "debug" (default), cons_tres + CR_Core_Memory so
#   several 1-CPU jobs run side by side, one fake GPU (gpu:fake:1, File=/dev/null) so
#   that `--gpus=1` jobs are scheduled and see CUDA_VISIBLE_DEVICES=0.
# - No accounting (no slurmdbd): use `slurm-status-command: squeue` (profiles/slurm).
# - PIDs of the daemons it started go to $STATE_DIR/*.pid; tests/slurm/down.sh stops them.
#
# Environment: SNAKEMAPS_SLURM_STATE_DIR (default /run/snakemaps-slurm),
#              SNAKEMAPS_SLURM_WAIT (seconds to wait for the node, default 60),
#              SNAKEMAPS_SLURM_FORCE=1 (overwrite a foreign /etc/slurm/slurm.conf).
set -euo pipefail

STATE_DIR=${SNAKEMAPS_SLURM_STATE_DIR:-/run/snakemaps-slurm}
SPOOL_DIR=/var/spool/slurm-snakemaps
LOG_DIR=/var/log/slurm-snakemaps
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
MARKER="# Managed by snakemaps tests/slurm/up.sh"
WAIT=${SNAKEMAPS_SLURM_WAIT:-60}
PACKAGES=(munge slurmctld slurmd slurm-client)

t0=$(date +%s.%N)
say() { echo "[slurm up] $*"; }
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

show_logs() {
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        if [[ -r $f ]]; then
            echo "----- tail of $f -----" >&2
            tail -n 25 "$f" >&2
        fi
    done
}
# Exit codes: 1 = the cluster did not come up, 2 = not root (and the cluster is
# not up), 3 = the packages could not be installed.
die() {
    echo "[slurm up] ERROR: $*" >&2
    show_logs
    exit 1
}
die_code() {
    local code=$1
    shift
    echo "[slurm up] ERROR: $*" >&2
    exit "$code"
}

# alive NAME: the daemon NAME recorded in $STATE_DIR/NAME.pid is running
alive() {
    local pidf=$STATE_DIR/$1.pid pid
    [[ -r $pidf ]] || return 1
    pid=$(tr -dc '0-9' <"$pidf")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]
}

node_state() {
    sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1
}

node_ready() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

NODE=$(hostname -s)

# Everything below is idempotent and cheap when the cluster is already up.
if [[ $EUID -ne 0 ]]; then
    if command -v sinfo >/dev/null && alive slurmctld && alive slurmd && node_ready; then
        say "cluster snakemaps-test is up: node $NODE is $(node_state) (not root: nothing checked or changed)"
        exit 0
    fi
    die_code 2 "the cluster is not up and starting it needs root (run: sudo $0)"
fi

# ---------------------------------------------------------------- packages
missing=()
for cmd in munged slurmctld slurmd sinfo sbatch squeue scontrol; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die_code 3 "missing ${missing[*]} and no apt-get to install them"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/tmp/snakemaps-slurm-apt.log 2>&1; then
        say "apt-get install failed, running apt-get update and retrying"
        apt-get update >>/tmp/snakemaps-slurm-apt.log 2>&1 || true
        apt-get install -y --no-install-recommends "${PACKAGES[@]}" >>/tmp/snakemaps-slurm-apt.log 2>&1 \
            || { tail -n 20 /tmp/snakemaps-slurm-apt.log >&2; die_code 3 "apt-get install ${PACKAGES[*]} failed (log: /tmp/snakemaps-slurm-apt.log)"; }
    fi
    for cmd in munged slurmctld slurmd sinfo sbatch squeue scontrol; do
        command -v "$cmd" >/dev/null || die_code 3 "$cmd still missing after installing ${PACKAGES[*]}"
    done
    say "installed packages ($(elapsed) s)"
fi

mkdir -p "$STATE_DIR" "$SPOOL_DIR/ctld" "$SPOOL_DIR/d" "$LOG_DIR" "$CONF_DIR"
chmod 755 "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"

# ---------------------------------------------------------------- munge
id munge >/dev/null 2>&1 || die "user munge does not exist (is the munge package installed?)"
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if alive munged; then
        say "munged already running (pid $(cat "$STATE_DIR/munged.pid"))"
    else
        say "munged already running (not started by this script; leaving it alone)"
    fi
else
    say "starting munged"
    runuser -u munge -- munged --force || die "munged failed to start"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null 2>&1 || die "munged does not answer"
    [[ -r /run/munge/munged.pid ]] && cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
fi

# ---------------------------------------------------------------- config
hw=$(slurmd -C | head -n1) || die "slurmd -C failed"
[[ $hw == NodeName=* ]] || die "unexpected output of slurmd -C: $hw"
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
hw_fields=$(echo "$hw" | sed -e 's/^NodeName=[^ ]* *//')
cpus=$(echo "$hw" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
mem=$(echo "$hw" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[[ -n $cpus && -n $mem ]] || die "could not read CPUs/RealMemory from: $hw"

if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF" && [[ ${SNAKEMAPS_SLURM_FORCE:-0} != 1 ]]; then
    die_code 1 "$CONF exists and was not written by this script; refusing to overwrite it (set SNAKEMAPS_SLURM_FORCE=1 to override)"
fi

new_conf=$(mktemp)
new_gres=$(mktemp)
trap 'rm -f "$new_conf" "$new_gres"' EXIT
cat >"$new_conf" <<EOF
$MARKER
# inputs: $hw node=$NODE
# Single-node test cluster for snakemaps; see tests/slurm/README.md.
ClusterName=snakemaps-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
# no accounting: sacct does not work, use squeue for job status
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# keep finished jobs visible to squeue/scontrol for 5 minutes
MinJobAge=300
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
# At a job's time limit (checked every 30 s, so 0-30 s late) SLURM sends SIGCONT
# and SIGTERM to all its processes, then SIGKILL KillWait seconds later. 10 s
# (clusters often use 30) is ample for the trainer's checkpoint on tiny data.
# OverTimeLimit=0: no grace minutes past the limit (the default, stated here
# because the time-limit test relies on it).
KillWait=10
OverTimeLimit=0
StateSaveLocation=$SPOOL_DIR/ctld
SlurmdSpoolDir=$SPOOL_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 $hw_fields Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$new_gres" <<EOF
$MARKER
# A fake GPU: lets jobs ask for --gpus=1 (they then see CUDA_VISIBLE_DEVICES=0).
NodeName=$NODE Name=gpu Type=fake File=/dev/null
EOF

changed=0
if ! cmp -s "$new_conf" "$CONF"; then
    install -m 0644 "$new_conf" "$CONF"
    say "wrote $CONF (node $NODE: CPUs=$cpus RealMemory=$mem, 1 fake GPU)"
    changed=1
fi
if ! cmp -s "$new_gres" "$GRES_CONF"; then
    install -m 0644 "$new_gres" "$GRES_CONF"
    say "wrote $GRES_CONF"
    changed=1
fi

# ---------------------------------------------------------------- daemons
stop_daemon() {
    local name=$1 pid
    alive "$name" || return 0
    pid=$(tr -dc '0-9' <"$STATE_DIR/$name.pid")
    say "stopping $name (pid $pid) to apply the new configuration"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$STATE_DIR/$name.pid"
}

start_daemon() {
    local name=$1
    shift
    if alive "$name"; then
        say "$name already running (pid $(cat "$STATE_DIR/$name.pid"))"
        return 0
    fi
    if pgrep -x "$name" >/dev/null 2>&1; then
        die "a $name is running that was not started by this script (pids: $(pgrep -x "$name" | tr '\n' ' ')); stop it first"
    fi
    rm -f "$STATE_DIR/$name.pid"
    say "starting $name"
    "$name" "$@" || die "$name failed to start"
    for _ in $(seq 100); do
        alive "$name" && break
        sleep 0.1
    done
    alive "$name" || die "$name did not stay up (no live pid in $STATE_DIR/$name.pid)"
    say "$name running (pid $(cat "$STATE_DIR/$name.pid"))"
}

if ((changed)); then
    stop_daemon slurmd
    stop_daemon slurmctld
fi
start_daemon slurmctld
for _ in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && break
    sleep 0.1
done
scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer scontrol ping"
start_daemon slurmd

# ---------------------------------------------------------------- wait for the node
say "waiting up to ${WAIT} s for node $NODE to become idle"
deadline=$(($(date +%s) + WAIT))
resumed=0
while :; do
    state=$(node_state)
    node_ready && break
    case "$state" in
        *drain* | down | fail | unknown)
            # "down*" (not responding) just needs time; plain down/drained needs a resume
            if ((!resumed)) && [[ $state != *'*' ]]; then
                say "node $NODE is $state ($(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null)); resuming it"
                scontrol update nodename="$NODE" state=resume 2>&1 || true
                resumed=1
            fi
            ;;
    esac
    if (($(date +%s) >= deadline)); then
        sinfo -N -l >&2 || true
        die "node $NODE is '$state' after ${WAIT} s (reason: $(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null))"
    fi
    sleep 0.5
done
say "cluster snakemaps-test is up: node $NODE is $(node_state), partition debug ($(elapsed) s)"
sinfo
