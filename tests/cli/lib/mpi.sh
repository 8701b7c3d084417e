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
