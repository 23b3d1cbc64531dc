//! Evaluation and prediction on a split.

use super::batch_tensors;
use super::model::TaskModel;
use crate::config::{MetricName, TaskKind};
use crate::data::Example;
use crate::models::Preprocessor;
use crate::tasks;
use tch::{Device, Kind};

/// The result of evaluating a split.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The reported metric.
    pub metric: f64,
    /// Every metric that applies to the task, by name.
    pub all: Vec<(&'static str, f64)>,
    /// Mean task loss.
    pub loss: f64,
    /// Per example, in input order: the predicted class (as f32) or value.
    pub predictions: Vec<f32>,
    /// Per example: class probabilities (classification) or empty.
    pub probabilities: Vec<Vec<f32>>,
}

impl Evaluation {
    /// As JSON for `metrics.jsonl`.
    pub fn to_json(&self, reported: MetricName) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("metric".into(), reported.name().into());
        m.insert("value".into(), self.metric.into());
        m.insert("loss".into(), self.loss.into());
        for (name, v) in &self.all {
            m.insert((*name).into(), (*v).into());
        }
        serde_json::Value::Object(m)
    }
}

/// Runs the model (eval mode, no gradients) over `examples` in batches of similar length and
/// computes the metrics on their labels.
pub fn evaluate(
    model: &TaskModel,
    preprocessor: &Preprocessor,
    examples: &[Example],
    metric: MetricName,
    batch_size: usize,
    device: Device,
) -> anyhow::Result<Evaluation> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| {
        examples[i].text.len() + examples[i].text_pair.as_ref().map_or(0, |p| p.len())
    });
    let mut predictions = vec![0f32; examples.len()];
    let mut probabilities = vec![Vec::new(); examples.len()];
    let mut loss_sum = 0.0;
    for chunk in order.chunks(batch_size.max(1)) {
        fail::fail_point!("eval.batch", |a| Err(crate::faults::io_error(
            "eval.batch",
            a
        )
        .into()));
        let batch: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
        let (input, labels) = batch_tensors(preprocessor, &batch, device)?;
        let (loss, logits) = tch::no_grad(|| model.loss(&input, &labels, false));
        loss_sum += loss.double_value(&[]) * chunk.len() as f64;
        let logits = logits.to_kind(Kind::Float).to_device(Device::Cpu);
        match model.task {
            TaskKind::Classification => {
                let probs = logits.softmax(-1, Kind::Float);
                let argmax = Vec::<i64>::try_from(&logits.argmax(-1, false))?;
                let rows = Vec::<Vec<f32>>::try_from(&probs)?;
                for ((&i, c), p) in chunk.iter().zip(argmax).zip(rows) {
                    predictions[i] = c as f32;
                    probabilities[i] = p;
                }
            }
            TaskKind::Regression => {
                let values = Vec::<f32>::try_from(&logits.view([-1]))?;
                for (&i, v) in chunk.iter().zip(values) {
                    predictions[i] = v;
                }
            }
        }
    }
    let labels: Vec<f32> = examples.iter().map(|e| e.label).collect();
    let names: &[MetricName] = match model.task {
        TaskKind::Classification => &[MetricName::Accuracy, MetricName::F1, MetricName::Matthews],
        TaskKind::Regression => &[MetricName::Pearson, MetricName::Spearman],
    };
    let binary = probabilities.first().is_some_and(|p| p.len() == 2);
    let all: Vec<(&'static str, f64)> = names
        .iter()
        .filter(|&&m| m != MetricName::F1 || binary)
        .map(|&m| (m.name(), tasks::metric(m, &predictions, &labels)))
        .collect();
    Ok(Evaluation {
        metric: tasks::metric(metric, &predictions, &labels),
        all,
        loss: loss_sum / examples.len().max(1) as f64,
        predictions,
        probabilities,
    })
}

/// Class probabilities or values of unlabeled texts (labels are ignored).
pub fn predict(
    model: &TaskModel,
    preprocessor: &Preprocessor,
    examples: &[Example],
    batch_size: usize,
    device: Device,
) -> anyhow::Result<Evaluation> {
    let metric = match model.task {
        TaskKind::Classification => MetricName::Accuracy,
        TaskKind::Regression => MetricName::Pearson,
    };
    evaluate(model, preprocessor, examples, metric, batch_size, device)
}
