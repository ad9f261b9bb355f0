#!/usr/bin/env bash
# The scaled-out set-up of docker/compose.yaml as plain processes, for machines without containers:
# PostgreSQL, an MLflow tracking server on PostgreSQL (local artifact root, served by MLflow), a
# Prefect server on PostgreSQL, a Dask scheduler and two Dask workers. Everything listens on
# 127.0.0.1 (free ports), lives in one folder, and runs as an unprivileged user (when started as
# root: user $SER_STACK_USER, default "serstack", created if absent).
#
#   docker/local-stack.sh start DIR     start everything, wait until healthy, write DIR/stack.env
#   source DIR/stack.env                PREFECT_API_URL, MLFLOW_TRACKING_URI, SER_DASK_ADDRESS, PGPASSFILE
#   docker/local-stack.sh stop DIR      stop everything (data stays in DIR)
#
# The database password is random, kept in DIR/pgpass (mode 0600, libpq/asyncpg "passfile"); it
# never appears in a command line or URL. Needs PostgreSQL binaries (Debian: apt-get install -y
# postgresql) and a Python with the project installed ($SER_PYTHON, default: python3 on PATH) plus
# psycopg2 (pip install -e ".[server]").
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
ACTION=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${SER_PYTHON:-$(command -v python3)}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}

as_user() {  # run a command as the stack's user (root -> $SER_STACK_USER; otherwise as is)
    if [[ $(id -u) -eq 0 ]]; then runuser -u "$STACK_USER" -- "$@"; else "$@"; fi
}

