#!/usr/bin/env bash
# sse-fanout beside nchan, on this machine, with the same bench (see issue 5).
#
#   bench/compare.sh                    # every scenario, 3 runs per peer
#   bench/compare.sh latency rss        # some scenarios only
#   CLIENTS=100 DURATION=3 RUNS=1 bench/compare.sh latency    # a quick check
#
# Scenarios (each run alternates the peers; medians over RUNS runs):
#   rate     highest event rate with p99 < 50 ms, 0 missing and no failed POST
#            (a sweep over SWEEP_RATES with CLIENTS clients)
#   cpu      server CPU µs per delivery at CPU_RATE events/s, CLIENTS clients
#   latency  p99 latency at LAT_RATE events/s, CLIENTS clients
#   rss      server RSS per idle SSE connection, IDLE_CLIENTS clients: the growth
#            of VmRSS (summed over nginx master and workers) while they connect;
#            what a server allocates up front (nginx's worker_connections
#            array) is not in it
#   post     accepted POSTs/s and POST p99 with no subscribers, open loop at POST_RATE/s
#   churn    CHURN_RATE new streams/s (each reads its first bytes, then closes) for
#            CHURN_SECS s while CHURN_OPEN stay open: connect p99, RSS growth
#
# Set-up, all on loopback and torn down at exit: two redis-servers on free
# ports (no persistence); two nginx + nchan instances on the first (publisher
# location /pub taking the raw body, `nchan_subscriber eventsource` at /sub);
# two sse-fanout instances (release build) on the second. Clients are spread
# over both instances of a peer and events published round-robin to both.
#
# Environment (defaults in brackets):
#   CLIENTS [1000]  DURATION [10] s per run  RUNS [3]  WARMUP [2]  DRAIN [2]
#   SWEEP_RATES ["25 50 100 200 400 800 1600 3200 6400"]  CPU_RATE [1000]
#   LAT_RATE [100]  IDLE_CLIENTS [10000, or CLIENTS when CLIENTS is set]
#   POST_RATE [20000]  POST_CONNECTIONS [32 per instance]
#   CHURN_RATE [1000]  CHURN_SECS [30]  CHURN_OPEN [10000, or CLIENTS when set]
#   NCHAN_WORKERS [1] nginx worker processes per nchan instance
#   RESULTS [target/compare-<time>.jsonl]: every bench report, one JSON per line
#
# Needs nginx, libnginx-mod-nchan, redis-server, jq and curl: installed with
# apt-get when running as root, else the command to run is printed.
# Keep the machine otherwise idle: on 2 cores the bench itself competes with
# the servers (each report line shows the bench's CPU next to the server's).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

user_clients=${CLIENTS:-}
CLIENTS=${CLIENTS:-1000}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-2}
DRAIN=${DRAIN:-2}
SWEEP_RATES=${SWEEP_RATES:-"25 50 100 200 400 800 1600 3200 6400"}
CPU_RATE=${CPU_RATE:-1000}
LAT_RATE=${LAT_RATE:-100}
IDLE_CLIENTS=${IDLE_CLIENTS:-${user_clients:-10000}}
POST_RATE=${POST_RATE:-20000}
POST_CONNECTIONS=${POST_CONNECTIONS:-32}
CHURN_RATE=${CHURN_RATE:-1000}
CHURN_SECS=${CHURN_SECS:-30}
CHURN_OPEN=${CHURN_OPEN:-${user_clients:-10000}}
NCHAN_WORKERS=${NCHAN_WORKERS:-1}
RESULTS=${RESULTS:-target/compare-$(date +%Y%m%d-%H%M%S).jsonl}

all_scenarios=(rate cpu latency rss post churn)
if [ "$#" -gt 0 ]; then
    scenarios=("$@")
else
    scenarios=("${all_scenarios[@]}")
fi
for s in "${scenarios[@]}"; do
    case " ${all_scenarios[*]} " in
    *" $s "*) ;;
    *)
        echo "unknown scenario '$s' (one of: ${all_scenarios[*]})" >&2
        exit 2
        ;;
    esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# --- system packages --------------------------------------------------------

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
nchan_module=/usr/lib/nginx/modules/ngx_nchan_module.so
missing=()
[ -x "$nginx_bin" ] || missing+=(nginx)
[ -f "$nchan_module" ] || missing+=(libnginx-mod-nchan)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${missing[*]}; install them with:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    say "installing ${missing[*]}"
    # Keep post-install scripts from starting a system nginx or redis.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    rm -f "$policy"
    trap - EXIT
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
fi

# --- build --------------------------------------------------------------------

