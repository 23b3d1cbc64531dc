//! What the named fault points do when a reliability test arms them (tests/faults.rs).
//!
//! A fault point is `fail::fail_point!("name", |arg| Err(faults::io_error("name", arg).into()))` in code
//! that writes outputs, evaluates or steps. The `fail` crate compiles the points only with its
//! `failpoints` feature, which `cargo test` enables through the dev-dependency: a release
//! build contains none. A test arms a point through the `FAILPOINTS` environment variable, e.g.
//! `FAILPOINTS='checkpoint.files_written=2*off->return(kill)'` kills the process with SIGKILL
//! the third time a checkpoint's files are written.
//!
//! Actions (the `return(...)` argument): `kill` (SIGKILL this process: no destructor, no
//! flush, exactly what an out-of-memory kill or a power cut leaves on disk apart from the
//! page cache), `enospc` (the write fails with "No space left on device", a full disk).

/// The error (or the death) that the armed fault point `point` stands for.
pub fn io_error(point: &str, action: Option<String>) -> std::io::Error {
    match action.as_deref() {
        Some("kill") => kill_self(),
        Some("enospc") => std::io::Error::from_raw_os_error(libc::ENOSPC),
        other => std::io::Error::other(format!("fault point {point}: unknown action {other:?}")),
    }
}

/// SIGKILL to this process; never returns.
pub fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught or ignored; the process ends before this loop spins long.
    loop {
        std::thread::park();
    }
}
