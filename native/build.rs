//! Stamps the engine with a fingerprint of its own sources.
//!
//! The server and the `sycri-engine` helper binary are built from this crate
//! separately (the engine as a static binary, in its own target directory), so
//! an engine left over from an older build could sit beside a newer server and
//! misread its spec files. Both embed this fingerprint; the server runs
//! `sycri-engine __engine-build` at start and uses the engine only when the two
//! agree.

use std::path::{Path, PathBuf};

/// FNV-1a, 64 bit: stable across compilers and hosts, enough to tell builds apart.
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let mut files = vec![root.join("Cargo.toml")];
    if let Err(e) = collect(&root.join("src"), &mut files) {
        panic!("fingerprint the engine sources: {e}");
    }
    files.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    fnv1a(&mut hash, env!("CARGO_PKG_VERSION").as_bytes());
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f);
        fnv1a(&mut hash, rel.to_string_lossy().as_bytes());
        match std::fs::read(f) {
            Ok(data) => fnv1a(&mut hash, &data),
            Err(e) => panic!("fingerprint {}: {e}", f.display()),
        }
    }
    println!("cargo:rustc-env=SYCRI_ENGINE_BUILD={hash:016x}");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");
}
