# Several hosts on this machine, as network namespaces (#21): `./dev hosts up | down | status |
# bench SCENARIO [flags]`. Sourced by ./dev, whose helpers it uses; run `./dev up` first (the
# packages, the release binaries, the certificates, the JWT keys and the secrets are the dev
# stack's).
#
#   client (this namespace)  10.77.1.1 ─┐ front 10.77.1.0/24 (bridge hb-front)
#   lb   haberci-lb          10.77.1.2 ─┘ the address clients use (UDP 4433, TCP 8443)
#                            10.77.0.254 ┐ back 10.77.0.0/24 (bridge hb-back)
#   db   haberci-db          10.77.0.2  ─┤ Postgres, PgBouncer
#   redis haberci-redis      10.77.0.3  ─┤ Redis
#   app1 haberci-app1        10.77.0.11 ─┤ gateway (QUIC server id 1), api, worker
#   app2 haberci-app2        10.77.0.12 ─┤ gateway (QUIC server id 2), api, worker
#   ops (this namespace)     10.77.0.1  ─┘ migrations, the bench's Postgres and Redis counters
#
# The balancer is the kernel's: nftables DNAT in haberci-lb (docs/SCALING.md, "Several hosts").
# A QUIC packet with a long header (a new connection) goes to a gateway by a hash of the
# client's address and port; one with a short header goes to the gateway whose server id its
# connection ID carries (bytes 1–2, gateway/src/edge/cid.rs), so a client whose address
# changes stays on its gateway. TCP is hashed by address and port. Connection tracking keeps
# each flow where its first packet went; the gateways route back through the balancer. Every
# process runs in its host's namespace; the state lives under .dev/hosts, laid out as .dev is
# (run/*.pid, log/), so `haberci-bench --dev-dir .dev/hosts` samples its processes.
#
# No added latency: this kernel has no netem (`tc qdisc … netem` is unknown), so the hosts are
# a veth hop apart.

HOSTS="$DEV/hosts"
HOSTS_BACK=10.77.0
HOSTS_FRONT=10.77.1
HOSTS_VIP=$HOSTS_FRONT.2
HOSTS_LB_BACK=$HOSTS_BACK.254
HOSTS_NS=(haberci-db haberci-redis haberci-app1 haberci-app2 haberci-lb)
HOSTS_APPS=2

host_addr() { # host_addr NS: its back address
  case "$1" in
    haberci-db) echo "$HOSTS_BACK.2" ;;
    haberci-redis) echo "$HOSTS_BACK.3" ;;
    haberci-app*) echo "$HOSTS_BACK.$((10 + ${1#haberci-app}))" ;;
    haberci-lb) echo "$HOSTS_LB_BACK" ;;
  esac
}
in_ns() { ip netns exec "$@"; }
# As the postgres user inside a host (Postgres and PgBouncer refuse root).
pg_in_ns() { local ns=$1; shift; (cd / && ip netns exec "$ns" runuser -u postgres -- "$@"); }

