//! The GLUE presets: each task's files, columns, labels and metric, as the GLUE benchmark
//! distributes them (`glue_data/<TASK>/train.tsv`, `dev.tsv`, ...).

use crate::config::{Column, DataFormat, GluePreset, MetricName, TaskKind};

/// The layout of one GLUE task folder.
#[derive(Debug, Clone, PartialEq)]
pub struct GlueSpec {
    /// The training file (the validation set is carved out of it).
    pub train_file: &'static str,
    /// The file whose labelled examples form the test set (GLUE's dev split; its test
    /// split's labels are hidden).
    pub test_file: &'static str,
    /// Whether the files start with a header row (all but CoLA).
    pub has_header: bool,
    /// The text column.
    pub text_column: Column,
    /// The second text of a pair task.
    pub text_pair_column: Option<Column>,
    /// The label column.
    pub label_column: Column,
    /// Class labels as written in the files, in class-index order (`None` for regression).
    pub labels: Option<&'static [&'static str]>,
    /// Classification or regression.
    pub task: TaskKind,
    /// The metric GLUE reports for the task.
    pub metric: MetricName,
}

const BINARY: &[&str] = &["0", "1"];
const ENTAILMENT: &[&str] = &["entailment", "not_entailment"];
/// The order of transformers' `MnliProcessor.get_labels()`.
const MNLI: &[&str] = &["contradiction", "entailment", "neutral"];

fn name(s: &str) -> Column {
    Column::Name(s.to_string())
}

impl GlueSpec {
    /// The layout of `preset`'s folder. The files are tab-separated without CSV quoting.
    pub fn of(preset: GluePreset) -> Self {
        let pair = |a: &str, b: &str, label: &str, labels, metric| GlueSpec {
            train_file: "train.tsv",
            test_file: "dev.tsv",
            has_header: true,
            text_column: name(a),
            text_pair_column: Some(name(b)),
            label_column: name(label),
            labels: Some(labels),
            task: TaskKind::Classification,
            metric,
        };
        match preset {
            GluePreset::Sst2 => GlueSpec {
                text_pair_column: None,
                ..pair("sentence", "", "label", BINARY, MetricName::Accuracy)
            },
            // CoLA: no header; source, label, original annotation, sentence.
            GluePreset::Cola => GlueSpec {
                has_header: false,
                text_column: Column::Index(3),
                text_pair_column: None,
                label_column: Column::Index(1),
                ..pair("", "", "", BINARY, MetricName::Matthews)
            },
            GluePreset::Mrpc => pair("#1 String", "#2 String", "Quality", BINARY, MetricName::F1),
            GluePreset::Qqp => pair(
                "question1",
                "question2",
                "is_duplicate",
                BINARY,
                MetricName::F1,
            ),
            GluePreset::Stsb => GlueSpec {
                labels: None,
                task: TaskKind::Regression,
                ..pair(
                    "sentence1",
                    "sentence2",
                    "score",
                    BINARY,
                    MetricName::Pearson,
                )
            },
            GluePreset::Mnli => GlueSpec {
                test_file: "dev_matched.tsv",
                ..pair(
                    "sentence1",
                    "sentence2",
                    "gold_label",
                    MNLI,
                    MetricName::Accuracy,
                )
            },
            GluePreset::Qnli => pair(
                "question",
                "sentence",
                "label",
                ENTAILMENT,
                MetricName::Accuracy,
            ),
            GluePreset::Rte => pair(
                "sentence1",
                "sentence2",
                "label",
                ENTAILMENT,
                MetricName::Accuracy,
            ),
        }
    }

    /// The file format of every GLUE task.
    pub fn format(&self) -> DataFormat {
        DataFormat::Tsv
    }
}
