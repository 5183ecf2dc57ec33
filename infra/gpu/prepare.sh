#!/usr/bin/env bash
# Prepares, on a CPU machine that reaches the package registries, everything infra/gpu/check.sh needs on the
# offline GPU machine, in one git-ignored folder that the device tool carries (infra/gpu/carry/, < 64 MiB):
#   wheels/          what msca imports that the GPU image (python3.12, torch 2.11 CUDA 13) lacks, at the versions
#                    this project's .venv runs and its tests pass with; DeepSpeed built here with its ops left to
#                    JIT (DS_BUILD_OPS=0: a pure-Python wheel, no CUDA toolkit needed here)
#   synthetic.tgz    the embedded default's dataset (configs/data/synthetic.yaml), so the check spends no GPU
#                    time generating it
# then proves the wheel set installs with --no-index into a clean Python 3.12 and that nothing it needs is
# missing (infra/gpu/verify_wheels.py). Idempotent; rebuilds from scratch each time.
#
#   bash infra/gpu/prepare.sh        # PYTHON=, PYTHON312=, MSCA_GPU_CARRY= to override the defaults below
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
carry="${MSCA_GPU_CARRY:-$here/infra/gpu/carry}"
py="${PYTHON:-$here/.venv/bin/python}"
[[ -x "$py" ]] || { echo "prepare: no $py (bash infra/setup.sh first, or set PYTHON=)" >&2; exit 1; }  # the project's venv: its versions are the pins; it builds DeepSpeed
py312="${PYTHON312:-}"  # the GPU image's Python version, for the install check
for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python; do  # a pyenv shim may exist but not run
  [[ -n "$py312" ]] || ! "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null || py312="$c"
done
[[ -n "$py312" ]] || { echo "prepare: no Python 3.12 for the install check (set PYTHON312=)" >&2; exit 1; }
limit_mib="${MSCA_GPU_CARRY_MIB:-60}"   # the device tool's 64 MiB, less the repository itself

# msca's imports the image lacks, and their own requirements the image lacks (infra/gpu/image-packages.txt).
CARRY=(deepspeed hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
       hydra-core omegaconf antlr4-python3-runtime boto3 botocore s3transfer jmespath submitit simplejpeg)
SDIST_ONLY=(deepspeed antlr4-python3-runtime)  # no wheels on PyPI: built here
PLATFORM=(--python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

quiet() {  # run a command; show its output (without pip's notes on this machine's unusable mirrors) only if it fails
  local out
  out=$("$@" 2>&1) || { grep -v "is ignored" <<<"$out" >&2; return 1; }
}

pins() {  # NAME==VERSION for each argument, as installed in $py
  "$py" -c 'import importlib.metadata as m, sys; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "$@"
}

fetch_wheels() {  # binary and pure-Python wheels for the GPU's Python, no dependencies (each is listed)
  local names=()
  for n in "${CARRY[@]}"; do [[ " ${SDIST_ONLY[*]} " == *" $n "* ]] || names+=("$n"); done
  # shellcheck disable=SC2046  # pins prints one word per package
  quiet "$py" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$carry/wheels" \
    $(pins "${names[@]}")
}

build_sdists() {  # DeepSpeed with no prebuilt ops (they JIT at run time on the GPU); --no-cache-dir so the
  # environment below applies to this build, not to a wheel cached by another build
  # shellcheck disable=SC2046
  DS_BUILD_OPS=0 quiet "$py" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir --no-binary :all: \
    -w "$carry/wheels" $(pins "${SDIST_ONLY[@]}")
  local ds; ds=$(ls "$carry"/wheels/deepspeed-*-py3-none-any.whl)
  unzip -p "$ds" deepspeed/git_version_info_installed.py | grep -q "installed_ops=.*True" \
    && { echo "prepare: $ds has prebuilt ops (built for this CPU): refusing" >&2; exit 1; }
  return 0
}

make_data() {  # the default run's dataset, generated exactly as launch.py would (same config, same checks)
  local tmp; tmp=$(mktemp -d)
  (cd "$here" && MSCA_DATA_ROOT="$tmp" "$py" - <<'EOF'
from hydra import compose, initialize_config_dir
from msca.config import register_schema
from msca.data import build_dataset
register_schema()
with initialize_config_dir(config_dir=__import__("os").path.abspath("configs"), version_base="1.3"):
    cfg = compose(config_name="config")
print("prepare: dataset", cfg.data.root, len(build_dataset(cfg.data, "train")), "train clips")
EOF
  )
  tar czf "$carry/synthetic.tgz" -C "$tmp" .
  rm -rf "$tmp"
}

check_size() {
  local bytes; bytes=$(du -sb "$carry" | cut -f1)
  echo "prepare: $carry holds $((bytes / 1024 / 1024)) MiB ($(ls "$carry/wheels" | wc -l) wheels)"
  ((bytes <= limit_mib * 1024 * 1024)) || { echo "prepare: over ${limit_mib} MiB" >&2; exit 1; }
}

verify() {  # the set installs offline into a clean 3.12 and its requirements are met by it or the image
  local tmp; tmp=$(mktemp -d)
  "$py312" -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install -q --no-index --no-deps --no-compile --target "$tmp/site" "$carry"/wheels/*.whl
  # stand-ins for what the image provides (numpy, pyyaml, ...; not torch), so the set's modules can be imported
  local check=("$tmp/venv/bin/python" "$here/infra/gpu/verify_wheels.py" "$tmp/site" "$here/infra/gpu/image-packages.txt")
  local image; image=$("${check[@]}" --from-image | tr ' ' '\n' | grep -vx torch | tr '\n' ' ')
  echo "prepare: stand-ins for the image's $image"
  # shellcheck disable=SC2086  # one word per package
  quiet "$tmp/venv/bin/pip" install -q --only-binary=:all: $image
  "${check[@]}" \
    --import hydra omegaconf antlr4 boto3 botocore s3transfer jmespath submitit simplejpeg pydantic pydantic_core \
    hjson annotated_types typing_inspection typing_extensions
  # DeepSpeed imports torch, which no clean venv here has: import the carried wheel under the project's torch
  "$py" -m pip install -q --no-index --no-deps --target "$tmp/ds" "$carry"/wheels/deepspeed-*.whl
  (cd "$tmp" && PYTHONPATH="$tmp/ds" "$py" -c '
import deepspeed, sys
from deepspeed.git_version_info import installed_ops
assert deepspeed.__file__.startswith(sys.argv[1]), deepspeed.__file__
assert not any(installed_ops.values()), installed_ops
print(f"import deepspeed: ok ({deepspeed.__version__}, no prebuilt ops: JIT on the GPU)")' "$tmp/ds" 2>&1 \
    | grep -v "Setting accelerator to CPU")
  rm -rf "$tmp"
}

main() {
  if [[ "${1:-}" != "--verify-only" ]]; then
    rm -rf "$carry" && mkdir -p "$carry/wheels"
    fetch_wheels
    build_sdists
    make_data
    git -C "$here" describe --always --dirty >"$carry/COMMIT"  # check.sh's report names it if .git stays here
  fi
  check_size
  verify
  echo "prepare: ready; on the GPU machine run: bash infra/gpu/check.sh (carry: infra/gpu/carry)"
}

main "$@"
