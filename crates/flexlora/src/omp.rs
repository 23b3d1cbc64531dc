//! Rust work on LibTorch's own OpenMP threads.
//!
//! LibTorch runs its CPU operators on an OpenMP team (GNU libgomp in the PyTorch wheels). Between
//! operators the team's other threads spin for a while before they sleep, so Rust code that starts
//! threads of its own right after an operator competes with spinning threads for the cores: on
//! two cores the dropout masks' scoped threads made the training step 15-35 ms (of about 190)
//! slower than the same step without hidden dropout, the samples landing in libgomp's wait loop
//! (docs/performance.md). [`for_each_thread`] hands the work to that same team instead, as
//! LibTorch's `at::parallel_for` does: no thread is created, and the spinning threads pick the
//! work up at once.
//!
//! The entry points are looked up at run time (`dlsym` on the libgomp LibTorch already loaded),
//! so nothing extra is linked; where they are absent (a LibTorch built without OpenMP, or with
//! another runtime) the work runs on scoped threads as before.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

/// `GOMP_parallel(fn, data, num_threads, flags)`: runs `fn(data)` on a team of threads, the
/// caller being thread 0, and returns when all have finished.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
/// `omp_get_thread_num()` / `omp_get_num_threads()`.
type OmpQuery = unsafe extern "C" fn() -> c_int;

#[derive(Clone, Copy)]
struct Gomp {
    parallel: GompParallel,
    thread_num: OmpQuery,
    num_threads: OmpQuery,
}

fn gomp() -> Option<Gomp> {
    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();
    *GOMP.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT only reads the loaded objects' symbol tables; the
        // names are NUL-terminated literals, and each symbol found has the C signature of the
        // type it is transmuted to (libgomp's documented ABI).
        unsafe {
            let find = |name: &[u8]| libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr().cast());
            let (p, t, n) = (
                find(b"GOMP_parallel\0"),
                find(b"omp_get_thread_num\0"),
                find(b"omp_get_num_threads\0"),
            );
            if p.is_null() || t.is_null() || n.is_null() {
                return None;
            }
            Some(Gomp {
                parallel: std::mem::transmute::<*mut c_void, GompParallel>(p),
                thread_num: std::mem::transmute::<*mut c_void, OmpQuery>(t),
                num_threads: std::mem::transmute::<*mut c_void, OmpQuery>(n),
            })
        }
    })
}

/// What one team member needs: the work and a place to report a panic (unwinding must not
/// cross the C frames of libgomp).
struct Job<'a> {
    work: &'a (dyn Fn(usize, usize) + Sync),
    gomp: Gomp,
    panicked: std::sync::atomic::AtomicBool,
}

extern "C" fn run_member(data: *mut c_void) {
    // SAFETY: `data` is the `&Job` that `for_each_thread` passed to GOMP_parallel, alive until
    // GOMP_parallel returns, after every member has left this function.
    let job = unsafe { &*(data as *const Job<'_>) };
    // SAFETY: called inside the parallel region, as libgomp's API requires.
    let (index, team) = unsafe { ((job.gomp.thread_num)(), (job.gomp.num_threads)()) };
    let (index, team) = (index.max(0) as usize, team.max(1) as usize);
    let run = std::panic::AssertUnwindSafe(|| (job.work)(index, team));
    if std::panic::catch_unwind(run).is_err() {
        job.panicked
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `work(index, team)` once on each of `threads` threads (the caller among them) and
/// returns when all are done. `team` is the number of threads that actually run (at most
/// `threads`; every `index` in `0..team` is called once), so `work` should split its range by
/// `team`, not by `threads`. One thread, or none asked, runs `work(0, 1)` on the caller.
///
/// # Panics
/// If `work` panicked on any thread (after all have finished).
pub fn for_each_thread(threads: usize, work: &(dyn Fn(usize, usize) + Sync)) {
    if threads <= 1 {
        return work(0, 1);
    }
    match gomp() {
        Some(gomp) => {
            let job = Job {
                work,
                gomp,
                panicked: std::sync::atomic::AtomicBool::new(false),
            };
            let data = &job as *const Job<'_> as *mut c_void;
            // SAFETY: `run_member` only reads `job` through `data`, which outlives the call;
            // libgomp joins every team member before GOMP_parallel returns.
            unsafe { (gomp.parallel)(run_member, data, threads as c_uint, 0) };
            if job.panicked.into_inner() {
                panic!("a parallel task panicked");
            }
        }
        None => std::thread::scope(|s| {
            for index in 1..threads {
                s.spawn(move || work(index, threads));
            }
            work(0, threads);
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every index of the team runs once, and the team is the size asked for (LibTorch's
    /// OpenMP is present in the test binaries).
    #[test]
    fn every_member_runs_once() {
        assert!(gomp().is_some(), "libgomp's entry points were not found");
        for threads in [1, 2, 3] {
            let seen = Mutex::new(Vec::new());
            for_each_thread(threads, &|i, team| seen.lock().unwrap().push((i, team)));
            let mut seen = seen.into_inner().unwrap();
            seen.sort();
            let expected: Vec<_> = (0..threads).map(|i| (i, threads)).collect();
            assert_eq!(seen, expected);
        }
    }

    #[test]
    #[should_panic(expected = "a parallel task panicked")]
    fn a_panic_is_reported_after_the_join() {
        for_each_thread(2, &|i, _| assert!(i != 1, "member 1 fails"));
    }
}
