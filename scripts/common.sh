# Shared steps for the demo, test and bench commands. Sourced, not run.
# Every step is idempotent: running a command twice does no work twice.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TREE_DIR="$ROOT/.nginx"           # ignored by git
NGINX_VERSION=1.22.1
MODULE_SO="$ROOT/target/release/libngx_http_memory_status_module.so"

log() { printf '==> %s\n' "$*" >&2; }

# Debian packages: the nginx we load into, its Lua and stream modules, and what
# bindgen and nginx's configure need.
ensure_packages() {
    local want=(nginx libnginx-mod-http-lua libnginx-mod-stream libclang-dev
                libpcre2-dev libssl-dev zlib1g-dev gcc make curl "$@")
    local missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        [ "$(id -u)" = 0 ] || { echo "need root to install ${missing[*]}" >&2; exit 1; }
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
}

# A configured nginx tree with Debian's own flags, so the module's signature
# matches Debian's nginx. Skipped when the user points us at their own tree.
ensure_nginx_tree() {
    if [ -n "${NGINX_SOURCE_DIR:-}" ] || [ -n "${NGINX_BUILD_DIR:-}" ]; then
        log "using NGINX_SOURCE_DIR=${NGINX_SOURCE_DIR:-} NGINX_BUILD_DIR=${NGINX_BUILD_DIR:-}"
        return
    fi
    local src="$TREE_DIR/nginx-$NGINX_VERSION"
    if [ ! -f "$src/objs/Makefile" ]; then
        log "preparing a configured nginx $NGINX_VERSION tree in $src"
        rm -rf "$TREE_DIR" && mkdir -p "$TREE_DIR/pkg"
        (cd "$TREE_DIR/pkg" && apt-get download -q nginx-dev >/dev/null 2>&1) || {
            apt-get update -qq && (cd "$TREE_DIR/pkg" && apt-get download -q nginx-dev >/dev/null 2>&1); }
        dpkg -x "$TREE_DIR"/pkg/nginx-dev_*.deb "$TREE_DIR/pkg/x"
        local got
        got=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' "$TREE_DIR/pkg/x/usr/share/nginx/src/src/core/nginx.h")
        [ "$got" = "$NGINX_VERSION" ] || { echo "nginx-dev is $got, expected $NGINX_VERSION" >&2; exit 1; }
        cp -r "$TREE_DIR/pkg/x/usr/share/nginx/src" "$src"
        # --with-stream=dynamic adds stream types to the bindings; it does not change
        # the module signature.
        (cd "$src" && source ./conf_flags && ./configure "${NGX_CONF_FLAGS[@]}" --with-stream=dynamic >configure.log 2>&1) || {
            tail -20 "$src/configure.log" >&2; exit 1; }
    fi
    export NGINX_SOURCE_DIR="$src"
}

build_module() {
    log "building the module (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet)
    [ -f "$MODULE_SO" ] || { echo "build produced no $MODULE_SO" >&2; exit 1; }
}

setup_all() {
    ensure_packages "$@"
    ensure_nginx_tree
    build_module
}
