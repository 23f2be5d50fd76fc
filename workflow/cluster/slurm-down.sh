#!/usr/bin/env bash
# Stop the single-node cluster started by slurm-up.sh and remove the config it wrote.
#   sudo workflow/cluster/slurm-down.sh          (TEDDY_SLURM_DIR as for slurm-up.sh)
set -uo pipefail

DIR=${TEDDY_SLURM_DIR:-/var/tmp/teddy-slurm}
MARK="# written by teddy workflow/cluster/slurm-up.sh"
[ "$(id -u)" -eq 0 ] || { echo "slurm-down: run as root" >&2; exit 1; }

command -v scancel >/dev/null && scancel --full --user=root 2>/dev/null || true
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
done
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    [ -e "$f" ] && grep -qF "$MARK" "$f" && rm -f "$f"
done
rm -rf "$DIR"
echo "slurm-down: stopped (munged left running: other services may use it)"
