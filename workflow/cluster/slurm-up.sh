#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this Debian machine (munge + slurmctld + slurmd),
# with one fake GPU (gres gpu:fake:1 backed by /dev/null) so GPU-requesting rules can be tested
# on CPU. For tests and workstations; a real cluster already has all of this.
#
#   sudo workflow/cluster/slurm-up.sh            # needs root: daemons, /etc/slurm, /run/munge
#   workflow/cluster/slurm-down.sh                # stop it and remove what this script wrote
#
# Env: TEDDY_SLURM_DIR (state, logs; default /var/tmp/teddy-slurm), TEDDY_SLURM_INSTALL=1 to
# apt-get the Debian packages when missing. Idempotent: a running cluster it started is reused.
set -euo pipefail

DIR=${TEDDY_SLURM_DIR:-/var/tmp/teddy-slurm}
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
MARK="# written by teddy workflow/cluster/slurm-up.sh"

die() { echo "slurm-up: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (it starts munged/slurmctld/slurmd and writes $CONF)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
    if [ "${TEDDY_SLURM_INSTALL:-0}" = 1 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    else
        die "SLURM is not installed: apt-get install -y slurmctld slurmd slurm-client munge (or TEDDY_SLURM_INSTALL=1)"
    fi
fi

# Never overwrite a SLURM config this script did not write.
for f in "$CONF" "$GRES"; do
    if [ -e "$f" ] && ! grep -qF "$MARK" "$f"; then
        die "$f exists and was not written by this script; refusing to overwrite it (move it away first)"
    fi
done

if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm-up: cluster already running"; exit 0
fi

mkdir -p "$DIR"/{state,slurmd} /etc/slurm
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 1024 ))

# munge: the key comes with the package; the daemon runs as user munge.
if [ ! -s /etc/munge/munge.key ]; then
    (command -v mungekey >/dev/null && mungekey --create --force) \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"

cat > "$CONF" <<CONF
$MARK (state and logs in $DIR)
ClusterName=teddy
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$GRES" <<CONF
$MARK
AutoDetect=off
NodeName=$HOST Name=gpu Type=fake File=/dev/null
CONF

/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 100); do
    sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)$' && break
    sleep 0.2
done
sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)$' \
    || die "node did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log ($(sinfo -h -o '%T %E'))"
echo "slurm-up: cluster 'teddy' up on $HOST: $CPUS CPUs, ${MEM_MB} MB, 1 fake GPU; partition debug"
