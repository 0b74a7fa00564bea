# Shell functions bench/run and bench/identity share; each script sources this file after
# defining `die` and uses these globals: WORK (its work directory), RUNNEL_HOME (the daemon's),
# RESULTS (its runs file: one line per run, `target run req/s p50 p99 requests …`) and TICK
# (clock ticks per second, for the CPU columns), and PACE (`--pace=MS`, empty when unpaced).

# Exits with a usage error unless --pace was whole milliseconds from 1 to 99, or not given.
check_pace() {
    case $PACE in
        '' | [1-9] | [1-9][0-9]) ;;
        *)
            echo "bench/$(basename "$0"): --pace takes whole milliseconds from 1 to 99, not '$PACE'" >&2
            exit 2
            ;;
    esac
}

# A free loopback TCP port.
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 20000))
        if [ -z "$(ss -Hltn "sport = :$port")" ]; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

# CPU time (clock ticks, user + system, all threads) of the given processes.
cpu_ticks() {
    local total=0 pid stat rest
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) }
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

children_of() { pgrep -P "$1" 2>/dev/null | tr '\n' ' '; }
nginx_pids_of() { # rundir → master and worker pids
    local master
    master=$(cat "$WORK/$1/nginx.pid" 2>/dev/null) || return 0
    echo "$master $(children_of "$master")"
}

# The daemon's instance directories, one name a line.
instances() { ls -1 "$RUNNEL_HOME/i" 2>/dev/null | sort; }

# median FIELD NAME: median over the runs of column FIELD (1-based, after name and run).
median() {
    awk -v n="$2" -v f="$1" '$1 == n { print $(f + 2) }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# range FIELD NAME: lowest–highest of the same.
range() {
    awk -v n="$2" -v f="$1" '$1 == n { print $(f + 2) }' "$RESULTS" | sort -g |
        awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'
}

# cpu_per_req FIELD NAME: µs of CPU per request for column FIELD (ticks), median over runs.
cpu_per_req() {
    awk -v n="$2" -v f="$1" -v tick="$TICK" '$1 == n && $6 > 0 { printf "%.2f\n", $(f + 2) * 1e6 / tick / $6 }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "–"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# A / B to two decimals (– when B is not positive).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "–" }'; }

# round_ratio A B: A/B req/s within each round (measured minutes apart at most), median and
# range; steadier than the ratio of medians when the machine's load drifts.
round_ratio() {
    awk -v a="$1" -v b="$2" '$1 == a { x[$2] = $3 } $1 == b { y[$2] = $3 }
        END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "–"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.2f× (rounds %.2f–%.2f)", m, v[1], v[NR] }'
}
