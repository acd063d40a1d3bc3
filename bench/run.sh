#!/usr/bin/env bash
# Qualm's speed, side by side in one run: tract's floor, qualmd's pipeline, the statistics right
# after an inference, onnxruntime as the peer, peak memory, allocations and the scaling sweep.
# Prints a Markdown table and writes target/bench/results.{md,json}. See bench/README.md.
#
#   bash bench/run.sh            # about 10 minutes here once built
#   bash bench/run.sh --quick    # fewer rounds and frames, under 2 minutes once built
#   options: --multithread       also build tract with the multithread-mm feature (a second
#                                build of the tract stack) and time 1, 2 and 4 threads
#            --no-uplink         run the gated qualmd runs without the uplink (by default they
#                                send every kept record to a WebDAV server, nginx on loopback)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

rounds=60
frames=200
# tract runs the scaling nets' full-resolution Resize slowly (seconds per frame at 512 x 512 x
# 150), so the sweep has rounds and frames of its own.
scale_rounds=5
scale_frames=8
multithread=0
uplink=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) rounds=15; frames=60; scale_rounds=2; scale_frames=3 ;;
        --multithread) multithread=1 ;;
        --no-uplink) uplink=0 ;;
        *) echo "bench/run.sh: unknown option $1 (expected --quick, --multithread, --no-uplink)" >&2
           exit 2 ;;
    esac
    shift
done

out=target/bench
models=target/bench-models
rm -rf "$out"
mkdir -p "$out"
started=$(date +%s)
say() { echo "--- $* ($(($(date +%s) - started)) s)" >&2; }

