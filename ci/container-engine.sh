#!/usr/bin/env bash
# A Docker-compatible engine (podman) with a locally built PostgreSQL image, so the docker
# provider of disposable_postgres can be tested for real on a machine with no Docker daemon and
# no reachable registry (see the project's notes on containers).  Debian 12, run as root.
#
#   eval "$(ci/container-engine.sh start)"   # install, build or load the image, serve the API;
#                                            # prints the variables to export (stdout only)
#   ci/container-engine.sh env               # print those variables again
#   ci/container-engine.sh stop              # remove our containers, stop the service
#
# Idempotent: start on a running engine only prints the variables; stop on a stopped one is a
# no-op.  Progress goes to stderr.  Everything lives in folders of its own (own containers.conf
# and storage), so other podman users on the machine are not touched.
set -Eeuo pipefail

PG_MAJOR="${SAFE_CLEANUP_CI_PG_MAJOR:-15}"
IMAGE="localhost/postgres:${PG_MAJOR}"
RUN_DIR="${SAFE_CLEANUP_CI_RUN_DIR:-/run/safe-cleanup-ci}"        # socket, pids, runroot
LIB_DIR="${SAFE_CLEANUP_CI_LIB_DIR:-/var/lib/safe-cleanup-ci}"    # config, image storage
CACHE_DIR="${SAFE_CLEANUP_CI_CACHE_DIR:-/var/cache/safe-cleanup-ci}"  # saved image tarball
SOCK="${RUN_DIR}/podman.sock"
SERVICE_PID="${RUN_DIR}/service.pid"
SERVICE_LOG="${RUN_DIR}/service.log"
PACKAGES=(podman uidmap slirp4netns fuse-overlayfs runc debootstrap)

export CONTAINERS_CONF="${LIB_DIR}/containers.conf"
export CONTAINERS_STORAGE_CONF="${LIB_DIR}/storage.conf"

log() { printf 'container-engine [%3ds]: %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

print_env() {
    cat <<EOF
export DOCKER_HOST=unix://${SOCK}
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export SAFE_CLEANUP_TEST_IMAGE=${IMAGE}
export CONTAINERS_CONF=${CONTAINERS_CONF}
export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF}
EOF
}

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local out
    out="$(mktemp)"
    { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >"$out" 2>&1 \
        || { tail -n 20 "$out" >&2; rm -f "$out"; die "apt-get could not install ${missing[*]}"; }
    rm -f "$out"
}

write_config() {
    mkdir -p "$LIB_DIR" "$RUN_DIR" "$CACHE_DIR"
    # crun fails on cgroup v1 ("hybrid mode"); root here cannot raise nofile/nproc any higher.
    # exit_command_delay: an exec's conmon (testcontainers checks readiness with exec) would
    # otherwise linger 5 minutes after the exec ended.
    cat >"${CONTAINERS_CONF}.new" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "${RUN_DIR}/libpod"
exit_command_delay = 5
EOF
    mv "${CONTAINERS_CONF}.new" "$CONTAINERS_CONF"
    cat >"${CONTAINERS_STORAGE_CONF}.new" <<EOF
[storage]
driver = "overlay"
graphroot = "${LIB_DIR}/storage"
runroot = "${RUN_DIR}/storage"
EOF
    mv "${CONTAINERS_STORAGE_CONF}.new" "$CONTAINERS_STORAGE_CONF"
}

# The Debian archive apt uses on this machine (never written into the project).
apt_mirror() {
    local codename="$1" uri
    uri="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
        | awk -v r="$codename" '$2 == r { print $1; exit }')"
    if [ -z "$uri" ]; then  # no index files yet: read the sources themselves
        uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk -v r="$codename" '$1 == "deb" { for (i = 2; i < NF; i++)
                if ($(i+1) == r && $i ~ /^[a-z]+:\/\//) { print $i; exit } }')"
    fi
    if [ -z "$uri" ]; then
        uri="$(awk -v r="$codename" '
            /^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == r) found = u }
            /^$/ { if (found) { print found; exit } }
            END { if (found) print found }' /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | head -n 1)"
    fi
    [ -n "$uri" ] || die "no apt source for ${codename} found in /etc/apt (needed by debootstrap)"
    printf '%s\n' "$uri"
}

# Behaves like the official image's docker-entrypoint.sh for what testcontainers and users need.
write_entrypoint() {
    cat >"$1" <<'EOF'
#!/bin/bash
set -Eeo pipefail
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi
if [ "$1" != 'postgres' ]; then exec "$@"; fi
if [ "$(id -u)" = '0' ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    chmod 3775 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != 'trust' ]; then
        echo 'error: database is uninitialized and POSTGRES_PASSWORD is not set' >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of words, as in the official image
    initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --encoding=UTF8 --locale=C.UTF-8 $POSTGRES_INITDB_ARGS
    rm -f "$pwfile"
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != 'postgres' ]; then
        db="${POSTGRES_DB//\"/\"\"}"
        printf 'CREATE DATABASE "%s"\n' "$db" \
            | postgres --single -D "$PGDATA" -c listen_addresses='' postgres >/dev/null
    fi
    echo 'PostgreSQL init process complete; ready for start up.'
fi
exec "$@" -c listen_addresses='*'
EOF
    chmod 755 "$1"
}