say "building sse-fanout and the bench (release)"
cargo build --release --locked -p sse-fanout -p sse-fanout-bench >&2
target_dir=${CARGO_TARGET_DIR:-target}
server_bin=$target_dir/release/sse-fanout
bench_bin=$target_dir/release/sse-fanout-bench

# --- processes ----------------------------------------------------------------

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
work=$(mktemp -d -t sse-compare.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# A free TCP port below the ephemeral range (so client sockets never take it).
taken_ports=" "
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        case "$taken_ports" in *" $port "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            taken_ports+="$port "
            echo "$port"
            return
        fi
    done
}

# Waits until `curl URL` answers 2xx (or redis answers PING).
wait_http() {
    local url=$1 i
    for i in $(seq 100); do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "not ready: $url" >&2
    return 1
}
wait_redis() {
    local port=$1 i
    for i in $(seq 100); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    echo "redis on $port did not start" >&2
    return 1
}

start_redis() {
    local port=$1
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work" --logfile "$work/redis-$port.log" &
    pids+=($!)
    wait_redis "$port"
}

start_nchan() {
    local name=$1 port=$2 redis_port=$3 dir=$work/$1
    mkdir -p "$dir/tmp"
    chmod 1777 "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
load_module $nchan_module;
daemon off;
master_process on;
worker_processes $NCHAN_WORKERS;
worker_rlimit_nofile $nofile;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections $nofile;
    multi_accept on;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    upstream bench_redis {
        nchan_redis_server "redis://127.0.0.1:$redis_port";
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location = /ready {
            return 200 "ok\n";
        }
        # POST the raw message body.
        location = /pub {
            nchan_publisher;
            nchan_channel_id bench;
            nchan_redis_pass bench_redis;
        }
        # Live messages only, as sse-fanout sends without Last-Event-ID.
        location = /sub {
            nchan_subscriber eventsource;
            nchan_channel_id bench;
            nchan_redis_pass bench_redis;
            nchan_subscriber_first_message newest;
        }
    }
}
EOF
    "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    pids+=($!)
    echo "$!" >"$dir/master.pid"
    wait_http "http://127.0.0.1:$port/ready"
}

start_fanout() {
    local name=$1 port=$2 redis_port=$3
    SERVER_ID=$name HOST=127.0.0.1 PORT=$port REDIS_URL="redis://127.0.0.1:$redis_port" \
        MAX_SSE_CLIENTS=1000000 RUST_LOG=warn "$server_bin" >"$work/$name.log" 2>&1 &
    pids+=($!)
    echo "$!" >"$work/$name.pid"
    wait_http "http://127.0.0.1:$port/health"
}

# `--pid` flags for an nginx master and its workers.
nginx_pid_args() {
    local master child
    master=$(cat "$work/$1/master.pid")
    printf -- '--pid=%s\n' "$master"
    for child in $(pgrep -P "$master"); do
        printf -- '--pid=%s\n' "$child"
    done
}

say "starting redis x2, nchan x2, sse-fanout x2 (work dir $work)"
redis_nchan=$(free_port)
redis_fanout=$(free_port)
start_redis "$redis_nchan"
start_redis "$redis_fanout"
nchan1=$(free_port)
nchan2=$(free_port)
fanout1=$(free_port)
fanout2=$(free_port)
start_peers() {
    start_nchan nchan-1 "$nchan1" "$redis_nchan"
    start_nchan nchan-2 "$nchan2" "$redis_nchan"
    start_fanout backend-1 "$fanout1" "$redis_fanout"
    start_fanout backend-2 "$fanout2" "$redis_fanout"
}

