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
set -euo pipefail

table=${PYANAMO_TABLE:?PYANAMO_TABLE is not set}
asset=${PYANAMO_ASSET:?PYANAMO_ASSET is not set}
home=${PYANAMO_HOME:-/opt/pyanamo}
python=${PYANAMO_PYTHON:-python3.11}
mode=${PYANAMO_MODE:-systemd}
read -r -a worker_args <<< "${PYANAMO_WORKER_ARGS:-}"

if ! command -v "$python" > /dev/null; then
  dnf install -y python3.11 python3.11-pip
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
"$home/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$asset"
pyanamo=$home/venv/bin/pyanamo
worker=("$pyanamo" worker "$table" --log-dir "$home/logs" --workdir "$home/work" "${worker_args[@]}")

if [ "$mode" = foreground ]; then
  code=0
  "${worker[@]}" || code=$?
  "$pyanamo" fleet leave --worker-exit "$code"
  exit 0
fi

# systemd: the worker runs as an unprivileged user; when it exits, ExecStopPost decides
# whether the instance leaves its group (not when it was stopped by a signal).
id pyanamo > /dev/null 2>&1 || useradd --system --home-dir "$home/work" --shell /sbin/nologin pyanamo
chown -R pyanamo: "$home/work" "$home/logs"
cat > "$home/after-worker.sh" <<AFTER
#!/usr/bin/env bash
# systemd sets EXIT_CODE (exited, killed, ...) and EXIT_STATUS for ExecStopPost.
if [ "\$EXIT_CODE" = exited ]; then code=\$EXIT_STATUS; else code=143; fi
exec "$pyanamo" fleet leave --worker-exit "\$code"
AFTER
chmod 755 "$home/after-worker.sh"
cat > /etc/systemd/system/pyanamo-worker.service <<UNIT
[Unit]
Description=PyAnamo worker for table $table
Wants=network-online.target
After=network-online.target

[Service]
User=pyanamo
WorkingDirectory=$home/work
Environment=AWS_REGION=${AWS_REGION:-}
ExecStart=${worker[*]}
ExecStopPost=$home/after-worker.sh
KillMode=control-group
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=no

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now pyanamo-worker.service
