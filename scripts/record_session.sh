#!/usr/bin/env bash
# Record what a new user sees, with a timestamp on every line, into results/terminal_session.txt:
# the README's first command in a fresh clone, then `sweeper worker` stopped by SIGTERM mid-trial.
# Usage: scripts/record_session.sh [OUT]   (takes a few minutes on 2 cores)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$repo/results/terminal_session.txt}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# every line (and every progress-bar redraw) stamped with the seconds since the command started
cat > "$work/stamp.py" <<'PY'
import sys, time

t0, buf = time.time(), b""
for chunk in iter(lambda: sys.stdin.buffer.read1(4096), b""):
    buf += chunk
    while True:
        cut = [i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0]
        if not cut:
            break
        line, buf = buf[: min(cut)], buf[min(cut) + 1 :]
        if line.strip():
            text = line.decode(errors="replace")
            print(f"[{time.time() - t0:6.1f}s] {text}", flush=True)
if buf.strip():
    text = buf.decode(errors="replace")
    print(f"[{time.time() - t0:6.1f}s] {text}")
PY
stamp() { python3 -u "$work/stamp.py"; }
timed=()  # peak memory too, where GNU time is installed (apt-get install time)
[ -x /usr/bin/time ] && timed=(/usr/bin/time -f '# peak memory (max RSS) %M KB')

git clone -q "$repo" "$work/sweeper"
cd "$work/sweeper"
{
  echo "# $(date -u +%F) on $(nproc) cores; fresh clone of $(git rev-parse --short HEAD)"
  echo '$ python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e . && sweeper launch studies/mnist1d_mlp.yaml --trials 20'
  python3 -m venv .venv
  . .venv/bin/activate
  pip install -q torch==2.13.0 -e . 2>&1 | grep -v "^WARNING: Location" || true
  start=$(date +%s)
  ${timed[@]+"${timed[@]}"} sweeper launch studies/mnist1d_mlp.yaml --trials 20 2>&1 | stamp
  echo "# sweeper launch took $(( $(date +%s) - start )) s"
  echo
  echo '$ sweeper launch studies/mnist1d_mlp.yaml --trials 40   (SIGTERM after 15 s, while a trial trains)'
  # the same study with a larger budget; SIGTERM as `docker stop` sends it, while a trial trains
  sweeper launch studies/mnist1d_mlp.yaml --trials 40 > >(stamp) 2>&1 &
  pid=$!
  sleep 15
  kill -TERM "$pid" || true
  wait "$pid" && echo "# exit code 0" || echo "# exit code $?"
  sleep 1
  echo
  echo '$ sweeper worker mnist1d-mlp   (joins the study; SIGTERM after 20 s)'
  sweeper worker mnist1d-mlp > >(stamp) 2>&1 &
  pid=$!
  sleep 20
  kill -TERM "$pid" || true
  wait "$pid" && echo "# exit code 0" || echo "# exit code $?"
  sleep 1
  echo
  echo '$ sweeper status'
  sweeper status 2>&1 | stamp
} > "$out" 2>&1
echo "recorded in $out"
