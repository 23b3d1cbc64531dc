//! The run configuration: one TOML file, one struct per section, `--set key=value` overrides.
//!
//! Every section rejects unknown keys, and [`Config::validate`] rejects impossible values with
//! the key and the allowed range, so a typo never silently falls back to a default. Reading a
//! file, applying overrides and validating are in [`crate::config_file`], above this module and
//! [`crate::validate`].

use flexlora_core::{
    AdaLoraBudget, AdjustmentSchedule, AllocationDirection, BudgetSchedule, Importance,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A configuration that could not be read, parsed or accepted.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: invalid TOML: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A `--set` argument is malformed or addresses something that is not a table.
    #[error("--set {arg}: {message}")]
    Override {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key is unknown, missing or has the wrong type.
    #[error("{origin}: `{key}`: {message}")]
    Field {
        /// The config file (and overrides, if any).
        origin: String,
        /// Dotted key path, e.g. `schedule.delta_t`.
        key: String,
        /// What was expected.
        message: String,
    },
    /// A value is outside its allowed range.
    #[error("{origin}: `{key}` = {value}: {message}")]
    Invalid {
        /// The config file (and overrides, if any).
        origin: String,
        /// Dotted key path.
        key: String,
        /// The value given.
        value: String,
        /// The allowed range.
        message: String,
    },
}

/// A complete run configuration (`configs/default.toml` documents every key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The pretrained model and where adapters go.
    pub model: ModelConfig,
    /// The labelled data and its split.
    pub data: DataConfig,
    /// Which fine-tuning method, and its adapter shape.
    #[serde(default)]
    pub method: MethodConfig,
    /// How FlexLoRA scores matrices and moves ranks.
    #[serde(default)]
    pub allocation: AllocationConfig,
    /// When ranks move, and how many (`b(t)`).
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// AdamW and the learning-rate schedule.
    #[serde(default)]
    pub optimiser: OptimiserConfig,
    /// Epochs, batching, seed and threads.
    #[serde(default)]
    pub training: TrainingConfig,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer.json).
    pub path: PathBuf,
    /// Module-path patterns of the linear layers to adapt (PEFT's `target_modules`). A config
    /// file that leaves it out gets every linear layer of the architecture's blocks
    /// ([`Architecture::default_target_modules`](crate::models::Architecture::default_target_modules),
    /// filled in when the file is loaded, [`crate::config_file`]).
    #[serde(default)]
    pub target_modules: Vec<String>,
}

/// File format of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// Comma-separated values.
    Csv,
    /// Tab-separated values.
    Tsv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet: one `.parquet` file, or a folder of shards (every `*.parquet` file in
    /// it, in file-name order, all with the same schema); columns by name or schema position.
    Parquet,
    /// A Hugging Face `datasets` folder written by `save_to_disk` (Arrow IPC stream files),
    /// or one such `.arrow` file; columns by name.
    Arrow,
    /// Grey images in IDX files (MNIST's and Fashion-MNIST's format, optionally gzipped):
    /// `data.path` is the folder holding `train-images-idx3-ubyte[.gz]` and
    /// `train-labels-idx1-ubyte[.gz]` (the training pool) and, optionally, the `t10k-*` pair
    /// (the test set).
    Idx,
    /// Grey images as CSV rows (optionally gzipped), no header: the label in
    /// `data.label_column` (an index) and `height × width` pixel values (integers
    /// `0..=data.pixel_max`) in the other columns, row-major; `data.image_shape` gives the
    /// shape.
    PixelCsv,
    /// The commonsense-reasoning suite for decoders: `data.path` is the folder of Hugging Face
    /// `save_to_disk` splits (`assets/hf_datasets`: `boolq/none/validation`, ...); every task
    /// is split in two seeded halves, training on one and evaluating on the other
    /// ([`crate::data::commonsense`]).
    Commonsense,
}

impl DataFormat {
    /// Whether examples are images rather than texts.
    pub fn is_image(self) -> bool {
        matches!(self, DataFormat::Idx | DataFormat::PixelCsv)
    }

    /// Whether the format is text read through `data.encoding` (CSV, TSV, JSONL).
    pub fn is_text(self) -> bool {
        matches!(self, DataFormat::Csv | DataFormat::Tsv | DataFormat::Jsonl)
    }

