#!/usr/bin/env bash
# Entry point of the m6rec image.
#   worker      register the m6rec deployments with the Prefect server, then poll the m6rec work pool
#   demo-data   write the synthetic demo catalogue into $M6REC_DATA_DIR unless it already holds a dataset
#   COMMAND...  anything else runs as given, e.g. `m6rec run /data --out /outputs/adhoc`
set -euo pipefail

data_dir="${M6REC_DATA_DIR:-/data}"
out_dir="${M6REC_OUT_DIR:-/outputs}"

fail() {
  echo "error: $1" >&2
  echo "hint: $2" >&2
  exit 2
}

has_dataset() {
  [[ -f "$1/interactions.parquet" || -f "$1/interactions.csv" ]]
}

require_writable() {
  if ! mkdir -p "$1" 2>/dev/null || [[ ! -w "$1" ]]; then
    fail "$1 is not writable by uid $(id -u) (its host folder belongs to uid $(stat -c %u "$1" 2>/dev/null || echo '?'))" \
      "create the host folder yourself before 'docker compose up' (mkdir -p data outputs), or build with M6REC_UID/M6REC_GID set to its owner"
  fi
}

case "${1:-worker}" in
  worker)
    require_writable "$out_dir"
    if ! has_dataset "$data_dir"; then
      echo "warning: $data_dir holds no interactions file; flow runs will fail until it does" \
        "(demo catalogue: docker compose run --rm demo-data)" >&2
    fi
    m6rec flows deploy
    exec prefect worker start --pool m6rec --type process --with-healthcheck
    ;;
  demo-data)
    if has_dataset "$data_dir"; then
      echo "kept the dataset already in $data_dir"
      exit 0
    fi
    require_writable "$data_dir"
    exec python - "$data_dir" <<'PYTHON'
import sys
from pathlib import Path

from m6rec.demo_catalogue import generate_demo_catalogue

print(f"demo catalogue (synthetic): {generate_demo_catalogue(Path(sys.argv[1]))}")
PYTHON
    ;;
  *)
    exec "$@"
    ;;
esac