# Stops both peers' servers (not Redis), so the next start is fresh.
stop_peers() {
    local file pid
    for file in nchan-1/master.pid nchan-2/master.pid backend-1.pid backend-2.pid; do
        pid=$(cat "$work/$file")
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# The bench's flags for a peer's URLs, publish mode and processes.
peer_args() {
    if [ "$1" = nchan ]; then
        echo "--sse=http://127.0.0.1:$nchan1/sub"
        echo "--sse=http://127.0.0.1:$nchan2/sub"
        echo "--publish=http://127.0.0.1:$nchan1/pub"
        echo "--publish=http://127.0.0.1:$nchan2/pub"
        echo "--publish-mode=raw"
        nginx_pid_args nchan-1
        nginx_pid_args nchan-2
    else
        echo "--sse=http://127.0.0.1:$fanout1/events/sse"
        echo "--sse=http://127.0.0.1:$fanout2/events/sse"
        echo "--publish=http://127.0.0.1:$fanout1/accounts"
        echo "--publish=http://127.0.0.1:$fanout2/accounts"
        echo "--publish-mode=accounts"
        echo "--pid=$(cat "$work/backend-1.pid")"
        echo "--pid=$(cat "$work/backend-2.pid")"
    fi
}

start_peers

peers=(nchan sse-fanout)
mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"

# bench PEER SCENARIO ARGS...: runs the bench, appends its report (tagged with
# peer and scenario) to RESULTS and prints it as one JSON line.
bench() {
    local peer=$1 scenario=$2 report
    shift 2
    local -a peer_args
    mapfile -t peer_args < <(peer_args "$peer")
    report=$("$bench_bin" --json --no-progress --warmup "$WARMUP" --drain "$DRAIN" \
        --duration "$DURATION" "${peer_args[@]}" "$@")
    report=$(jq -c --arg peer "$peer" --arg scenario "$scenario" \
        '. + {peer: $peer, scenario: $scenario}' <<<"$report")
    echo "$report" >>"$RESULTS"
    echo "$report"
}

# One line per bench run, so the limits are visible as it goes.
show() {
    jq -r '"    \(.peer | .[0:10] | . + (" " * (10 - length))) rate \(.args.rate)/s clients \(.connections.ok)/\(.connections.attempted): " +
        "p99 \(.latency_ms.p99) ms, missing \(.deliveries.missing), POST ok \(.events.ok)/\(.events.scheduled) (\(.events.accepted_per_sec | floor)/s, p99 \(.post_latency_ms.p99) ms), " +
        "RSS/conn \(.server.rss_kib_per_connection // "-" | if type == "number" then (. * 100 | floor / 100) else . end) KiB, " +
        "server \(.server.cpu_cores // 0 | . * 100 | floor / 100) cores \(.server.cpu_us_per_delivery // "-" | if type == "number" then (. * 1000 | floor / 1000) else . end) µs/delivery, " +
        "bench \(.bench.cpu_cores | . * 100 | floor / 100) cores"' >&2
}

# Peers in the order of run $1: alternate which goes first.
order() {
    if [ $(($1 % 2)) -eq 1 ]; then echo nchan sse-fanout; else echo sse-fanout nchan; fi
}

median() {
    if [ "$#" -eq 0 ]; then
        echo null
        return
    fi
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# A number as a table shows it: 3 significant digits, no decimals from 100 on.
fmt() {
    awk -v v="$1" 'BEGIN { if (v == "null") print "-"; else if (v + 0 >= 100) printf "%.0f", v; else printf "%.3g", v }'
}

summary=()
# record SCENARIO LABEL UNIT BETTER NCHAN_VALUES... -- FANOUT_VALUES...
record() {
    local label=$1 unit=$2 better=$3
    shift 3
    local -a a=() b=()
    while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
        [ "$1" != null ] && a+=("$1")
        shift
    done
    shift
    for v in "$@"; do [ "$v" != null ] && b+=("$v"); done
    local ma mb ratio
    ma=$(median "${a[@]}")
    mb=$(median "${b[@]}")
    ratio=$(awk -v a="$ma" -v b="$mb" 'BEGIN { if (a == "null" || b == "null" || a + 0 == 0) print "-"; else printf "%.2f", b / a }')
    summary+=("$(printf '%-50s %10s %10s %8s  %s' "$label ($unit)" "$(fmt "$ma")" "$(fmt "$mb")" "$ratio" "$better")")
    printf '%s: nchan [%s] sse-fanout [%s]\n' "$label" "${a[*]}" "${b[*]}" >&2
}

src_addrs() { echo $(($1 / 20000 + 1)); }

# --- scenarios ------------------------------------------------------------------

scenario_rate() {
    say "rate: highest event rate with p99 < 50 ms, 0 missing ($CLIENTS clients, rates $SWEEP_RATES)"
    local -A best=([nchan]="" [sse-fanout]="")
    local run peer rate report ok highest
    for run in $(seq "$RUNS"); do
        for peer in $(order "$run"); do
            highest=0
            for rate in $SWEEP_RATES; do
                report=$(bench "$peer" rate --clients "$CLIENTS" --source-addrs "$(src_addrs "$CLIENTS")" --rate "$rate")
                show <<<"$report"
                ok=$(jq -r '.latency_ms.p99 < 50 and .deliveries.missing == 0 and .events.failed == 0
                    and .events.ok > 0 and .connections.failed == 0 and .connections.dropped == 0' <<<"$report")
                [ "$ok" = true ] || break
                highest=$rate
            done
            best[$peer]+="$highest "
        done
    done
    # shellcheck disable=SC2086
    record "a) highest rate, p99 < 50 ms, 0 missing" "events/s" "higher is better" ${best[nchan]} -- ${best[sse-fanout]}
}

# fixed [--fresh] SCENARIO JQ_METRIC LABEL UNIT BETTER BENCH_ARGS...: RUNS
# alternating runs, medians of the metric; --fresh restarts the servers
# before each run (memory freed by earlier runs would hide new allocations).
fixed() {
    local fresh=false
    if [ "$1" = --fresh ]; then
        fresh=true
        shift
    fi
    local scenario=$1 metric=$2 label=$3 unit=$4 better=$5
    shift 5
    local -A values=([nchan]="" [sse-fanout]="")
    local run peer report
    for run in $(seq "$RUNS"); do
        for peer in $(order "$run"); do
            if [ "$fresh" = true ]; then
                stop_peers
                start_peers
            fi
            report=$(bench "$peer" "$scenario" "$@")
            show <<<"$report"
            values[$peer]+="$(jq -r "$metric // null" <<<"$report") "
        done
    done
    # shellcheck disable=SC2086
    record "$label" "$unit" "$better" ${values[nchan]} -- ${values[sse-fanout]}
}

scenario_cpu() {
    say "cpu: server CPU per delivery at $CPU_RATE events/s, $CLIENTS clients"
    fixed cpu .server.cpu_us_per_delivery "b) server CPU per delivery @ $CPU_RATE/s" "µs" "lower is better" \
        --clients "$CLIENTS" --source-addrs "$(src_addrs "$CLIENTS")" --rate "$CPU_RATE"
}

scenario_latency() {
    say "latency: p99 at $LAT_RATE events/s, $CLIENTS clients"
    fixed latency .latency_ms.p99 "c) p99 latency @ $LAT_RATE/s" "ms" "lower is better" \
        --clients "$CLIENTS" --source-addrs "$(src_addrs "$CLIENTS")" --rate "$LAT_RATE"
}

scenario_rss() {
    say "rss: server RSS per idle SSE connection, $IDLE_CLIENTS clients"
    fixed --fresh rss .server.rss_kib_per_connection "d) RSS per idle connection, $IDLE_CLIENTS clients" "KiB" "lower is better" \
        --clients "$IDLE_CLIENTS" --source-addrs "$(src_addrs "$IDLE_CLIENTS")" --rate 0
}

scenario_post() {
    say "post: POST throughput with no subscribers, open loop at $POST_RATE/s"
    fixed post .events.accepted_per_sec "e) POSTs accepted/s, no subscribers" "/s" "higher is better" \
        --clients 0 --rate "$POST_RATE" --publish-connections "$POST_CONNECTIONS"
    # The POST p99 of the same runs.
    local -A p99=([nchan]="" [sse-fanout]="")
    local peer
    for peer in "${peers[@]}"; do
        p99[$peer]=$(jq -r --arg peer "$peer" 'select(.scenario == "post" and .peer == $peer) | .post_latency_ms.p99' "$RESULTS" | tr '\n' ' ')
    done
    # shellcheck disable=SC2086
    record "e) POST p99, no subscribers @ $POST_RATE/s" "ms" "lower is better" ${p99[nchan]} -- ${p99[sse-fanout]}
}

scenario_churn() {
    say "churn: $CHURN_RATE new streams/s for $CHURN_SECS s while $CHURN_OPEN stay open"
    fixed --fresh churn .churn.connect_ms.p99 "churn: connect p99 @ $CHURN_RATE new/s" "ms" "lower is better" \
        --clients "$CHURN_OPEN" --source-addrs "$(src_addrs "$CHURN_OPEN")" --rate 0 \
        --churn-rate "$CHURN_RATE" --duration "$CHURN_SECS"
    # RSS after the churn minus RSS before it, same runs.
    local -A grown=([nchan]="" [sse-fanout]="")
    local peer
    for peer in "${peers[@]}"; do
        grown[$peer]=$(jq -r --arg peer "$peer" 'select(.scenario == "churn" and .peer == $peer) | .server.rss_kib_end - .server.rss_kib_connected' "$RESULTS" | tr '\n' ' ')
    done
    # shellcheck disable=SC2086
    record "churn: RSS after − before the churn" "KiB" "lower is better" ${grown[nchan]} -- ${grown[sse-fanout]}
}

for s in "${scenarios[@]}"; do
    "scenario_$s"
done

echo
echo "Medians of $RUNS run(s) per peer; $CLIENTS clients over two instances each; ${DURATION} s per run; $(nproc) cores."
printf '%-50s %10s %10s %8s\n' "scenario" "nchan" "sse-fanout" "ratio"
printf '%s\n' "${summary[@]}"
echo "(ratio = sse-fanout / nchan; every report: $RESULTS)"
