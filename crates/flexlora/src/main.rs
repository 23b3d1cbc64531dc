//! The `flexlora` binary: parses the command line and reports errors without panicking.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { flexlora::gemm::configure_process() };
    let cli = flexlora::cli::Cli::parse();
    flexlora::resources::keep_freed_memory();
    // Reads FAILPOINTS in builds with fault points (tests only); nothing otherwise.
    let _faults = fail::FailScenario::setup();
    match flexlora::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
