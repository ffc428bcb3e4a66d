//! Link details torch-sys leaves to the final binary (see the README's "Building" section).
//!
//! torch-sys tells crates that depend on it directly where libtorch lives
//! (`DEP_TCH_LIBTORCH_LIB`) but gives the binary no rpath, so without this the binary only runs
//! with LD_LIBRARY_PATH set. And rustc links with `--as-needed`: nothing of ours calls into
//! `libtorch_cuda.so` by name, so the linker drops it and torch then sees no GPU at all; with the
//! `cuda` feature we keep it.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let cuda = std::path::Path::new(&lib).join("libtorch_cuda.so");
        if cuda.exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
            // cudarc opens `libnccl.so` by that name; dist::nccl links it into `nccl/` beside
            // the binary at start-up, and this run path lets the loader find it there.
            println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/nccl");
        } else {
            println!(
                "cargo:warning=the cuda feature is on but {} is missing: this libtorch has no CUDA",
                cuda.display()
            );
        }
    }
}
