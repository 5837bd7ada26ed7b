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

/// Compiles `src/c/request_bits.c` against the configured nginx tree (the
/// include paths and defines nginx-sys found in its Makefile), so request
/// bitfields and structures the bindings lack (the HTTP/2 server
/// configuration) are where nginx's own compiler puts them.
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
