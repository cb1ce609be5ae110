#!/usr/bin/env bash
# PyAnamo instance bootstrap (the body of the fleet's user-data).
#
# Installs the worker from the runtime asset into a virtualenv and runs it until the queue is
# drained; then the instance leaves its Auto Scaling group with the desired capacity lowered,
# so the fleet shrinks to zero. Settings come from the environment (the user-data sets them):
#   PYANAMO_TABLE        the task table (required)
#   PYANAMO_ASSET        the runtime: s3://bucket/key.zip, a local .zip, or a local folder (required)
#   PYANAMO_WORKER_ARGS  extra `pyanamo worker` arguments (e.g. --lease 300 --items 2)
#   PYANAMO_HOME         install folder (default /opt/pyanamo)
#   PYANAMO_PYTHON       Python >= 3.11 to use (default python3.11, installed with dnf if missing)
#   PYANAMO_MODE         systemd (default: a service under an unprivileged user) or foreground
#   PYANAMO_SETUP        the user's set-up script (s3://… or a local file), run as root before the worker
#   PYANAMO_SETUP_TIMEOUT  seconds the set-up may take (default 3600)
#   PYANAMO_LOG_BUCKET   bucket/prefix where a failed boot's log goes
#
# A boot that fails (any command here, the set-up, or its time limit) is not left idling: its log
# goes to the log bucket, a boot_failed record into the table, and the instance leaves its group.
set -euo pipefail

table=${PYANAMO_TABLE:?PYANAMO_TABLE is not set}
asset=${PYANAMO_ASSET:?PYANAMO_ASSET is not set}
home=${PYANAMO_HOME:-/opt/pyanamo}
python=${PYANAMO_PYTHON:-python3.11}
mode=${PYANAMO_MODE:-systemd}
read -r -a worker_args <<< "${PYANAMO_WORKER_ARGS:-}"
mkdir -p "$home"
log=$home/bootstrap.log
exec > >(tee -a "$log") 2>&1

boot_failed() {
  trap - ERR
  echo "pyanamo bootstrap: boot failed (line $1, exit $2)"
  if [ -x "$home/venv/bin/pyanamo" ]; then
    "$home/venv/bin/pyanamo" fleet boot-failed --log "$log" --table "$table" \
      ${PYANAMO_LOG_BUCKET:+--log-bucket "$PYANAMO_LOG_BUCKET"} || true
  else  # the worker is not installed: the AWS CLI of the image does what it can
    token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token || true)
    instance=$(curl -sf -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id || true)
    [ -n "${PYANAMO_LOG_BUCKET:-}" ] && aws s3 cp --only-show-errors "$log" \
      "s3://$PYANAMO_LOG_BUCKET/boot-failures/${instance:-unknown}-$(date +%s).log" || true
    [ -n "$instance" ] && aws autoscaling terminate-instance-in-auto-scaling-group --instance-id "$instance" \
      --should-decrement-desired-capacity || true
  fi
  exit 1
}
trap 'boot_failed $LINENO $?' ERR

if ! command -v "$python" > /dev/null; then
  dnf install -y python3.11 python3.11-pip
fi
# Scratch: on instance types with instance-store NVMe disks (c6id, m6id, i4i, ...) the work folder,
# where sub-tasks and their outputs live, goes on them (striped when there are several): faster than
# EBS, and not bound by volume_size. Elsewhere it stays on the root volume.
mapfile -t disks < <(lsblk -dpno NAME,MODEL 2>/dev/null | awk '/Instance Storage/ {print $1}')
if [ "${#disks[@]}" -gt 0 ] && ! mountpoint -q "$home/work"; then
  scratch=${disks[0]}
  if [ "${#disks[@]}" -gt 1 ] && command -v mdadm > /dev/null; then
    mdadm --create /dev/md/pyanamo --run --level=0 --raid-devices="${#disks[@]}" "${disks[@]}"
    scratch=/dev/md/pyanamo
  fi
  mkfs.xfs -f -q "$scratch"
  mkdir -p "$home/work"
  mount -o noatime "$scratch" "$home/work"
  echo "pyanamo bootstrap: work folder on instance store ${disks[*]}"
