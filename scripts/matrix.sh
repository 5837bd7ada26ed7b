# The platform matrix: upstream nginx stable and mainline, each with OpenResty's
# LuaJIT fork and Lua modules as dynamic modules (on 1.29.8 that is the
# OpenResty stack), built from ../shared/vendor into a cache outside the clone,
# keyed by the sources' checksums and this recipe. Sourced by scripts/test.

VENDOR_DIR=${NGX_VENDOR_DIR:-$ROOT/../shared/vendor}
MATRIX_CACHE=${NGX_MATRIX_CACHE:-/var/cache/ngx-memory-status}
MATRIX_VERSIONS=(1.28.3 1.29.8)
LUAJIT_SRC=luajit2-2.1-20240314
LUA_MODULES=(ngx_devel_kit-0.3.4 lua-nginx-module-0.10.30rc2 stream-lua-nginx-module-0.0.18rc2)
LUA_LIBS=(lua-resty-core-0.1.33rc2 lua-resty-lrucache-0.15)
# Raise when the recipe below changes: a new key, a fresh build.
MATRIX_RECIPE=1

# Why the matrix cannot run here, or nothing.
matrix_unavailable() {
    local name
    [ -d "$VENDOR_DIR" ] || { echo "no vendored sources at $VENDOR_DIR (set NGX_VENDOR_DIR)"; return; }
    for name in "$LUAJIT_SRC" "${LUA_MODULES[@]}" "${LUA_LIBS[@]}" "${MATRIX_VERSIONS[@]/#/nginx-}"; do
        [ -f "$VENDOR_DIR/$name.tar.gz" ] || { echo "$VENDOR_DIR/$name.tar.gz is missing"; return; }
    done
}

# First 16 hex digits of the checksum of the named tarballs and the recipe.
sources_key() {
    { for name in "$@"; do sha256sum "$VENDOR_DIR/$name.tar.gz" | cut -d' ' -f1; done
      echo "recipe $MATRIX_RECIPE"; } | sha256sum | cut -c1-16
}

unpack() {   # unpack NAME into DIR
    tar xzf "$VENDOR_DIR/$1.tar.gz" -C "$2"
}

# LuaJIT into DIR, once, with GC64 (as OpenResty ships it) or without
# (ABI gc64 or non-gc64), and lua-resty-core and lrucache in its default
# package.path, as OpenResty bundles them: no lua_package_path needed.
build_luajit() {
    local dir=$1 abi=$2 xcflags= check='require("ffi").abi("gc64")'
    [ -f "$dir/.done" ] && return
    if [ "$abi" = non-gc64 ]; then
        xcflags=-DLUAJIT_DISABLE_GC64
        check="not $check"
    fi
    log "building $LUAJIT_SRC ($abi) into $dir (once; about 1 min on 2 cores)"
    rm -rf "$dir" && mkdir -p "$dir/src"
    unpack "$LUAJIT_SRC" "$dir/src"
    (cd "$dir/src/$LUAJIT_SRC" && make -j2 PREFIX="$dir" XCFLAGS="$xcflags" >"$dir/build.log" 2>&1 &&
        make install PREFIX="$dir" >>"$dir/build.log" 2>&1) || {
        tail -20 "$dir/build.log" >&2; exit 1; }
    "$dir/bin/luajit" -e "assert($check, 'not $abi')" || exit 1
    install_lua_libs "$dir"
    touch "$dir/.done"
}

# lua-resty-core and lrucache into the default package.path of the LuaJIT in DIR.
install_lua_libs() {
    local dir=$1 lib
    for lib in "${LUA_LIBS[@]}"; do
        unpack "$lib" "$dir/src"
        mkdir -p "$dir/share/lua/5.1"
        cp -r "$dir/src/$lib/lib/." "$dir/share/lua/5.1/"
    done
    "$dir/bin/luajit" -e 'assert(package.searchpath("resty.core", package.path))' || {
        echo "resty.core is not on $dir's default package.path" >&2; exit 1; }
}

# The LuaJIT the matrix's nginx builds link.
ensure_luajit() {
    LUAJIT_DIR="$MATRIX_CACHE/luajit-$(sources_key "$LUAJIT_SRC" "${LUA_LIBS[@]}")"
    build_luajit "$LUAJIT_DIR" gc64
}

# The same LuaJIT without GC64 (32-bit GC references, as OpenResty shipped on
# x86_64 before 2.1-2023): the Lua modules load it in place of the GC64 one
# through LD_LIBRARY_PATH (their RUNPATH yields to it); t/16-luajit-non-gc64.t.
ensure_luajit_non_gc64() {
    LUAJIT_NON_GC64_DIR="$MATRIX_CACHE/luajit-non-gc64-$(sources_key "$LUAJIT_SRC" "${LUA_LIBS[@]}")"
    build_luajit "$LUAJIT_NON_GC64_DIR" non-gc64
}

