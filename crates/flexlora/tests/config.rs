//! The shipped config parses, validates, and survives a round trip through its resolved form
//! (what a run directory's `config.toml` will hold).

use flexlora::config::{Config, MethodName};
use std::path::Path;

fn default_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/default.toml")
}

#[test]
fn default_config_round_trips() {
    let loaded = Config::load(&default_path(), &[]).expect("default config is valid");
    let c = loaded.config;
    assert_eq!(c.method.name, MethodName::Flexlora);
    assert_eq!((c.method.r_init, c.method.r_max), (8, 16));
    let resolved = toml::to_string(&c).expect("serialises");
    let table: toml::Table = resolved.parse().expect("resolved config is TOML");
    assert_eq!(
        Config::from_table(table, "resolved").expect("parses back"),
        c
    );
}

#[test]
fn minimal_config_takes_documented_defaults() {
    let text = r#"
        [model]
        path = "m"
        [data]
        path = "d.csv"
        format = "csv"
        text_column = "sentence"
        label_column = 0
        [method]
        name = "lora"
    "#;
    let c = Config::from_table(text.parse().unwrap(), "inline").unwrap();
    c.validate("inline").unwrap();
    assert_eq!(c.model.target_modules, ["query", "value"]);
    assert_eq!(c.training.batch_size, 32);
    assert_eq!(c.schedule.delta_t, 10);
    assert_eq!(c.total_steps(2800), 3 * 88);
}

#[test]
fn steps_count_optimiser_steps_under_accumulation() {
    let mut c = Config::load(&default_path(), &[]).unwrap().config;
    c.training.grad_accum = 4;
    // 2800 / 32 = 87.5 -> 88 micro-batches -> 22 optimiser steps per epoch.
    assert_eq!(c.steps_per_epoch(2800), 22);
    c.training.grad_accum = 3;
    assert_eq!(c.steps_per_epoch(2800), 30); // 88 / 3 = 29.3 -> 30
}
