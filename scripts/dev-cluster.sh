#!/usr/bin/env bash
# A real single-node Slurm cluster (slurmctld, slurmd with 4 fake GPUs, slurmdbd on
# MariaDB, munge) plus sshd on 127.0.0.1:2222, for mqi's tests and demo.
# Runs as root, without systemd. Everything lives under $MQI_DEV_DIR.
#
#   scripts/dev-cluster.sh install   Debian packages, the test user, keys (idempotent)
#   scripts/dev-cluster.sh start     write configs, start every daemon, wait until idle
#   scripts/dev-cluster.sh stop      stop only the daemons this script started (by pid)
#   scripts/dev-cluster.sh status    what runs, and sinfo
#   scripts/dev-cluster.sh env       shell `export` lines for the tests
#   scripts/dev-cluster.sh remote-python   (re)install mqi for the test user (post job, stand-in)
#   scripts/dev-cluster.sh pyslurm   (25.11 only) build pyslurm against it into .venv (cached)
#
# Two flavours, side by side (own state dir, ports, munged, MariaDB and sshd each):
#   default (MQI_SLURM unset or 22.05): Debian 12's Slurm 22.05 packages.
#   MQI_SLURM=25.11: Slurm 25.11 built from ../shared/vendor/slurm-25.11.2.tar.gz (or
#     $MQI_SLURM_TARBALL) into /opt/mqi-slurm/<sha256 of the tarball>, built once per machine.
#     Its client commands are not on the default PATH: `env` exports PATH and SLURM_CONF, and
#     its sshd hands the same two to the test user (SetEnv), so remote and local shells agree.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLAVOUR=${MQI_SLURM:-22.05}
TEST_USER=${MQI_DEV_USER:-mqitest}
PARTITION=gpu
CPU_PARTITION=cpu
GPUS=4
case "$FLAVOUR" in
  22.05)
    DEV_DIR=${MQI_DEV_DIR:-/var/lib/mqi-dev}
    SSH_PORT=${MQI_DEV_SSH_PORT:-2222}
    DB_PORT=${MQI_DEV_DB_PORT:-13306}
    DBD_PORT=${MQI_DEV_DBD_PORT:-16819}
    CTLD_PORT=${MQI_DEV_CTLD_PORT:-16817}
    SLURMD_PORT=${MQI_DEV_SLURMD_PORT:-16818}
    CLUSTER=mqidev
    DB_NAME=slurm_acct_db
    SBIN=/usr/sbin
    BIN=/usr/bin
    # Slurm clients in 22.05 ignore AuthInfo for some connections: use munge's default socket.
    MUNGE_SOCKET=/run/munge/munge.socket.2
    ;;
  25.11)
    # MQI_DEV_DIR of the other flavour may be exported in this shell: only the own one counts.
    DEV_DIR=${MQI_DEV_DIR_25_11:-/var/lib/mqi-dev-25.11}
    SSH_PORT=${MQI_DEV_25_11_SSH_PORT:-2223}
    DB_PORT=${MQI_DEV_25_11_DB_PORT:-13307}
    DBD_PORT=${MQI_DEV_25_11_DBD_PORT:-16829}
    CTLD_PORT=${MQI_DEV_25_11_CTLD_PORT:-16827}
    SLURMD_PORT=${MQI_DEV_25_11_SLURMD_PORT:-16828}
    CLUSTER=mqidev2511
    DB_NAME=slurm2511_acct_db
    TARBALL=${MQI_SLURM_TARBALL:-$(cd "$REPO/.." && pwd)/shared/vendor/slurm-25.11.2.tar.gz}
    PREFIX_ROOT=${MQI_SLURM_PREFIX_ROOT:-/opt/mqi-slurm}
    PREFIX=""  # set by find_prefix: $PREFIX_ROOT/<sha256>
    SBIN=""
    BIN=""
    # Its own munged (own key), so stopping one flavour never breaks the other.
    MUNGE_SOCKET=$DEV_DIR/run/munge/munge.socket.2
    ;;
  *) printf '[dev-cluster] ERROR: MQI_SLURM=%s: known flavours are 22.05 (default) and 25.11\n' "$FLAVOUR" >&2
    exit 2 ;;
esac

RUN=$DEV_DIR/run
LOG=$DEV_DIR/log
ETC=$DEV_DIR/etc

