#!/usr/bin/env bash
# Ranks on emulated hosts behind emulated links, on one machine (root): every rank in a network
# namespace of its own, joined to a switch namespace by a veth pair whose two ends are shaped
# with tc (token bucket, both directions) to RATE; OpenMPI started across them the way it
# starts across nodes (launch/local.sh --hosts, its remote shell a script that enters the
# host's namespace from a clean environment), talking TCP between them. A few steps of a
# network are timed per collective (phase_timing); benchmarks/links.py fits the step model of
# docs/scaling.md to them.
#
#   bash benchmarks/links.sh run OUT RANKS RATE [tsimcne-dist settings...]
#       one run into OUT (RATE: e.g. 1gbit, 10gbit, or none for an unshaped link)
#   bash benchmarks/links.sh study [OUT]        the table of docs/scaling.md (default
#       benchmarks/out/links): 2 and 4 ranks × 0.2, 1 and 10 Gbit/s and unshaped × the tiny
#       CNN and ResNet-18, then benchmarks/links.py on the results
#   bash benchmarks/links.sh check OUT [RATE]   namespaces, addresses and the shaped rate alone
#
# Traffic stays between the namespaces this script creates, on 10.213.0.0/24, which only they
# know; they are removed when the script ends, however it ends. Delays cannot be emulated
# here: this kernel has no netem queueing discipline (tc: "Specified qdisc kind is unknown"),
# so every link has veth's own latency.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "$0: network namespaces need root" >&2; exit 2; }

NET=10.213.0
tag=${LINK_TAG:-tsl$$}  # namespaces: TAG-sw, TAG-h0, TAG-h1, ...
made=()

teardown() {
  local ns
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  made=()
}
trap teardown EXIT

# up RANKS RATE: the switch, and hosts h0..h(RANKS-1) at $NET.1, $NET.2, ...
up() {
  local n=$1 rate=$2 i ns sw="$tag-sw"
  ip netns add "$sw"; made+=("$sw")
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  for ((i = 0; i < n; i++)); do
    ns="$tag-h$i"
    ip netns add "$ns"; made+=("$ns")
    ip -n "$ns" link set lo up
    # A link, not TCP's manners: a connection idle between two collectives would otherwise
    # start each one from a small congestion window again.
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_slow_start_after_idle=0
    ip link add "$tag-v$i" netns "$ns" type veth peer name "s$i" netns "$sw"
    ip -n "$ns" link set "$tag-v$i" name eth0
    ip -n "$ns" addr add "$NET.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$sw" link set "s$i" master br0 up
    if [ "$rate" != none ]; then
      # A bucket of 200 µs of traffic (at least 32 KB): a larger one lets a collective's first
      # bytes pass unshaped (with 1 ms, a 131 KB all-gather took 0.4 ms at 1 Gbit/s). Queues
      # of up to 100 ms.
      local bps burst
      bps=$(rate_bits "$rate")
      burst=$(( bps / 8 / 5000 > 32768 ? bps / 8 / 5000 : 32768 ))
      tc -n "$ns" qdisc add dev eth0 root tbf rate "$rate" burst "$burst" latency 100ms
      tc -n "$sw" qdisc add dev "s$i" root tbf rate "$rate" burst "$burst" latency 100ms
    fi
  done
}

rate_bits() {
  local r=${1,,}
  case $r in
    *gbit) awk -v x="${r%gbit}" 'BEGIN { printf "%d", x * 1e9 }' ;;
    *mbit) awk -v x="${r%mbit}" 'BEGIN { printf "%d", x * 1e6 }' ;;
    *) echo "rate $1: give it as Nmbit or Ngbit" >&2; exit 2 ;;
  esac
}

# The remote shell mpirun uses for "host" $NET.K: a clean environment inside namespace h(K-1).
agent() {
  local file=$1
  cat >"$file" <<EOF
#!/bin/bash
host=\$1; shift
exec ip netns exec "$tag-h\$(( \${host##*.} - 1 ))" env -i PATH="$PATH" HOME="\$HOME" bash -c "\$*"
EOF
  chmod +x "$file"
}