    /// Whether files hold rows of labelled texts with named or numbered columns (text formats,
    /// Arrow, Parquet): the formats that take separate split files (`data.train`).
    pub fn is_table(self) -> bool {
        self.is_text() || matches!(self, DataFormat::Arrow | DataFormat::Parquet)
    }
}

/// A column of a CSV/TSV file or a field of a JSON line: `1` (0-based index) or `"sentence"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Column {
    /// 0-based position.
    Index(usize),
    /// Header name or JSON field.
    Name(String),
}

/// A GLUE task whose standard file layout and columns `[data]` can take from a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GluePreset {
    /// SST-2: sentence, binary label; accuracy.
    Sst2,
    /// CoLA: sentence, acceptability; Matthews correlation.
    Cola,
    /// MRPC: sentence pair, paraphrase; F1 (and accuracy).
    Mrpc,
    /// QQP: question pair, duplicate; F1 (and accuracy).
    Qqp,
    /// STS-B: sentence pair, similarity score 0-5 (regression); Pearson (and Spearman).
    Stsb,
    /// MNLI: premise, hypothesis, 3 classes; accuracy on dev_matched.
    Mnli,
    /// QNLI: question, sentence, entailment; accuracy.
    Qnli,
    /// RTE: sentence pair, entailment; accuracy.
    Rte,
}

/// Whether labels are classes or a real-valued target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Labels are classes (cross-entropy).
    #[default]
    Classification,
    /// Labels are numbers (mean squared error, one output).
    Regression,
}

/// A task metric, as GLUE defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    /// Fraction of correct predictions.
    Accuracy,
    /// F1 of the positive class (label index 1) of a binary task.
    F1,
    /// Matthews correlation coefficient.
    Matthews,
    /// Pearson correlation (regression).
    Pearson,
    /// Spearman rank correlation (regression).
    Spearman,
}

