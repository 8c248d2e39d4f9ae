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
#   topics   topic fan-out at TOPIC_RATE events/s, each event to one random topic:
#            1,000 and 10,000 streams each on its own topic + 100 on every topic,
#            and 1,000 topics × 10 streams; p99, missing, server CPU per event.
#            sse-fanout: Mercure (`?topic=t<k>`, `topic=*`, POST /.well-known/mercure
#            with a publisher JWT); nchan: one channel per topic (/sub/t<k>), each
#            publish going to its topic's channel and to channel `all`
#   storm    reconnect storm (sse-fanout only): the repo's nginx.conf in front of
#            two more instances; SIGTERM one instance STORM_SIGNAL_AT s in: its
#            streams resume on the other with Last-Event-ID; time until the last
#            resumed, p99 of the events sent after the signal, missing and
#            duplicates. Two cases: STORM_CLIENTS streams at STORM_RATE events/s,
#            and STORM_FAST_CLIENTS at STORM_FAST_RATE (every delivery crosses
#            nginx: 10,000 streams at 200/s would be 2M proxied writes/s)
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
#   TOPIC_RATE [1000]  STORM_CLIENTS [10000]  STORM_RATE [2]  STORM_SIGNAL_AT [3]
#   STORM_FAST_CLIENTS [1000]  STORM_FAST_RATE [200]
#   NCHAN_WORKERS [1] nginx worker processes per nchan instance
#   FANOUT_WORKERS [unset: tokio's default, one per core] worker threads per
#            sse-fanout instance (TOKIO_WORKER_THREADS); 1 = like nchan's one
#            worker per instance
#   RESULTS [target/compare-<time>.jsonl]: every bench report, one JSON per line
#   KEEP_WORK [unset]: when set, keep the work dir (logs of every process) at exit
#   FANOUT_BIN [target/release/sse-fanout]: the sse-fanout binary to measure
#            (e.g. an older commit's build, for a before/after in one run)
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
TOPIC_RATE=${TOPIC_RATE:-1000}
STORM_CLIENTS=${STORM_CLIENTS:-${user_clients:-10000}}
STORM_RATE=${STORM_RATE:-2}
STORM_FAST_CLIENTS=${STORM_FAST_CLIENTS:-1000}
STORM_FAST_RATE=${STORM_FAST_RATE:-200}
STORM_SIGNAL_AT=${STORM_SIGNAL_AT:-3}
STORM_SOURCE_ADDRS=${STORM_SOURCE_ADDRS:-2}
NCHAN_WORKERS=${NCHAN_WORKERS:-1}
FANOUT_WORKERS=${FANOUT_WORKERS:-}
RESULTS=${RESULTS:-target/compare-$(date +%Y%m%d-%H%M%S).jsonl}

all_scenarios=(rate cpu latency rss post churn topics storm)
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
command -v python3 >/dev/null || missing+=(python3)
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
server_bin=${FANOUT_BIN:-$target_dir/release/sse-fanout}
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
    if [ -n "${KEEP_WORK:-}" ]; then
        echo "kept $work (KEEP_WORK)" >&2
    else
        rm -rf "$work"
    fi
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
        # Topics: one channel per topic; every publish also goes to channel
        # "all" (nchan's multi-channel publishing), read by /sub/all.
        location ~ ^/pub/([A-Za-z0-9]+)\$ {
            nchan_publisher;
            nchan_channel_id \$1 all;
            nchan_redis_pass bench_redis;
        }
        location ~ ^/sub/([A-Za-z0-9]+)\$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
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

# The Mercure publisher key of the sse-fanout instances and a publisher JWT
# (HS256, `mercure.publish: ["*"]`), sent with every POST to sse-fanout (with
# a key set, POST /accounts needs it too: SPEC §8.4).
jwt_key=bench-$RANDOM$RANDOM
publisher_jwt=$(python3 -c 'import base64,hashlib,hmac,sys;e=lambda b:base64.urlsafe_b64encode(b).rstrip(b"=");m=e(b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}")+b"."+e(b"{\"mercure\":{\"publish\":[\"*\"]}}");print((m+b"."+e(hmac.new(sys.argv[1].encode(),m,hashlib.sha256).digest())).decode())' "$jwt_key")

