//! The FlexLoRA method with no tensor code: everything here is plain Rust over `&[f32]` and
//! `f64`, so it compiles in seconds and reads like `docs/method.md`.
//!
//! | module | docs/method.md | what it decides |
//! | --- | --- | --- |
//! | [`importance`] | §2 | how important one adapted matrix is, from its active singular values |
//! | [`schedule`] | §3 | at which optimiser steps ranks move, and how many (`b(t)`) |
//! | [`allocator`] | §3, §4 | which matrices lose a direction, which gain one, and which slot |
//! | [`activity`] | — | how much the allocation acted: moves, churn, ranking stability (Kendall τ) |
//! | [`adalora`] | §5 | AdaLoRA's cubic budget and its masking of triplets to that budget |
//!
//! The tensor side (`crates/flexlora`) reads singular values out of the adapters, asks this
//! crate what to do, and applies the answer.

pub mod activity;
pub mod adalora;
pub mod allocator;
pub mod importance;
pub mod schedule;

pub use activity::{ActivityReport, AllocationActivity, kendall_tau_b};
pub use adalora::{AdaLoraAction, AdaLoraBudget, AdaLoraStep, mask_to_budget};
pub use allocator::{
    AllocationDirection, Decision, MatrixRank, RankAllocator, slot_to_expand, slot_to_prune,
};
pub use importance::{
    FrobeniusNorm, Importance, ImportanceMetric, NuclearNorm, SpectralEntropy, matrix_sensitivity,
    spectral_entropy,
};
pub use schedule::{AdjustmentSchedule, BudgetSchedule, ScheduleError};
