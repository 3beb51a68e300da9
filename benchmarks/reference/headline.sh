#!/usr/bin/env bash
# The README's headline bench from a finished reference campaign (benchmarks/campaign.py):
# the one-model and const engines at every CPU precision, measured side by side in one
# defectnet-bench run on the held-out test set, gated cases at the threshold validated for
# gate recall 0.95 on the campaign's validation split.
#
#   benchmarks/reference/headline.sh OUT RESULT_DIR
#
# OUT: the campaign folder (data/, holdout/, stage2-const/, stage2-one-model/).
# RESULT_DIR: where defectnet-bench writes (e.g. benchmarks/results/bench_<date>_...).
# A build that fails its accuracy gate is reported and left out (the bench measures what
# was built; a rejected build is not retried until its folder is deleted); a finished build is
# not repeated. ROWS="one-model" builds one row only and
# stops before the bench (to build it while the other row still trains). Wall time on the project's 2-core VM: see the bench's results.json.
set -u
OUT=${1:?campaign folder}
RESULT=${2:?bench output folder}
BIN=$(dirname "$(command -v defectnet-bench || echo .venv/bin/defectnet-bench)")
THREADS=${THREADS:-2}  # every runtime's threads (the bench records them)
REPEAT=${REPEAT:-1}    # interleaved repetitions per image (the bench reports per-image medians)
export OMP_NUM_THREADS=$THREADS

for row in ${ROWS:-one-model const}; do
  run="$OUT/stage2-$row"
  [ -f "$run/engine/manifest.json" ] || "$BIN/defectnet-export" --checkpoint "$run" --data "$OUT/data" || exit 1
  # out folder name : build flags (the names defectnet-build-engine gives them by default)
  builds=("int8:--int8 --backend onnxruntime" "int8-openvino:--int8 --backend openvino"
          "fp16-openvino:--fp16 --backend openvino")
  [ "$row" = const ] && builds+=("auto:--backend auto")
  for build in "${builds[@]}"; do
    out="$run/engine-${build%%:*}" flags=${build#*:}
    [ -f "$out/manifest.json" ] && continue  # built before (a rerun resumes)
    if [ -f "$out/manifest.rejected.json" ]; then  # failed its accuracy gate before: delete the folder to retry
      echo "[headline] $row: '$flags' failed its accuracy gate before ($out/manifest.rejected.json); left out"
      continue
    fi
    # shellcheck disable=SC2086  # flags are words
    "$BIN/defectnet-build-engine" --engine "$run/engine" --data "$OUT/data" --threads "$THREADS" --out "$out" $flags \
      || echo "[headline] $row: build '$flags' failed; left out of the bench"
  done
done

[ -n "${ROWS:-}" ] && exit 0
"$BIN/defectnet-bench" --engine "$OUT/stage2-one-model/engine" --engine "$OUT/stage2-const/engine" \
  --data "$OUT/holdout" --normal-share 0.45 --max-images 300 --target-recall 0.95 \
  --val-data "$OUT/data" --val-split test --backends torch,onnxruntime,openvino,auto \
  --threads "$THREADS" --repeat "$REPEAT" --warmup 2 --batch 1 --no-progress --out "$RESULT"
