#!/usr/bin/env bash
# pipe against make, DVC and Snakemake on the same work, in one run. See benches/README.md.
#
#   benches/run.sh [--quick] [--peers] [--keep] [--out FILE] [--only W1,W2,...]
#
# Prints a Markdown table of medians with the ratio pipe / peer, and writes it to
# target/bench-report.md (or --out FILE). Workloads live in a temporary folder that is
# removed at the end unless --keep.
set -euo pipefail

QUICK=0 PEERS=0 KEEP=0 OUT="" ONLY="W1,W2,W3,W4,W5,W6,CACHE"
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1 ;;
        --peers) PEERS=1 ;;
        --keep) KEEP=1 ;;
        --out) OUT=$2; shift ;;
        --only) ONLY=${2^^}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCHES=$ROOT/benches
OUT=${OUT:-$ROOT/target/bench-report.md}
STARTED=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log() { printf '\033[1;34m==>\033[0m %s \033[2m(+%ss)\033[0m\n' "$*" "$(($(date +%s) - STARTED))" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }

# --- sizes ------------------------------------------------------------------------------
if ((QUICK)); then
    W1_FILES=10000 W1_DIRS=20 W2_STAGES=100 W3_COUNT=2 W3_MIB=64 W4_STAGES=4 W6_FILES=50000
    W5_GROUPS=50 CACHE_MIB=128
    RUNS_FAST=3 RUNS_SLOW=1 RUNS_ALT=2 PEER_FAST=2 PEER_SLOW=1 CAP=60
else
    W1_FILES=100000 W1_DIRS=100 W2_STAGES=1000 W3_COUNT=4 W3_MIB=512 W4_STAGES=8 W6_FILES=1000000
    W5_GROUPS=500 CACHE_MIB=1024
    RUNS_FAST=10 RUNS_SLOW=3 RUNS_ALT=5 PEER_FAST=3 PEER_SLOW=1 CAP=150
fi
W4_IDEAL=$(((W4_STAGES + 1) / 2))

# --- tools ------------------------------------------------------------------------------
need_apt=()
command -v hyperfine >/dev/null || need_apt+=(hyperfine)
[[ -x /usr/bin/time ]] || need_apt+=(time)
command -v b3sum >/dev/null || need_apt+=(b3sum)
command -v make >/dev/null || need_apt+=(make)
command -v strace >/dev/null || need_apt+=(strace)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]} (Debian packages)"
    SUDO=""; ((EUID == 0)) || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null ||
        die "cannot install ${need_apt[*]}: install them and run again"
fi

if [[ -n ${PIPE_BIN:-} ]]; then
    PIPE=$PIPE_BIN # a prebuilt binary (while working on the benchmarks themselves)
else
    log "building pipe (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    PIPE=$ROOT/target/release/pipe
fi
export NO_COLOR=1

WORK=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pipe-bench.XXXXXX")}
mkdir -p "$WORK"/{json,trash,bin}
# Time a copy, so a rebuild in the tree during the run cannot swap the binary under us.
cp "$PIPE" "$WORK/bin/pipe"
PIPE=$WORK/bin/pipe
# The stat floor: a parallel `stat` of every file and nothing else (benches/statfloor.rs).
rustc -O --edition 2021 "$BENCHES/statfloor.rs" -o "$WORK/bin/statfloor" ||
    die "cannot compile benches/statfloor.rs"
RES=$WORK/results.tsv
: >"$RES"
cleanup() {
    if ((KEEP)); then log "workloads kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

TOOLS=(pipe make)
if ((PEERS)); then
    VENV=${BENCH_VENV:-$WORK/venv}
    if [[ ! -x $VENV/bin/dvc || ! -x $VENV/bin/snakemake ]]; then
        log "installing DVC and Snakemake into a throw-away venv ($VENV) from PyPI"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check dvc snakemake >"$WORK/pip.log" 2>&1 ||
            die "pip install dvc snakemake failed: see $WORK/pip.log"
    fi
    DVC=$VENV/bin/dvc SMK=$VENV/bin/snakemake
    export DVC_NO_ANALYTICS=1
    TOOLS+=(dvc smk)
fi
has() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }

