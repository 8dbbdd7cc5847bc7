#!/usr/bin/env bash
# Build .whl/: the Python packages sweeper needs that the GPU machine's image lacks, as wheels for its python.
#
#   scripts/gpu_wheels.sh              # cp312 wheels (the device's python 3.12) into .whl/
#   PYVER=3.11 DEST=/tmp/w311 scripts/gpu_wheels.sh   # the same pins for another python (a local simulation)
#
# The device (the workplace's nvidia-h200 kind) has python 3.12 with torch 2.11, numpy, pandas, scikit-learn,
# pyarrow, matplotlib, scipy, click, pyyaml, jinja2, requests, protobuf, packaging, cloudpickle, tqdm, narwhals,
# typing-extensions (its list: /work/.library/device/KINDS.md), and no network. What it lacks travels as wheels
# in .whl/ (ignored by git, named in the device call's `carry`), installed there by scripts/gpu_acceptance.sh
# with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`.
#
# Pins: what `pip install -e .` resolved here (pip freeze, 2026-12), one version of each. --no-deps: every
# needed wheel is named below. MLflow is mlflow-skinny + mlflow-tracing, not the `mlflow` wheel (12 MB of UI
# JavaScript plus Flask, gunicorn, graphene, docker, ...): the skinny package holds the tracking client, the
# SQLAlchemy store behind `sqlite:///mlflow.db` and mlflow.pytorch, which is all sweeper uses outside
# `sweeper ui`. Some of mlflow-skinny's needs are imported by `import mlflow` itself (fastapi, databricks-sdk,
# importlib_metadata, cryptography for the store): those are here. Left out on purpose, because nothing
# sweeper runs imports them: uvicorn, gitpython, python-dotenv (mlflow-skinny's; without git MLflow logs a
# harmless "Git SHA is not available" warning), google-auth (databricks-sdk's), pycparser (cffi's, to build
# bindings), greenlet (SQLAlchemy's asyncio) and psycopg (PostgreSQL; the acceptance uses SQLite).
# The proof that the set is complete: scripts/gpu_acceptance.sh --dry-run passed in a python 3.12 venv holding
# only the device's packages (torch 2.11.0+cu130, numpy, pandas, ... from KINDS.md's list) plus these wheels,
# installed the way the device installs them (README, "GPU: the acceptance run").
#
# Size: 26 wheels, 29.8 MiB (cp312); the tracked tree is about 6 MiB, so a device call carries about 35 MiB
# of its 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."

PYVER=${PYVER:-3.12}
DEST=${DEST:-.whl}
WHEELS=(
  # the study database and search
  optuna==5.1.0
  alembic==1.20.1
  Mako==1.4.3
  SQLAlchemy==2.1.9
  colorlog==6.12.0
  cmaes==0.13.1
  # the study file
  pydantic==2.14.4
  pydantic_core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  # data and plots
  mnist1d==0.0.2.post1
  plotly==7.1.0
  # tracking: the MLflow client, its SQLAlchemy store and mlflow.pytorch
  mlflow-skinny==3.17.2
  mlflow-tracing==3.17.2
  sqlparse==0.6.1
  cachetools==7.3.3
  opentelemetry-api==1.45.2
  opentelemetry-sdk==1.45.2
  opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2
  importlib_metadata==9.1.0   # mlflow imports it (not the standard library's importlib.metadata)
  fastapi==0.165.0            # import mlflow imports mlflow.gateway, which imports fastapi
  starlette==1.10.0
  databricks-sdk==0.167.0     # mlflow.genai asks importlib.util.find_spec("databricks.agents") at import
  cryptography==50.0.2        # the SQLAlchemy store's model registry imports cryptography.fernet
  cffi==2.1.1
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done

rm -rf "$DEST"
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}" 2> >(grep -v "^WARNING: Location" >&2)

# one version of each (two stop the install on the device), and nothing beyond the list
names=$(ls "$DEST" | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort)
dups=$(uniq -d <<<"$names")
if [[ -n "$dups" ]]; then
  echo "gpu_wheels: more than one version of: $dups" >&2
  exit 1
fi
count=$(ls "$DEST" | wc -l)
if [[ "$count" -ne "${#WHEELS[@]}" ]]; then
  echo "gpu_wheels: expected ${#WHEELS[@]} wheels, got $count" >&2
  exit 1
fi

bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
ls -1 "$DEST"
awk -v w="$bytes" -v t="$tracked" -v n="$count" -v d="$DEST" 'BEGIN {
  printf "%s: %d wheels, %.1f MiB; with the tracked tree (%.1f MiB): %.1f of 64 MiB\n", d, n, w / 2^20, t / 2^20, (w + t) / 2^20
}'
if (( bytes + tracked > 64 * 1024 * 1024 )); then
  echo "gpu_wheels: the working tree plus $DEST exceeds the device's 64 MiB" >&2
  exit 1
fi