impl MetricName {
    /// The metric's name as written in configs and logs.
    pub fn name(self) -> &'static str {
        match self {
            MetricName::Accuracy => "accuracy",
            MetricName::F1 => "f1",
            MetricName::Matthews => "matthews",
            MetricName::Pearson => "pearson",
            MetricName::Spearman => "spearman",
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The data file (one file, split by the seeded fractions); with a `preset`, the GLUE task
    /// folder (train.tsv, dev.tsv, ...). Empty when the data comes as separate split files
    /// (`train`, with optional `validation` and `test`); exactly one of `path` and `train` is
    /// given.
    #[serde(default, skip_serializing_if = "path_is_unset")]
    pub path: PathBuf,
    /// The training file of a data set that comes as separate split files (instead of `path`);
    /// a part without its own file is drawn from it ([`crate::data`] has the rules).
    #[serde(default)]
    pub train: Option<PathBuf>,
    /// The validation file (with `train`); without it, validation examples come from `train`.
    #[serde(default)]
    pub validation: Option<PathBuf>,
    /// The test file (with `train`); without it, test examples come from `train`.
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Text encoding of CSV, TSV and JSONL files: a WHATWG label such as `utf-8`,
    /// `windows-1252` (`cp1252`), `latin1` / `latin-1` / `iso-8859-1` (decoded as
    /// windows-1252, as browsers do) or `shift_jis`. Files are decoded to UTF-8 before they are
    /// parsed.
    #[serde(default = "default_encoding")]
    pub encoding: String,
    /// A GLUE layout: sets format, header, columns, task and metric, and uses the task's dev
    /// file as the test set (GLUE's test labels are not public).
    #[serde(default)]
    pub preset: Option<GluePreset>,
    /// Its format (ignored with a preset).
    #[serde(default = "default_format")]
    pub format: DataFormat,
    /// Whether the first row is a header (CSV/TSV). Left out: a header exactly when a column
    /// is given by name (as the defaults `"text"` and `"label"` are), see
    /// [`DataConfig::header`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_header: Option<bool>,
    /// Column holding the text: a header name, or a 0-based index.
    #[serde(default = "default_text_column")]
    pub text_column: Column,
    /// Column holding the second text of a pair task.
    #[serde(default)]
    pub text_pair_column: Option<Column>,
    /// Column holding the label.
    #[serde(default = "default_label_column")]
    pub label_column: Column,
    /// Class labels as written in the file, in class-index order. Default: the distinct labels
    /// found, sorted numerically when all are numbers, else as strings.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Classification or regression.
    #[serde(default)]
    pub task: TaskKind,
    /// The reported metric. Default: the preset's, else accuracy (classification) or Pearson
    /// (regression).
    #[serde(default)]
    pub metric: Option<MetricName>,
    /// Fraction of examples for training; the split is a seeded shuffle.
    #[serde(default = "default_train_fraction")]
    pub train_fraction: f64,
    /// Fraction for validation (model selection); the rest is the test set.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Seed of the split's shuffle (independent of the training seed).
    #[serde(default)]
    pub split_seed: u64,
    /// Inputs are truncated to this many tokens.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Exactly this many training examples (overrides `train_fraction`; VTAB-1K: 800).
    #[serde(default)]
    pub train_examples: Option<u64>,
    /// Exactly this many validation examples (overrides `validation_fraction`; VTAB-1K: 200).
    #[serde(default)]
    pub validation_examples: Option<u64>,
    /// At most this many test examples: a seeded sample of the test set (all when unset).
    #[serde(default)]
    pub test_examples: Option<u64>,
    /// `pixel_csv`: the stored images' `[height, width]`.
    #[serde(default)]
    pub image_shape: Option<[u32; 2]>,
    /// `pixel_csv`: the value of a white pixel in the file (255 for 8-bit images, 16 for
    /// scikit-learn's digits).
    #[serde(default = "default_pixel_max")]
    pub pixel_max: u8,
    /// Images are resized to `image_size × image_size` pixels for the model. Default: the
    /// model folder's `preprocessor_config.json` (crop size, else size), else its
    /// `config.json` `image_size`.
    #[serde(default)]
    pub image_size: Option<u32>,
    /// `commonsense`: the tasks (`boolq`, `piqa`, `social_i_qa`, `hellaswag`, `winogrande`,
    /// `arc_easy`, `arc_challenge`, `openbookqa`); default all eight.
    #[serde(default)]
    pub tasks: Option<Vec<String>>,
    /// `commonsense`: at most this many training questions per task (a seeded subset of its
    /// training half; all when unset).
    #[serde(default)]
    pub train_per_task: Option<u64>,
    /// `commonsense`: at most this many evaluation questions per task (a seeded subset of its
    /// evaluation half; all when unset).
    #[serde(default)]
    pub eval_per_task: Option<u64>,
    /// `commonsense`: the prompts, `"llm-adapters"` (the instruction templates the paper used;
    /// default) or `"harness"` (lm-evaluation-harness's zero-shot prompts, comparable with
    /// published scores).
    #[serde(default)]
    pub prompt_format: PromptFormat,
}

/// How the commonsense suite's rows become prompts and choices (`data.prompt_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFormat {
    /// The LLM-Adapters instruction templates the FlexLoRA paper trained and scored with.
    #[default]
    LlmAdapters,
    /// lm-evaluation-harness's zero-shot prompts, whose scores compare with published ones.
    Harness,
}

impl PromptFormat {
    /// `llm-adapters` or `harness`.
    pub fn name(self) -> &'static str {
        match self {
            Self::LlmAdapters => "llm-adapters",
            Self::Harness => "harness",
        }
    }

    /// The format called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::LlmAdapters, Self::Harness]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

impl DataConfig {
    /// Whether a CSV/TSV file's first row is its header: `data.has_header` when given, else
    /// whether the text, text-pair or label column is named rather than numbered (the way
    /// Hugging Face and pandas CSVs come, with a header, and header-less files are addressed
    /// by index).
    pub fn header(&self) -> bool {
        self.has_header.unwrap_or_else(|| {
            [
                Some(&self.text_column),
                self.text_pair_column.as_ref(),
                Some(&self.label_column),
            ]
            .into_iter()
            .flatten()
            .any(|c| matches!(c, Column::Name(_)))
        })
    }

    /// The file or folder that stands for the data set in messages: `path`, or the training
    /// file when the data comes as split files.
    pub fn location(&self) -> &Path {
        match &self.train {
            Some(train) if path_is_unset(&self.path) => train,
            _ => &self.path,
        }
    }

