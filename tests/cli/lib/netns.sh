# Two "machines" on this one (sourced): make_netns_pair NAME_SUFFIX makes two network namespaces joined by a veth
# pair, addresses $NET.1 (in $NS0, device $DEV0) and $NET.2 (in $NS1, device $DEV1), and writes ./rsh.sh (OpenMPI's
# remote launcher: enters the host's namespace where a real cluster would use ssh) and ./hosts (a hostfile of one
# slot each). It returns 77 where namespaces cannot be made or entered (not root, no iproute2, a chroot);
# delete_netns_pair removes them. The caller runs mpirun as: ip netns exec "$NS0" mpirun "${NETNS_MPIRUN_ARGS[@]}" ...
make_netns_pair() {
  local tag=$1
  NS0=oarn0-$tag NS1=oarn1-$tag DEV0=oarv0-$tag DEV1=oarv1-$tag NET=10.231.$(( tag % 250 ))
  [ "$(id -u)" -eq 0 ] || { echo "SKIP: network namespaces need root"; return 77; }
  command -v ip >/dev/null || { echo "SKIP: no ip command (iproute2)"; return 77; }
  ip netns add "$NS0" 2>/dev/null || { echo "SKIP: cannot create a network namespace here"; return 77; }
  # In a chroot (scripts/fresh_check.sh) namespaces can be made but not entered: / is no mount point there.
  ip netns exec "$NS0" true 2>/dev/null || { echo "SKIP: cannot enter a network namespace here (a chroot?)"; return 77; }
  # Chained: called as `make_netns_pair || ...`, the function runs without set -e.
  { ip netns add "$NS1" && ip link add "$DEV0" type veth peer name "$DEV1" &&
    ip link set "$DEV0" netns "$NS0" && ip link set "$DEV1" netns "$NS1" &&
    ip -n "$NS0" addr add "$NET.1/24" dev "$DEV0" && ip -n "$NS1" addr add "$NET.2/24" dev "$DEV1" &&
    ip -n "$NS0" link set "$DEV0" up && ip -n "$NS1" link set "$DEV1" up &&
    ip -n "$NS0" link set lo up && ip -n "$NS1" link set lo up; } || { echo "make_netns_pair: setting up the link failed" >&2; return 1; }
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
  NETNS_MPIRUN_ARGS=(--hostfile hosts -np 2 --map-by node --mca plm_rsh_agent "$(pwd)/rsh.sh" --mca btl self,tcp
                     --mca btl_tcp_if_include "$NET.0/24" --mca oob_tcp_if_include "$NET.0/24")
}

delete_netns_pair() {
  ip netns del "$NS0" 2>/dev/null || true
  ip netns del "$NS1" 2>/dev/null || true
}
