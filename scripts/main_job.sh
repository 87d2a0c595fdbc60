#!/usr/bin/env bash
# The README's main job: set up, meta-train FLP and OML on continual sine regression
# (quick config), evaluate both with references, print the table, write runs/quick/.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
.venv/bin/metaplastic suite experiments/quick.yaml "$@"
echo "main job finished in $(( $(date +%s) - start )) s"
