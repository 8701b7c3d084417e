# What the tests that run oar under mpirun share (source after common.sh): OpenMPI's permission to run as root
# (CI runs as root), ASan without leak checks (OpenMPI's runtime keeps allocations until exit), one thread a
# rank (oversubscribed on 2 cores), and the check of a one-line error.
export OMP_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
command -v mpirun >/dev/null || die "mpirun not found (scripts/setup.sh installs openmpi-bin)"

# expect_mpi_error NAME WANT NP ARGS...: `mpirun -np NP oar pretrain pre.json ARGS` exits 2 with one oar error line,
# first, matching WANT (mpirun then adds its own report of the exit code), and writes no output_dir.
expect_mpi_error() {
  local name=$1 want=$2 np=$3; shift 3
  local rc=0
  mpirun -np "$np" --oversubscribe "$OAR" pretrain pre.json --output_dir "e_$name" --log_dir "e_$name.log" "$@" \
    > "e_$name.out" 2> "e_$name.err" || rc=$?
  [ $rc -eq 2 ] || die "$name: exit $rc, expected 2: $(cat "e_$name.err")"
  [ "$(grep -c '^oar: error' "e_$name.err")" -eq 1 ] && head -n1 "e_$name.err" | grep -q "^oar: error: .*$want" ||
    die "$name: expected one oar error naming '$want': $(cat "e_$name.err")"
  [ ! -e "e_$name" ] || die "$name: output written"
}

# sigkill_rank_at_step OUT LOG_DIR STEP RANK MPIRUN-COMMAND...: runs the command in the background (output to OUT),
# SIGKILLs world rank RANK once LOG_DIR/workerlog.RANK has logged global_step STEP, and checks that the job stops
# (a non-zero exit).
sigkill_rank_at_step() {
  local out=$1 log_dir=$2 step=$3 rank=$4; shift 4
  "$@" > "$out" 2>&1 &
  local job=$! victim="" rc=0
  for _ in $(seq 6000); do  # up to 5 minutes (ASan, a busy machine)
    grep -q "global_step: $step," "$log_dir/workerlog.$rank" 2>/dev/null && break
    kill -0 $job 2>/dev/null || break
    sleep 0.05
  done
  # The rank's process: not mpirun, not another rank, not another test's job (tests run side by side, each in its
  # own directory).
  for p in $(pgrep -f -- "--log_dir $log_dir" || true); do
    [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$(pwd -P)" ] || continue
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$rank"; then victim=$p; break; fi
  done
  [ -n "$victim" ] || { wait $job || true; cat "$out"; die "no rank $rank to kill (the job ended before step $step?)"; }
  kill -9 "$victim"
  wait $job || rc=$?
  [ $rc -ne 0 ] || die "the job did not stop when rank $rank was killed"
}

# mpi_pretrain NAME NP ARGS...: `mpirun -np NP oar pretrain pre.json ARGS` into output_dir NAME with its worker
# logs in NAME_log and its output in NAME.log (shown on failure).
mpi_pretrain() {
  local name=$1 np=$2; shift 2
  timeout 300 mpirun -np "$np" --oversubscribe "$OAR" pretrain pre.json --output_dir "$name" --log_dir "${name}_log" "$@" \
    > "$name.log" 2>&1 || { cat "$name.log"; die "$name: mpirun -np $np $*"; }
}