    /// The decoder of `encoding`: a WHATWG label, or Python's spelling of one (`latin-1`,
    /// `utf_8`, `euc_kr`: `_` for `-`, `latin-N` for `latinN`); `None` when it names no
    /// encoding that decodes text (unknown labels, and WHATWG's `replacement` encoding, which
    /// decodes nothing).
    pub fn text_encoding(&self) -> Option<&'static encoding_rs::Encoding> {
        let label = self.encoding.trim().to_ascii_lowercase();
        let python = label.replace('_', "-");
        let python = match python.strip_prefix("latin-") {
            Some(n) => format!("latin{n}"),
            None => python,
        };
        [label, python]
            .iter()
            .find_map(|l| encoding_rs::Encoding::for_label(l.as_bytes()))
            .filter(|e| *e != encoding_rs::REPLACEMENT)
    }
}

/// The fine-tuning methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    /// SVD adapters with entropy-guided bidirectional rank allocation (the default).
    #[default]
    Flexlora,
    /// Fixed-rank LoRA.
    Lora,
    /// AdaLoRA (prune-only, sensitivity-scored, cubic budget).
    Adalora,
    /// Full fine-tuning (reference point, no adapters).
    Full,
    /// Linear probe: only the new head trains, on the frozen pretrained encoder (the floor).
    LinearProbe,
}

impl MethodName {
    /// Whether the method puts adapters on the encoder's linear layers.
    pub fn has_adapters(self) -> bool {
        !matches!(self, MethodName::Full | MethodName::LinearProbe)
    }
}

/// Which orthogonality penalty (docs/method.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrthNorm {
    /// `‖PᵀP − I‖_F` (what the published numbers used).
    #[default]
    Fro,
    /// `‖PᵀP − I‖_F²` (the paper's formula).
    Fro2,
}

/// How the adapter scale `s` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalePolicy {
    /// `s = α / r_init`, fixed for the run (the reference's behaviour).
    #[default]
    InitRank,
    /// `s = α / r_current`, updated when the rank changes.
    CurrentRank,
    /// AdaLoRA as PEFT computes it (`SVDLinear`): `· α / (r_init + 1e-5)`, applied as a
    /// multiplication by `α` then a division by the `r_init + 1e-5` of the tensor's precision,
    /// with `λ` folded into `Q` before the matmul (`x (Q ⊙ λ)ᵀ Pᵀ`), so the arithmetic is PEFT's
    /// operation for operation. Set by the trainer for `method.name = "adalora"` (which ignores
    /// `method.scale`); not a config value.
    #[serde(skip)]
    PeftAdalora,
}

/// `[method]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    /// The method.
    #[serde(default)]
    pub name: MethodName,
    /// Initial rank of every adapted matrix.
    #[serde(default = "default_r_init")]
    pub r_init: usize,
    /// Rank capacity of every matrix (FlexLoRA slots).
    #[serde(default = "default_r_max")]
    pub r_max: usize,
    /// AdaLoRA's final average rank.
    #[serde(default = "default_target_r")]
    pub target_r: usize,
    /// The `α` of the scale `α / r`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter input.
    #[serde(default)]
    pub dropout: f64,
    /// Weight `γ` of the orthogonality regulariser (SVD-form methods).
    #[serde(default = "default_orth_reg_weight")]
    pub orth_reg_weight: f64,
    /// Which norm the regulariser uses.
    #[serde(default)]
    pub orth_norm: OrthNorm,
    /// How the scale follows rank changes (FlexLoRA; AdaLoRA always uses PEFT's
    /// `α / (r_init + 1e-5)`, [`ScalePolicy::PeftAdalora`]).
    #[serde(default)]
    pub scale: ScalePolicy,
}

/// FlexLoRA's default scale `s = α / r_init`: 8, the scale of the authors' own GLUE recipes
/// (`lora_alpha` 16 at rank 2). The SVD form's update grows through its `r` singular values,
/// each moving by about the learning rate per AdamW step, far slower than LoRA's `B`, whose
/// `out` entries per column all move at once; with `s = 1` FlexLoRA reached 60% validation
/// accuracy on a 57-step job where `s = 8` reached 78% and LoRA 78%, and the three scales tied
/// on the 264-step main job (docs/results.md, "Does the allocation matter?").
pub const FLEXLORA_DEFAULT_SCALE: f64 = 8.0;

impl MethodConfig {
    /// `method.alpha` when a config leaves it out: `8 · r_init` for FlexLoRA (scale
    /// [`FLEXLORA_DEFAULT_SCALE`]), PEFT's `lora_alpha` default of 8 for the other methods.
    pub fn default_alpha(&self) -> f64 {
        match self.name {
            MethodName::Flexlora => FLEXLORA_DEFAULT_SCALE * self.r_init as f64,
            _ => default_alpha(),
        }
    }
}

