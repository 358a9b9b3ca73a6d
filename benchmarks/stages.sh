# Sourced by the benchmark pipelines (reproduce.sh, real.sh): one cached, logged, timed stage at a time; the report.
# Needs OUT (the run folder, with OUT/logs) and PYTHON (the interpreter with torch) set by the caller.

step() {  # step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists; log it, time it
    local name=$1 output=$2; shift 2
    local shown=("$@")
    [[ "${shown[0]}" == "$PYTHON" ]] && shown[0]=python  # logged as `python ...`, whichever interpreter ran it
    echo "${shown[*]}" >> "$OUT/commands.sh"
    if [[ -e "$output" ]]; then echo "== $name: $output exists, skipped"; return; fi
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" > "$OUT/logs/$name.log" 2>&1 || { echo "error: step $name failed, see $OUT/logs/$name.log" >&2; tail -5 "$OUT/logs/$name.log" >&2; exit 1; }
    printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$OUT/times.tsv"
}

report() {  # report SCRIPT DEFAULT_OUT PNG: the tables; a run in the default OUT also rewrites BENCHMARKS.md's block
    local cmd=("$PYTHON" "$1" "$OUT")
    [[ "$OUT" == "$2" ]] && cmd+=(--into BENCHMARKS.md --plot "$3")
    echo "== report: ${cmd[*]}"
    "${cmd[@]}"
}
