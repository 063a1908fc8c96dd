#!/usr/bin/env bash
# The accuracy table of benchmarks/results/accuracy.md on this 2-core CPU: plain and shifted synthetic data, three
# data seeds each (training seed = data seed), two runs at a time (one thread each).
#   core rows, every data set: esccs, esccs-paper, source-only, optical-only, sar-only, tlf-late, oracle-dual, and the
#     two optical -> SAR transfers measured against sar-only: ttl, cycit
#   other baselines and oracles, data seed 0 of each option: kd-s, tlf, kdhn, gdl, spl, oracle-optical, oracle-sar
#   ablations of our options, plain data seed 0; no-radiometric, no-calibration and one-round on shifted seed 0
# Usage: benchmarks/accuracy_table.sh [WORK_DIR]   (default runs/table; re-running resumes: finished stages load)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/table}
ESCCS=${ESCCS:-.venv/bin/esccs}
SAMPLES=${SAMPLES:-2000}
SIZE=${SIZE:-32}
CONFIG=${CONFIG:-configs/table_cpu.yaml}
CORE=esccs,esccs-paper,source-only,optical-only,sar-only,tlf-late,oracle-dual,ttl,cycit
MORE=kd-s,tlf,kdhn,gdl,spl,oracle-optical,oracle-sar
ABLATIONS=no-rounds,one-round,teacher-vote,mixture,no-source-clouds,no-cloud-step1,relabel-both,no-calibration
SHIFT_ABLATIONS=no-radiometric,no-calibration,one-round  # the radiometric correction acts on shifted data only
mkdir -p "$WORK/data" "$WORK/logs"
export OMP_NUM_THREADS=1

job() {  # job OPTION SEED
  local opt=$1 seed=$2 shift_flag=() data="$WORK/data/$1_s$2" run="$WORK/$1_s$2"
  [ "$opt" = shift ] && shift_flag=(--shift season+sensor)
  [ -f "$data/dataset.json" ] || "$ESCCS" data synth "$data" --samples "$SAMPLES" --size "$SIZE" \
    --patches-per-scene 20 --seed "$seed" "${shift_flag[@]}" --workers 1 --quiet --overwrite
  local methods=$CORE ablations=""
  [ "$seed" = 0 ] && methods="$CORE,$MORE"
  [ "$seed" = 0 ] && [ "$opt" = plain ] && ablations=$ABLATIONS
  [ "$seed" = 0 ] && [ "$opt" = shift ] && ablations=$SHIFT_ABLATIONS
  "$ESCCS" train --data "$data" --out "$run" --seed "$seed" --method "$methods" ${ablations:+--ablation "$ablations"} \
    --config "$CONFIG" --quiet
}
export -f job
export WORK ESCCS SAMPLES SIZE CONFIG CORE MORE ABLATIONS SHIFT_ABLATIONS

start=$(date +%s)
# the two longest runs first, then the rest fill the two lanes
printf '%s\n' "plain 0" "shift 0" "plain 1" "shift 1" "plain 2" "shift 2" |
  xargs -P 2 -L 1 bash -c 'job $0 $1 > "$WORK/logs/$0_s$1.log" 2>&1 && echo "done $0 $1" || { echo "FAILED $0 $1"; exit 255; }'
echo "training: $(( ($(date +%s) - start) / 60 )) min"
