#!/usr/bin/env bash
# ferry against what an admin would set up instead, measured in one run on this machine:
#
#   sync relay   a ferry pair  vs  a pair of nginx reverse proxies with mutual TLS between them
#                (and the backend called directly), same backend, same load generator (wrk)
#   async        ferry's acceptance rate of asynchronous requests (202 = on disk)
#   CPU          each component's CPU per request (user + system, from /proc) and its threads'
#                context switches per request, for every path: the load generator, org-a's side,
#                org-b's side and the backend (nginx in its own instance)
#   backlog      FERRY_BENCH_BACKLOG (10000) async requests queued while org-b is down, org-a's
#                peak resident memory, then how fast the backlog drains once org-b is back
#   memory       resident memory of both ferry nodes and both nginx instances after the load
#   files        `cargo bench --bench files` (ferry vs raw quinn), then scp and rsync over ssh on
#                loopback with a file of the same size (FERRY_BENCH_MIB, 1024 by default), each
#                the best of FERRY_BENCH_RUNS (2) runs, against ferry's best (skip: --no-files).
#                The files bench takes its FERRY_BENCH_* variables from this environment (see its
#                header, benches/files.rs): FERRY_BENCH_SKIP=big,wan leaves out its 10 GiB file
#                and its 50 ms table
#
# Installs what it needs from Debian (nginx-light, wrk, openssl, curl; openssh-server,
# openssh-client and rsync for the files part). Certificates and keys (also sshd's host key and
# the client key it authorizes) are generated at run time in a temporary directory and deleted
# afterwards; the throwaway sshd listens on a free loopback port and is stopped on exit.
#
# Usage: bench/compare.sh [--no-files] [--seconds N] [--connections N]
#        FERRY_BIN=path/to/ferry bench/compare.sh ...   measures that binary instead of building one
#        --profile: also records each ferry node with `perf record` during its runs (installs
#        linux-perf) and prints its CPU by component (bench/attribute.py); the profiled rows run
#        slower than unprofiled ones would
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=10
CONNECTIONS=32
FILES=1
PROFILE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-files) FILES=0 ;;
    --profile) PROFILE=1 ;;
    --seconds) SECONDS_EACH="$2"; shift ;;
    --connections) CONNECTIONS="$2"; shift ;;
    *) echo "usage: bench/compare.sh [--no-files] [--profile] [--seconds N] [--connections N]" >&2; exit 2 ;;
  esac
  shift
done

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "== installing $2 (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
  fi
}
need nginx nginx-light
need wrk wrk
need openssl openssl
need curl curl
[ "$PROFILE" = 1 ] && need perf linux-perf

if [ -n "${FERRY_BIN:-}" ]; then
  FERRY=$(realpath "$FERRY_BIN")
else
  echo "== building ferry (release)"
  cargo build --release -q
  FERRY="$PWD/target/release/ferry"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for conf in "$WORK"/nginx-*.conf; do [ -f "$conf" ] && nginx -p "$WORK" -c "$conf" -s quit 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(port); FRONT=$(port); BACK=$(port)
# Idle upstream connections each nginx keeps: enough for every caller, so that no request waits
# for a new (TLS) connection under load.
UPSTREAM_KEEPALIVE=$((CONNECTIONS > 64 ? CONNECTIONS : 64))

