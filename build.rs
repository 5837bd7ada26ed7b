//! Turns what `nginx-sys` learned about the nginx tree into `cfg`s, so code that
//! depends on the nginx version or its features says so explicitly.
use std::env;

fn main() {
    println!("cargo::rerun-if-env-changed=NGINX_SOURCE_DIR");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_else(|_| "any()".into())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    if let Ok(features) = env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }

    check_http2_srv_conf();
    compile_request_bits();

    // Per-slot slab statistics (`ngx_slab_stat_t`) exist since nginx 1.11.7.
    println!("cargo::rustc-check-cfg=cfg(ngx_slab_stats)");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    if let Ok(version) = env::var("DEP_NGINX_VERSION_NUMBER") {
        let version: u64 = version
            .parse()
            .expect("DEP_NGINX_VERSION_NUMBER is a number");
        if version >= 1_011_007 {
            println!("cargo::rustc-cfg=ngx_slab_stats");
        }
    }
}

/// The HTTP/2 stream walk needs `ngx_http_v2_srv_conf_t`, which nginx-sys does
/// not bind: enable it only when the tree's header declares the fields we mirror.
fn check_http2_srv_conf() {
    println!("cargo::rustc-check-cfg=cfg(ngx_h2_srv_conf_1_22)");
    let Some(src) = env::var_os("NGINX_SOURCE_DIR") else {
        return;
    };
    let header = std::path::Path::new(&src).join("src/http/v2/ngx_http_v2_module.h");
    println!("cargo::rerun-if-changed={}", header.display());
    let Ok(text) = std::fs::read_to_string(&header) else {
        return;
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let expected = [
        "size_t",
        "pool_size;",
        "ngx_uint_t",
        "concurrent_streams;",
        "ngx_uint_t",
        "concurrent_pushes;",
        "size_t",
        "preread_size;",
        "ngx_uint_t",
        "streams_index_mask;",
        "}",
        "ngx_http_v2_srv_conf_t;",
    ];
    if words.windows(expected.len()).any(|w| w == expected) {
        println!("cargo::rustc-cfg=ngx_h2_srv_conf_1_22");
    }
}

/// Compiles `src/c/request_bits.c` against the configured nginx tree (the
/// include paths and defines nginx-sys found in its Makefile), so request
/// bitfields are where nginx's own compiler puts them.
fn compile_request_bits() {
    println!("cargo::rerun-if-changed=src/c/request_bits.c");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_INCLUDE");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_CFLAGS");
    let mut build = cc::Build::new();
    build.file("src/c/request_bits.c").warnings(false);
    if let Some(includes) = env::var_os("DEP_NGINX_INCLUDE") {
        for dir in env::split_paths(&includes) {
            build.include(dir);
        }
    }
    if let Ok(cflags) = env::var("DEP_NGINX_CFLAGS") {
        for flag in cflags.split_whitespace() {
            build.flag(flag);
        }
    }
    build.compile("ngx_memory_status_request_bits");
}
