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
//! x86_64 only by default: Debian 12's GNU ld (binutils 2.40) ignores the option for
//! aarch64 with a warning; LLVM's lld supports it there (measured in
//! docs/build-profiles.md), so a build linked with lld can set `EDGE_AGENT_RELR=1`.
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
    let cfg = |name: &str| std::env::var(name).unwrap_or_default();
    let linux_gnu = cfg("CARGO_CFG_TARGET_OS") == "linux" && cfg("CARGO_CFG_TARGET_ENV") == "gnu";
    let relr = match std::env::var("EDGE_AGENT_RELR").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => {
            cfg("CARGO_CFG_TARGET_ARCH") == "x86_64"
                && matches!(profile_dir().as_deref(), Some("dist" | "dist-size"))
        }
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