# -- the backend: a trivial JSON answer, served by nginx, used by every path ---------------------
cert() { # name: a self-signed P-256 certificate and key for nginx's mutual TLS
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=$1" \
    -addext "subjectAltName=DNS:$1" -keyout "$WORK/$1.key" -out "$WORK/$1.pem" 2>/dev/null
}
cert org-a-proxy
cert org-b-proxy
mkdir -p "$WORK/logs" "$WORK/tmp"
common="worker_processes 2; pid PIDFILE; error_log $WORK/logs/error.log warn; daemon on;
events { worker_connections 4096; }"
# the backend both relays call, an instance of its own so that its CPU is counted apart
cat > "$WORK/nginx-backend.conf" <<EOF
${common//PIDFILE/$WORK/nginx-backend.pid}
http {
  access_log off;
  client_body_temp_path $WORK/tmp;
  server {
    listen 127.0.0.1:$BACKEND; default_type application/json; keepalive_requests 1000000;
    location / { return 200 '{"ok":true}'; }
  }
}
EOF
cat > "$WORK/nginx-b.conf" <<EOF
${common//PIDFILE/$WORK/nginx-b.pid}
http {
  access_log off;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp;
  # org-b's proxy: accepts only org-a's pinned certificate
  upstream backend { server 127.0.0.1:$BACKEND; keepalive $UPSTREAM_KEEPALIVE; }
  server {
    listen 127.0.0.1:$BACK ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate $WORK/org-b-proxy.pem; ssl_certificate_key $WORK/org-b-proxy.key;
    ssl_verify_client on; ssl_client_certificate $WORK/org-a-proxy.pem;
    keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
cat > "$WORK/nginx-a.conf" <<EOF
${common//PIDFILE/$WORK/nginx-a.pid}
http {
  access_log off;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp;
  # org-a's proxy: host apps call it; it calls org-b's proxy with its client certificate
  upstream org_b { server 127.0.0.1:$BACK; keepalive $UPSTREAM_KEEPALIVE; }
  server {
    listen 127.0.0.1:$FRONT;
    keepalive_requests 1000000;
    location / {
      proxy_pass https://org_b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate $WORK/org-a-proxy.pem; proxy_ssl_certificate_key $WORK/org-a-proxy.key;
      proxy_ssl_trusted_certificate $WORK/org-b-proxy.pem; proxy_ssl_verify on; proxy_ssl_name org-b-proxy;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
nginx -p "$WORK" -c "$WORK/nginx-backend.conf"
nginx -p "$WORK" -c "$WORK/nginx-b.conf"
nginx -p "$WORK" -c "$WORK/nginx-a.conf"

# -- the ferry pair, set up as admins would ------------------------------------------------------
A_API=$(port); B_API=$(port); A_LINK=$(port); B_LINK=$(port)
"$FERRY" init --dir "$WORK/org-a" --name org-a --listen "127.0.0.1:$A_LINK" --api "127.0.0.1:$A_API" >/dev/null
"$FERRY" init --dir "$WORK/org-b" --name org-b --listen "127.0.0.1:$B_LINK" --api "127.0.0.1:$B_API" >/dev/null
"$FERRY" peer add --name org-b --address "127.0.0.1:$B_LINK" --cert "$WORK/org-b/certs/node.pem" \
  --config "$WORK/org-a/config/ferry.toml" >/dev/null
"$FERRY" peer add --name org-a --address "127.0.0.1:$A_LINK" --cert "$WORK/org-a/certs/node.pem" \
  --config "$WORK/org-b/config/ferry.toml" >/dev/null
"$FERRY" service add --id 1 --base-url "http://127.0.0.1:$BACKEND" --allow org-a \
  --config "$WORK/org-b/config/ferry.toml" >/dev/null
for node in org-a org-b; do
  RUST_LOG=warn "$FERRY" run --config "$WORK/$node/config/ferry.toml" 2>"$WORK/$node.log" &
  PIDS+=($!)
done
for api in "$A_API" "$B_API"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$api/v1/health" >/dev/null && break; sleep 0.1; done
done

# -- load ----------------------------------------------------------------------------------------
post_script() { # body: a wrk script that POSTs JSON
  cat > "$WORK/$1.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$2'
EOF
  echo "$WORK/$1.lua"
}
SYNC=$(post_script sync '{"peer":"org-b","service":"1","path":"/ok","method":"GET"}')
ASYNC=$(post_script async '{"peer":"org-b","service":"1","path":"/ok","method":"GET","mode":"async"}')

nginx_pids() { # pidfile: the master and workers of one nginx instance
  local master; master=$(cat "$1")
  echo "$master" $(pgrep -P "$master")
}
usage() { # pids...: "ticks switches": their user + system CPU in clock ticks, their threads' context switches
  local ticks=0 switches=0 pid stat
  for pid in "$@"; do
    read -r -a stat < "/proc/$pid/stat" || continue
    ticks=$((ticks + stat[13] + stat[14]))
    switches=$((switches + $(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}')))
  done
  echo "$ticks $switches"
}
per_request() { # before after requests: "µs of CPU / context switches" per request
  awk -v b="$1" -v a="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(b, x, " "); split(a, y, " ")
    printf "%.1f / %.2f", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) / n }'
}

profile() { # name pid: records the process for most of a run, then prints its CPU by component
  perf record -q -F 999 -g --call-graph dwarf,16384 -p "$2" -o "$WORK/$1.perf" -- sleep $((SECONDS_EACH - 2)) \
    >/dev/null 2>&1
  perf script -i "$WORK/$1.perf" 2>/dev/null | python3 bench/attribute.py > "$WORK/$1.profile"
}

RESULTS=()
CPU_ROWS=()
PROFILES=()
run() { # label url script "org-a's pids" "org-b's pids": one wrk run, a row of each table
  local label=$1 url=$2 script=$3 front=$4 back=$5
  local backend; backend=$(nginx_pids "$WORK/nginx-backend.pid")
  local args=("-t$((CONNECTIONS < 2 ? 1 : 2))" "-c$CONNECTIONS" "-d${SECONDS_EACH}s" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  local f0 b0 k0 f1 b1 k1 wrk_cpu
  f0=$(usage $front); b0=$(usage $back); k0=$(usage $backend)
  local TIMEFORMAT='%U %S' profiling=()
  if [ "$PROFILE" = 1 ] && [[ $label == ferry* ]]; then
    (sleep 1; profile a "$front") & profiling+=($!)
    (sleep 1; profile b "$back") & profiling+=($!)
  fi
  wrk_cpu=$({ time wrk "${args[@]}" "$url" > "$WORK/wrk.out" 2>&1; } 2>&1) || { cat "$WORK/wrk.out"; return 1; }
  if [ ${#profiling[@]} -gt 0 ]; then
    wait "${profiling[@]}"
    PROFILES+=("" "### $label: org-a's CPU by component (perf)" "" "$(cat "$WORK/a.profile")"
      "" "### $label: org-b's CPU by component (perf)" "" "$(cat "$WORK/b.profile")")
  fi
  f1=$(usage $front); b1=$(usage $back); k1=$(usage $backend)
  local requests; requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
  local wrk_us; wrk_us=$(awk -v t="$wrk_cpu" -v n="$requests" 'BEGIN {split(t, x, " "); printf "%.1f", (x[1] + x[2]) * 1e6 / n}')
  local cells=("$wrk_us" "-" "-" "$(per_request "$k0" "$k1" "$requests")")
  [ -n "$front" ] && cells[1]=$(per_request "$f0" "$f1" "$requests")
  [ -n "$back" ] && cells[2]=$(per_request "$b0" "$b1" "$requests")
  CPU_ROWS+=("$(printf '| %-44s | %8s | %15s | %15s | %15s |' "$label" "${cells[@]}")")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/wrk.out")
  errors=$(awk '/Non-2xx/ {print $5} /Socket errors/ {print "socket:" $0}' "$WORK/wrk.out" | tr '\n' ' ')
  RESULTS+=("$(printf '| %-44s | %10s | %8s | %8s | %s |' "$label" "$rps" "$p50" "$p99" "${errors:-none}")")
  echo "   $label: $rps req/s, p50 $p50, p99 $p99"
}

echo "== warming up"
curl -sf "http://127.0.0.1:$FRONT/ok" >/dev/null
curl -sf -X POST -H 'Content-Type: application/json' -d '{"peer":"org-b","service":"1","path":"/ok","method":"GET"}' \
  "http://127.0.0.1:$A_API/v1/requests" >/dev/null
echo "== load: $CONNECTIONS connections, ${SECONDS_EACH} s each, wrk -t2"
NGINX_A=$(nginx_pids "$WORK/nginx-a.pid"); NGINX_B=$(nginx_pids "$WORK/nginx-b.pid")
run "backend called directly" "http://127.0.0.1:$BACKEND/ok" "" "" ""
run "nginx pair, mutual TLS between them" "http://127.0.0.1:$FRONT/ok" "" "$NGINX_A" "$NGINX_B"
run "ferry pair, sync (QUIC, pinned mutual TLS)" "http://127.0.0.1:$A_API/v1/requests" "$SYNC" "${PIDS[0]}" "${PIDS[1]}"
# One caller, one request at a time: what each relay adds to a call's latency.
MANY=$CONNECTIONS; CONNECTIONS=1
run "backend called directly, one caller" "http://127.0.0.1:$BACKEND/ok" "" "" ""
run "nginx pair, one caller" "http://127.0.0.1:$FRONT/ok" "" "$NGINX_A" "$NGINX_B"
run "ferry pair, sync, one caller" "http://127.0.0.1:$A_API/v1/requests" "$SYNC" "${PIDS[0]}" "${PIDS[1]}"
CONNECTIONS=$MANY
# Last: the accepted requests are still being carried and called for a while after the run.
run "ferry pair, async accepted (202 = on disk)" "http://127.0.0.1:$A_API/v1/requests" "$ASYNC" "${PIDS[0]}" "${PIDS[1]}"
outgoing_left() { # org-a's outgoing requests not yet ended
  curl -sf "http://127.0.0.1:$A_API/v1/stats" | python3 -c 'import json, sys; o = json.load(sys.stdin)["data"]["outgoing"]; print(o["waiting"] + o["doing"])'
}
# What the async run accepted faster than the pipeline ended it: its rate holds only while that grows.
ASYNC_LEFT="the async run left $(outgoing_left) of its $(awk '/requests in/ {print $1}' "$WORK/wrk.out") accepted requests not yet ended"

rss() { ps -o rss= -p "$1" | awk '{printf "%.0f", $1/1024}'; }
nginx_rss() { # master and workers of one instance, MiB
  local master; master=$(cat "$1")
  ps -o rss= --ppid "$master" -p "$master" | awk '{s+=$1} END {printf "%.0f", s/1024}'
}
MEM="ferry org-a $(rss "${PIDS[0]}") MiB, org-b $(rss "${PIDS[1]}") MiB; nginx org-a $(nginx_rss "$WORK/nginx-a.pid") MiB, org-b $(nginx_rss "$WORK/nginx-b.pid") MiB, the backend $(nginx_rss "$WORK/nginx-backend.pid") MiB"

# -- the backlog: requests in flight while the peer is down, then drained ---------------------------
BACKLOG=${FERRY_BENCH_BACKLOG:-10000}
for _ in $(seq 600); do [ "$(outgoing_left)" = 0 ] && break; sleep 0.1; done
kill "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
echo 5 > "/proc/${PIDS[0]}/clear_refs"
echo "== backlog: $BACKLOG async requests while org-b is down"
python3 - "$A_API" "$BACKLOG" <<'PY'
import http.client, sys, threading
port, total = int(sys.argv[1]), int(sys.argv[2])
body = '{"peer":"org-b","service":"1","path":"/ok","method":"GET","mode":"async"}'
def post(n):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n):
        c.request("POST", "/v1/requests", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 202, r.status
threads = [threading.Thread(target=post, args=(total // 16 + (i < total % 16),)) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join()
PY
QUEUED=$(outgoing_left)
RSS_QUEUED=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/${PIDS[0]}/status")
RUST_LOG=warn "$FERRY" run --config "$WORK/org-b/config/ferry.toml" 2>>"$WORK/org-b.log" &
PIDS[1]=$!
t0=$(date +%s.%N)
# When the first of them ended (org-b up and connected again), and when the last did.
tf=""
for _ in $(seq 6000); do
  left=$(outgoing_left)
  [ -z "$tf" ] && [ "$left" -lt "$QUEUED" ] && { tf=$(date +%s.%N); left_f=$left; }
  [ "$left" = 0 ] && break
  sleep 0.05
done
t1=$(date +%s.%N)
LEFT=$(outgoing_left)
BACKLOG_ROW=$(awk -v a="$t0" -v f="${tf:-$t1}" -v b="$t1" -v n="$QUEUED" -v nf="${left_f:-$QUEUED}" -v left="$LEFT" 'BEGIN {
  printf "%d requests queued; drained in %.2f s from the restart of org-b (%.0f req/s, reconnecting included); the first ended %.2f s after the restart, and from then on %.0f req/s%s",
    n, b - a, (n - left) / (b - a), f - a, (b > f ? (nf - left) / (b - f) : 0), (left > 0 ? ", " left " still waiting" : "") }')
RSS_AFTER="org-a $(rss "${PIDS[0]}") MiB, org-b $(rss "${PIDS[1]}") MiB"

echo
echo "## Relay, $(nproc) cores, $(date -u +%Y-%m-%d), wrk -t2 -c$CONNECTIONS -d${SECONDS_EACH}s"
echo
echo "| path (wrk -c$CONNECTIONS unless \"one caller\": -c1) |      req/s |      p50 |      p99 | errors |"
echo "| -------------------------------------------- | ---------: | -------: | -------: | ------ |"
printf '%s\n' "${RESULTS[@]}"
echo
echo "CPU per request, µs (user + system) / context switches per request, same runs:"
echo
echo "| path                                         |  wrk, µs |  org-a's side   |  org-b's side   |     backend     |"
echo "| -------------------------------------------- | -------: | --------------: | --------------: | --------------: |"
printf '%s\n' "${CPU_ROWS[@]}"
[ ${#PROFILES[@]} -gt 0 ] && printf '%s\n' "${PROFILES[@]}"
echo
echo "Resident memory after the load: $MEM; $ASYNC_LEFT."
echo
echo "Backlog: $BACKLOG_ROW; org-a's peak resident memory while they waited: $RSS_QUEUED MiB; after the drain: $RSS_AFTER."

if [ "$FILES" = 1 ]; then
  echo
  echo "== files: cargo bench --bench files (ferry vs raw quinn)"
  cargo bench --bench files | tee "$WORK/files.out"
  # ferry's best time: the "best (s)" column of the first markdown row named "ferry: request →
  # service called" (the loopback table comes first; the 50 ms table has a row of that name too).
  FERRY_S=$(awk -F'|' '
    /^\|/ && !col { for (i = 2; i < NF; i++) { h = $i; gsub(/^ +| +$/, "", h); if (h == "best (s)") col = i } }
    /^\| ferry: request → service called / && col { v = $col; gsub(/ /, "", v); print v; exit }
  ' "$WORK/files.out")
  if [ -z "$FERRY_S" ]; then
    echo "!! ferry's best time is not in the files bench's output ($WORK/files.out): no ferry ratios below" >&2
  fi

  echo
  echo "== files: scp and rsync over ssh, loopback"
  if [ ! -x /usr/sbin/sshd ]; then
    echo "== installing openssh-server (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server >/dev/null
  fi
  need ssh openssh-client
  need scp openssh-client
  need rsync rsync
  SSH_DIR="$WORK/ssh"
  # sshd refuses to start without its privilege separation directory.
  mkdir -p "$SSH_DIR" /run/sshd
  ssh-keygen -q -t ed25519 -N "" -f "$SSH_DIR/host_key"
  ssh-keygen -q -t ed25519 -N "" -f "$SSH_DIR/user_key"
  cp "$SSH_DIR/user_key.pub" "$SSH_DIR/authorized_keys"
  SSH_PORT=$(port)
  printf '%s\n' "Port $SSH_PORT" "ListenAddress 127.0.0.1" "HostKey $SSH_DIR/host_key" \
    "AuthorizedKeysFile $SSH_DIR/authorized_keys" "PidFile $SSH_DIR/sshd.pid" "StrictModes no" "UsePAM no" \
    "PasswordAuthentication no" "KbdInteractiveAuthentication no" "PubkeyAuthentication yes" \
    "PermitRootLogin prohibit-password" "LogLevel ERROR" "Subsystem sftp internal-sftp" > "$SSH_DIR/sshd_config"
  /usr/sbin/sshd -D -e -f "$SSH_DIR/sshd_config" 2>"$SSH_DIR/sshd.log" &
  PIDS+=($!)
  for _ in $(seq 250); do (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null && break; sleep 0.02; done
  # The client: the throwaway key only, no host key checks (the host key is new each run), no prompt.
  SSH_OPTS=(-i "$SSH_DIR/user_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes
    -o IdentitiesOnly=yes -o LogLevel=ERROR)
  MIB=${FERRY_BENCH_MIB:-1024}
  RUNS=${FERRY_BENCH_RUNS:-2}
  head -c $((MIB << 20)) /dev/urandom > "$WORK/source.bin"
  DEST="$(id -un)@127.0.0.1:$SSH_DIR/copy.bin"
  copy() { # tool: one copy of source.bin over ssh, checked for its size; its seconds
    local t0 t1
    t0=$(date +%s.%N)
    case "$1" in
      scp) scp -q -P "$SSH_PORT" "${SSH_OPTS[@]}" "$WORK/source.bin" "$DEST" ;;
      # --whole-file: the destination is new anyway; rsync's own checksums stay on.
      rsync) rsync -q --whole-file -e "ssh -p $SSH_PORT ${SSH_OPTS[*]}" "$WORK/source.bin" "$DEST" ;;
    esac
    t1=$(date +%s.%N)
    if [ "$(stat -c %s "$SSH_DIR/copy.bin" 2>/dev/null)" != $((MIB << 20)) ]; then
      echo "$1 did not copy the whole file; sshd: $(cat "$SSH_DIR/sshd.log")" >&2
      return 1
    fi
    rm -f "$SSH_DIR/copy.bin"
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}'
  }
  FILE_ROWS=()
  for tool in scp rsync; do
    best=
    for _ in $(seq "$RUNS"); do
      s=$(copy "$tool")
      echo "   $tool: $s s"
      best=$(awk -v a="${best:-$s}" -v b="$s" 'BEGIN {print (b < a ? b : a)}')
    done
    ratio=$(awk -v t="$best" -v f="${FERRY_S:-0}" 'BEGIN {if (f > 0) printf "%.2f", t / f; else print "-"}')
    target=
    if [ "$tool" = scp ] && [ "$ratio" != - ]; then
      target="ferry ≥ 1.2× scp: $(awk -v r="$ratio" 'BEGIN {print (r >= 1.2 ? "PASS" : "MISS")}')"
    fi
    mibs=$(awk -v t="$best" -v m="$MIB" 'BEGIN {printf "%.0f", m / t}')
    FILE_ROWS+=("$(printf '| %-24s | %8s | %6s | %13s | %-22s |' "$tool over ssh, loopback" "$best" "$mibs" "$ratio" "$target")")
  done
  echo
  echo "## Files, $MIB MiB on loopback, $(nproc) cores, $(date -u +%Y-%m-%d): ferry's best ${FERRY_S:-?} s (files bench above)"
  echo
  echo "| measurement              | best (s) |  MiB/s | ferry speed × | target                 |"
  echo "| ------------------------ | -------: | -----: | ------------: | ---------------------- |"
  printf '%s\n' "${FILE_ROWS[@]}"
  echo
  echo "OpenSSH's default cipher; \"ferry speed ×\" = this one's best time ÷ ferry's (above 1: ferry is faster)."
fi
