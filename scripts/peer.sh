# The peer run (#20): lua-nginx-module 0.10.30rc2's own tests on the OpenResty
# stack of the matrix (nginx 1.29.8), with and without this module, driven by
# scripts/peer-run. Needs the matrix's nginx (scripts/matrix.sh), Test::Nginx
# and the tests from ../shared/vendor, and the echo module most test files
# use, built here as a dynamic module for that nginx. Sourced by scripts/test.

PEER_VERSION=1.29.8
PEER_SOURCES=(test-nginx-0.32-2-gcf245a0 lua-nginx-module-0.10.30rc2-tests echo-nginx-module-0.65)
# Files that need only the modules built here (Lua, NDK, echo) and no live
# upstream, memcached or redis: the sanity tests, capture_multi subrequests
# and ngx.ctx across phases and subrequests. 3 min 47 s in all on two cores
# (009-log.t one nginx per test would add 2 min: about 2 s a test).
PEER_FILES=(000-sanity.t 027-multi-capture.t 033-ctx.t)
# By reload: 027 has a test needing memc (its reload fails, and the harness
# waits out every test after it); 009-log.t by reload takes 40 s.
PEER_HUP_FILES=(000-sanity.t 009-log.t 033-ctx.t)

peer_unavailable() {
    local name
    for name in "${PEER_SOURCES[@]}"; do
        [ -f "$VENDOR_DIR/$name.tar.gz" ] || { echo "$VENDOR_DIR/$name.tar.gz is missing"; return; }
    done
}

# The echo module for the matrix's nginx: the same configure flags (a
# --with-compat module loads into any build of the same version), `make modules`.
ensure_echo_module() {
    ECHO_DIR="$MATRIX_CACHE/echo-$PEER_VERSION-$(sources_key "nginx-$PEER_VERSION" echo-nginx-module-0.65)"
    [ -f "$ECHO_DIR/.done" ] && return
    log "building echo-nginx-module 0.65 for nginx $PEER_VERSION into $ECHO_DIR (once)"
    rm -rf "$ECHO_DIR" && mkdir -p "$ECHO_DIR/src"
    unpack "nginx-$PEER_VERSION" "$ECHO_DIR/src"
    unpack echo-nginx-module-0.65 "$ECHO_DIR/src"
    (cd "$ECHO_DIR/src/nginx-$PEER_VERSION" &&
        auto/configure --with-compat --with-threads --with-file-aio \
            --with-http_ssl_module --with-http_v2_module --with-http_stub_status_module \
            --with-http_realip_module --with-pcre-jit --with-stream=dynamic \
            --add-dynamic-module="$ECHO_DIR/src/echo-nginx-module-0.65" >"$ECHO_DIR/build.log" 2>&1 &&
        make -j2 modules >>"$ECHO_DIR/build.log" 2>&1 &&
        cp objs/ngx_http_echo_module.so "$ECHO_DIR/") || {
        tail -30 "$ECHO_DIR/build.log" >&2; exit 1; }
    touch "$ECHO_DIR/.done"
}

run_peer() {
    local why
    why=$( matrix_unavailable; peer_unavailable )
    if [ -n "$why" ]; then
        log "SKIPPED the peer run (lua-nginx-module's own tests with this module): $why"
        return 0
    fi
    ensure_matrix_nginx "$PEER_VERSION"
    ensure_echo_module
    local work mods
    work=$(mktemp -d)
    unpack test-nginx-0.32-2-gcf245a0 "$work"
    unpack lua-nginx-module-0.10.30rc2-tests "$work"
    mods="$NGINX_DIR/prefix/modules"
    log "peer run: lua-nginx-module's tests (${PEER_FILES[*]}) on nginx $PEER_VERSION, without and with this module"
    local rc=0
    (cd "$work/lua-nginx-module-0.10.30rc2-tests" && chmod -R a+rX "$work" &&
        PEER_NGINX="$NGINX_DIR/prefix/sbin/nginx" \
        PEER_MODULES="$mods/ndk_http_module.so $mods/ngx_http_lua_module.so $ECHO_DIR/ngx_http_echo_module.so" \
        PEER_OURS="$MATRIX_CACHE/target-$PEER_VERSION/release/libngx_http_memory_status_module.so" \
        PEER_TESTS="$work/lua-nginx-module-0.10.30rc2-tests" \
        PEER_TEST_NGINX_LIB="$work/test-nginx-0.32-2-gcf245a0/lib" \
        PEER_PORT=1991 PEER_HUP_FILES="${PEER_HUP_FILES[*]}" \
        "$ROOT/scripts/peer-run" "${PEER_FILES[@]}") || rc=$?
    rm -rf "$work"
    return $rc
}