hosts_net_up() {
  local ns addr veth
  ip link show hb-back >/dev/null 2>&1 || {
    ip link add hb-back type bridge
    ip addr add "$HOSTS_BACK.1/24" dev hb-back
  }
  ip link show hb-front >/dev/null 2>&1 || {
    ip link add hb-front type bridge
    ip addr add "$HOSTS_FRONT.1/24" dev hb-front
  }
  ip link set hb-back up
  ip link set hb-front up
  for ns in "${HOSTS_NS[@]}"; do
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    in_ns "$ns" ip link set lo up
    veth="hb-${ns#haberci-}"
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip link add "$veth" type veth peer name eth0 netns "$ns"
      in_ns "$ns" ip addr add "$(host_addr "$ns")/24" dev eth0
      in_ns "$ns" ip link set eth0 up
    fi
    # Every time: a bridge made again does not take back the links it had.
    ip link set "$veth" master hb-back up
  done
  # The balancer's front leg, and its forwarding (this namespace's setting only).
  if ! ip link show hb-lb-front >/dev/null 2>&1; then
    ip link add hb-lb-front type veth peer name eth1 netns haberci-lb
    in_ns haberci-lb ip addr add "$HOSTS_VIP/24" dev eth1
    in_ns haberci-lb ip link set eth1 up
  fi
  ip link set hb-lb-front master hb-front up
  in_ns haberci-lb sysctl -qw net.ipv4.ip_forward=1
  # Replies to clients go back through the balancer, which undoes its address translation.
  for ns in $(seq 1 "$HOSTS_APPS"); do
    in_ns "haberci-app$ns" ip route replace default via "$HOSTS_LB_BACK"
  done
  local a1 a2
  a1=$(host_addr haberci-app1) a2=$(host_addr haberci-app2)
  in_ns haberci-lb nft -f - <<EOF
table ip haberci_lb
delete table ip haberci_lb
table ip haberci_lb {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    ip daddr $HOSTS_VIP udp dport $GATEWAY_UDP_PORT @th,64,1 1 dnat to jhash ip saddr . udp sport mod 2 map { 0 : $a1, 1 : $a2 }
    ip daddr $HOSTS_VIP udp dport $GATEWAY_UDP_PORT @th,64,1 0 dnat to @th,80,16 map { 1 : $a1, 2 : $a2 }
    ip daddr $HOSTS_VIP tcp dport $GATEWAY_TCP_PORT dnat to jhash ip saddr . tcp sport mod 2 map { 0 : $a1, 1 : $a2 }
  }
}
EOF
}

hosts_net_down() {
  local ns
  for ns in "${HOSTS_NS[@]}"; do
    [ ! -e "/run/netns/$ns" ] || ip netns del "$ns"
  done
  ip link del hb-back 2>/dev/null || true
  ip link del hb-front 2>/dev/null || true
}

