#!/usr/bin/env bash
# Samples the first gateway of the dev stack while a `haberci-bench` run is going: RSS, CPU
# ticks (utime+stime), the kernel's UDP receive-buffer errors (all sockets), client shard
# processes and the load, every INTERVAL seconds (default 20). Stops when the bench does.
#   bench/sample-gateway.sh [INTERVAL] > /tmp/samples.log &   # then start the bench run
set -euo pipefail
cd "$(dirname "$0")/.."
interval=${1:-20}
until pgrep -f "haberci-bench (connect|chat|storm|group|churn|compare)" >/dev/null; do sleep 1; done
while pgrep -f "haberci-bench (connect|chat|storm|group|churn|compare)" >/dev/null; do
  gw=$(head -n 1 .dev/run/gateway.pid)
  rss=$(awk '/VmRSS/ { print int($2 / 1024) }' "/proc/$gw/status" 2>/dev/null || echo -)
  ticks=$(awk '{ print $14 + $15 }' "/proc/$gw/stat" 2>/dev/null || echo -)
  rcvbuf=$(netstat -su 2>/dev/null | awk '/receive buffer errors/ { print $1; exit }')
  shards=$(pgrep -fc "haberci-bench shard" || true)
  echo "$(date +%T) gateway_rss_mib=$rss gateway_cpu_ticks=$ticks udp_rcvbuf_errors=${rcvbuf:-?} shards=$shards load=$(cut -d' ' -f1 /proc/loadavg)"
  sleep "$interval"
done