# run OUT RANKS RATE SETTINGS...: one tsimcne-dist run across the namespaces.
run() {
  local out=$1 n=$2 rate=$3; shift 3
  local hosts i
  hosts=$(for ((i = 1; i <= n; i++)); do printf '%s.%d,' "$NET" "$i"; done)
  # Ring all-reduce and all-gather, as NCCL runs them and as the step model assumes
  # (LINK_RING=0: OpenMPI's own choice, which for 4 ranks moved twice the model's bytes).
  local ring=()
  [ "${LINK_RING:-1}" = 0 ] || ring=(OMPI_MCA_coll_tuned_use_dynamic_rules=1
    OMPI_MCA_coll_tuned_allreduce_algorithm=4 OMPI_MCA_coll_tuned_allgather_algorithm=4)
  up "$n" "$rate"
  mkdir -p "$out"
  agent "$out/agent.sh"
  rm -rf "$out/run"
  # OpenMPI between the hosts over their eth0 only (TCP, as between nodes); one thread per
  # rank. rtc_hwloc_vmhole=none: several OpenMPI daemons on one machine otherwise crash now
  # and then writing hwloc's shared topology. mpi_yield_when_idle: a rank waiting in a
  # collective gives its core up, which the rank it waits for may need (more ranks than
  # cores; each "host" thinks it has a core of its own).
  ip netns exec "$tag-h0" env \
    OMPI_MCA_plm_rsh_agent="$out/agent.sh" \
    OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include="$NET.0/24" \
    OMPI_MCA_oob_tcp_if_include="$NET.0/24" OMPI_MCA_rtc_hwloc_vmhole=none \
    OMPI_MCA_mpi_yield_when_idle="${LINK_YIELD:-1}" \
    "${ring[@]}" \
    CORES=1 TSIMCNE_BIN="${TSIMCNE_BIN:-target/release/tsimcne-dist}" \
    timeout "${LINK_RUN_LIMIT:-600}" bash launch/local.sh --cpu 1 --hosts "${hosts%,}" -- \
    train --out "$out/run" --set phase_timing=true "$@" >"$out/stdout.txt" 2>"$out/stderr.txt" || {
      echo "run $out failed:" >&2; tail -5 "$out/stderr.txt" >&2; teardown; return 1; }
  teardown
}

# check OUT [RATE]: 2 hosts (default 1 Gbit/s); what one TCP stream gets through the link.
check() {
  local out=$1 rate=${2:-1gbit}
  mkdir -p "$out"
  up 2 "$rate"
  ip netns exec "$tag-h1" timeout 20 python3 -c '
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201)); s.listen(1); c, _ = s.accept(); n = 0; t = time.time()
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
print(f"received {n / 1e6:.0f} MB at {8 * n / (time.time() - t) / 1e9:.2f} Gbit/s")' &
  sleep 1
  ip netns exec "$tag-h0" python3 -c '
import socket
s = socket.create_connection(("'"$NET"'.2", 5201)); b = b"x" * (1 << 20)
for _ in range(200): s.sendall(b)
s.close()'
  wait
  teardown
}

study() {
  local out=${1:-benchmarks/out/links} steps=${LINK_STEPS:-5}
  local n rate net
  for net in tiny resnet18; do
    for n in 2 4; do
      for rate in 200mbit 1gbit 10gbit none; do
        local per=128 cfg=(--config configs/cpu.toml)
        [ "$net" = resnet18 ] && per=8
        local b=$(( per * n ))
        echo "$net, $n ranks, $rate: global batch $b" >&2
        run "$out/$net-$n-$rate" "$n" "$rate" "${cfg[@]}" --data "${DATA:-/usr/share/datasets/fashion-mnist}" \
          --set model.backbone="$net" --set batch_size="$b" --set max_steps="$steps" \
          --set train_limit=$(( b * steps ))
      done
    done
  done
  # numpy and matplotlib: benchmarks/setup.sh installs them into .venv.
  .venv/bin/python benchmarks/links.py "$out"
}

case ${1:-} in
  run) shift; [ $# -ge 3 ] || { echo "usage: $0 run OUT RANKS RATE [settings]" >&2; exit 2; }; run "$@" ;;
  study) shift; study "$@" ;;
  check) shift; check "${1:-benchmarks/out/links-check}" "${2:-1gbit}" ;;
  *) sed -n '2,25p' "$0" >&2; exit 2 ;;
esac