# nginx VERSION configured, built and installed into $NGINX_DIR/prefix; its
# configured tree ($NGINX_DIR/src/nginx-VERSION) is what the module builds against.
ensure_matrix_nginx() {
    local version=$1
    ensure_luajit
    NGINX_DIR="$MATRIX_CACHE/nginx-$version-$(sources_key "nginx-$version" "${LUA_MODULES[@]}" "$LUAJIT_SRC" "${LUA_LIBS[@]}")"
    [ -f "$NGINX_DIR/.done" ] && return
    log "building nginx $version with the Lua modules into $NGINX_DIR (once; about 3 min on 2 cores)"
    rm -rf "$NGINX_DIR" && mkdir -p "$NGINX_DIR/src"
    local m adds=()
    unpack "nginx-$version" "$NGINX_DIR/src"
    for m in "${LUA_MODULES[@]}"; do
        unpack "$m" "$NGINX_DIR/src"
        adds+=(--add-dynamic-module="$NGINX_DIR/src/$m")
    done
    (cd "$NGINX_DIR/src/nginx-$version" &&
        LUAJIT_LIB="$LUAJIT_DIR/lib" LUAJIT_INC="$LUAJIT_DIR/include/luajit-2.1" \
        auto/configure --prefix="$NGINX_DIR/prefix" --with-compat --with-threads --with-file-aio \
            --with-http_ssl_module --with-http_v2_module --with-http_stub_status_module \
            --with-http_realip_module --with-pcre-jit --with-stream=dynamic \
            --with-ld-opt="-Wl,-rpath,$LUAJIT_DIR/lib" "${adds[@]}" >"$NGINX_DIR/build.log" 2>&1 &&
        make -j2 >>"$NGINX_DIR/build.log" 2>&1 && make install >>"$NGINX_DIR/build.log" 2>&1) || {
        tail -30 "$NGINX_DIR/build.log" >&2; exit 1; }
    touch "$NGINX_DIR/.done"
}

# The module and the test-only panic build for nginx VERSION, in target
# directories of their own in the cache (each nginx gives different bindings).
build_matrix_module() {
    local version=$1 tree="$NGINX_DIR/src/nginx-$1"
    MATRIX_TARGET="$MATRIX_CACHE/target-$version"
    log "building the module against nginx $version"
    (cd "$ROOT" && NGINX_SOURCE_DIR="$tree" CARGO_TARGET_DIR="$MATRIX_TARGET" cargo build --release --quiet &&
        NGINX_SOURCE_DIR="$tree" CARGO_TARGET_DIR="$MATRIX_TARGET/panic-test" \
            cargo build --quiet --features test-panic)
}

# Builds what is missing and runs the whole suite against each nginx of the
# matrix; prints why when it cannot.
run_matrix() {
    local why
    why=$(matrix_unavailable)
    if [ -n "$why" ]; then
        log "SKIPPED the platform matrix (${MATRIX_VERSIONS[*]} with OpenResty's Lua modules): $why"
        return 0
    fi
    mkdir -p "$MATRIX_CACHE"
    ensure_luajit_non_gc64
    local version
    for version in "${MATRIX_VERSIONS[@]}"; do
        ensure_matrix_nginx "$version"
        build_matrix_module "$version"
        (cd "$ROOT" && NGINX_SOURCE_DIR="$NGINX_DIR/src/nginx-$version" \
            cargo clippy --release --all-targets --quiet --target-dir "$MATRIX_TARGET" -- -D warnings)
        rm -rf "$ROOT/t/tmp/answers-$version"
        log "prove t/ (nginx $version with OpenResty's LuaJIT and Lua modules, $NGINX_DIR)"
        (cd "$ROOT" && TEST_NGINX_BINARY="$NGINX_DIR/prefix/sbin/nginx" \
            TEST_NGINX_MODULES_DIR="$NGINX_DIR/prefix/modules" \
            TEST_NGINX_MODULE="$MATRIX_TARGET/release/libngx_http_memory_status_module.so" \
            TEST_NGINX_PANIC_MODULE="$MATRIX_TARGET/panic-test/debug/libngx_http_memory_status_module.so" \
            TEST_JSON_SPOOL="$ROOT/t/tmp/answers-$version" \
            TEST_NGINX_FOREIGN_MODULE="$MODULE_SO" \
            TEST_LUAJIT_NON_GC64_LIB="$LUAJIT_NON_GC64_DIR/lib" \
            prove -I t/lib -r t/)
    done
}