# GNU time gives the peak resident set size; nginx (WebDAV PUT) receives the uplink's records.
missing=""
[ -x /usr/bin/time ] || missing="$missing time"
if [ "$uplink" = 1 ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    missing="$missing nginx"
fi
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The peer and the model generator: pinned as in models/build/requirements.txt, in a venv of
# their own under target/, reused while the pins are unchanged.
venv=target/bench-python
pins="onnxruntime==1.19.2 onnx==1.16.2 numpy==1.26.4 pillow==10.4.0 protobuf==3.20.3"
if [ "$(cat "$venv/pins" 2>/dev/null)" != "$pins" ]; then
    say "python venv ($pins)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086 # one word per package
    "$venv/bin/pip" install -q --disable-pip-version-check $pins
    echo "$pins" > "$venv/pins"
fi
python="$venv/bin/python"

say "benchmark models into $models"
"$python" models/build/bench_models.py --out "$models" >&2

say "build (device profile, as shipped): the floor bench, the statistics bench, qualmd"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
bench_binary() { # bench_binary NAME [cargo flags] -> path of the bench executable it built
    # (by target name: when qualmd was relinked too, its artifact can come last)
    cargo bench -q -p qualm-daemon --profile device --bench "$1" --no-run \
        --message-format=json "${@:2}" \
        | "$python" -c 'import json, sys
print([m["executable"] for m in map(json.loads, sys.stdin)
       if m.get("reason") == "compiler-artifact" and m.get("executable")
       and m["target"]["name"] == sys.argv[1]][-1])' "$1"
}
floor_bin=$(bench_binary tract_floor)
stats_bin=$(bench_binary stats_after_inference)
# Benches build the package's binaries too: this qualmd has the device profile (what ships)
# and default features, and shares the benches' tract build. Copied now, because the feature
# build below relinks target/device/qualmd with multithread-mm.
cp target/device/qualmd "$out/qualmd"
qualmd="$root/$out/qualmd"
if [ "$multithread" = 1 ]; then
    floor_mt_bin=$(bench_binary tract_floor --features multithread-mm)
fi

selfie_cards="models/selfie/selfie_fp32.toml $models/selfie_qdq.toml models/selfie/selfie_int8.toml"
scale_cards=$(ls "$models"/scale_r*_c*.toml | sort -V)

say "tract floor and daemon stages ($rounds rounds)"
# shellcheck disable=SC2086 # lists of paths without spaces
"$floor_bin" --rounds "$rounds" --json "$out/tract.json" $selfie_cards \
    models/multiclass/multiclass_int8.toml >&2
say "tract floor and daemon stages of the scaling nets ($scale_rounds rounds)"
# shellcheck disable=SC2086
"$floor_bin" --rounds "$scale_rounds" --json "$out/tract_scaling.json" $scale_cards >&2
if [ "$multithread" = 1 ]; then
    say "tract multithread-mm, 1, 2 and 4 threads"
    # shellcheck disable=SC2086
    "$floor_mt_bin" --rounds "$rounds" --threads 1,2,4 --json "$out/tract_mt.json" \
        $selfie_cards >&2
fi

say "statistics right after an inference"
ROUNDS=$rounds "$stats_bin" > "$out/stats_after_inference.md"

say "onnxruntime peer"
# shellcheck disable=SC2086
{
    "$python" bench/ort_peer.py --rounds "$rounds" --threads 1,2 models/selfie/selfie_fp32.onnx \
        "$models/selfie_qdq.onnx" models/selfie/selfie_int8.onnx models/multiclass/multiclass_int8.onnx
    # shellcheck disable=SC2046 # one word per model
    "$python" bench/ort_peer.py --rounds "$scale_rounds" --threads 1 \
        $(for card in $scale_cards; do echo "${card%.toml}.onnx"; done)
} > "$out/ort.jsonl"

# qualmd as a black box: a folder of N frames (the 40 real frames, repeated), the frame loop's
# frames/s from its summary line, peak RSS from GNU time. Three runs; the report takes medians.
frame_folder() { # frame_folder N -> a folder of N links to the real frames
    local folder="$out/frames-$1"
    mkdir -p "$folder"
    local real=(models/frames/vtest/*.jpg)
    for ((k = 0; k < $1; k++)); do
        ln -sf "$root/${real[k % ${#real[@]}]}" "$folder/$(printf 'frame_%05d.jpg' "$k")"
    done
    echo "$folder"
}
qualmd_run() { # qualmd_run NAME FRAMES CARD [qualmd flags...] -> one JSON line
    local name=$1 folder=$2 card=$3
    shift 3
    local run="$out/run-$name"
    rm -rf "$run"
    mkdir -p "$run"
    /usr/bin/time -v "$qualmd" --model "$card" --frames "$folder" --spool "$run/spool" \
        --ledger "$run/ledger.jsonl" --log warn "$@" > "$run/stdout" 2> "$run/time"
    local sent=""
    if [ -n "$received" ] && [[ " $* " == *" --config "* ]]; then
        # Records the server holds: one folder each under the run's name (the uplink's prefix).
        sent=0
        if [ -d "$received/$name" ]; then
            sent=$(find "$received/$name" -mindepth 1 -maxdepth 1 -type d | wc -l)
        fi
    fi
    "$python" - "$name" "$card" "$run" "$sent" <<'EOF'
import json, re, sys
name, card, run, sent = sys.argv[1:]
summary = open(f"{run}/stdout").read()
timing = open(f"{run}/time").read()
# "qualmd: N frames, K kept, ..., F failed, ..., R frames/s": the counts in between may grow.
m = re.search(r"qualmd: (\d+) frames, (\d+) kept, .*?(\d+) failed, .*?([\d.]+) frames/s", summary)
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing)
if not m or not rss:
    raise SystemExit(f"bench/run.sh: expected qualmd's summary line in {run}/stdout and GNU time's "
                     f"peak RSS in {run}/time, found {summary!r}")
print(json.dumps({"name": name, "card": card, "frames": int(m[1]), "kept": int(m[2]),
                  "failed": int(m[3]), "frames_per_second": float(m[4]),
                  "peak_rss_kib": int(rss[1]),
                  "uplink": "off" if sent == "" else f"http PUT to nginx, {sent} records sent"}))
EOF
}

# The uplink: nginx on a free loopback port takes WebDAV PUTs into $received; qualmd's uplink
# thread sends each kept record there while the frame loop runs. The uplink has no flags, so
# each gated run gets a configuration file (flags override its other keys).
received=""
if [ "$uplink" = 1 ]; then
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    web="$root/$out/nginx"
    received="$web/root"
    mkdir -p "$received" "$web/temp"
    port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat > "$web/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $web/nginx.pid;
error_log $web/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $web/temp/body;
  proxy_temp_path $web/temp/proxy;
  fastcgi_temp_path $web/temp/fastcgi;
  uwsgi_temp_path $web/temp/uwsgi;
  scgi_temp_path $web/temp/scgi;
  server {
    listen 127.0.0.1:$port;
    root $received;
    client_max_body_size 64m;
    location / { dav_methods PUT; create_full_put_path on; }
  }
}
EOF
    "$nginx_bin" -p "$web" -c "$web/nginx.conf" -e "$web/error.log" &
    nginx_pid=$!
    trap 'kill "$nginx_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
fi
uplink_config() { # uplink_config NAME FRAMES -> a qualmd configuration whose uplink sends to nginx
    local config="$root/$out/uplink-$1.toml"
    cat > "$config" <<EOF
model = "$root/models/selfie/selfie_int8.toml"
spool = "$root/$out/run-$1/spool"
ledger = "$root/$out/run-$1/ledger.jsonl"

[source]
frames = "$root/$2"

[uplink]
sink = "http"
url = "http://127.0.0.1:$port"
prefix = "$1"
EOF
    echo "$config"
}

say "qualmd pipeline, $frames frames, 3 runs each"
folder=$(frame_folder "$frames")
for k in 1 2 3; do
    if [ "$uplink" = 1 ]; then
        gate_flags=(--config "$(uplink_config "gate-$k" "$folder")")
    else
        gate_flags=()
    fi
    qualmd_run "gate-$k" "$folder" models/selfie/selfie_int8.toml \
        --calibration models/selfie/calibration.toml "${gate_flags[@]}"
    qualmd_run "observe-$k" "$folder" models/selfie/selfie_int8.toml --observe
done > "$out/qualmd.jsonl"

say "qualmd scaling, $scale_frames frames per model"
folder=$(frame_folder "$scale_frames")
for card in $scale_cards; do
    qualmd_run "scale-$(basename "${card%.toml}")" "$folder" "$card" --observe
done > "$out/qualmd_scaling.jsonl"

say "report"
"$python" bench/report.py --dir "$out" --rounds "$rounds" --frames "$frames" \
    --scale-rounds "$scale_rounds" --scale-frames "$scale_frames" \
    --seconds "$(($(date +%s) - started))"