hosts_postgres() {
  local home=$PGHOME data="$PGHOME/data" addr
  addr=$(host_addr haberci-db)
  ln -sfn "$home" "$HOSTS/pg"
  if [ ! -f "$data/PG_VERSION" ]; then
    as_pg mkdir -p "$data" "$home/run"
    as_pg "$PGBIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$HOSTS/log/initdb.log" 2>&1 \
      || die "initdb failed; see $HOSTS/log/initdb.log"
    echo "include_if_exists = 'haberci.conf'" | as_pg tee -a "$data/postgresql.conf" >/dev/null
    echo "host all all $HOSTS_BACK.0/24 scram-sha-256" | as_pg tee -a "$data/pg_hba.conf" >/dev/null
  fi
  as_pg mkdir -p "$home/run"
  # The dev settings, on this host's address, without WAL archiving (no backups here).
  render "$ROOT/deploy/postgres/haberci.conf" "$data/haberci.conf.new" || true
  sed -e "s|^listen_addresses = .*|listen_addresses = '127.0.0.1,$addr'|" \
    -e 's|^archive_mode = .*|archive_mode = off|' "$data/haberci.conf.new" >"$data/haberci.conf"
  rm -f "$data/haberci.conf.new"
  chown postgres:postgres "$data/haberci.conf" 2>/dev/null || true
  if ! as_pg "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    say "hosts: postgres on $addr:$PG_PORT (haberci-db)"
    pg_in_ns haberci-db "$PGBIN/pg_ctl" -D "$data" -w -t 60 -l "$home/postgres.log" start >/dev/null \
      || die "postgres did not start; see $home/postgres.log"
  fi
  # Quiet (no NOTICE for what exists); for psql only: the services must not inherit it
  # (sqlx would send it on, and PgBouncer refuses the `options` startup parameter).
  local psql=(env "PGOPTIONS=-c client_min_messages=warning" "$PGBIN/psql" -h "$home/run"
    -p "$PG_PORT" -U postgres -d postgres -qAtX)
  printf '%s\n' "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
        CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PGPASS';
      END IF; END \$\$;
    ALTER ROLE $PG_USER PASSWORD '$PGPASS'; GRANT pg_monitor TO $PG_USER;" | as_pg "${psql[@]}" >/dev/null
  [ "$(as_pg "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" = 1 ] \
    || as_pg "${psql[@]}" -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >/dev/null
  as_pg "${psql[@]}" -d "$PG_DB" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
  HABERCI_MIGRATE_DATABASE_URL="postgres://$PG_USER:$PGPASS@$addr:$PG_PORT/$PG_DB" HABERCI_LOG=warn \
    "$RELEASE_BIN/haberci-backend" migrate >/dev/null || die "migrations failed on the db host"
}

hosts_pgbouncer() {
  local home=$PGBHOME addr
  addr=$(host_addr haberci-db)
  ln -sfn "$home" "$HOSTS/pgbouncer"
  render "$ROOT/deploy/pgbouncer/pgbouncer.ini" "$home/pgbouncer.ini.new" || true
  sed "s|^listen_addr = .*|listen_addr = $addr|" "$home/pgbouncer.ini.new" >"$home/pgbouncer.ini"
  rm -f "$home/pgbouncer.ini.new"
  render "$ROOT/deploy/pgbouncer/userlist.txt" "$home/userlist.txt" || true
  chmod 600 "$home/userlist.txt"
  touch "$home/pgbouncer.log"
  chown postgres:postgres "$home"/* 2>/dev/null || true
  if ! pid_alive "$home/pgbouncer.pid" pgbouncer; then
    rm -f "$home/pgbouncer.pid"
    say "hosts: pgbouncer on $addr:$PGBOUNCER_PORT (haberci-db)"
    pg_in_ns haberci-db pgbouncer -d -q "$home/pgbouncer.ini" || die "pgbouncer did not start; see $home/pgbouncer.log"
  fi
}

hosts_redis() {
  local addr; addr=$(host_addr haberci-redis)
  mkdir -p "$HOSTS/redis"
  render "$ROOT/deploy/redis/redis.conf" "$HOSTS/redis/redis.conf.new" || true
  sed -e "s|$DEV/redis|$HOSTS/redis|g" -e "s|$LOG/|$HOSTS/log/|g" -e "s|^bind .*|bind 127.0.0.1 $addr|" \
    "$HOSTS/redis/redis.conf.new" >"$HOSTS/redis/redis.conf"
  rm -f "$HOSTS/redis/redis.conf.new"
  # Reached from the app hosts, not loopback: protected mode would refuse them, since the
  # `default` user has no password (it is off; every process has its own user and password).
  echo "protected-mode no" >>"$HOSTS/redis/redis.conf"
  render_redis_acl || true
  cp "$DEV/redis/users.acl" "$HOSTS/redis/users.acl"
  if ! pid_alive "$HOSTS/redis/redis.pid" redis-server; then
    say "hosts: redis on $addr:$REDIS_PORT (haberci-redis)"
    in_ns haberci-redis redis-server "$HOSTS/redis/redis.conf" || die "redis did not start; see $HOSTS/log/redis.log"
  fi
}

# hosts_service NS NAME BINARY ARGS...: NAME (its pid file and log) in host NS; restarted when
# its binary or settings changed, as ./dev up does its services.
hosts_service() {
  local ns=$1 name=$2 bin=$3; shift 3
  local pidfile="$HOSTS/run/$name.pid" comm stamp
  comm=$(basename "$bin")
  stamp="$(stat -c '%Y %s' "$bin") $(env | grep '^HABERCI_' | grep -v -e '^HABERCI_TEST_' | sort | sha256sum | cut -c1-16)"
  if pid_alive "$pidfile" "$comm"; then
    [ "$(sed -n 2p "$pidfile")" != "$stamp" ] || return 0
    stop_pid "$name" "$pidfile" "$comm"
  fi
  : >"$HOSTS/log/$name.log"
  setsid nohup ip netns exec "$ns" "$bin" "$@" >>"$HOSTS/log/$name.log" 2>&1 </dev/null &
  # `ip netns exec` execs the program: this pid is the service's.
  printf '%s\n%s\n' "$!" "$stamp" >"$pidfile"
}

# The program a pid file of the hosts names.
hosts_comm() {
  case "$(basename "$1" .pid)" in
    gateway*) echo haberci-gateway ;;
    *) echo haberci-backend ;;
  esac
}

hosts_apps() {
  local i ns db redis
  db=$(host_addr haberci-db) redis=$(host_addr haberci-redis)
  service_env
  HABERCI_DATABASE_URL="postgres://$PG_USER:$PGPASS@$db:$PGBOUNCER_PORT/$PG_DB"
  HABERCI_MEDIA_STORE="file://$HOSTS/media" HABERCI_MEDIA_STAGING_DIR="$HOSTS/media-staging"
  mkdir -p "$HOSTS/media" "$HOSTS/media-staging"
  HABERCI_GATEWAY_TCP_ADDR="[::]:$GATEWAY_TCP_PORT" HABERCI_GATEWAY_UDP_ADDR="[::]:$GATEWAY_UDP_PORT"
  # The bench registers and logs in its users from the one client address.
  export HABERCI_RATE_REGISTER_IP=100000/60s HABERCI_RATE_LOGIN_IP=100000/60s \
    HABERCI_RATE_REFRESH_IP=100000/60s
  # Every client comes from the client host's address: its sessions are not one address's.
  export HABERCI_ADDRESS_LIMIT_EXEMPT="127.0.0.0/8,::1/128,$HOSTS_FRONT.0/24"
  url() { echo "redis://$1:$(redis_password "$1")@$redis:$REDIS_PORT"; }
  for i in $(seq 1 "$HOSTS_APPS"); do
    ns=haberci-app$i
    HABERCI_METRICS_ADDR="127.0.0.1:$(metrics_port api)" HABERCI_REDIS_URL=$(url haberci-api) \
      hosts_service "$ns" "$(nth api "$i")" "$RELEASE_BIN/haberci-backend" api
    HABERCI_METRICS_ADDR="127.0.0.1:$(metrics_port worker 1)" HABERCI_REDIS_URL=$(url haberci-worker) \
      hosts_service "$ns" "$(nth worker "$i")" "$RELEASE_BIN/haberci-backend" worker
    HABERCI_QUIC_SERVER_ID=$i HABERCI_METRICS_ADDR="127.0.0.1:$(metrics_port gateway 1)" \
      HABERCI_REDIS_URL=$(url haberci-gateway) \
      hosts_service "$ns" "$(nth gateway "$i")" "$RELEASE_BIN/haberci-gateway"
  done
  for i in $(seq 1 "$HOSTS_APPS"); do
    ns=haberci-app$i
    wait_for "api on $ns (see $HOSTS/log/$(nth api "$i").log)" 60 \
      in_ns "$ns" curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$API_PORT/readyz" \
      || die "the api on $ns is not ready"
    wait_for "gateway on $ns" 60 in_ns "$ns" curl -fsS --max-time 2 -o /dev/null \
      --cacert "$CERTS/ca.pem" --resolve "localhost:$GATEWAY_TCP_PORT:127.0.0.1" \
      "https://localhost:$GATEWAY_TCP_PORT/readyz" || die "the gateway on $ns is not ready"
  done
}

hosts_up() {
  [ -x "$RELEASE_BIN/haberci-gateway" ] && [ -f "$CERTS/ca.pem" ] && [ -d "$JWT_KEYS" ] \
    || die "run ./dev up first: the hosts use its binaries, certificates and keys"
  command -v nft >/dev/null || apt_install nftables
  mkdir -p "$HOSTS/run" "$HOSTS/log"
  PGBIN=$(pg_bin_dir) PGPASS=$(pg_password)
  # The database host's state, where the postgres user can reach it (as .dev/pg's).
  PGHOME=$(svc_home hosts-pg) PGBHOME=$(svc_home hosts-pgbouncer)
  hosts_net_up
  hosts_postgres
  hosts_pgbouncer
  hosts_redis
  hosts_apps
  say "hosts are up: clients connect to $HOSTS_VIP (UDP $GATEWAY_UDP_PORT, TCP $GATEWAY_TCP_PORT; TLS name localhost)"
  note "bench: ./dev hosts bench chat --users 1000 --rate 100 …   down: ./dev hosts down"
}

hosts_down() {
  local file home
  for file in "$HOSTS"/run/*.pid; do
    [ -e "$file" ] || continue
    stop_pid "$(basename "$file" .pid)" "$file" "$(hosts_comm "$file")"
  done
  if [ -f "$HOSTS/redis/redis.pid" ] && pid_alive "$HOSTS/redis/redis.pid" redis-server; then
    kill "$(cat "$HOSTS/redis/redis.pid")"
  fi
  if [ -e "$HOSTS/pgbouncer/pgbouncer.pid" ] && pid_alive "$HOSTS/pgbouncer/pgbouncer.pid" pgbouncer; then
    kill "$(head -n 1 "$HOSTS/pgbouncer/pgbouncer.pid")"
  fi
  if [ -e "$HOSTS/pg/data/PG_VERSION" ]; then
    as_pg "$(pg_bin_dir)/pg_ctl" -D "$HOSTS/pg/data" -w -m fast stop >/dev/null 2>&1 || true
  fi
  hosts_net_down
  say "hosts: down"
}

hosts_status() {
  local ns file
  for ns in "${HOSTS_NS[@]}"; do
    if [ -e "/run/netns/$ns" ]; then echo "$ns  $(host_addr "$ns")"; else echo "$ns  down"; fi
  done
  for file in "$HOSTS"/run/*.pid; do
    [ -e "$file" ] || continue
    if kill -0 "$(head -n 1 "$file")" 2>/dev/null; then
      echo "$(basename "$file" .pid)  pid $(head -n 1 "$file") in $(ip netns identify "$(head -n 1 "$file")")"
    else
      echo "$(basename "$file" .pid)  down"
    fi
  done
}

# ./dev hosts bench SCENARIO [flags]: haberci-bench from the client host through the balancer.
hosts_bench() {
  [ $# -gt 0 ] || die "usage: ./dev hosts bench chat|storm|connect|… [flags]"
  [ -e /run/netns/haberci-lb ] || die "the hosts are not up: ./dev hosts up"
  (cd "$ROOT" && cargo build --release --locked -q -p haberci-bench) || die "build failed"
  PGPASS=$(pg_password)
  local db redis
  db=$(host_addr haberci-db) redis=$(host_addr haberci-redis)
  # The balancer hashes new flows by address and port, and the bench's QUIC sessions share
  # UDP sockets (1,000 each by default): a socket's sessions all land on one gateway. Ten per
  # socket spreads them.
  local spread=(--sessions-per-socket 10)
  case " $* " in *" --sessions-per-socket"*|*" -h "*|*" --help "*) spread=() ;; esac
  cd "$ROOT"
  HABERCI_BENCH_DATABASE_URL="postgres://$PG_USER:$PGPASS@$db:$PG_PORT/$PG_DB" \
  HABERCI_BENCH_BOUNCER_URL="postgres://$PG_USER:$PGPASS@$db:$PGBOUNCER_PORT/$PG_DB" \
  HABERCI_BENCH_REDIS_URL="redis://haberci-admin:$(redis_password haberci-admin)@$redis:$REDIS_PORT" \
  HABERCI_DEV_DIR="$HOSTS" HABERCI_BENCH_CA="$CERTS/ca.pem" \
  HABERCI_BENCH_API="https://$HOSTS_VIP:$GATEWAY_TCP_PORT" \
    "$RELEASE_BIN/haberci-bench" "$@" --gateway "$HOSTS_VIP:$GATEWAY_UDP_PORT,$HOSTS_VIP:$GATEWAY_TCP_PORT" \
    --users-file "$HOSTS/bench-users.json" "${spread[@]}"
}

cmd_hosts() {
  case "${1:-}" in
    up) hosts_up ;;
    down) hosts_down ;;
    status) hosts_status ;;
    bench) shift; hosts_bench "$@" ;;
    *) die "usage: ./dev hosts up | down | status | bench SCENARIO [flags]" ;;
  esac
}