/// Initialisation of a newly added direction (docs/method.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NewDirectionInit {
    /// `λ = 0`, P column and Q row Gaussian: the layer output is unchanged.
    #[default]
    Zero,
    /// `λ` small random as well.
    Small,
    /// Zero-impact, with P and Q vectors orthogonalised against the active ones.
    Orthogonal,
}

/// `[allocation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationConfig {
    /// Per-matrix importance metric.
    #[serde(default)]
    pub importance: Importance,
    /// Use the true singular values of `P diag(λ) Q` instead of `λ`.
    #[serde(default)]
    pub exact_spectrum: bool,
    /// Prune and expand, or only one of them (ablations).
    #[serde(default)]
    pub direction: AllocationDirection,
    /// How a new direction starts.
    #[serde(default)]
    pub new_direction_init: NewDirectionInit,
    /// Standard deviation of a new direction's P column and Q row (the reference uses 1).
    #[serde(default = "default_new_direction_std")]
    pub new_direction_std: f64,
    /// Measure each adjustment's effect on the loss: the step's first micro-batch is scored
    /// (without dropout) just before and just after the allocation, and the difference is
    /// written to `ranks.jsonl` as `loss_change` (two extra forward passes per adjustment).
    #[serde(default)]
    pub measure_impact: bool,
    /// AdaLoRA: EMA factor `β1` of the sensitivity `|p · ∂L/∂p|` (PEFT's `beta1`, 0.85).
    #[serde(default = "default_sensitivity_beta")]
    pub sensitivity_beta1: f64,
    /// AdaLoRA: EMA factor `β2` of the sensitivity's uncertainty (PEFT's `beta2`, 0.85).
    #[serde(default = "default_sensitivity_beta")]
    pub sensitivity_beta2: f64,
}

/// `[schedule]`: the adjustment steps and `b(t)` (docs/method.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// How `b(t)` decays.
    #[serde(default)]
    pub kind: BudgetSchedule,
    /// Moves per adjustment at the start.
    #[serde(default = "default_b0")]
    pub b0: u32,
    /// Warm-up optimiser steps before the first adjustment: a step count, or a fraction of
    /// the run's `T` (default 0.1).
    #[serde(default = "default_t_init")]
    pub t_init: StepsOrFraction,
    /// Final optimiser steps with frozen ranks: a step count, or a fraction of `T` (default
    /// 0.3).
    #[serde(default = "default_t_final")]
    pub t_final: StepsOrFraction,
    /// Optimiser steps between adjustments.
    #[serde(default = "default_delta_t")]
    pub delta_t: u64,
    /// `k` of the `exp` schedule.
    #[serde(default = "default_exp_rate")]
    pub exp_rate: f64,
}

/// A span of optimiser steps given as a count (a TOML integer, `t_init = 30`) or as a fraction
/// of the run's `T` (a TOML float in `[0, 1)`, `t_init = 0.1`), so that one config fits a
/// 60-step job and a 3,000-step job alike.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepsOrFraction {
    /// Optimiser steps.
    Steps(u64),
    /// A fraction of `T`, rounded to the nearest step.
    Fraction(f64),
}

impl StepsOrFraction {
    /// The span in optimiser steps for a run of `total_steps`.
    pub fn steps(self, total_steps: u64) -> u64 {
        match self {
            StepsOrFraction::Steps(n) => n,
            StepsOrFraction::Fraction(f) => (f * total_steps as f64).round().max(0.0) as u64,
        }
    }
}

impl std::fmt::Display for StepsOrFraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepsOrFraction::Steps(n) => write!(f, "{n}"),
            StepsOrFraction::Fraction(x) => write!(f, "{x:?}"),
        }
    }
}

/// Learning-rate schedule shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Linear warm-up, then linear decay to 0.
    #[default]
    Linear,
    /// Linear warm-up, then cosine decay to 0.
    Cosine,
    /// Linear warm-up, then constant.
    Constant,
}

/// `[optimiser]`: AdamW.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimiserConfig {
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Adam `β1`.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Adam `β2`.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adam `ε`.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Learning-rate schedule.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Fraction of the optimiser steps spent warming up.
    #[serde(default = "default_warmup_ratio")]
    pub warmup_ratio: f64,
    /// Clip gradients to this global norm; 0 turns clipping off.
    #[serde(default = "default_clip_norm")]
    pub clip_norm: f64,
}

