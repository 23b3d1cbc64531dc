//! Range checks of a deserialised [`Config`], each naming the key and the allowed range.

use crate::config::{Config, ConfigError, MethodName};

struct Checker<'a> {
    origin: &'a str,
}

impl Checker<'_> {
    fn require(
        &self,
        ok: bool,
        key: &str,
        value: impl ToString,
        allowed: &str,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: self.origin.to_string(),
                key: key.to_string(),
                value: value.to_string(),
                message: allowed.to_string(),
            })
        }
    }
}

fn unit_open(x: f64) -> bool {
    x > 0.0 && x < 1.0
}

/// Checks every value of `config` that does not depend on the data (see [`schedule`] for the
/// ones that need the number of optimiser steps).
pub fn check(config: &Config, origin: &str) -> Result<(), ConfigError> {
    let c = Checker { origin };
    let m = &config.method;
    c.require(
        !config.model.target_modules.is_empty() || !m.name.has_adapters(),
        "model.target_modules",
        "[]",
        "must name at least one module pattern",
    )?;
    let adapters = m.name.has_adapters();
    if adapters {
        c.require(
            m.r_init >= 1,
            "method.r_init",
            m.r_init,
            "must be at least 1",
        )?;
        c.require(
            m.alpha.is_finite() && m.alpha > 0.0,
            "method.alpha",
            m.alpha,
            "must be a finite number > 0",
        )?;
        c.require(
            (0.0..1.0).contains(&m.dropout),
            "method.dropout",
            m.dropout,
            "must be in [0, 1)",
        )?;
        c.require(
            m.orth_reg_weight.is_finite() && m.orth_reg_weight >= 0.0,
            "method.orth_reg_weight",
            m.orth_reg_weight,
            "must be a finite number >= 0",
        )?;
    }
    if m.name == MethodName::Flexlora {
        c.require(
            m.r_max >= m.r_init,
            "method.r_max",
            m.r_max,
            &format!("must be at least method.r_init ({})", m.r_init),
        )?;
        let a = &config.allocation;
        c.require(
            a.new_direction_std.is_finite() && a.new_direction_std > 0.0,
            "allocation.new_direction_std",
            a.new_direction_std,
            "must be a finite number > 0",
        )?;
        let s = &config.schedule;
        c.require(
            s.delta_t >= 1,
            "schedule.delta_t",
            s.delta_t,
            "must be at least 1",
        )?;
        c.require(
            s.exp_rate.is_finite() && s.exp_rate > 0.0,
            "schedule.exp_rate",
            s.exp_rate,
            "must be a finite number > 0",
        )?;
    }
    if m.name == MethodName::Adalora {
        c.require(
            (1..=m.r_init).contains(&m.target_r),
            "method.target_r",
            m.target_r,
            &format!("must be in 1..=method.r_init ({})", m.r_init),
        )?;
        c.require(
            config.schedule.delta_t >= 1,
            "schedule.delta_t",
            config.schedule.delta_t,
            "must be at least 1",
        )?;
    }
    for (key, span) in [
        ("schedule.t_init", config.schedule.t_init),
        ("schedule.t_final", config.schedule.t_final),
    ] {
        if let crate::config::StepsOrFraction::Fraction(f) = span {
            c.require(
                (0.0..1.0).contains(&f),
                key,
                f,
                "must be a whole number of optimiser steps, or a fraction of the run in [0, 1)",
            )?;
        }
    }
    let a = &config.allocation;
    for (key, beta) in [
        ("allocation.sensitivity_beta1", a.sensitivity_beta1),
        ("allocation.sensitivity_beta2", a.sensitivity_beta2),
    ] {
        c.require(unit_open(beta), key, beta, "must be in (0, 1)")?;
    }
    let d = &config.data;
    if let Err(p) = crate::data::check_files(d) {
        return Err(ConfigError::Invalid {
            origin: origin.to_string(),
            key: p.key.to_string(),
            value: p.value,
            message: p.message,
        });
    }
    c.require(
        unit_open(d.train_fraction),
        "data.train_fraction",
        d.train_fraction,
        "must be in (0, 1)",
    )?;
    c.require(
        d.validation_fraction >= 0.0 && d.train_fraction + d.validation_fraction < 1.0,
        "data.validation_fraction",
        d.validation_fraction,
        "must be >= 0 and leave a test set: train_fraction + validation_fraction < 1",
    )?;
    c.require(
        d.max_length >= 2,
        "data.max_length",
        d.max_length,
        "must be at least 2 ([CLS] and [SEP])",
    )?;
    let o = &config.optimiser;
    c.require(
        o.lr.is_finite() && o.lr > 0.0,
        "optimiser.lr",
        o.lr,
        "must be a finite number > 0",
    )?;
    c.require(
        o.weight_decay.is_finite() && o.weight_decay >= 0.0,
        "optimiser.weight_decay",
        o.weight_decay,
        "must be >= 0",
    )?;
    c.require(
        (0.0..1.0).contains(&o.beta1),
        "optimiser.beta1",
        o.beta1,
        "must be in [0, 1)",
    )?;
    c.require(
        (0.0..1.0).contains(&o.beta2),
        "optimiser.beta2",
        o.beta2,
        "must be in [0, 1)",
    )?;
    c.require(
        o.eps.is_finite() && o.eps > 0.0,
        "optimiser.eps",
        o.eps,
        "must be a finite number > 0",
    )?;
    c.require(
        (0.0..=1.0).contains(&o.warmup_ratio),
        "optimiser.warmup_ratio",
        o.warmup_ratio,
        "must be in [0, 1]",
    )?;
    c.require(
        o.clip_norm.is_finite() && o.clip_norm >= 0.0,
        "optimiser.clip_norm",
        o.clip_norm,
        "must be >= 0 (0 turns clipping off)",
    )?;
    let t = &config.training;
    c.require(
        t.epochs >= 1,
        "training.epochs",
        t.epochs,
        "must be at least 1",
    )?;
    c.require(
        t.batch_size >= 1,
        "training.batch_size",
        t.batch_size,
        "must be at least 1",
    )?;
    c.require(
        t.grad_accum >= 1,
        "training.grad_accum",
        t.grad_accum,
        "must be at least 1",
    )?;
    c.require(
        t.max_steps != Some(0),
        "training.max_steps",
        0,
        "must be at least 1 when set",
    )?;
    c.require(
        t.threads != Some(0),
        "training.threads",
        0,
        "must be at least 1 when set",
    )?;
    c.require(
        t.checkpoint_every >= 1,
        "training.checkpoint_every",
        t.checkpoint_every,
        "must be at least 1",
    )?;
    c.require(
        t.log_every >= 1,
        "training.log_every",
        t.log_every,
        "must be at least 1",
    )?;
    c.require(
        t.eval_batch_size >= 1,
        "training.eval_batch_size",
        t.eval_batch_size,
        "must be at least 1",
    )?;
    Ok(())
}

