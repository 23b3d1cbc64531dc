//! The methods the ablation runner knows by name: each is the base config plus a few `--set`
//! overrides, so every method trains through the same `flexlora train` code path.
//!
//! Equal budgets (the paper compares methods at the same parameter budget): with the base
//! config's `method.r_init = r`,
//! - `lora` has rank `r` in every adapted matrix;
//! - `flexlora` and its two-sided ablations start at `r` everywhere and keep the total `r · K`
//!   (ranks only move between matrices);
//! - `adalora` starts at `init_r = round(1.5 r)` and prunes to `target_r = r` on average, as
//!   AdaLoRA's papers and PEFT's examples do (12 → 8 for r = 8), so it ends at FlexLoRA's budget;
//! - `prune_only` / `expand_only` change the total by `Σ b(t)` (printed by `flexlora schedule`):
//!   that is what those ablations are; the table reports every run's final total rank and
//!   trainable parameters next to its metric;
//! - `full` trains every weight (the ceiling, not a budget-matched method);
//! - `linear_probe` trains the head only on the frozen encoder (the floor).

use crate::config::Config;

/// A named method: what it is and the overrides that make it from the base config.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The name given to `--methods`.
    pub name: String,
    /// One line for the table's notes.
    pub description: String,
    /// `KEY=VALUE` overrides applied after the base config's own `--set` values.
    pub overrides: Vec<String>,
}

/// Every name [`variant`] accepts, in the order of the paper's ablation table.
pub const NAMES: &[&str] = &[
    "flexlora",
    "adalora",
    "lora",
    "full",
    "linear_probe",
    "nuclear",
    "frobenius",
    "sensitivity",
    "exact_spectrum",
    "prune_only",
    "expand_only",
    "small_init",
    "orthogonal_init",
    "cubic_ref",
    "linear",
    "exp",
    "constant",
    "adaptive",
    "svd_fixed",
];

/// The method called `name`, built on `base` (whose `method.r_init` sets the budget).
pub fn variant(name: &str, base: &Config) -> Option<Variant> {
    let flex = |d: &str, extra: &[String]| {
        let mut o = vec!["method.name=flexlora".to_string()];
        o.extend_from_slice(extra);
        (d.to_string(), o)
    };
    let set = |k: &str, v: &str| vec![format!("{k}={v}")];
    let r = base.method.r_init;
    let (description, overrides) = match name {
        "flexlora" => flex(
            "FlexLoRA: spectral entropy, prune and expand, zero-impact init",
            &[],
        ),
        "lora" => (
            format!("LoRA at rank {r} everywhere"),
            set("method.name", "lora"),
        ),
        "adalora" => {
            let init_r = (r * 3).div_ceil(2);
            (
                format!("AdaLoRA (PEFT's algorithm): rank {init_r} pruned to an average of {r}"),
                vec![
                    "method.name=adalora".to_string(),
                    format!("method.r_init={init_r}"),
                    format!("method.target_r={r}"),
                ],
            )
        }
        "full" => (
            "full fine-tuning of every weight (the ceiling)".to_string(),
            set("method.name", "full"),
        ),
        "linear_probe" => (
            "linear probe: the new head only, on the frozen pretrained encoder (the floor)"
                .to_string(),
            set("method.name", "linear_probe"),
        ),
        "nuclear" | "frobenius" | "sensitivity" => flex(
            &format!("FlexLoRA with the {name} importance in place of entropy"),
            &set("allocation.importance", name),
        ),
        "exact_spectrum" => flex(
            "FlexLoRA scoring the true singular values of P diag(λ) Q",
            &set("allocation.exact_spectrum", "true"),
        ),
        "prune_only" | "expand_only" => flex(
            &format!("FlexLoRA with only one side of the allocation ({name})"),
            &set("allocation.direction", &format!("\"{name}\"")),
        ),
        "small_init" | "orthogonal_init" => {
            let init = name.trim_end_matches("_init");
            flex(
                &format!("FlexLoRA with {init} initialisation of new directions"),
                &set("allocation.new_direction_init", &format!("\"{init}\"")),
            )
        }
        "svd_fixed" => flex(
            "the control: FlexLoRA's SVD form and regulariser with no allocation (b = 0)",
            &set("schedule.b0", "0"),
        ),
        "cubic_ref" | "linear" | "exp" | "constant" | "adaptive" => flex(
            &format!("FlexLoRA with the {name} schedule of b(t)"),
            &set("schedule.kind", &format!("\"{name}\"")),
        ),
        _ => return None,
    };
    Some(Variant {
        name: name.to_string(),
        description,
        overrides,
    })
}