# reset [-d] PATH...: move PATHs out of the way (into a trash folder emptied at the end, so
# that no build is timed right after thousands of files were deleted: on ext4 without a
# journal, creating files next to recently deleted ones is slow) and make `out/` again.
# -d deletes instead (for a few big files).
cat >"$WORK/bin/reset" <<EOF
#!/usr/bin/env bash
del=0; [[ \$1 == -d ]] && { del=1; shift; }
t=$WORK/trash/\$(date +%s%N)
for p in "\$@"; do
    [[ -e \$p || -L \$p ]] || continue
    if ((del)); then rm -rf "\$p"; else mkdir -p "\$t" && mv "\$p" "\$t/"; fi
done
mkdir -p out
EOF
chmod +x "$WORK/bin/reset"
RESET=$WORK/bin/reset

# --- measuring --------------------------------------------------------------------------
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$RES"; }
median_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"])' "$1"; }

# hf ID TOOL RUNS PREPARE CMD: hyperfine median of CMD (run in the current folder).
# IGNORE=1 accepts a non-zero exit (status commands exit 1 when something is stale).
hf() {
    local id=$1 tool=$2 runs=$3 prep=$4 cmd=$5 json=$WORK/json/$1.$2.json
    local args=(--runs "$runs" --style basic --export-json "$json")
    [[ -n $prep ]] && args+=(--prepare "$prep")
    [[ ${IGNORE:-0} == 1 ]] && args+=(-i)
    [[ ${WARM:-0} -gt 0 ]] && args+=(--warmup "$WARM")
    echo "### $id $tool: $cmd" >>"$WORK/hyperfine.log"
    if hyperfine "${args[@]}" "$cmd" >>"$WORK/hyperfine.log" 2>&1; then
        record "$id" "$tool" "$(median_of "$json")" "$runs"
    else
        record "$id" "$tool" "" "$runs" "failed"
        log "  $id $tool failed (see $WORK/hyperfine.log)"
    fi
}

# once ID TOOL CAP PREPARE CMD [RSS_ID]: one timed run, stopped after CAP seconds (recorded
# as a lower bound). For peers whose single run takes minutes. With RSS_ID, its peak RSS
# is recorded under that id too.
once() {
    local id=$1 tool=$2 cap=$3 prep=$4 cmd=$5 rss_id=${6:-} rc=0
    [[ -n $prep ]] && bash -c "$prep" >/dev/null 2>&1
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$WORK/rss.txt" timeout "$cap" bash -c "exec $cmd" >>"$WORK/once.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    local s
    s=$(python3 -c "print($t1 - $t0)")
    if ((rc == 124)); then
        record "$id" "$tool" "$s" 1 "timeout"
    elif ((rc != 0 && ${IGNORE:-0} != 1)); then
        record "$id" "$tool" "" 1 "failed"
        log "  $id $tool failed (exit $rc; see $WORK/once.log)"
    else
        record "$id" "$tool" "$s" 1
    fi
    if [[ -n $rss_id ]]; then
        local kb
        kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/rss.txt")
        record "$rss_id" "$tool" "$(python3 -c "print(${kb:-0} / 1024)")" 1 "MB"
    fi
}