/// `[training]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Passes over the training set.
    #[serde(default = "default_epochs")]
    pub epochs: u64,
    /// Examples per micro-batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: u64,
    /// Micro-batches per optimiser step.
    #[serde(default = "default_grad_accum")]
    pub grad_accum: u64,
    /// Stop after this many optimiser steps (then `T` = this).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Seed of initialisation, shuffling and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Intra-op CPU threads (default: the number of cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Where to train: `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Numeric precision of the frozen base layers: `auto` (bf16 on CUDA, f32 on the CPU),
    /// `f32` or `bf16`. Adapters, head and optimiser state are always f32.
    #[serde(default)]
    pub precision: Precision,
    /// Batch training examples of similar length together (less padding).
    #[serde(default)]
    pub bucket_by_length: bool,
    /// Write a checkpoint every this many optimiser steps (and at every epoch end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Log the training loss every this many optimiser steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Examples per batch when evaluating.
    #[serde(default = "default_eval_batch_size")]
    pub eval_batch_size: u64,
}

/// `training.precision`: what the frozen linear layers compute in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on CUDA, f32 on the CPU (where bf16 GEMMs are slower than f32 without AVX512-BF16
    /// or AMX).
    #[default]
    Auto,
    /// Everything in float32.
    F32,
    /// The frozen base linear layers' weights are stored and multiplied in bfloat16 (half the
    /// memory and, on GPUs, the tensor cores); their outputs return to float32 before the
    /// adapter is added, so adapters, head, norms, attention and optimiser stay float32.
    Bf16,
}

impl Precision {
    /// The kind of the frozen base weights on `device`.
    pub fn base_kind(self, device: tch::Device) -> tch::Kind {
        match (self, device) {
            (Precision::Bf16, _) | (Precision::Auto, tch::Device::Cuda(_)) => tch::Kind::BFloat16,
            _ => tch::Kind::Float,
        }
    }
}

/// `data.path` left out (the data comes as split files, `data.train`).
fn path_is_unset(path: &Path) -> bool {
    path.as_os_str().is_empty()
}
fn default_encoding() -> String {
    "utf-8".into()
}
fn default_format() -> DataFormat {
    DataFormat::Csv
}
fn default_text_column() -> Column {
    Column::Name("text".into())
}
fn default_label_column() -> Column {
    Column::Name("label".into())
}
fn default_train_fraction() -> f64 {
    0.7
}
fn default_validation_fraction() -> f64 {
    0.1
}
fn default_max_length() -> usize {
    64
}
fn default_pixel_max() -> u8 {
    255
}
fn default_r_init() -> usize {
    8
}
fn default_r_max() -> usize {
    16
}
fn default_target_r() -> usize {
    8
}
/// PEFT's `lora_alpha` default (see [`MethodConfig::default_alpha`] for FlexLoRA's).
fn default_alpha() -> f64 {
    8.0
}
fn default_orth_reg_weight() -> f64 {
    0.1
}
fn default_new_direction_std() -> f64 {
    0.02
}
fn default_sensitivity_beta() -> f64 {
    0.85
}
/// A quarter of the main job's 36 adapted matrices, chosen on validation (configs/default.toml).
fn default_b0() -> u32 {
    9
}
/// A tenth of the run before the first adjustment and its last 30% with frozen ranks: about
/// the main job's former 30 and 80 of 264 steps, as fractions so that they fit a 60-step job
/// (where 30 + 80 steps left no window) and a 3,000-step job alike.
fn default_t_init() -> StepsOrFraction {
    StepsOrFraction::Fraction(0.1)
}
fn default_t_final() -> StepsOrFraction {
    StepsOrFraction::Fraction(0.3)
}
fn default_delta_t() -> u64 {
    10
}
fn default_exp_rate() -> f64 {
    5.0
}
fn default_lr() -> f64 {
    5e-3
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_warmup_ratio() -> f64 {
    0.06
}
fn default_clip_norm() -> f64 {
    1.0
}
fn default_epochs() -> u64 {
    3
}
fn default_batch_size() -> u64 {
    32
}
fn default_grad_accum() -> u64 {
    1
}
fn default_device() -> String {
    "auto".into()
}
fn default_checkpoint_every() -> u64 {
    50
}
fn default_log_every() -> u64 {
    10
}
fn default_eval_batch_size() -> u64 {
    64
}

impl Default for MethodConfig {
    fn default() -> Self {
        let mut m = Self {
            name: MethodName::default(),
            r_init: default_r_init(),
            r_max: default_r_max(),
            target_r: default_target_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            orth_reg_weight: default_orth_reg_weight(),
            orth_norm: OrthNorm::default(),
            scale: ScalePolicy::default(),
        };
        m.alpha = m.default_alpha();
        m
    }
}

impl Default for AllocationConfig {
    fn default() -> Self {
        Self {
            importance: Importance::default(),
            exact_spectrum: false,
            direction: AllocationDirection::default(),
            new_direction_init: NewDirectionInit::default(),
            new_direction_std: default_new_direction_std(),
            measure_impact: false,
            sensitivity_beta1: default_sensitivity_beta(),
            sensitivity_beta2: default_sensitivity_beta(),
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: BudgetSchedule::default(),
            b0: default_b0(),
            t_init: default_t_init(),
            t_final: default_t_final(),
            delta_t: default_delta_t(),
            exp_rate: default_exp_rate(),
        }
    }
}

impl Default for OptimiserConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            weight_decay: 0.0,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            lr_schedule: LrSchedule::default(),
            warmup_ratio: default_warmup_ratio(),
            clip_norm: default_clip_norm(),
        }
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            grad_accum: default_grad_accum(),
            max_steps: None,
            seed: 0,
            threads: None,
            device: default_device(),
            precision: Precision::default(),
            bucket_by_length: false,
            checkpoint_every: default_checkpoint_every(),
            log_every: default_log_every(),
            eval_batch_size: default_eval_batch_size(),
        }
    }
}

