#!/usr/bin/env bash
# Install the newest versions that pyproject.toml allows into a fresh venv and run the test suite,
# so dependency drift (a new transformers, TransformerLens, sae_lens ...) is found before users find it.
#
#   bash tools/check_newest.sh                # report: versions + test result, exit status of pytest
#   bash tools/check_newest.sh --update-lock  # the same, then write those versions to constraints.txt if green
#
# torch stays at the CPU build 2.13.0 on CPU machines (an unpinned torch may pull a multi-GB CUDA
# build); set FEATALIGN_TORCH to test another torch spec, e.g. FEATALIGN_TORCH='torch==2.14.1'.
# The venv and its `pip freeze` go to $FEATALIGN_NEWEST_DIR (default: a fresh temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
update_lock=0
[[ "${1:-}" == "--update-lock" ]] && update_lock=1
work="${FEATALIGN_NEWEST_DIR:-$(mktemp -d)}"
mkdir -p "$work"
echo "fresh venv in $work/venv"
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
pip install -q --upgrade pip
torch_spec="${FEATALIGN_TORCH:-torch==2.13.0}"
echo "$torch_spec" > "$work/torch-constraint.txt"
pip install -q "$torch_spec"
# --upgrade-strategy eager: every dependency at its newest allowed version, not whatever pip has at hand;
# the torch constraint keeps eager from swapping the CPU build for the newest (CUDA) torch.
pip install -q --upgrade --upgrade-strategy eager -c "$work/torch-constraint.txt" -e ".[dev,notebooks]"
pip check
# A local label (torch==2.13.0+cpu) would pin one build; `==2.13.0` accepts the CPU and the CUDA build alike.
pip freeze --all --exclude-editable | grep -vE '^(featalign|pip)==' | sed -E 's/^([^=]+==[^+]+)\+.*/\1/' > "$work/freeze.txt"
echo "newest allowed versions (key packages):"
grep -iE '^(torch|transformers|transformer[-_]lens|sae[-_]lens|tokenizers|numpy|scipy|safetensors|datasets)==' "$work/freeze.txt" | sed 's/^/  /'
write_lock() {
    { echo "# featalign's tested lock: pip install -c constraints.txt -e '.[dev,notebooks]'"
      echo "# written by tools/check_newest.sh --update-lock on $(date -u +%Y-%m-%d) (Python $(python -c 'import platform; print(platform.python_version())'), suite green)"
      cat "$work/freeze.txt"; } > constraints.txt
}
if [[ $update_lock -eq 1 ]]; then
    # The suite checks the lock against the installed tree (tests/test_install.py), so the candidate
    # lock is in place while it runs; a red run puts the old one back.
    [[ -f constraints.txt ]] && cp constraints.txt "$work/constraints.old"
    write_lock
fi
export FEATALIGN_CACHE="$work/cache"
start=$(date +%s)
set +e
python -m pytest -q -p no:cacheprovider --timeout=900
rc=$?
set -e
echo "tests: exit $rc in $(( $(date +%s) - start )) s; full list of versions: $work/freeze.txt"
if [[ $update_lock -eq 1 ]]; then
    if [[ $rc -eq 0 ]]; then
        echo "constraints.txt updated"
    elif [[ -f "$work/constraints.old" ]]; then
        cp "$work/constraints.old" constraints.txt; echo "suite red: constraints.txt left as it was"
    else
        rm -f constraints.txt; echo "suite red: no lock written"
    fi
fi
exit $rc