start_fanout() {
    local name=$1 port=$2 redis_port=$3
    SERVER_ID=$name HOST=127.0.0.1 PORT=$port REDIS_URL="redis://127.0.0.1:$redis_port" \
        MERCURE_PUBLISHER_JWT_KEY=$jwt_key \
        MAX_SSE_CLIENTS=1000000 RUST_LOG=warn \
        env ${FANOUT_WORKERS:+TOKIO_WORKER_THREADS=$FANOUT_WORKERS} "$server_bin" >"$work/$name.log" 2>&1 &
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

# The bench's flags for a peer's URLs, publish mode and processes; with a
# second argument `topics`, the per-topic URLs (see the topics scenario).
peer_args() {
    if [ "$1" = nchan ] && [ "${2:-}" = topics ]; then
        echo "--sse=http://127.0.0.1:$nchan1/sub/{topic}"
        echo "--sse=http://127.0.0.1:$nchan2/sub/{topic}"
        echo "--wildcard-sse=http://127.0.0.1:$nchan1/sub/all"
        echo "--wildcard-sse=http://127.0.0.1:$nchan2/sub/all"
        echo "--publish=http://127.0.0.1:$nchan1/pub/{topic}"
        echo "--publish=http://127.0.0.1:$nchan2/pub/{topic}"
        echo "--publish-mode=raw"
        nginx_pid_args nchan-1
        nginx_pid_args nchan-2
    elif [ "${2:-}" = topics ]; then
        echo "--sse=http://127.0.0.1:$fanout1/.well-known/mercure?topic={topic}"
        echo "--sse=http://127.0.0.1:$fanout2/.well-known/mercure?topic={topic}"
        echo "--wildcard-sse=http://127.0.0.1:$fanout1/.well-known/mercure?topic=*"
        echo "--wildcard-sse=http://127.0.0.1:$fanout2/.well-known/mercure?topic=*"
        echo "--publish=http://127.0.0.1:$fanout1/.well-known/mercure"
        echo "--publish=http://127.0.0.1:$fanout2/.well-known/mercure"
        echo "--publish-mode=mercure"
        echo "--publish-token=$publisher_jwt"
        echo "--pid=$(cat "$work/backend-1.pid")"
        echo "--pid=$(cat "$work/backend-2.pid")"
    elif [ "$1" = nchan ]; then
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
        echo "--publish-token=$publisher_jwt"
        echo "--pid=$(cat "$work/backend-1.pid")"
        echo "--pid=$(cat "$work/backend-2.pid")"
    fi
}

start_peers

peers=(nchan sse-fanout)
mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"

# bench PEER SCENARIO ARGS...: runs the bench, appends its report (tagged with
# peer and scenario) to RESULTS and prints it as one JSON line. Scenarios
# named topics* use the per-topic URLs; storm brings its own.
bench() {
    local peer=$1 scenario=$2 report
    shift 2
    local -a peer_args=()
    case "$scenario" in
    topics*) mapfile -t peer_args < <(peer_args "$peer" topics) ;;
    storm*) ;;
    *) mapfile -t peer_args < <(peer_args "$peer") ;;
    esac
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
    summary+=("$(printf '%-62s %10s %10s %8s  %s' "$label${unit:+ ($unit)}" "$(fmt "$ma")" "$(fmt "$mb")" "$ratio" "$better")")
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

# also SCENARIO JQ_METRIC LABEL UNIT BETTER: records another metric of the
# runs `fixed` just made for SCENARIO (read back from RESULTS).
also() {
    local scenario=$1 metric=$2 label=$3 unit=$4 better=$5
    local -A values=([nchan]="" [sse-fanout]="")
    local peer
    for peer in "${peers[@]}"; do
        values[$peer]=$(jq -r --arg peer "$peer" --arg s "$scenario" \
            "select(.scenario == \$s and .peer == \$peer) | $metric // null" "$RESULTS" | tr '\n' ' ')
    done
    # shellcheck disable=SC2086
    record "$label" "$unit" "$better" ${values[nchan]} -- ${values[sse-fanout]}
}

scenario_post() {
    say "post: POST throughput with no subscribers, open loop at $POST_RATE/s"
    fixed post .events.accepted_per_sec "e) POSTs accepted/s, no subscribers" "/s" "higher is better" \
        --clients 0 --rate "$POST_RATE" --publish-connections "$POST_CONNECTIONS"
    also post .post_latency_ms.p99 "e) POST p99, no subscribers @ $POST_RATE/s" "ms" "lower is better"
}