say() { printf '[dev-cluster] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it starts system daemons)"; }

packages=(slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server
  openssh-server openssh-client python3-venv dicom3tools dcmtk procps
  chromium chromium-driver)
# The 25.11 flavour: no Debian Slurm, but what building it (and pyslurm) needs.
packages_25_11=(munge mariadb-server openssh-server openssh-client python3-venv dicom3tools procps
  build-essential libmunge-dev libmariadb-dev libjson-c-dev libhttp-parser-dev libyaml-dev
  libjwt-dev pkg-config python3-dev)

apt_install() { # apt_install PACKAGE... -> installs the missing ones
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    # Keep package scripts from starting daemons: this script starts its own.
    local policy=/usr/sbin/policy-rc.d had_policy=1
    [ -e $policy ] || { had_policy=0; printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ $had_policy = 1 ] || rm -f $policy
  fi
}

NO_TARBALL_HINT="no Slurm 25.11 source: put slurm-25.11.2.tar.gz from https://www.schedmd.com/download-slurm/ in ../shared/vendor/ (or set MQI_SLURM_TARBALL)"

find_prefix() { # sets PREFIX/SBIN/BIN from the tarball's sha256; fails with how to get one
  [ "$FLAVOUR" = 25.11 ] || return 0
  # Exit 3: nothing to build from (scripts/test.sh then lets this flavour's tests skip).
  [ -f "$TARBALL" ] || { say "$NO_TARBALL_HINT"; exit 3; }
  local sha
  sha=$(sha256sum "$TARBALL" | cut -d' ' -f1)
  PREFIX=$PREFIX_ROOT/$sha
  SBIN=$PREFIX/sbin
  BIN=$PREFIX/bin
}

built() { [ -f "$PREFIX/.mqi-built" ]; }

build_slurm() { # configure, make, make install into $PREFIX, once per tarball
  built && { say "Slurm 25.11 already built in $PREFIX"; return; }
  local src t0=$SECONDS jobs
  jobs=$(nproc)
  src=$(mktemp -d /var/tmp/mqi-slurm-build.XXXXXX)
  say "building Slurm from $(basename "$TARBALL") into $PREFIX (about 4 minutes on 2 cores; log $src/build.log)"
  tar -xzf "$TARBALL" -C "$src" --strip-components=1
  rm -rf "$PREFIX"; mkdir -p "$PREFIX"
  # No debug info: 65 MB installed (442 MB with it), 216 s to build here; no slurmrestd.
  ( cd "$src" && CFLAGS="-O2 -g0" ./configure --prefix="$PREFIX" --sysconfdir="$PREFIX/etc" \
      --disable-debug --disable-slurmrestd --disable-x11 \
    && make -j"$jobs" && make install ) >"$src/build.log" 2>&1 \
    || { tail -n 30 "$src/build.log" >&2; die "building Slurm failed (log $src/build.log)"; }
  touch "$PREFIX/.mqi-built"
  rm -rf "$src"
  say "built Slurm $("$SBIN/slurmctld" -V | cut -d' ' -f2) in $((SECONDS - t0))s"
}

cmd_install() {
  need_root
  if [ "$FLAVOUR" = 25.11 ]; then
    find_prefix
    apt_install "${packages_25_11[@]}"
    build_slurm
  else
    apt_install "${packages[@]}"
  fi
  check_dir_flavour
  id "$TEST_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$TEST_USER"
  # useradd leaves a locked '!' password, and sshd refuses even key logins for it.
  usermod -p '*' "$TEST_USER"
  mkdir -p "$DEV_DIR"/{ssh,remote,gpu} "$RUN" "$LOG" "$ETC"
  chmod 755 "$DEV_DIR" "$RUN" "$ETC"
  if [ ! -f "$DEV_DIR/ssh/client_key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C mqi-dev-client -f "$DEV_DIR/ssh/client_key"
  fi
  if [ ! -f "$DEV_DIR/ssh/host_ed25519_key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C mqi-dev-host -f "$DEV_DIR/ssh/host_ed25519_key"
  fi
  local home
  home=$(getent passwd "$TEST_USER" | cut -d: -f6)
  install -d -m 700 -o "$TEST_USER" -g "$TEST_USER" "$home/.ssh"
  # Both flavours log in as the same user: add this key, keep the other flavour's.
  touch "$home/.ssh/authorized_keys"
  grep -qxF "$(cat "$DEV_DIR/ssh/client_key.pub")" "$home/.ssh/authorized_keys" \
    || cat "$DEV_DIR/ssh/client_key.pub" >> "$home/.ssh/authorized_keys"
  chown "$TEST_USER:$TEST_USER" "$home/.ssh/authorized_keys"; chmod 600 "$home/.ssh/authorized_keys"
  printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$DEV_DIR/ssh/host_ed25519_key.pub")" \
    > "$DEV_DIR/ssh/known_hosts"
  chown "$TEST_USER:$TEST_USER" "$DEV_DIR/remote"
  chmod 755 "$DEV_DIR/remote"
  for i in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$DEV_DIR/gpu/nvidia$i"; done
  if [ ! -f "$ETC/munge.key" ]; then
    dd if=/dev/urandom bs=1 count=1024 of="$ETC/munge.key" status=none
  fi
  chown munge:munge "$ETC/munge.key"; chmod 400 "$ETC/munge.key"
  echo "$FLAVOUR" > "$DEV_DIR/flavour"
  say "installed (state in $DEV_DIR)"
}

check_dir_flavour() { # never write one flavour's configs into the other's state dir
  [ -e "$ETC/slurm.conf" ] || [ -e "$ETC/munge.key" ] || return 0
  local owner
  owner=$(cat "$DEV_DIR/flavour" 2>/dev/null || echo 22.05)
  [ "$owner" = "$FLAVOUR" ] || die "$DEV_DIR belongs to the Slurm $owner flavour, not $FLAVOUR (check MQI_DEV_DIR)"
}

write_configs() {
  local node auth_info="" dbd_auth_info=""
  node=$(hostname -s)
  # Its own munged: AuthInfo for slurmctld/slurmd, AccountingStoragePass for the connections
  # to slurmdbd (Slurm reads the socket for those from there, not from AuthInfo).
  [ "$FLAVOUR" = 22.05 ] || auth_info="AuthInfo=socket=$MUNGE_SOCKET
AccountingStoragePass=socket=$MUNGE_SOCKET"
  [ "$FLAVOUR" = 22.05 ] || dbd_auth_info="AuthInfo=socket=$MUNGE_SOCKET"
  mkdir -p "$DEV_DIR"/{slurmctld,slurmd} "$DEV_DIR/mysql"
  cat > "$ETC/slurm.conf" <<EOF
# Written by scripts/dev-cluster.sh start: a one-node cluster for mqi's tests.
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
$auth_info
StateSaveLocation=$DEV_DIR/slurmctld
SlurmdSpoolDir=$DEV_DIR/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
PriorityType=priority/multifactor
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=10
InactiveLimit=0
KillWait=5
SchedulerParameters=sched_interval=1,bf_interval=1,enable_user_top
NodeName=$node NodeAddr=127.0.0.1 CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=16000 Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=$CPU_PARTITION Nodes=ALL MaxTime=INFINITE State=UP
EOF
  cat > "$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$node Name=gpu File=$DEV_DIR/gpu/nvidia[0-$((GPUS - 1))]
EOF
  cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
$dbd_auth_info
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=$DB_NAME
StorageUser=slurm
StoragePass=mqidev
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
EOF
  chmod 600 "$ETC/slurmdbd.conf"
  chmod 644 "$ETC/slurm.conf" "$ETC/gres.conf"
  local set_env=""
  if [ "$FLAVOUR" = 22.05 ]; then
    # Client commands (also the test user's, over SSH) read /etc/slurm.
    mkdir -p /etc/slurm
    for f in slurm.conf gres.conf slurmdbd.conf; do ln -sfn "$ETC/$f" "/etc/slurm/$f"; done
  else
    # Built-in default of this build's tools (and pyslurm) when SLURM_CONF is not set.
    mkdir -p "$PREFIX/etc"
    for f in slurm.conf gres.conf; do ln -sfn "$ETC/$f" "$PREFIX/etc/$f"; done
    # The test user's shells (commands over SSH, and the jobs they submit, which inherit
    # the environment) must find this flavour's tools first and its slurm.conf.
    set_env="SetEnv PATH=$BIN:/usr/local/bin:/usr/bin:/bin SLURM_CONF=$ETC/slurm.conf"
  fi
  cat > "$ETC/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $DEV_DIR/ssh/host_ed25519_key
PidFile $RUN/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers $TEST_USER
AuthorizedKeysFile .ssh/authorized_keys
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
$set_env
EOF
}

alive() { # alive RUN/NAME.pid -> is that daemon running? A zombie (killed, never reaped) is not,
  # and neither is an unrelated process that got the pid of a daemon from an earlier boot.
  [ -f "$1" ] || return 1
  local pid name
  pid=$(cat "$1")
  name=$(basename "$1" .pid)
  pid_alive "$pid" && [[ $(ps -o comm= -p "$pid" 2>/dev/null) == "$name"* ]]
}

pid_alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

wait_for() { # wait_for SECONDS DESCRIPTION LOGFILE COMMAND...
  local limit=$1 what=$2 logfile=$3; shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      say "$what did not come up within ${limit}s; last lines of $logfile:"
      tail -n 25 "$logfile" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.2
  done
}

start_munge() {
  alive "$RUN/munged.pid" && return
  mkdir -p /run/munge "$RUN/munge"
  chown munge:munge /run/munge "$RUN/munge"; chmod 755 /run/munge "$RUN/munge"
  touch "$LOG/munged.log"; chown munge:munge "$LOG/munged.log"
  runuser -u munge -- /usr/sbin/munged --key-file="$ETC/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$RUN/munge/munged.pid" --log-file="$LOG/munged.log" \
    --seed-file="$RUN/munge/munged.seed"
  wait_for 10 munged "$LOG/munged.log" test -S "$MUNGE_SOCKET"
  cp "$RUN/munge/munged.pid" "$RUN/munged.pid"
}

mysql_cmd() { mariadb --no-defaults --socket="$RUN/mysqld.sock" -u root "$@"; }

start_mariadb() {
  alive "$RUN/mariadbd.pid" && return
  local data=$DEV_DIR/mysql/data
  if [ ! -d "$data/mysql" ]; then
    mkdir -p "$data"; chown -R mysql:mysql "$DEV_DIR/mysql"
    mariadb-install-db --no-defaults --user=mysql --datadir="$data" >"$LOG/mariadb-install.log" 2>&1 \
      || { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  chown mysql:mysql "$RUN" 2>/dev/null || true
  touch "$LOG/mariadbd.log"; chown mysql:mysql "$LOG/mariadbd.log"
  chown root:root "$RUN"; chmod 777 "$RUN"  # mysqld writes its socket and pid here
  chmod +t "$RUN"
  nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$data" \
    --socket="$RUN/mysqld.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" \
    --innodb-buffer-pool-size=64M --skip-log-bin >/dev/null 2>&1 &
  wait_for 30 mariadbd "$LOG/mariadbd.log" mysql_cmd -e 'SELECT 1'
  mysql_cmd -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'mqidev';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'mqidev';
    GRANT ALL ON $DB_NAME.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON $DB_NAME.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
  alive "$RUN/slurmdbd.pid" && return
  SLURM_CONF=$ETC/slurm.conf "$SBIN/slurmdbd"
  wait_for 30 slurmdbd "$LOG/slurmdbd.log" sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

start_slurm() {
  if ! alive "$RUN/slurmctld.pid"; then
    # 25.11 refuses to start when a state file is missing (e.g. killed -9 before it wrote
    # assoc_usage, as the crash tests do); -i starts it from what it can read, as 22.05 does.
    local ignore=()
    [ "$FLAVOUR" = 22.05 ] || ignore=(-i)
    "$SBIN/slurmctld" "${ignore[@]}" -f "$ETC/slurm.conf"
    wait_for 30 slurmctld "$LOG/slurmctld.log" scontrol ping
  fi
  if ! alive "$RUN/slurmd.pid"; then
    "$SBIN/slurmd" -f "$ETC/slurm.conf" -N "$(hostname -s)"
  fi
  wait_for 40 "slurmd (node idle)" "$LOG/slurmd.log" node_idle
  # A controller started from an older slurm.conf (before the cpu partition): reread it.
  # Running and queued jobs survive a reconfigure.
  if ! scontrol show partition "$CPU_PARTITION" >/dev/null 2>&1; then
    say "slurmctld lacks partition $CPU_PARTITION: scontrol reconfigure"
    scontrol reconfigure
    wait_for 30 "partition $CPU_PARTITION" "$LOG/slurmctld.log" scontrol show partition "$CPU_PARTITION"
  fi
}

node_idle() {
  local state
  state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n1)
  case "$state" in
    idle|mix|alloc) return 0 ;;
    down*|drain*|inval*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1; return 1 ;;
    *) return 1 ;;
  esac
}

start_sshd() {
  alive "$RUN/sshd.pid" && return
  mkdir -p /run/sshd; chmod 755 /run/sshd
  /usr/sbin/sshd -f "$ETC/sshd_config" -E "$LOG/sshd.log"
  wait_for 10 sshd "$LOG/sshd.log" ssh_ok
}

ssh_ok() {
  ssh -n -p "$SSH_PORT" -i "$DEV_DIR/ssh/client_key" -o BatchMode=yes \
    -o UserKnownHostsFile="$DEV_DIR/ssh/known_hosts" -o StrictHostKeyChecking=yes \
    -o ConnectTimeout=3 "$TEST_USER@127.0.0.1" true
}

cmd_start() {
  need_root
  [ -f "$ETC/munge.key" ] || cmd_install
  local t0=$SECONDS
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  start_sshd
  say "Slurm $FLAVOUR up in $((SECONDS - t0))s: partitions $PARTITION ($GPUS GPUs) and $CPU_PARTITION, ssh $TEST_USER@127.0.0.1:$SSH_PORT"
}

stop_one() { # stop_one NAME PIDFILE
  local pidfile=$2 pid
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.1; done
  pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null
  rm -f "$pidfile"
  say "stopped $1"
}

cmd_stop() {
  need_root
  stop_one sshd "$RUN/sshd.pid"
  stop_one slurmd "$RUN/slurmd.pid"
  stop_one slurmctld "$RUN/slurmctld.pid"
  stop_one slurmdbd "$RUN/slurmdbd.pid"
  stop_one mariadbd "$RUN/mariadbd.pid"
  stop_one munged "$RUN/munged.pid"
}

cmd_status() {
  local rc=0
  for d in munged mariadbd slurmdbd slurmctld slurmd sshd; do
    if alive "$RUN/$d.pid"; then echo "$d: running (pid $(cat "$RUN/$d.pid"))"; else echo "$d: stopped"; rc=1; fi
  done
  [ $rc = 0 ] && sinfo -N -o '%N %t %G %c' 2>/dev/null
  return $rc
}

cmd_env() {
  cat <<EOF
export MQI_TEST_SSH_HOST=127.0.0.1
export MQI_TEST_SSH_PORT=$SSH_PORT
export MQI_TEST_SSH_USER=$TEST_USER
export MQI_TEST_SSH_KEY=$DEV_DIR/ssh/client_key
export MQI_TEST_KNOWN_HOSTS=$DEV_DIR/ssh/known_hosts
export MQI_TEST_REMOTE_DIR=$DEV_DIR/remote
export MQI_TEST_PARTITION=$PARTITION
export MQI_TEST_REMOTE_PYTHON=$DEV_DIR/remote-venv/bin/python
export MQI_TEST_STANDIN=$DEV_DIR/remote-venv/bin/mqi-moqui-standin
export MQI_TEST_LOCAL_DIR=$DEV_DIR/local
export MQI_DEV_DIR=$DEV_DIR
export MQI_TEST_CPU_PARTITION=$CPU_PARTITION
export MQI_TEST_SLURM_VERSION=$FLAVOUR
EOF
  [ "$FLAVOUR" = 22.05 ] && return
  # This flavour's tools are not on the default PATH: a local shell (mqi's local transport,
  # the tests) needs them first, and SLURM_CONF for its cluster. Its sshd sets the same two.
  cat <<EOF
export MQI_SLURM=$FLAVOUR
export MQI_TEST_SLURM_BIN=$BIN
export SLURM_CONF=$ETC/slurm.conf
export PATH=$BIN:\$PATH
EOF
}

cmd_remote_python() {
  # The post job and the stand-in run as the test user, who cannot read /root:
  # give it its own interpreter and a copy of mqi (not an editable install).
  need_root
  local venv=$DEV_DIR/remote-venv src=$DEV_DIR/remote-src
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  rm -rf "$src"; mkdir -p "$src"
  (cd "$REPO" && tar --exclude=.venv --exclude=.git -cf - pyproject.toml README.md mqi) | tar -xf - -C "$src"
  local deps=()
  "$venv/bin/python" -c 'import numpy, pydicom, pydantic, numba, matplotlib, skimage' 2>/dev/null && deps=(--no-deps --force-reinstall)
  "$venv/bin/pip" install -q "${deps[@]}" "$src" >"$LOG/remote-pip.log" 2>&1 \
    || { grep -v '^WARNING: Location' "$LOG/remote-pip.log" | tail -n 20 >&2; die "pip install failed"; }
  chmod -R a+rX "$venv"
  mkdir -p "$DEV_DIR/local"; chmod 755 "$DEV_DIR/local"
  say "mqi installed for $TEST_USER in $venv"
}

PYSLURM_VERSION=25.11.2

cmd_pyslurm() {
  # pyslurm links libslurm of exactly one Slurm major version: built against this prefix,
  # the wheel is kept beside it, so a fresh .venv installs it again in seconds.
  [ "$FLAVOUR" = 25.11 ] || die "pyslurm $PYSLURM_VERSION needs the 25.11 flavour: MQI_SLURM=25.11 $0 pyslurm"
  local venv=${MQI_VENV:-$REPO/.venv} wheels=$PREFIX/wheels
  [ -x "$venv/bin/python" ] || die "no $venv: run scripts/bootstrap-venv.sh first"
  local probe="import importlib.metadata as m, sys, pyslurm; sys.exit(m.version('pyslurm') != '$PYSLURM_VERSION')"
  if SLURM_CONF=$ETC/slurm.conf "$venv/bin/python" -c "$probe" 2>/dev/null; then
    say "pyslurm $PYSLURM_VERSION already in $venv"
    return
  fi
  local t0=$SECONDS
  if ! ls "$wheels"/pyslurm-"$PYSLURM_VERSION"-*.whl >/dev/null 2>&1; then
    say "building pyslurm $PYSLURM_VERSION against $PREFIX (about 3 minutes; log $LOG/pyslurm-build.log)"
    mkdir -p "$wheels"
    SLURM_INCLUDE_DIR=$PREFIX/include SLURM_LIB_DIR=$PREFIX/lib LDFLAGS="-Wl,-rpath,$PREFIX/lib" \
      "$venv/bin/pip" wheel --no-deps --no-cache-dir --no-binary pyslurm -w "$wheels" \
      "pyslurm==$PYSLURM_VERSION" >"$LOG/pyslurm-build.log" 2>&1 \
      || { tail -n 30 "$LOG/pyslurm-build.log" >&2; die "building pyslurm failed"; }
  fi
  "$venv/bin/pip" install -q --no-deps --no-index --find-links "$wheels" "pyslurm==$PYSLURM_VERSION" \
    || die "installing pyslurm from $wheels failed"
  SLURM_CONF=$ETC/slurm.conf "$venv/bin/python" -c "$probe" \
    || die "pyslurm installed but does not import against $PREFIX"
  say "pyslurm $PYSLURM_VERSION in $venv in $((SECONDS - t0))s (import it with SLURM_CONF=$ETC/slurm.conf)"
}

use_flavour_tools() { # this flavour's client commands and slurm.conf for everything below
  find_prefix
  if [ "$FLAVOUR" = 25.11 ] && ! built; then
    die "Slurm 25.11 is not built yet: MQI_SLURM=25.11 $0 install"
  fi
  export PATH=$BIN:$PATH SLURM_CONF=$ETC/slurm.conf
}

case "${1:-}" in
  install|start|stop|remote-python) check_dir_flavour ;;
esac
case "${1:-}" in
  status|env|pyslurm) use_flavour_tools ;;
  start|stop|remote-python) need_root; use_flavour_tools ;;
esac
case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  remote-python) cmd_remote_python ;;
  pyslurm) cmd_pyslurm ;;
  *) echo "usage: [MQI_SLURM=25.11] $0 install|start|stop|status|env|remote-python|pyslurm" >&2; exit 2 ;;
esac
