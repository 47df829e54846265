//! Links the bare-metal kernel with `linker.ld` (load address 1 MiB, PVH note segment).
//! Host builds of the stub binary get no extra link arguments.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        // The 32-bit entry code needs absolute addresses: never a PIE, even if RUSTFLAGS
        // replaced the `-C relocation-model=static` from .cargo/config.toml.
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
