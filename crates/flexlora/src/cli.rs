//! The `flexlora` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Entropy-guided flexible low-rank adaptation of pretrained transformers.
#[derive(Debug, Parser)]
#[command(name = "flexlora", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run of the rank-allocation schedule: every adjustment step with b(t), and when ranks
    /// freeze, for the run a config describes.
    Schedule {
        /// The run config (TOML).
        #[arg(long, default_value = "configs/default.toml")]
        config: PathBuf,
        /// Override a config value, e.g. --set schedule.t_init=30 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Schedule {
            config,
            overrides,
            json,
        } => {
            let plan = crate::plan::SchedulePlan::from_config_file(&config, &overrides)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.to_table());
            }
            Ok(())
        }
    }
}
