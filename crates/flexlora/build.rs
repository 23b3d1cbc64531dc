//! Links binaries and tests of this crate so they find LibTorch at run time without
//! LD_LIBRARY_PATH (docs/architecture.md: an rpath per linking package), and keeps
//! `libtorch_cuda.so` linked so CUDA is visible on a GPU machine even though no symbol of it is
//! referenced directly (tch-rs issues 980 and 1015).

fn main() {
    // Set by torch-sys's build script (its `links = "tch"` key) to the LibTorch lib folder it used.
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
