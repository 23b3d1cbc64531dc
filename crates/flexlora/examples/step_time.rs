//! Times flexlora's training step alone at the step benchmark's fixed shapes (the first 32
//! training sentences of the main job padded to 64 tokens), for comparing builds quickly:
//! `cargo run --release --example step_time -- [method] [steps] [--set key=value ...]`.
//! Prints the median and the quartiles of the step time in ms, and the median time of the
//! optimiser update (clipping, AdamW, allocation) within it. `flexlora bench` is the
//! benchmark of record (both sides, alternating); this is the profiling harness.

use flexlora::config::{Config, TaskKind};
use flexlora::data;
use flexlora::models::{ModelInput, TextTokenizer};
use flexlora::train::model::TaskModel;
use flexlora::train::step::{self, Allocators, StepPlan};
use std::time::Instant;
use tch::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { flexlora::gemm::configure_process() };
    flexlora::resources::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let method = args.first().cloned().unwrap_or_else(|| "lora".into());
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(40);
    let mut overrides = vec![format!("method.name=\"{method}\"")];
    let mut it = args.iter().skip(2);
    while let Some(a) = it.next() {
        if a == "--set" {
            overrides.extend(it.next().cloned());
        }
    }
    let config = Config::load("configs/default.toml".as_ref(), &overrides)?.config;
    tch::set_num_threads(2);
    let splits = data::load_splits(&config.data)?;
    let tokenizer = TextTokenizer::from_folder(&config.model.path, 64)?.pad_to(64);
    let texts: Vec<&str> = splits
        .train
        .iter()
        .take(32)
        .map(|e| e.text.as_str())
        .collect();
    let labels: Vec<f32> = splits.train.iter().take(32).map(|e| e.label).collect();
    let input = tokenizer.encode(&texts, None, Device::Cpu)?;
    let groups = flexlora::models::packing::TokenPacking::new(&input.attention_mask).group_shapes();
    let batch = [(ModelInput::Text(input), Tensor::from_slice(&labels))];
    let total = config.total_steps(splits.train.len() as u64);
    tch::manual_seed(0);
    let mut model = TaskModel::build(
        &config,
        splits.num_labels(),
        TaskKind::Classification,
        Device::Cpu,
    )?;
    let mut optimiser = step::optimiser_for(&config, &model);
    let mut allocators = Allocators::for_model(&config, &model, total)?;
    let mut activity = flexlora_core::AllocationActivity::default();
    let plan = StepPlan::new(&config, total);
    let (mut times, mut update_times) = (Vec::new(), Vec::new());
    for i in 0..steps + 5 {
        let started = Instant::now();
        let loss = step::accumulate_gradients(&model, &batch, &config);
        let update_started = Instant::now();
        step::apply_update(
            &mut model,
            &mut optimiser,
            &mut allocators,
            &plan,
            (i as u64 % total, i as i64),
            &mut activity,
            None,
        )?;
        if i >= 5 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
            update_times.push(update_started.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::ensure!(loss.is_finite(), "loss {loss}");
    }
    times.sort_by(f64::total_cmp);
    update_times.sort_by(f64::total_cmp);
    let q = |f: f64| times[((times.len() - 1) as f64 * f) as usize];
    println!(
        "{method}: median {:.1} ms (quartiles {:.1}-{:.1}; optimiser update and allocation {:.1}); attention groups (sequences, len): {groups:?}",
        q(0.5),
        q(0.25),
        q(0.75),
        update_times[update_times.len() / 2]
    );
    Ok(())
}