# alt RUNS ID TOOL DIR PREPARE CMD [ID TOOL DIR PREPARE CMD ...]: first builds timed in turn
# (one run of each, then the next round; each after its PREPARE, in its DIR), so that the
# drift of this VM over the minutes (a neighbour's load shows as steal time) hits every tool
# alike; hyperfine would time all runs of one tool before the next. Records each median
# wall time, and the median user + system CPU time (from /usr/bin/time) under ID.cpu.
alt() {
    local runs=$1
    shift
    local -a ids=() tools=() dirs=() preps=() cmds=()
    while (($# >= 5)); do
        ids+=("$1") tools+=("$2") dirs+=("$3") preps+=("$4") cmds+=("$5")
        shift 5
    done
    local -A walls=() cpus=() failed=()
    local r k t0 t1 key
    for ((r = 0; r < runs; r++)); do
        for k in "${!ids[@]}"; do
            key="${ids[k]} ${tools[k]}"
            (cd "${dirs[k]}" && bash -c "${preps[k]}") >/dev/null 2>&1
            t0=$(date +%s.%N)
            if ! (cd "${dirs[k]}" && /usr/bin/time -f "%U %S" -o "$WORK/alt.cpu" bash -c "exec ${cmds[k]}") >>"$WORK/once.log" 2>&1; then
                failed[$key]=1
            fi
            t1=$(date +%s.%N)
            walls[$key]+="$(python3 -c "print($t1 - $t0)") "
            cpus[$key]+="$(awk '{print $1 + $2}' "$WORK/alt.cpu") "
        done
    done
    local med='import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))'
    for k in "${!ids[@]}"; do
        key="${ids[k]} ${tools[k]}"
        if [[ -n ${failed[$key]:-} ]]; then
            record "${ids[k]}" "${tools[k]}" "" "$runs" "failed"
            log "  ${ids[k]} ${tools[k]} failed (see $WORK/once.log)"
            continue
        fi
        # shellcheck disable=SC2086
        record "${ids[k]}" "${tools[k]}" "$(python3 -c "$med" ${walls[$key]})" "$runs"
        # shellcheck disable=SC2086
        record "${ids[k]}.cpu" "${tools[k]}" "$(python3 -c "$med" ${cpus[$key]})" "$runs"
    done
}

# rss ID TOOL CMD...: peak resident memory (MB) of one run, via /usr/bin/time -v.
rss() {
    local id=$1 tool=$2
    shift 2
    /usr/bin/time -v -o "$WORK/rss.txt" "$@" >/dev/null 2>&1 || true
    local kb
    kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/rss.txt")
    record "$id" "$tool" "$(python3 -c "print(${kb:-0} / 1024)")" 1 "MB"
}

note() { printf '%s\n' "$*" >>"$WORK/notes.md"; }
: >"$WORK/notes.md"

dvc_init() {
    "$DVC" init --no-scm -q -f
    "$DVC" config core.analytics false
    # The state database (hashes of unchanged files) inside the workspace, so a cold
    # measurement can drop it, as pipe's cold measurements drop .pipe/state/stat.bin.
    "$DVC" config core.site_cache_dir .dvc/site
}

# --- W1 big dataset ---------------------------------------------------------------------
w1() {
    local d=$WORK/w1 per=$((W1_FILES / W1_DIRS))
    log "W1: generating $W1_FILES files of 1 KiB in $W1_DIRS folders"
    python3 "$BENCHES/gen.py" w1 "$d" --files "$W1_FILES" --dirs "$W1_DIRS"
    local edit_file
    edit_file=data/d$(printf %03d $((W1_DIRS / 2)))/f$(printf %04d $((per / 2))).txt
    local edit="printf 'edit %s\n' \$(date +%s%N) >> $edit_file"
    sleep 1 # let mtimes age past pipe's racy-timestamp window

    log "W1: pipe"
    cd "$d/pipe"
    hf w1.first pipe "$RUNS_SLOW" "$RESET .pipe Pipeline.lock out" "$PIPE -q build"
    IGNORE=1 WARM=2 hf w1.status pipe "$RUNS_FAST" "" "$PIPE -q status"
    WARM=1 hf w1.build pipe "$RUNS_FAST" "" "$PIPE -q build"
    IGNORE=1 hf w1.edit_status pipe "$RUNS_FAST" "$edit" "$PIPE -q status"
    hf w1.edit_build pipe "$RUNS_SLOW" "$edit" "$PIPE -q build"
    # Settle: outs written by the last build are re-read once by the next status (they were
    # hashed within the racy window of their write); then edit one file and ask.
    sleep 0.2
    "$PIPE" -q status >/dev/null 2>&1 || true
    bash -c "$edit"
    local v
    v=$("$PIPE" status -v 2>&1 | grep -o 'hashed [0-9]* changed files' || true)
    note "- W1: after editing one file, \`pipe status -v\` says: \"$v\" (out of $W1_FILES)."
    bash -c "$edit"
    sleep 0.2
    local opened
    opened=$(strace -f -e trace=openat -o "$WORK/w1.strace" "$PIPE" -q build >/dev/null 2>&1 &&
        grep -c "\"$d/pipe/data/.*\.txt\", O_RDONLY" "$WORK/w1.strace" || true)
    note "- W1: the rebuild after editing one file opened $opened file(s) under \`data/\` to hash them (counted with strace; \`du\` in the stage only lists folders)."
    IGNORE=1 rss w1.status_rss pipe "$PIPE" -q status
    WARM=2 hf w1.status floor "$RUNS_FAST" "" "$WORK/bin/statfloor data"

    log "W1: make"
    cd "$d/make"
    hf w1.first make "$RUNS_SLOW" "$RESET out" "make -s"
    IGNORE=1 WARM=1 hf w1.status make "$RUNS_FAST" "" "make -q"
    WARM=1 hf w1.build make "$RUNS_FAST" "" "make -s"
    IGNORE=1 hf w1.edit_status make "$RUNS_FAST" "$edit" "make -q"
    hf w1.edit_build make "$RUNS_SLOW" "$edit" "make -s"
    IGNORE=1 rss w1.status_rss make make -q

    if has dvc; then
        log "W1: dvc"
        cd "$d/dvc"
        dvc_init
        hf w1.first dvc "$PEER_SLOW" "$RESET .dvc/cache .dvc/site .dvc/tmp dvc.lock out" "$DVC repro -q"
        IGNORE=1 hf w1.status dvc "$PEER_FAST" "" "$DVC status -q"
        hf w1.build dvc "$PEER_FAST" "" "$DVC repro -q"
        IGNORE=1 hf w1.edit_status dvc "$PEER_FAST" "$edit" "$DVC status -q"
        hf w1.edit_build dvc "$PEER_SLOW" "$edit" "$DVC repro -q"
        rss w1.status_rss dvc "$DVC" status -q
    fi
    if has smk; then
        log "W1: snakemake"
        cd "$d/smk"
        hf w1.first smk "$PEER_SLOW" "$RESET .snakemake out" "$SMK -c2 -q"
        hf w1.status smk "$PEER_FAST" "" "$SMK -n -c2 -q"
        hf w1.build smk "$PEER_FAST" "" "$SMK -c2 -q"
        hf w1.edit_status smk "$PEER_FAST" "$edit" "$SMK -n -c2 -q"
        hf w1.edit_build smk "$PEER_SLOW" "$edit" "$SMK -c2 -q"
        rss w1.status_rss smk "$SMK" -n -c2 -q
    fi
}

# --- W6 a million files -----------------------------------------------------------------
w6() {
    local d=$WORK/w6 dirs=$((W6_FILES / 1000))
    log "W6: generating $W6_FILES files of 1 KiB in $dirs folders (pipe and DVC only)"
    python3 "$BENCHES/gen.py" w1 "$d" --files "$W6_FILES" --dirs "$dirs" --tools pipe dvc
    local edit="printf 'edit %s\n' \$(date +%s%N) >> data/d$(printf %03d $((dirs / 2)))/f0500.txt"
    sleep 1
    log "W6: pipe"
    cd "$d/pipe"
    once w6.first pipe "$CAP" "" "$PIPE -q build"
    sleep 1
    IGNORE=1 WARM=1 hf w6.status pipe "$RUNS_SLOW" "" "$PIPE -q status"
    IGNORE=1 hf w6.edit_status pipe "$RUNS_SLOW" "$edit" "$PIPE -q status"
    IGNORE=1 rss w6.status_rss pipe "$PIPE" -q status
    WARM=1 hf w6.status floor "$RUNS_SLOW" "" "$WORK/bin/statfloor data"
    if has dvc; then
        log "W6: dvc (each step stopped after ${CAP}s)"
        cd "$d/dvc"
        dvc_init
        once w6.first dvc "$CAP" "" "$DVC repro -q"
        if [[ $(tail -n1 "$RES" | cut -f5) != timeout ]]; then
            IGNORE=1 once w6.status dvc "$CAP" "" "$DVC status -q"
            IGNORE=1 once w6.edit_status dvc "$CAP" "$edit" "$DVC status -q"
            rss w6.status_rss dvc "$DVC" status -q
        else
            note "- W6: \`dvc repro\` had not hashed the $W6_FILES files when stopped after ${CAP}s, so DVC has no no-op time here."
        fi
    fi
}

# --- W2 wide DAG ------------------------------------------------------------------------
w2() {
    local d=$WORK/w2
    log "W2: generating $W2_STAGES independent stages + 1 fan-in"
    python3 "$BENCHES/gen.py" w2 "$d" --stages "$W2_STAGES"
    sleep 1

    # The pipeline again with a hook and \`--follow\` (streaming every line: features on);
    # and with every line through \`sh\` (pipe starts a plain line, one program with plain
    # words and \`<\`/\`>\`, without a shell, which make does only for lines without
    # redirections; a trailing comment makes each line need \`sh\`, which then forks and
    # execs \`tr\` as under make: pipe's own cost, like for like).
    mkdir -p "$d/feat" && cp -al "$d/pipe/in" "$d/feat/in" && cp "$d/pipe/Pipeline.toml" "$d/feat/"
    printf '\n[hooks]\non_success = "true"\n' >>"$d/feat/Pipeline.toml"
    mkdir -p "$d/shell" && cp -al "$d/pipe/in" "$d/shell/in"
    sed 's/^\(cmd = ".*\)"$/\1 # sh"/' "$d/pipe/Pipeline.toml" >"$d/shell/Pipeline.toml"

    log "W2: first builds of pipe, make, pipe through sh, pipe with features, in turn"
    local preset=".pipe Pipeline.lock out all.txt"
    alt "$RUNS_ALT" \
        w2.first pipe "$d/pipe" "$RESET $preset" "$PIPE -q build -j 2" \
        w2.first make "$d/make" "$RESET out all.txt" "make -s -j2" \
        w2.first_sh pipe "$d/shell" "$RESET $preset" "$PIPE -q build -j 2" \
        w2.first features "$d/feat" "$RESET $preset" "$PIPE -q build -j 2 --follow"
    cpu() { awk -F'\t' -v i="$1" -v t="$2" '$1 == i && $2 == t {v = $3} END {printf "%.2f", v}' "$RES"; }
    note "- W2 first builds were timed in turn ($RUNS_ALT rounds of pipe, make, pipe through \`sh\`, pipe with features, each after its reset). CPU time (user + system, median): pipe $(cpu w2.first.cpu pipe) s, make $(cpu w2.first.cpu make) s, pipe through \`sh\` $(cpu w2.first_sh.cpu pipe) s, pipe with features $(cpu w2.first.cpu features) s."

    log "W2: pipe"
    cd "$d/pipe"
    IGNORE=1 WARM=2 hf w2.status pipe "$RUNS_FAST" "" "$PIPE -q status"
    WARM=1 hf w2.build pipe "$RUNS_FAST" "" "$PIPE -q build -j 2"
    # What a first build creates besides the stages' outs (strace, fresh folders).
    "$RESET" .pipe Pipeline.lock out all.txt
    strace -f -e trace=openat,mkdir,rename,unlink,clone,clone3,execve -o "$WORK/w2.strace" \
        "$PIPE" -q build -j 2 >/dev/null 2>&1 || true
    local created logs objects mkdirs threads
    # Outs are opened by pipe itself for a plain `> out` line (absolute path) or by `sh`.
    created=$(grep 'O_CREAT\|O_TMPFILE' "$WORK/w2.strace" | grep -vc '"out/\|/out/[^"]*"\|all.txt"' || true)
    logs=$(grep 'O_CREAT' "$WORK/w2.strace" | grep -c '/logs/[^"]*\.log"' || true)
    objects=$(grep 'O_CREAT\|O_TMPFILE' "$WORK/w2.strace" | grep -c '/cache/tmp/\|/cache/objects/' || true)
    mkdirs=$(grep -c 'mkdir(' "$WORK/w2.strace" || true)
    threads=$(grep -c 'CLONE_THREAD' "$WORK/w2.strace" || true)
    note "- W2 first build under strace: pipe created $created files besides the outs for $((W2_STAGES + 1)) stages ($(python3 -c "print(round($created / ($W2_STAGES + 1), 2))") per stage): $logs stage logs, $objects cache objects (each an unnamed file linked under its name) and $((created - logs - objects)) files of the build itself (the lock's rewrites, once a second, the run's records, the markers' journal, the run-cache pack, the stat cache). It made $mkdirs mkdir calls and started $threads threads."

    # Features on, against the plain no-ops above; history (run records, pruning) is always on.
    log "W2: pipe with a hook and --follow"
    cd "$d/feat"
    IGNORE=1 WARM=2 hf w2.status features "$RUNS_FAST" "" "$PIPE -q status"
    WARM=1 hf w2.build features "$RUNS_FAST" "" "$PIPE -q build -j 2 --follow"

    log "W2: make"
    cd "$d/make"
    "$RESET" out all.txt
    strace -f -e trace=openat -o "$WORK/w2.make.strace" make -s -j2 >/dev/null 2>&1 || true
    note "- W2 first build under strace: make created $(grep 'O_CREAT' "$WORK/w2.make.strace" | grep -vc '"out/\|all.txt"' || true) files besides the outs."
    IGNORE=1 WARM=2 hf w2.status make "$RUNS_FAST" "" "make -q"
    WARM=1 hf w2.build make "$RUNS_FAST" "" "make -s -j2"

    if has dvc; then
        log "W2: dvc (first build stopped after ${CAP}s)"
        cd "$d/dvc"
        dvc_init
        once w2.first dvc "$CAP" "$RESET .dvc/cache .dvc/site .dvc/tmp dvc.lock out all.txt" "$DVC repro -q"
        local done_
        done_=$(grep -c '^  s[0-9]' dvc.lock 2>/dev/null || echo 0)
        note "- W2: \`dvc repro\` (one stage at a time: DVC has no parallel repro) had run $done_ of $((W2_STAGES + 1)) stages when stopped after ${CAP}s."
        # No-op timings need a complete dvc.lock: produce the outs with make, record them.
        cp -r ../make/out/. out/ && cp ../make/all.txt . && "$DVC" commit -f -q >/dev/null 2>&1 || true
        IGNORE=1 hf w2.status dvc "$PEER_FAST" "" "$DVC status -q"
        hf w2.build dvc "$PEER_FAST" "" "$DVC repro -q"
    fi
    if has smk; then
        log "W2: snakemake"
        cd "$d/smk"
        once w2.first smk "$CAP" "$RESET .snakemake out all.txt" "$SMK -c2 -q"
        if [[ $(tail -n1 "$RES" | cut -f5) == timeout ]]; then
            # No-op timings need every out: take make's and mark them up to date.
            cp -r ../make/out/. out/ && cp ../make/all.txt . && "$SMK" -c1 --touch -q >/dev/null 2>&1 || true
        fi
        hf w2.status smk "$PEER_FAST" "" "$SMK -n -c2 -q"
        hf w2.build smk "$PEER_FAST" "" "$SMK -c2 -q"
    fi
}

# --- W3 large files ---------------------------------------------------------------------
w3() {
    local d=$WORK/w3
    log "W3: generating $W3_COUNT random files of $W3_MIB MiB"
    python3 "$BENCHES/gen.py" w3 "$d" --count "$W3_COUNT" --size "$W3_MIB"
    sleep 1
    cd "$d/pipe"
    "$PIPE" -q build >/dev/null
    log "W3: pipe cold hash (stat cache dropped) vs b3sum"
    # Cold: the stat cache and the no-op proof dropped (the proof would answer without hashing).
    IGNORE=1 WARM=1 hf w3.hash pipe "$RUNS_FAST" "rm -f .pipe/state/stat.bin .pipe/state/fresh.json" "$PIPE -q status"
    WARM=1 hf w3.hash b3sum "$RUNS_FAST" "" "b3sum big/*.bin"
    hf w3.hash md5sum "$PEER_FAST" "" "md5sum big/*.bin"
    note "- W3: $W3_COUNT × $W3_MIB MiB = $((W3_COUNT * W3_MIB)) MiB hashed, from the page cache (the files were just written; 24 GiB of memory). md5sum is the digest DVC uses, run one file at a time."
    if has dvc; then
        log "W3: dvc cold status (state database dropped)"
        cd "$d/dvc"
        dvc_init
        "$DVC" repro -q >/dev/null 2>&1 || true
        IGNORE=1 hf w3.hash dvc "$PEER_FAST" "rm -rf .dvc/site" "$DVC status -q"
    fi
}

# --- W4 parallel ------------------------------------------------------------------------
w4() {
    local d=$WORK/w4
    log "W4: $W4_STAGES × sleep 1 with -j 2"
    python3 "$BENCHES/gen.py" w4 "$d" --stages "$W4_STAGES"
    cd "$d/pipe"
    hf w4.build pipe "$RUNS_SLOW" "$RESET .pipe Pipeline.lock out" "$PIPE -q build -j 2"
    cd "$d/make"
    hf w4.build make "$RUNS_SLOW" "$RESET out" "make -s -j2"
    if has dvc; then
        cd "$d/dvc"
        dvc_init
        hf w4.build dvc "$PEER_SLOW" "$RESET .dvc/cache .dvc/site .dvc/tmp dvc.lock out" "$DVC repro -q"
    fi
    if has smk; then
        cd "$d/smk"
        hf w4.build smk "$PEER_SLOW" "$RESET .snakemake out" "$SMK -c2 -q"
    fi
}

# --- W5 scale ---------------------------------------------------------------------------
w5() {
    local d=$WORK/w5 n=$((W5_GROUPS * 20))
    log "W5: $n generated stages (chains and fan-outs): parse + plan"
    python3 "$BENCHES/gen.py" w5 "$d" --groups "$W5_GROUPS"
    cd "$d/pipe"
    WARM=1 hf w5.validate pipe "$RUNS_FAST" "" "$PIPE -q validate"
    IGNORE=1 WARM=1 hf w5.status pipe "$RUNS_FAST" "" "$PIPE -q status"
    rss w5.validate_rss pipe "$PIPE" -q validate
    rss w5.status_rss pipe "$PIPE" -q status
    cd "$d/make"
    WARM=1 hf w5.status make "$RUNS_FAST" "" "make -n"
    rss w5.status_rss make make -n
    if has dvc; then
        cd "$d/dvc"
        dvc_init
        IGNORE=1 once w5.status dvc "$CAP" "" "$DVC status -q" w5.status_rss
    fi
    if has smk; then
        cd "$d/smk"
        once w5.status smk "$CAP" "" "$SMK -n -c1 -q" w5.status_rss
    fi
    note "- W5: $n stages; the plan is \`pipe status\` (every stage never run: hashes deps, judges all), \`make -n\`, \`dvc status\`, \`snakemake -n\`. Peak RSS of a run stopped at ${CAP}s is its peak until then."
}

# --- cache ------------------------------------------------------------------------------
cache_bench() {
    local d=$WORK/cache
    log "Cache: $CACHE_MIB MiB out: restore vs rerun, cost of storing"
    local src=()
    [[ -d $WORK/w3/inputs/big ]] && src=(--source "$WORK"/w3/inputs/big/*.bin)
    python3 "$BENCHES/gen.py" cache "$d" --size "$CACHE_MIB" "${src[@]}"
    sleep 1
    cd "$d/pipe"
    "$PIPE" -q build >/dev/null
    hf cache.restore pipe "$RUNS_SLOW" "rm -f out/big.bin" "$PIPE -q build"
    hf cache.rerun pipe "$RUNS_SLOW" "" "$PIPE -q build --force"
    hf cache.store pipe "$RUNS_SLOW" "$RESET -d .pipe Pipeline.lock out" "$PIPE -q build"
    hf cache.restore cp "$RUNS_SLOW" "rm -f out/copy.bin" "cp big.bin out/copy.bin"
    cd "$d/pipe-nocache"
    hf cache.store nocache "$RUNS_SLOW" "$RESET -d .pipe Pipeline.lock out" "$PIPE -q build"
    note "- Cache: the stage is \`cp big.bin out/big.bin\` ($CACHE_MIB MiB). *restore* = \`pipe build\` after deleting the out (copied back from the cache and verified); *rerun* = \`pipe build --force\`; *store* = a first build with the cache on (runs, hashes, copies the out into the cache) against the same stage with \`cache = false\` (runs, hashes). The file system here has no reflinks, so storing and restoring are copies."
    if has dvc; then
        cd "$d/dvc"
        dvc_init
        "$DVC" repro -q >/dev/null 2>&1 || true
        hf cache.restore dvc "$PEER_FAST" "rm -f out/big.bin" "$DVC checkout -q"
        hf cache.rerun dvc "$PEER_FAST" "" "$DVC repro -f -q"
    fi
}

want W1 && w1
want W2 && w2
want W3 && w3
want W4 && w4
want W5 && w5
want W6 && w6
want CACHE && cache_bench

# --- report -----------------------------------------------------------------------------
log "writing the report"
ver() { "$@" 2>/dev/null | head -n1 || true; }
{
    echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB memory, $(df -hT "$WORK" | awk 'NR==2 {print $2 " on " $1 ", " $5 " free"}'), Linux $(uname -r)"
    echo "pipe: $(ver "$PIPE" --version) ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo '+dirty'))"
    echo "make: $(ver make --version)"
    ((PEERS)) && echo "dvc: $(ver "$DVC" --version); snakemake: $(ver "$SMK" --version)"
    echo "hyperfine: $(ver hyperfine --version); b3sum: $(ver b3sum --version); rustc: $(ver rustc --version)"
    echo "load average (1/5/15 min) at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine adds noise)"
    echo "mode: $( ((QUICK)) && echo 'quick (reduced sizes: targets apply to the full run)' || echo full); runs: pipe/make $RUNS_FAST (no-op) / $RUNS_SLOW (builds), peers $PEER_FAST / $PEER_SLOW; wall time of this run: $(($(date +%s) - STARTED)) s"
} >"$WORK/machine.txt"
python3 "$BENCHES/report.py" "$RES" --machine "$WORK/machine.txt" --notes "$WORK/notes.md" \
    --w1 "$W1_FILES" --w2 "$W2_STAGES" --w3 "$W3_COUNT" "$W3_MIB" --w4 "$W4_STAGES" "$W4_IDEAL" \
    --w5 $((W5_GROUPS * 20)) --w6 "$W6_FILES" --cache "$CACHE_MIB" $( ((QUICK)) && echo --quick) | tee "$WORK/report.md"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
cp "$RES" "${OUT%.md}.tsv"
log "report written to $OUT"