impl Config {
    /// Deserialises a TOML table, naming the key of any unknown field or wrong type. A
    /// `method.alpha` the table does not give takes the method's default
    /// ([`MethodConfig::default_alpha`]).
    pub fn from_table(table: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        let alpha_given = table.get("method").and_then(|m| m.get("alpha")).is_some();
        let mut config = Self::deserialize_table(table, origin)?;
        if !alpha_given {
            config.method.alpha = config.method.default_alpha();
        }
        Ok(config)
    }

    fn deserialize_table(table: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Field {
                origin: origin.to_string(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                // toml appends its own "in `key`" line; the key is already named above.
                message: e
                    .into_inner()
                    .to_string()
                    .lines()
                    .filter(|l| !l.starts_with("in `") && !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        })
    }

    /// Optimiser steps per epoch: `⌈⌈n_train / batch_size⌉ / grad_accum⌉` (a last partial
    /// accumulation group still makes an optimiser step).
    pub fn steps_per_epoch(&self, n_train: u64) -> u64 {
        let t = &self.training;
        n_train
            .div_ceil(t.batch_size.max(1))
            .div_ceil(t.grad_accum.max(1))
    }

    /// The total number of optimiser steps `T`: `training.max_steps` when set, otherwise
    /// `epochs · steps_per_epoch(n_train)`.
    pub fn total_steps(&self, n_train: u64) -> u64 {
        self.training
            .max_steps
            .unwrap_or_else(|| self.training.epochs * self.steps_per_epoch(n_train))
    }

    /// AdaLoRA's budget for `matrices` adapted matrices and a run of `total_steps` optimiser
    /// steps: `method.r_init · K` down to `method.target_r · K`, PEFT's `tinit`, `tfinal`,
    /// `deltaT` from `schedule.t_init`, `t_final`, `delta_t`.
    pub fn adalora_budget(&self, matrices: usize, total_steps: u64) -> AdaLoraBudget {
        let s = &self.schedule;
        AdaLoraBudget {
            initial: self.method.r_init * matrices,
            target: self.method.target_r * matrices,
            t_init: s.t_init.steps(total_steps),
            t_final: s.t_final.steps(total_steps),
            delta_t: s.delta_t,
            total_steps,
        }
    }

    /// The adjustment schedule for a run of `total_steps` optimiser steps.
    pub fn adjustment_schedule(&self, total_steps: u64) -> AdjustmentSchedule {
        let s = &self.schedule;
        AdjustmentSchedule {
            t_init: s.t_init.steps(total_steps),
            t_final: s.t_final.steps(total_steps),
            delta_t: s.delta_t,
            total_steps,
            b0: s.b0,
            schedule: s.kind,
            exp_rate: s.exp_rate,
        }
    }
}
