#!/usr/bin/env bash
# Idempotent development set-up: a virtual environment in .venv/ at the repository root with
# torch/torchvision (pinned by scripts/constraints.txt) and the project installed editable with its
# dev extras. Safe to run from any directory and as often as you like: when the stamp in .venv
# (a hash of pyproject.toml, scripts/constraints.txt, this script, scripts/install.sh and the Python
# version) matches, it does nothing. The pip installs are scripts/install.sh (shared with the Docker
# images). See docs/development.md.
#
# Environment: PYTHON=/path/to/python3.11+ picks the interpreter for a new venv (default: the first
# of python3, python3.13, python3.12, python3.11 that is 3.11 or newer).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
CONSTRAINTS=scripts/constraints.txt
STAMP="$VENV/.cmah-setup-stamp"
# System (apt) packages the project needs; everything else comes from wheels (we use no open3d,
# whose CPU wheel would want libgl1/libgomp1). chromium: the browser of tests/service/test_ui_browser.py
# and scripts/ui_screenshot.py (Playwright drives /usr/bin/chromium; it cannot download its own).
# Entries are "package" or "package:command"; a package counts as missing when `command -v command`
# fails, or else when dpkg does not list it.
SYSTEM_PACKAGES=(chromium:chromium)

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

_apt_updated=0
# ensure_system_packages ENTRY... : apt-get install the missing ones ("pkg" or "pkg:command").
# Runs `apt-get update` once first, and only as root; otherwise names what to install and fails.
ensure_system_packages() {
    local entry pkg cmd missing=()
    for entry in "$@"; do
        pkg=${entry%%:*}
        cmd=""
        [[ "$entry" == *:* ]] && cmd=${entry#*:}
        if [[ -n "$cmd" ]]; then
            command -v "$cmd" >/dev/null 2>&1 && continue
        elif command -v dpkg-query >/dev/null 2>&1 \
                && dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            continue
        fi
        missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing system packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})"
    fi
    log "apt-get install ${missing[*]}"
    if ((_apt_updated == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

py_ok() {  # py_ok PYTHON: true if it runs, is 3.11+ and can make a venv with pip
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

venv_ok() {  # the venv's python runs, is 3.11+ and has pip
    "$VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

up_to_date() {
    [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" ]]
}

find_python() {
    local c
    for c in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$c" >/dev/null 2>&1 && py_ok "$c"; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

stamp_value() {
    {
        cat pyproject.toml "$CONSTRAINTS" scripts/setup.sh scripts/install.sh
        "$VENV/bin/python" -VV 2>/dev/null || true
    } | sha256sum | cut -d' ' -f1
}

# Fast path: nothing changed since the last complete set-up.
if up_to_date; then
    log "up to date ($VENV)"
    exit 0
fi

((${#SYSTEM_PACKAGES[@]} == 0)) || ensure_system_packages "${SYSTEM_PACKAGES[@]}"

mkdir -p "$VENV"
# One set-up at a time (e.g. ./scripts/serve and ./scripts/test started together).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV/.setup.lock"
    if ! flock -n 9; then
        log "waiting for another set-up to finish"
        flock 9
    fi
    if up_to_date; then
        log "up to date ($VENV, set up by the other run)"
        exit 0
    fi
fi

if ! venv_ok; then
    if ! PY=$(find_python); then
        # A Debian system python without venv/ensurepip is the one case we can fix with apt.
        if command -v /usr/bin/python3 >/dev/null 2>&1; then
            ensure_system_packages python3-venv
        fi
        PY=$(find_python) || die "need Python 3.11+ with the venv module (set PYTHON=...)"
    fi
    if [[ -e "$VENV/bin/python" ]]; then
        log "recreating $VENV (its python is broken or older than 3.11)"
        "$PY" -m venv --clear "$VENV"
    else
        log "creating $VENV with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
        "$PY" -m venv "$VENV"
    fi
fi

t0=$SECONDS
# The pip part is scripts/install.sh, shared with docker/Dockerfile*: torch + torchvision pinned in
# $CONSTRAINTS, then the project, editable, with the dev extras.
log "installing torch + torchvision (pinned in $CONSTRAINTS) and the project, editable, with dev extras"
bash scripts/install.sh --editable --extras dev --no-check "$VENV"
[[ -x "$VENV/bin/cmah" ]] || die "$VENV/bin/cmah is missing after the install"
"$VENV/bin/python" -c 'import torch, torchvision' || die "torch / torchvision do not import"

stamp_value >"$STAMP"
log "done in $((SECONDS - t0)) s: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