build_image() {
    local codename mirror work rootfs
    # shellcheck disable=SC1091
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-bookworm}")"
    mirror="$(apt_mirror "$codename")"
    work="$(mktemp -d "${CACHE_DIR}/build.XXXXXX")"
    rootfs="${work}/rootfs"
    # shellcheck disable=SC2064
    trap "umount '${rootfs}/proc' 2>/dev/null || true; rm -rf '${work}'" EXIT
    log "building ${IMAGE}: debootstrap ${codename}"
    debootstrap --variant=minbase "$codename" "$rootfs" "$mirror" >"${work}/debootstrap.log" 2>&1 \
        || { tail -n 20 "${work}/debootstrap.log" >&2; die "debootstrap failed"; }
    mount -t proc proc "${rootfs}/proc"
    printf '#!/bin/sh\nexit 101\n' >"${rootfs}/usr/sbin/policy-rc.d"
    chmod 755 "${rootfs}/usr/sbin/policy-rc.d"
    log "building ${IMAGE}: apt-get install postgresql-${PG_MAJOR}"
    chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "postgresql-${PG_MAJOR}" \
        >"${work}/apt.log" 2>&1 \
        || { tail -n 20 "${work}/apt.log" >&2; die "apt-get install postgresql-${PG_MAJOR} failed"; }
    chroot "$rootfs" apt-get clean
    umount "${rootfs}/proc"
    rm -rf "${rootfs}/var/lib/apt/lists/"* "${rootfs}/usr/share/doc" "${rootfs}/usr/share/man"
    # The Debian package's cluster is not wanted: the entrypoint makes one in PGDATA.
    rm -rf "${rootfs}/var/lib/postgresql/${PG_MAJOR}" "${rootfs}/etc/postgresql/${PG_MAJOR}"
    write_entrypoint "${rootfs}/usr/local/bin/docker-entrypoint.sh"
    log "building ${IMAGE}: podman import"
    tar -C "$rootfs" -c . | podman import --quiet \
        --change 'ENTRYPOINT=["docker-entrypoint.sh"]' \
        --change 'CMD=["postgres"]' \
        --change "ENV=PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change 'ENV=PGDATA=/var/lib/postgresql/data' \
        --change 'ENV=LANG=C.UTF-8' \
        --change 'EXPOSE=5432' \
        --change 'STOPSIGNAL=SIGINT' \
        --change "LABEL=safe-cleanup.recipe=${RECIPE}" \
        - "$IMAGE" >/dev/null
    rm -f "${CACHE_DIR}"/postgres-"${PG_MAJOR}"-*.tar
    log "saving ${IMAGE} to ${TARBALL}"
    podman save --quiet -o "${TARBALL}.new" "$IMAGE" && mv "${TARBALL}.new" "$TARBALL"
    rm -rf "$work"
    trap - EXIT
}

ensure_image() {
    local recipe
    recipe="$(podman image inspect --format '{{ index .Labels "safe-cleanup.recipe" }}' \
        "$IMAGE" 2>/dev/null || true)"
    if [ "$recipe" = "$RECIPE" ]; then
        return 0
    fi
    if [ -s "$TARBALL" ]; then
        log "loading ${IMAGE} from ${TARBALL}"
        podman load -q -i "$TARBALL" >/dev/null
    else
        build_image
    fi
}

service_pid() {
    local pid
    pid="$(cat "$SERVICE_PID" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

answers() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }

start_service() {
    if service_pid >/dev/null && answers; then
        return 0
    fi
    rm -f "$SOCK"
    log "serving the Docker API at unix://${SOCK}"
    setsid podman system service --time=0 "unix://${SOCK}" </dev/null >"$SERVICE_LOG" 2>&1 &
    echo $! >"$SERVICE_PID"
    local i
    for i in $(seq 1 100); do
        answers && return 0
        kill -0 "$(cat "$SERVICE_PID")" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$SERVICE_LOG" >&2 || true
    die "podman system service did not answer at unix://${SOCK}"
}

# conmon processes of our containers: their command lines name our runroot.
our_conmons() {
    local proc pid
    for proc in /proc/[0-9]*; do
        pid="${proc#/proc/}"
        [ "$(cat "${proc}/comm" 2>/dev/null)" = conmon ] || continue
        tr '\0' '\n' <"${proc}/cmdline" 2>/dev/null | grep -qxF "${RUN_DIR}/storage" \
            && printf '%s\n' "$pid"
    done
    return 0
}

stop_pids() {  # TERM them all, wait up to 5 s, then KILL those left
    local pid i left
    [ "$#" -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for i in $(seq 1 50); do
        left=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left=1; done
        [ "$left" = 0 ] && return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}

cmd_start() {
    [ "$(id -u)" = 0 ] || die "run as root"
    install_packages
    write_config
    ensure_image
    start_service
    print_env | tee "${RUN_DIR}/env"
}

cmd_stop() {
    local pid
    if command -v podman >/dev/null && [ -f "$CONTAINERS_STORAGE_CONF" ]; then
        podman ps -aq 2>/dev/null | xargs -r podman rm -f -t 2 >/dev/null 2>&1 || true
    fi
    pid="$(service_pid || true)"
    [ -n "$pid" ] && stop_pids "$pid"
    # shellcheck disable=SC2046  # one pid per word
    stop_pids $(our_conmons)
    rm -f "$SERVICE_PID" "$SOCK"
    log "stopped"
}

# The image is rebuilt (and its tarball replaced) when the recipe changes.
RECIPE="$({ declare -f build_image write_entrypoint; echo "$PG_MAJOR"; } | sha256sum | cut -c1-12)"
TARBALL="${CACHE_DIR}/postgres-${PG_MAJOR}-${RECIPE}.tar"

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) print_env ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
