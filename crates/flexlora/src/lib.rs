//! flexlora: FlexLoRA and its baselines on LibTorch.
//!
//! The method itself (importance metrics, schedules, the allocator) is the tensor-free crate
//! [`flexlora_core`], re-exported as [`core`]. This crate adds the run configuration, data and
//! the command line around it.

pub use flexlora_core as core;

pub mod ablate;
pub mod adalora;
pub mod adapter;
pub mod allocation;
pub mod bench;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod data;
pub mod device;
pub mod dropout;
pub mod embed;
pub mod faults;
pub mod gemm;
pub mod gguf;
pub mod io;
pub mod lm;
pub mod models;
pub mod omp;
pub mod optim;
pub mod overrides;
pub mod peft;
pub mod plan;
pub mod plots;
pub mod resources;
pub mod sensitivity;
pub mod stats;
pub mod tasks;
pub mod train;
pub mod validate;

/// The README's code examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