as_py_user() {  # the Python services: as the stack user when it can run $PY, else as the caller
    if [[ $PY_AS_STACK == 1 ]]; then as_user "$@"; else "$@"; fi
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_url() {  # wait_url URL PIDFILE NAME
    for _ in $(seq 1 240); do
        if "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then return 0; fi
        if ! kill -0 "$(cat "$2")" 2>/dev/null; then echo "error: $3 exited; see ${2%.pid}.log" >&2; tail -20 "${2%.pid}.log" >&2; return 1; fi
        sleep 1
    done
    echo "error: $3 not healthy at $1 after 240 s" >&2; return 1
}

spawn() {  # spawn NAME CMD... : background process as the stack user, log DIR/NAME.log, pid DIR/NAME.pid
    local name=$1; shift
    local prefix=()  # setpriv and env exec: the recorded pid is the service's own (kill reaches it)
    if [[ $(id -u) -eq 0 && $PY_AS_STACK == 1 ]]; then prefix=(setpriv --reuid="$STACK_USER" --regid="$STACK_USER" --init-groups --); fi
    "${prefix[@]}" env PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PGPASSFILE="$DIR/pgpass" OMP_NUM_THREADS=1 \
        DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_ENABLE_TELEMETRY=false \
        "$@" >"$DIR/$name.log" 2>&1 &
    echo $! >"$DIR/$name.pid"
}

start() {
    [[ -x "$PG_BIN/initdb" ]] || { echo "error: no PostgreSQL binaries (initdb) under /usr/lib/postgresql/*/bin; apt-get install -y postgresql" >&2; exit 2; }
    if [[ $(id -u) -eq 0 ]]; then
        STACK_USER=${SER_STACK_USER:-serstack}
        id -u "$STACK_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$STACK_USER"
        chown "$STACK_USER" "$DIR"
    else
        STACK_USER=$(id -un)
    fi
    chmod 700 "$DIR"
    PY_AS_STACK=1
    if [[ $(id -u) -eq 0 ]] && ! runuser -u "$STACK_USER" -- "$PY" -c "import mlflow, prefect, distributed" >/dev/null 2>&1; then
        PY_AS_STACK=0  # e.g. an interpreter under /root: PostgreSQL still runs unprivileged
        echo "warning: $STACK_USER cannot run $PY; the Python services run as $(id -un)" >&2
        chmod 755 "$DIR"
    fi
    local pg_port mlflow_port prefect_port dask_port
    pg_port=$(free_port); mlflow_port=$(free_port); prefect_port=$(free_port); dask_port=$(free_port)
    local password; password=$("$PY" -c 'import secrets; print(secrets.token_hex(24))')
    as_user sh -c "umask 077; printf '%s\n' '$password' > '$DIR/pwfile'; printf '127.0.0.1:$pg_port:*:ser:%s\n' '$password' > '$DIR/pgpass'"
    unset password
    as_user "$PG_BIN/initdb" -D "$DIR/pg" -U ser --pwfile="$DIR/pwfile" -A scram-sha-256 --no-instructions >"$DIR/initdb.log" 2>&1
    rm -f "$DIR/pwfile"
    as_user mkdir -p "$DIR/sock"
    as_py_user mkdir -p "$DIR/mlartifacts" "$DIR/prefect-home" "$DIR/ser"
    as_user "$PG_BIN/pg_ctl" -D "$DIR/pg" -l "$DIR/postgres.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $pg_port -k $DIR/sock" start >/dev/null
    for db in mlflow prefect; do
        as_user env PGPASSFILE="$DIR/pgpass" "$PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" -U ser "$db"
    done
    spawn mlflow "$PY" -m mlflow server --backend-store-uri "postgresql+psycopg2://ser@127.0.0.1:$pg_port/mlflow" \
        --artifacts-destination "$DIR/mlartifacts" --serve-artifacts --host 127.0.0.1 --port "$mlflow_port" --workers 1
    spawn prefect env PREFECT_HOME="$DIR/prefect-home" \
        PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://ser@127.0.0.1:$pg_port/prefect" \
        "$PY" -m prefect server start --host 127.0.0.1 --port "$prefect_port"
    spawn dask-scheduler "$PY" -m distributed.cli.dask_scheduler --host 127.0.0.1 --port "$dask_port" \
        --dashboard-address 127.0.0.1:0
    for n in 1 2; do  # no nanny: a killed worker stays dead (the scheduler moves its tasks)
        spawn "dask-worker-$n" "$PY" -m distributed.cli.dask_worker "tcp://127.0.0.1:$dask_port" --nthreads 1 \
            --no-nanny --host 127.0.0.1 --dashboard-address 127.0.0.1:0 --local-directory "$DIR/dask-worker-$n"
    done
    wait_url "http://127.0.0.1:$mlflow_port/health" "$DIR/mlflow.pid" mlflow
    wait_url "http://127.0.0.1:$prefect_port/api/health" "$DIR/prefect.pid" prefect
    "$PY" -c "from distributed import Client; c = Client('tcp://127.0.0.1:$dask_port', timeout=60); c.wait_for_workers(2, timeout=120); c.close()"
    cat >"$DIR/stack.env" <<ENV
export PREFECT_API_URL=http://127.0.0.1:$prefect_port/api
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
export SER_DASK_ADDRESS=tcp://127.0.0.1:$dask_port
export PGPASSFILE=$DIR/pgpass
export SER_STACK_USER=$STACK_USER
export SER_STACK_PG_PORT=$pg_port
export SER_STACK_PY_AS_USER=$PY_AS_STACK
ENV
    echo "stack up in $DIR (as $STACK_USER): source $DIR/stack.env"
}

stop() {
    for pidfile in "$DIR"/dask-worker-*.pid "$DIR"/dask-scheduler.pid "$DIR"/prefect.pid "$DIR"/mlflow.pid; do
        [[ -f $pidfile ]] || continue
        local pid; pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    if [[ -f "$DIR/pg/postmaster.pid" ]]; then
        STACK_USER=$(stat -c %U "$DIR/pg")
        as_user "$PG_BIN/pg_ctl" -D "$DIR/pg" -m fast -w stop >/dev/null || true
    fi
    echo "stack in $DIR stopped"
}

case $ACTION in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
