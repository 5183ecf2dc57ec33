#!/usr/bin/env bash
# Creates (or refreshes) the project's virtualenv in .venv with everything the job and the tests need.
# Idempotent: a second run only checks that the pins are satisfied. Every pip call carries the CPU-torch
# constraint so no CUDA wheels are pulled on machines without a GPU; on a GPU machine set
# MSCA_TORCH_SPEC (e.g. "torch==2.13.0") and MSCA_CONSTRAINTS=/dev/null.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MSCA_VENV:-$here/.venv}"
constraints="${MSCA_CONSTRAINTS:-$here/infra/constraints.txt}"
torch_spec="${MSCA_TORCH_SPEC:-torch==2.13.0}"
extras="${MSCA_EXTRAS:-dev}"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -U pip wheel 2>&1 | grep -v "is ignored" || true
fi
pip=("$venv/bin/pip" install -q --disable-pip-version-check -c "$constraints")
stamp="$venv/.msca-installed"
want="$(cat "$here/pyproject.toml" "$constraints" | sha256sum | cut -c1-16) $torch_spec $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch first, pinned, so nothing later can resolve a CUDA build.
  "${pip[@]}" "$torch_spec" 2>&1 | grep -v "is ignored" || true
  "${pip[@]}" -e "$here[$extras]" 2>&1 | grep -v "is ignored" || true
  check="import torch, deepspeed, hydra, boto3, submitit"
  case ",$extras," in *,dev,*|*,ray,*) check="$check, ray.train.torch, ray.job_submission, aiohttp" ;; esac
  "$venv/bin/python" -c "$check" 2>/dev/null \
    || { echo "setup: the install did not complete (see pip output above)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
echo "setup: $venv ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
