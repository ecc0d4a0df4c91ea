//! Link options of the shipping build.
//!
//! `dist` (packages and device images) links with packed relative relocations
//! (`-z pack-relative-relocs`, DT_RELR): the dynamic loader's table of addresses to fix up
//! shrinks from 24 bytes per pointer to a bitmap, which took about 1.2 MB off the
//! binary (docs/build-profiles.md). It needs glibc 2.36 or newer on the device (Debian
//! 12, Ubuntu 22.10, Raspberry Pi OS bookworm); the Debian package says so in its
//! Depends. Other profiles link as before, so that `cargo build --release` runs on older
//! systems too. `EDGE_AGENT_RELR=0` turns it off for a dist build meant for an older
//! glibc; `EDGE_AGENT_RELR=1` turns it on for any profile and architecture.
//!
//! Debian 12's GNU ld (binutils 2.40) ignores the option for aarch64 with a warning;
//! LLVM's lld packs relocations on every architecture. `cross/build` sets
//! `EDGE_AGENT_LLD` to a folder holding a gcc-compatible `ld.lld` (the `gcc-ld` folder of
//! the rustup toolchain, whose rust-lld is LLVM's linker), and every build with it links
//! through lld with packed relocations (and, for dist, identical code folding): the
//! aarch64 `ci` build that tests/run runs under qemu too, so the tests cover the shipping
//! link. Without it, the aarch64 build links with GNU ld as before, 0.9 MB larger
//! (docs/build-profiles.md).
//!
//! It also names the cargo features the binary was built with (BUILT_WITH_FEATURES,
//! shown by `edge-agent --version`), so that a device's build can be told from its
//! binary: the device build leaves out the ONNX loader and the intra-run threads.

fn main() {
    // Cargo sets CARGO_FEATURE_<NAME> for each enabled feature of this package. The name
    // passed on must not start with EDGE_AGENT_: `cargo test` and `cargo run` put it in the
    // binary's environment too, where the configuration reads EDGE_AGENT_* as overrides.
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase().replace('_', "-")))
        .filter(|f| f != "default")
        .collect();
    features.sort();
    let features = if features.is_empty() { "none".to_string() } else { features.join(", ") };
    println!("cargo:rustc-env=BUILT_WITH_FEATURES={features}");
    println!("cargo:rerun-if-env-changed=EDGE_AGENT_RELR");
    println!("cargo:rerun-if-env-changed=EDGE_AGENT_LLD");
    let cfg = |name: &str| std::env::var(name).unwrap_or_default();
    let linux_gnu = cfg("CARGO_CFG_TARGET_OS") == "linux" && cfg("CARGO_CFG_TARGET_ENV") == "gnu";
    let dist = matches!(profile_dir().as_deref(), Some("dist" | "dist-size"));
    let lld = std::env::var("EDGE_AGENT_LLD").ok().filter(|dir| linux_gnu && !dir.is_empty());
    if let Some(dir) = &lld {
        println!("cargo:rerun-if-changed={dir}/ld.lld");
        println!("cargo:rustc-link-arg-bins=-B{dir}");
        println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
        // Identical code folding: generic code instantiated for different types often
        // compiles to the same instructions. -246 KB on the aarch64 device build, the
        // same speed (docs/build-profiles.md). Rust promises nothing about functions
        // having distinct addresses, and lld folds no data under this option.
        if dist {
            println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
        }
    }
    let relr = match std::env::var("EDGE_AGENT_RELR").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => lld.is_some() || (dist && cfg("CARGO_CFG_TARGET_ARCH") == "x86_64"),
    };
    if linux_gnu && relr {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The profile's output folder (`dist` for `--profile dist`), which Cargo does not pass
/// to build scripts by name: OUT_DIR is `<target>/[<triple>/]<profile>/build/<pkg>/out`.
fn profile_dir() -> Option<String> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR")?);
    let profile = out.ancestors().nth(3)?.file_name()?;
    Some(profile.to_string_lossy().into_owned())
}