/// Checks the FlexLoRA adjustment schedule against the run's `total_steps`, naming the
/// `schedule.*` key at fault.
pub fn schedule(config: &Config, total_steps: u64, origin: &str) -> Result<(), ConfigError> {
    config
        .adjustment_schedule(total_steps)
        .validate()
        .map_err(|e| {
            let key = match e.field {
                "total_steps" => "training.epochs".to_string(),
                field => format!("schedule.{field}"),
            };
            let s = &config.schedule;
            let value = match e.field {
                "t_init" => s.t_init.to_string(),
                "delta_t" => s.delta_t.to_string(),
                "b0" => s.b0.to_string(),
                "exp_rate" => s.exp_rate.to_string(),
                _ => total_steps.to_string(),
            };
            ConfigError::Invalid {
                origin: origin.to_string(),
                key,
                value,
                message: e.message,
            }
        })
}

/// Checks AdaLoRA's schedule against the run's `total_steps` as PEFT's `AdaLoraConfig` does
/// (`schedule.t_init < T − schedule.t_final`), naming the key at fault.
pub fn adalora_schedule(
    config: &Config,
    total_steps: u64,
    origin: &str,
) -> Result<(), ConfigError> {
    config
        .adalora_budget(1, total_steps)
        .validate()
        .map_err(|e| {
            let s = &config.schedule;
            let (key, value) = match e.field {
                "t_init" => ("schedule.t_init".to_string(), s.t_init.to_string()),
                "delta_t" => ("schedule.delta_t".to_string(), s.delta_t.to_string()),
                "target" => (
                    "method.target_r".to_string(),
                    config.method.target_r.to_string(),
                ),
                _ => ("training.epochs".to_string(), total_steps.to_string()),
            };
            ConfigError::Invalid {
                origin: origin.to_string(),
                key,
                value,
                message: e.message,
            }
        })
}