fi
mkdir -p "$home/work" "$home/logs"

case "$asset" in
  s3://*) aws s3 cp --only-show-errors "$asset" "$home/runtime.zip"; asset=$home/runtime.zip ;;
esac
if [[ "$asset" == *.zip ]]; then
  rm -rf "$home/runtime"
  "$python" -m zipfile -e "$asset" "$home/runtime"
  asset=$home/runtime
fi
"$python" -m venv "$home/venv"
# Offline: the asset carries the wheels of every pinned dependency (runtime/fleet-lock.txt).
"$home/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
  --find-links "$asset/wheels" "$asset"
pyanamo=$home/venv/bin/pyanamo

if [ -n "${PYANAMO_SETUP:-}" ]; then  # the user's tools: run once, as root, with a time limit
  setup=$PYANAMO_SETUP
  case "$setup" in
    s3://*) aws s3 cp --only-show-errors "$setup" "$home/setup.sh"; setup=$home/setup.sh ;;
  esac
  echo "pyanamo bootstrap: running the set-up $PYANAMO_SETUP"
  timeout "${PYANAMO_SETUP_TIMEOUT:-3600}" bash "$setup"
fi
worker=("$pyanamo" worker "$table" --log-dir "$home/logs" --workdir "$home/work" "${worker_args[@]}")

# A worker that crashed (killed by a signal other than a stop's SIGTERM/SIGINT: the OOM killer,
# a sub-task's pkill) is started again, at most 3 times; any other end is final.
cat > "$home/run-worker.sh" <<RUN
#!/usr/bin/env bash
for start in 1 2 3 4; do
  code=0
  $(printf '%q ' "${worker[@]}") || code=\$?
  case \$code in 0|1|2|3|130|143) exit \$code ;; esac
  echo "pyanamo: the worker crashed (exit \$code); start \$((start + 1)) of 4" >&2
done
exit \$code
RUN
chmod 755 "$home/run-worker.sh"
trap - ERR

if [ "$mode" = foreground ]; then
  code=0
  "$home/run-worker.sh" || code=$?
  "$pyanamo" fleet leave --worker-exit "$code"
  exit 0
fi

# systemd: the worker runs as root, so that it can run sub-tasks as the unprivileged task user
# (--run-as in the worker's arguments), whom a firewall rule keeps from the metadata service and
# with it from the instance role's keys. Whenever the worker ends (drained, failed, crashed past
# its restarts, killed), ExecStopPost takes the instance out of its group, unless the machine is
# shutting down or goes anyway (Spot notice, Auto Scaling terminating it).
trap 'boot_failed $LINENO $?' ERR
task_user=pyanamo-task
id "$task_user" > /dev/null 2>&1 || useradd --system --home-dir "$home/work" --shell /sbin/nologin "$task_user"
command -v nft > /dev/null || command -v iptables > /dev/null || dnf install -y nftables
deny_imds "$task_user"
chown "$task_user:" "$home/work"
trap - ERR
cat > "$home/after-worker.sh" <<AFTER
#!/usr/bin/env bash
# systemd sets EXIT_CODE (exited, killed, ...) and EXIT_STATUS for ExecStopPost.
if [ "\$(systemctl is-system-running 2>/dev/null)" = stopping ]; then exit 0; fi
if [ "\$EXIT_CODE" = exited ]; then code=\$EXIT_STATUS; else code=-1; fi
exec "$pyanamo" fleet leave --worker-exit "\$code"
AFTER
chmod 755 "$home/after-worker.sh"
cat > /etc/systemd/system/pyanamo-worker.service <<UNIT
[Unit]
Description=PyAnamo worker for table $table
Wants=network-online.target
After=network-online.target

[Service]
User=root
WorkingDirectory=$home/work
Environment=AWS_REGION=${AWS_REGION:-}
ExecStart=$home/run-worker.sh
ExecStopPost=$home/after-worker.sh
KillMode=control-group
Delegate=yes
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=no

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now pyanamo-worker.service
