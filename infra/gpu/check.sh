#!/usr/bin/env bash
# The one-call GPU check (issue 20), run on the offline GPU machine from the repository root, after
# infra/gpu/prepare.sh filled infra/gpu/carry/ on a CPU machine (see infra/gpu/README.md for the call):
#   0. install the carried wheels (--no-index) and unpack the carried dataset
#   1. pytest -m gpu tests/test_gpu.py tests/test_data_device.py   uint8 normalised on the GPU, bf16 numerics, flash SDPA, nccl, ZeRO-2 bf16, resume, model.pt
#   2. python launch.py                  the embedded default, on the GPU
#   3. python -m msca.bench train        ViT/TokenShift/MSCA-B/16, 8x224, bf16, one run: clips/s, TFLOP/s, MFU,
#                                        peak memory, data-wait share
#   4. python -m msca.bench data         the data pipeline's clips/s on one core and on all cores
# and prints one table (infra/gpu/report.py). Each step has a time limit and its failure is recorded in the
# report, never the end of the check. Everything lands in $OUT (the device tool's folder; else
# infra/gpu/report/): report.md, one log per step, the benchmarks' JSON. At most 8 minutes: the steps' limits
# add up to 475 s.
#
# MSCA_GPU_CHECK_SMOKE=1 runs the same steps shrunk (tiny models, a few steps, no install) with this machine's
# Python, to prove the plumbing on a CPU machine.
set -uo pipefail  # no -e: a failed step is recorded and the next one runs
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"
carry="$here/infra/gpu/carry"
smoke="${MSCA_GPU_CHECK_SMOKE:-0}"
out="${OUT:-$here/infra/gpu/report}"
mkdir -p "$out"
py="${PYTHON:-python3}"
work="${MSCA_GPU_WORK:-/tmp/msca-gpu-check}"  # scratch; what comes back is $out (at most 8 files)
rm -rf "$work" && mkdir -p "$work"
status="$work/steps.tsv"  # name, exit status, seconds, limit
: >"$status"
export PYTHONUNBUFFERED=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME LIMIT_S CMD...: run with a time limit, output to ${LOGDIR:-$out}/NAME.log, status to $status
  local name=$1 limit=$2 log="${LOGDIR:-$out}/$1.log"; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout -k 15 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$status"
  echo "   exit $rc after $((SECONDS - t0))s"
  tail -n 3 "$log" | sed 's/^/   | /'
}

describe() {  # what ran where: the card, the software, the commit
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
  "$py" -c "import deepspeed, hydra, boto3, submitit, simplejpeg; print('deepspeed', deepspeed.__version__, \
'| hydra', hydra.__version__)" 2>&1 | grep -v "^\[" | tail -n 1
  echo "cores $(nproc)"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || cat "$carry/COMMIT" 2>/dev/null || echo unknown)"
}

mkdir -p "$work/data"
export MSCA_DATA_ROOT="$work/data"
if [[ "$smoke" == 1 ]]; then
  [[ -f "$carry/synthetic.tgz" ]] && tar xzf "$carry/synthetic.tgz" -C "$work/data"
  models=vit_tiny,tokenshift_tiny,msca_tiny
  launch_args=(train.max_steps=4 train.val_every=0 eval.at_end=false)
  train_args=(--steps 2 --rounds 1)
  shape_args=()
  data_args=(--videos 2 --frames 260 --height 96 --width 128 --clips 4 --rounds 1 --workers "0,1")
  limits=(60 120 240 120)
else
  export PYTHONPATH="$work/site:$PYTHONPATH"
  # the carried wheels into a private site, ahead of the image's packages, which stay as they are
  LOGDIR="$work" step install 45 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$work/site" "$carry"/wheels/*.whl
  tar xzf "$carry/synthetic.tgz" -C "$work/data"
  models=vit_b16,tokenshift_b16,msca_b16
  launch_args=()
  train_args=(--steps 20 --rounds 3)
  # 8x224 clips, 8 per GPU (as the K400 experiments), the trainer's own pinned loader with 8 of the 16 cores
  shape_args=(deepspeed=zero2_bf16 data.crop_size=224 "data.train_short_side=[224,256]" data.test_short_side=224
              data.batch_size=8 data.num_workers=8)
  data_args=(--videos 4 --frames 300 --clips 16 --rounds 2 --workers "0,15")  # 15 workers + this process
  limits=(120 110 140 60)  # with the install's 45 s: 475 s at most
fi
describe | tee "$work/machine.txt"
step gpu_tests "${limits[0]}" "$py" -m pytest -q -rA -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_data_device.py
step launch "${limits[1]}" "$py" launch.py run.name=gpu-default "store.root=$work/store" "${launch_args[@]}"
step bench_train "${limits[2]}" "$py" -m msca.bench train --models "$models" "${train_args[@]}" \
  --json "$out/bench_train.json" "${shape_args[@]}"
step bench_data "${limits[3]}" "$py" -m msca.bench data --no-s3 --dir "$work" --json "$out/bench_data.json" \
  "${data_args[@]}"
"$py" infra/gpu/report.py "$out" "$work" | tee "$out/report.md"
