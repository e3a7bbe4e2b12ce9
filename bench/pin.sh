#!/usr/bin/env bash
# A pinned copy of HEAD for a long benchmark, so edits to the checkout cannot change a run in flight:
#   dir=$(bench/pin.sh) && cd "$dir" && nohup flock /tmp/cpu.lock chrt -f 10 .venv/bin/python bench/table.py ... &
# The copy is a git worktree at /tmp/bench-<sha> with its own venv: envs/, data/ and configs/ install inside
# drift_policy (pyproject's package-dir mapping), so the copy needs an install of its own for its imports to resolve
# to it. The venv borrows the checkout's .venv packages through one .pth line instead of reinstalling torch & co.
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
dir=/tmp/bench-$(git -C "$repo" rev-parse --short HEAD)
[ -d "$dir" ] || git -C "$repo" worktree add --detach "$dir" HEAD >&2
if [ ! -x "$dir/.venv/bin/python" ]; then
  python3 -m venv "$dir/.venv"
  purelib() { "$1" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
  purelib "$repo/.venv/bin/python" > "$(purelib "$dir/.venv/bin/python")/checkout_packages.pth"
  "$dir/.venv/bin/pip" install -q --no-deps -e "$dir" >&2
fi
[ -d "$repo/data/generated" ] && cp -rn "$repo/data/generated" "$dir/data/"  # demos already made need not be remade
echo "$dir"
