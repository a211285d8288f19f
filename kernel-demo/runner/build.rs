//! Builds every kernel binary of `kernel-demo/kernel` for `x86_64-unknown-none` and
//! makes a BIOS disk image of each with the `bootloader` crate.
//!
//! The kernels are their own workspace, built by a nested cargo with its own target
//! directory (`target/kernel`, under `CARGO_TARGET_DIR` when set) and without the host's
//! `RUSTFLAGS`, so that host tests never compile kernel code for the host. Exports
//! `KERNEL_IMAGE_DIR` to the runner: it holds `<name>.img` for each kernel binary.
//!
//! The test kernels are built with the `release` profile (debug assertions and
//! overflow checks on); the benchmark kernels ([`BENCH_KERNELS`]) with the kernel
//! crate's `kbench` profile, release code without them, for the library and the peers
//! alike; the checked-mode kernels ([`CHECKED_KERNELS`]) with the kernel crate's
//! `checked` feature, in `target/kernel-checked`.
//!
//! `SPANHEAP_KERNEL_FEATURES` (for example `verify-frees`) adds kernel crate features
//! to every kernel but the checked-mode ones; the runner's reports name them
//! (`KERNEL_FEATURES`). Use a target directory of its own for such a build, or the
//! next plain build rebuilds every kernel.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernels built with the `kbench` profile instead of `release`.
const BENCH_KERNELS: &[&str] = &["bench"];
/// Kernels built with the kernel crate's `checked` feature (the library's checked
/// mode), in a target directory of their own so that the other kernels' build stays
/// as it is.
const CHECKED_KERNELS: &[&str] = &["test_checked"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let kernel_dir = manifest_dir.join("../kernel");
    let workspace = manifest_dir.join("../..");
    for path in [
        "../kernel/src",
        "../kernel/Cargo.toml",
        "../kernel/Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    for path in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }

    println!("cargo:rerun-if-env-changed=SPANHEAP_KERNEL_FEATURES");
    let features = env::var("SPANHEAP_KERNEL_FEATURES").unwrap_or_default();
    let features = features.trim();
    println!("cargo:rustc-env=KERNEL_FEATURES={features}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    // A relative CARGO_TARGET_DIR is taken from the workspace root, as cargo does
    // when run there; `join` keeps an absolute one as it is.
    let target_root =
        workspace.join(env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()));
    let target_dir = target_root.join("kernel");
    let checked_dir = target_root.join("kernel-checked");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build_kernels = |target_dir: &Path, profile_args: &[&str]| {
        let mut build = Command::new(&cargo);
        build
            .current_dir(&kernel_dir)
            .arg("build")
            .args(profile_args)
            .args(["--target", "x86_64-unknown-none"])
            .arg("--target-dir")
            .arg(target_dir);
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
        ] {
            build.env_remove(var);
        }
        let status = build
            .status()
            .expect("could not start cargo to build the kernels");
        assert!(status.success(), "building the kernels failed ({status})");
    };
    let mut release_args = vec!["--bins", "--release"];
    let mut bench_args = vec!["--profile", "kbench"];
    if !features.is_empty() {
        release_args.extend(["--features", features]);
        bench_args.extend(["--features", features]);
    }
    build_kernels(&target_dir, &release_args);
    for name in BENCH_KERNELS {
        bench_args.extend(["--bin", name]);
    }
    build_kernels(&target_dir, &bench_args);
    let mut checked_args = vec!["--release", "--features", "checked"];
    for name in CHECKED_KERNELS {
        checked_args.extend(["--bin", name]);
    }
    build_kernels(&checked_dir, &checked_args);

    let bin_dir = |name: &str| {
        if CHECKED_KERNELS.contains(&name) {
            return checked_dir.join("x86_64-unknown-none/release");
        }
        let profile = if BENCH_KERNELS.contains(&name) {
            "kbench"
        } else {
            "release"
        };
        target_dir.join("x86_64-unknown-none").join(profile)
    };
    let image_dir = out_dir.join("images");
    std::fs::create_dir_all(&image_dir).expect("cannot create the image directory");
    for name in kernel_names(&kernel_dir.join("src/bin")) {
        let kernel = bin_dir(&name).join(&name);
        let image = image_dir.join(format!("{name}.img"));
        bootloader::BiosBoot::new(&kernel)
            .create_disk_image(&image)
            .unwrap_or_else(|e| panic!("disk image for {}: {e:#}", kernel.display()));
    }
    println!("cargo:rustc-env=KERNEL_IMAGE_DIR={}", image_dir.display());
}

/// The kernel binaries: one per file in `src/bin/`.
fn kernel_names(bin_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(bin_dir)
        .expect("kernel-demo/kernel/src/bin is missing")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}
