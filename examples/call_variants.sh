#!/usr/bin/env bash
# A stand-in for a per-chromosome variant call: about a second of work, a small output file in
# $PYANAMO_OUTDIR (the worker commits it when the sub-task succeeds; outside a worker: ./output).
set -euo pipefail
sample=$1 chrom=$2
out=${PYANAMO_OUTDIR:-output}
mkdir -p "$out"
sleep 1
{
  echo "##fileformat=VCFv4.2"
  echo "##source=pyanamo-demo item=$PYANAMO_ITEM_ID subtask=$PYANAMO_SUBTASK"
  printf '#CHROM\tPOS\tID\tREF\tALT\n'
  for pos in 1000 2000 3000; do printf '%s\t%d\t.\tA\tG\n' "$chrom" $((pos + RANDOM % 500)); done
} > "$out/$sample.$chrom.vcf"
echo "called $sample $chrom"
