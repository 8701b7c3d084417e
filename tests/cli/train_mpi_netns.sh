#!/usr/bin/env bash
# Two "machines" on this one: two network namespaces joined by a veth pair, and mpirun with a hostfile trains
# across them over TCP (OpenMPI's remote launcher is a script that enters the other namespace, where a real
# cluster would use ssh). The two ranks log the losses of one process with the global batch. Needs root (CI has
# it) and iproute2; skipped (exit 77) when namespaces cannot be made.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: network namespaces need root"; exit 77; }
command -v ip >/dev/null || { echo "SKIP: no ip command (iproute2)"; exit 77; }
NS0=oarn0-$$ NS1=oarn1-$$ NET=10.231.$(( $$ % 250 ))
cleanup() { ip netns del "$NS0" 2>/dev/null || true; ip netns del "$NS1" 2>/dev/null || true; stop_all_servers; }
trap cleanup EXIT
ip netns add "$NS0" 2>/dev/null || { echo "SKIP: cannot create a network namespace here"; exit 77; }
# In a chroot (scripts/fresh_check.sh) namespaces can be made but not entered: / is no mount point there.
ip netns exec "$NS0" true 2>/dev/null || { echo "SKIP: cannot enter a network namespace here (a chroot?)"; exit 77; }
ip netns add "$NS1"
ip link add "oarv0-$$" type veth peer name "oarv1-$$"
ip link set "oarv0-$$" netns "$NS0"
ip link set "oarv1-$$" netns "$NS1"
ip -n "$NS0" addr add "$NET.1/24" dev "oarv0-$$"
ip -n "$NS1" addr add "$NET.2/24" dev "oarv1-$$"
for i in 0 1; do
  ns=$NS0; [ $i -eq 1 ] && ns=$NS1
  ip -n "$ns" link set "oarv$i-$$" up
  ip -n "$ns" link set lo up
done
# OpenMPI starts its daemon on the other "machine" with `AGENT HOST COMMAND`: enter HOST's namespace.
cat > rsh.sh <<EOS
#!/bin/sh
host=\$1; shift
case "\$host" in
  $NET.1) ns=$NS0 ;;
  $NET.2) ns=$NS1 ;;
  *) echo "rsh.sh: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
EOS
chmod +x rsh.sh
printf '%s slots=1\n%s slots=1\n' "$NET.1" "$NET.2" > hosts

rm -rf one two two_log
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
make_word_corpus "$M" data/corpus
cat > pre.json <<EOF2
{"model_name_or_path": "$M", "input_dir": "data", "per_device_train_batch_size": 2, "max_seq_length": 32,
 "learning_rate": 0.003, "warmup_steps": 2, "logging_steps": 1, "save_steps": 10, "max_steps": 10, "do_train": true,
 "continue_training": false, "disable_tqdm": true, "split": "98,2,0"}
EOF2
"$OAR" pretrain pre.json --output_dir one --per_device_train_batch_size 4 > one.log 2>&1 || { cat one.log; die "one process"; }
timeout 300 ip netns exec "$NS0" mpirun --hostfile hosts -np 2 --map-by node --mca plm_rsh_agent "$WORK/rsh.sh" \
  --mca btl self,tcp --mca btl_tcp_if_include "$NET.0/24" --mca oob_tcp_if_include "$NET.0/24" \
  "$OAR" pretrain pre.json --output_dir two --log_dir two_log > two.log 2>&1 || { cat two.log; die "mpirun across the namespaces"; }
grep -q "oarv1-$$" <(ip netns exec "$NS1" ip -br addr) || die "the second namespace lost its link"
same_losses one/metrics.jsonl two/metrics.jsonl 10 1e-5 \
  "two ranks in two network namespaces over TCP log the one-process losses" ||
  die "the two-machine run's losses differ from one process's"
[ -f two_log/workerlog.1 ] || die "no worker log of the rank on the second machine"
echo "train_mpi_netns: ok"