scenario_churn() {
    say "churn: $CHURN_RATE new streams/s for $CHURN_SECS s while $CHURN_OPEN stay open"
    # bench() passes --duration "$DURATION": the churn lasts CHURN_SECS instead
    # (bash's dynamic scope makes this local visible there).
    local DURATION=$CHURN_SECS
    fixed --fresh churn .churn.connect_ms.p99 "churn: connect p99 @ $CHURN_RATE new/s" "ms" "lower is better" \
        --clients "$CHURN_OPEN" --source-addrs "$(src_addrs "$CHURN_OPEN")" --rate 0 \
        --churn-rate "$CHURN_RATE"
    also churn '.churn.ok / .churn.scheduled * 100' "churn: streams that connected" "%" "higher is better"
    # RSS after the churn minus RSS before it, same runs.
    also churn '.server.rss_kib_end - .server.rss_kib_connected' "churn: RSS after − before the churn" "KiB" "lower is better"
}

# topic_case NAME LABEL BENCH_ARGS...: one topic fan-out case, both peers.
topic_case() {
    local name=$1 label=$2
    shift 2
    fixed "$name" .latency_ms.p99 "$label: p99" "ms" "lower is better" \
        --rate "$TOPIC_RATE" "$@"
    also "$name" .deliveries.missing "$label: missing" "deliveries" "0 is the goal"
    also "$name" .server.cpu_us_per_event "$label: server CPU per event" "µs" "lower is better"
}

scenario_topics() {
    say "topics: $TOPIC_RATE events/s, each to one random topic"
    topic_case topics-1k "f) 1,000 streams on own topics + 100 on all" \
        --clients 1000 --topics 1000 --wildcard-clients 100 --source-addrs 1
    topic_case topics-10k "g) 10,000 streams on own topics + 100 on all" \
        --clients 10000 --topics 10000 --wildcard-clients 100 --source-addrs 2
    topic_case topics-1kx10 "h) 1,000 topics × 10 streams" \
        --clients 10000 --topics 1000 --source-addrs 2
}

# The repo's nginx.conf with only the listen address, the two upstream
# servers and the paths (pid, logs, temp files) changed, as the tests do.
start_repo_nginx() {
    local dir=$1 port=$2 b1=$3 b2=$4
    mkdir -p "$dir"
    sed -e "s|^\( *\)listen 80\( backlog=[0-9]*\)\{0,1\};|\1listen 127.0.0.1:$port\2;|" \
        -e "s|server backend-1:3000;|server 127.0.0.1:$b1;|" \
        -e "s|server backend-2:3002;|server 127.0.0.1:$b2;|" \
        -e "s|^http {|http {\n    client_body_temp_path $dir/client_body_temp;\n    proxy_temp_path $dir/proxy_temp;\n    fastcgi_temp_path $dir/fastcgi_temp;\n    uwsgi_temp_path $dir/uwsgi_temp;\n    scgi_temp_path $dir/scgi_temp;\n    access_log off;|" \
        nginx.conf >"$dir/nginx.conf"
    grep -q "listen 127.0.0.1:$port[ ;]" "$dir/nginx.conf" && grep -q "server 127.0.0.1:$b2;" "$dir/nginx.conf" ||
        { echo "nginx.conf no longer has the lines the storm scenario renders" >&2; return 1; }
    "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        -g "daemon off; pid $dir/nginx.pid; error_log $dir/error.log warn;" &
    pids+=($!)
    echo "$!" >"$dir/master.pid"
    wait_http "http://127.0.0.1:$port/health"
}

