//! Work that cannot fit in memory is refused up front, with the estimate and the limit: a data
//! file far larger than memory (a sparse 1 TiB file: no disk is used), a batch shape whose
//! training step cannot fit, and a user-set `FLEXLORA_MEMORY_LIMIT`.

mod common;

use std::path::Path;
use std::process::Output;

fn train(data: &Path, out: &Path, sets: &[&str], limit: Option<&str>) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_flexlora"));
    c.args(["train", "--config", "configs/default.toml", "--model"])
        .arg(common::minilm())
        .arg("--data")
        .arg(data)
        .arg("--output")
        .arg(out)
        .args(["--quiet", "--set", "method.name=\"lora\""])
        .current_dir(common::repo_root());
    for s in sets {
        c.args(["--set", s]);
    }
    match limit {
        Some(l) => c.env("FLEXLORA_MEMORY_LIMIT", l),
        None => c.env_remove("FLEXLORA_MEMORY_LIMIT"),
    };
    c.output().unwrap()
}

fn refused(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs an estimated") && err.contains("is available"),
        "{err}"
    );
    err
}

#[test]
fn a_data_file_larger_than_memory_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("huge.csv");
    std::fs::File::create(&data)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let started = std::time::Instant::now();
    let err = refused(&train(&data, &dir.path().join("run"), &[], None));
    assert!(
        err.contains(&format!("reading data file {}", data.display())),
        "{err}"
    );
    assert!(
        err.contains("(1099511627776 bytes) needs an estimated 3072.0 GiB"),
        "{err}"
    );
    // Refused from the file's size, not after reading a terabyte of zeros.
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn a_batch_that_cannot_fit_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::polarity_slice(dir.path(), 20);
    let o = train(
        &data,
        &dir.path().join("run"),
        &["training.batch_size=100000", "data.max_length=512"],
        None,
    );
    let err = refused(&o);
    assert!(
        err.contains("training.batch_size = 100000 x data.max_length = 512 tokens"),
        "{err}"
    );
    assert!(err.contains("lower training.batch_size"), "{err}");
    assert!(!dir.path().join("run/checkpoints").exists());
}

#[test]
fn a_memory_limit_set_by_the_user_is_respected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::polarity_slice(dir.path(), 20);
    let err = refused(&train(&data, &dir.path().join("run"), &[], Some("1MiB")));
    assert!(
        err.contains("only 1 MiB is available (FLEXLORA_MEMORY_LIMIT=1MiB)"),
        "{err}"
    );
    // The same run under a generous limit trains.
    let o = train(
        &data,
        &dir.path().join("ok"),
        &["training.max_steps=1", "data.max_length=16"],
        Some("64GiB"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
