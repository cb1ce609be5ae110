#!/usr/bin/env bash
# The local demo: an embedded DynamoDB endpoint, a table, a bundled workload (6 samples x 3
# chromosomes), three workers started together, and the final status. No AWS account needed.
set -euo pipefail
cd "$(dirname "$0")/.."
table=demo
run=demo-run
rm -rf "$run" && mkdir -p "$run"

# The tables are kept in $run/endpoint-data: `pyanamo local --path demo-run/endpoint-data` serves them again.
pyanamo local --port 0 --path "$run/endpoint-data" > "$run/endpoint.txt" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q '^export' "$run/endpoint.txt" 2>/dev/null && break; sleep 0.1; done
eval "$(grep '^export' "$run/endpoint.txt")"
export AWS_EC2_METADATA_DISABLED=true   # not on EC2: skip the metadata lookup
echo "local endpoint: $AWS_ENDPOINT_URL_DYNAMODB"

pyanamo create-table "$table"
pyanamo import "$table" examples/tasks.txt --nested-delimiter ,

echo "starting 3 workers (priced as if each were a \$0.10/hour instance) …"
for n in 1 2 3; do
  pyanamo worker "$table" --lease 30 --log-dir "$run/logs" --outputs "$run/outputs" --quiet --price-per-hour 0.10 &
  pids+=($!)
done
wait "${pids[@]}"

pyanamo status "$table"
echo
pyanamo logs "$table" NA12801 --subtask Task_0
echo
pyanamo outputs "$table" --download "$run/results"   # each sub-task's committed files, sha256 checked
pyanamo report "$table" --html "$run/report.html" --trace "$run/trace.tsv" > /dev/null 2>&1
echo "run report: $run/report.html (open it in a browser); trace: $run/trace.tsv"
