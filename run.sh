#!/usr/bin/env bash
# mllm4d-lite: one entry point for a fresh machine.
#   bash run.sh                 set up, then run the end-to-end demo on the tiny CPU profile
#   bash run.sh test [ARGS]     set up, then the fast test suite (tests marked slow deselected;
#                               ARGS go to pytest); `bash run.sh test --all` runs every test (CI)
#   bash run.sh setup [--gpu]   set up only (--gpu: also the optional GPU extras, NVIDIA only)
#   bash run.sh demo [ARGS]     set up, then `mllm4d demo ARGS`
# Set-up creates .venv when missing, installs requirements.txt (exact pins), requirements-nodeps.txt
# (data-only packages, --no-deps) and the kit,
# and stamps the result: a second run with unchanged requirements takes seconds.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.mllm4d-setup-stamp"

want_gpu=0
cmd="${1:-demo}"
[ $# -gt 0 ] && shift

setup() {
    local hash
    hash="$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ "$want_gpu" = 1 ]; then hash="$hash-gpu-$(sha256sum requirements-gpu.txt | cut -d' ' -f1)"; fi
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ]; then
        return 0
    fi
    echo "[run.sh] setting up $VENV (first run installs torch and friends: a few minutes)"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
    if [ "$want_gpu" = 1 ]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            echo "[run.sh] NVIDIA GPU found: installing the optional GPU extras (requirements-gpu.txt)"
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-gpu.txt
        else
            echo "[run.sh] --gpu asked but no NVIDIA GPU found (nvidia-smi): skipping GPU extras" >&2
        fi
    fi
    echo "$hash" > "$STAMP"
    echo "[run.sh] set-up done"
}

for arg in "$@"; do
    if [ "$arg" = "--gpu" ]; then want_gpu=1; fi
done

case "$cmd" in
    setup)
        setup
        ;;
    test)
        setup
        export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
        args=()
        for arg in "$@"; do
            if [ "$arg" = "--all" ]; then args+=(-m ""); else args+=("$arg"); fi   # -m "": no marker filter
        done
        exec "$VENV/bin/python" -m pytest -q "${args[@]}"
        ;;
    demo)
        setup
        export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
        exec "$VENV/bin/mllm4d" demo "$@"
        ;;
    -h|--help|help)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        echo "run.sh: unknown command '$cmd' (use: setup, test, demo)" >&2
        exit 2
        ;;
esac