# storm_case NAME LABEL CLIENTS RATE: RUNS runs of one reconnect storm.
storm_case() {
    local name=$1 label=$2 clients=$3 rate=$4
    say "storm: $clients streams through nginx over two instances, $rate events/s, SIGTERM one at ${STORM_SIGNAL_AT} s"
    local run report storm_nginx s1 s2 s1_name s2_name dir pid
    for run in $(seq "$RUNS"); do
        s1=$(free_port)
        s2=$(free_port)
        storm_nginx=$(free_port)
        dir=$work/$name-nginx-$run
        s1_name=$name-$run-1
        s2_name=$name-$run-2
        start_fanout "$s1_name" "$s1" "$redis_fanout"
        start_fanout "$s2_name" "$s2" "$redis_fanout"
        start_repo_nginx "$dir" "$storm_nginx" "$s1" "$s2"
        # The kernel's counters of dropped SYNs and retransmits during the run
        # (a full accept queue costs a client 1 s, 3 s, 7 s... per drop).
        if command -v nstat >/dev/null; then NSTAT_HISTORY=$work/nstat nstat -n; fi
        report=$(bench sse-fanout "$name" --clients "$clients" --source-addrs "$STORM_SOURCE_ADDRS" \
            --sse "http://127.0.0.1:$storm_nginx/events/sse" \
            --publish "http://127.0.0.1:$storm_nginx/accounts" --rate "$rate" \
            --publish-token "$publisher_jwt" \
            --reconnect --signal-pid "$(cat "$work/$s1_name.pid")" --signal-at "$STORM_SIGNAL_AT" \
            --pid "$(cat "$work/$s2_name.pid")")
        show <<<"$report"
        if command -v nstat >/dev/null; then
            NSTAT_HISTORY=$work/nstat nstat TcpExtListenOverflows TcpExtListenDrops TcpExtTCPSynRetrans TcpExtTCPTimeouts |
                awk 'NR > 1 { printf "    kernel: %s %s\n", $1, $2 }' >&2
        fi
        jq -r '"    storm: \(.resume.clients_reconnected) streams resumed (\(.resume.reconnects) resumes), last \(.resume.last_resumed_secs_after_signal) s after SIGTERM; after-signal p99 \(.resume.latency_after_signal_ms.p99) ms; missing \(.deliveries.missing), duplicates \(.deliveries.duplicates), POST failed \(.events.failed)"' <<<"$report" >&2
        # What nginx logged (worker_connections exhausted, upstream errors):
        # the first lines of each kind, so a failed run says why.
        grep -E '\[(alert|crit|error)\]' "$dir/error.log" | sed -E 's/^.*\[(alert|crit|error)\] [0-9#*]+: (\*[0-9]+ )?//; s/, client:.*//' |
            sort | uniq -c | sort -rn | head -5 | sed 's/^/    nginx: /' >&2 || true
        grep -hE ' (WARN|ERROR) ' "$work/$s1_name.log" "$work/$s2_name.log" | sed -E 's/^[^ ]+ +//' | cut -c1-160 |
            sort | uniq -c | sort -rn | head -5 | sed 's/^/    sse-fanout: /' >&2 || true
        for pid in "$(cat "$dir/master.pid")" "$(cat "$work/$s1_name.pid")" "$(cat "$work/$s2_name.pid")"; do
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        done
    done
    local metric label unit
    local -a values
    while IFS='|' read -r metric unit; do
        mapfile -t values < <(jq -r --arg s "$name" "select(.scenario == \$s) | $metric // null" "$RESULTS")
        record "$label: $unit" "" "sse-fanout only" -- "${values[@]}"
    done <<'METRICS'
.resume.last_resumed_secs_after_signal|SIGTERM → last stream resumed (s)
.resume.clients_reconnected|streams resumed
.resume.latency_after_signal_ms.p99|p99 of events sent after SIGTERM (ms)
.deliveries.missing|missing deliveries
.deliveries.duplicates|duplicate deliveries
.events.failed|failed POSTs
METRICS
}

scenario_storm() {
    storm_case storm "i) storm, $STORM_CLIENTS streams @ $STORM_RATE/s" "$STORM_CLIENTS" "$STORM_RATE"
    storm_case storm-fast "j) storm, $STORM_FAST_CLIENTS streams @ $STORM_FAST_RATE/s" "$STORM_FAST_CLIENTS" "$STORM_FAST_RATE"
}

for s in "${scenarios[@]}"; do
    "scenario_$s"
done

echo
echo "Medians of $RUNS run(s) per peer; $CLIENTS clients over two instances each; ${DURATION} s per run; $(nproc) cores."
printf '%-62s %10s %10s %8s\n' "scenario" "nchan" "sse-fanout" "ratio"
printf '%s\n' "${summary[@]}"
echo "(ratio = sse-fanout / nchan; every report: $RESULTS)"
