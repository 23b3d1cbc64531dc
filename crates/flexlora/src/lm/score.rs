//! Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores its
//! `multiple_choice` tasks: each choice's score is `Σ log p(choice token | everything before)`
//! over the choice's tokens; `acc` picks the highest sum, `acc_norm` the highest sum divided by
//! the choice's length (UTF-8 bytes in the LLM-Adapters format, characters of the choice text
//! in the harness format, as lm-evaluation-harness's `acc_norm`), so long choices are not
//! penalised for their length.
//!
//! The prompt runs once; its keys and values are then shared by all choices (one batch of
//! continuations on the cached prompt), so a question costs one prompt plus its choices. A
//! question whose choices have prompts of their own (WinoGrande in the harness format) is
//! scored one choice at a time.

use super::tokens::EncodedQuestion;
use super::{LmError, check_tokens};
use crate::data::commonsense::CommonsenseTask;
use crate::models::{KvCache, LlamaModel};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The score of one choice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChoiceScore {
    /// Summed log-probability of the choice's tokens.
    pub logprob: f64,
    /// Its tokens.
    pub tokens: usize,
    /// acc_norm's normaliser: its length (module docs).
    pub norm_length: usize,
}

/// The choice with the highest score (the first on ties, as `argmax`): by summed
/// log-probability, or with `normalise` by log-probability per unit of length.
pub fn pick(scores: &[ChoiceScore], normalise: bool) -> usize {
    let value = |s: &ChoiceScore| match normalise {
        true => s.logprob / s.norm_length.max(1) as f64,
        false => s.logprob,
    };
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if value(s) > value(&scores[best]) {
            best = i;
        }
    }
    best
}

/// Scores every choice of `q` under `model`.
pub fn score_question(
    model: &LlamaModel,
    q: &EncodedQuestion,
) -> Result<Vec<ChoiceScore>, LmError> {
    if !q.choice_prompts.is_empty() {
        let mut scores = Vec::with_capacity(q.choices.len());
        for j in 0..q.choices.len() {
            let single = EncodedQuestion {
                prompt: q.prompt_of(j).to_vec(),
                choice_prompts: Vec::new(),
                choices: vec![q.choices[j].clone()],
                norm_lengths: vec![q.norm_lengths[j]],
                answer: 0,
                ..*q
            };
            scores.extend(score_question(model, &single)?);
        }
        return Ok(scores);
    }
    let longest = q.choices.iter().map(Vec::len).max().unwrap_or(0);
    check_tokens(model, &q.prompt, longest)
        .map_err(|e| LmError::Input(format!("{} row {}: {e}", q.task.name(), q.row)))?;
    for c in &q.choices {
        check_tokens(model, c, 0)
            .map_err(|e| LmError::Input(format!("{} row {}: {e}", q.task.name(), q.row)))?;
    }
    let device = model.device();
    let n = q.choices.len() as i64;
    let sums = tch::no_grad(|| {
        let mut cache = KvCache::new();
        let prompt = Tensor::from_slice(&q.prompt).to_device(device).unsqueeze(0);
        let hidden = model.forward(&prompt, None, Some(&mut cache), false);
        let last = hidden.get(0).get(q.prompt.len() as i64 - 1);
        // The first token of every choice is predicted by the prompt's last position.
        let first = model.logits(&last).log_softmax(-1, Kind::Float);
        let mut sums: Vec<f64> = q
            .choices
            .iter()
            .map(|c| first.double_value(&[c[0]]))
            .collect();
        if longest > 1 {
            // The rest by the choices' own positions: feed all but each choice's last token,
            // right-padded (padding comes after every real token, so causal attention
            // suffices).
            let width = longest - 1;
            let mut ids = vec![0i64; n as usize * width];
            let (mut rows, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
            for (i, c) in q.choices.iter().enumerate() {
                for t in 0..c.len() - 1 {
                    ids[i * width + t] = c[t];
                    rows.push((i * width + t) as i64);
                    targets.push(c[t + 1]);
                    owner.push(i);
                }
            }
            if !rows.is_empty() {
                cache.repeat_batch(n);
                let input = Tensor::from_slice(&ids)
                    .to_device(device)
                    .view([n, width as i64]);
                let h = model.forward(&input, None, Some(&mut cache), false);
                let h = h
                    .reshape([n * width as i64, -1])
                    .index_select(0, &Tensor::from_slice(&rows).to_device(device));
                let logp = model
                    .logits(&h)
                    .log_softmax(-1, Kind::Float)
                    .gather(
                        1,
                        &Tensor::from_slice(&targets).to_device(device).unsqueeze(1),
                        false,
                    )
                    .squeeze_dim(1)
                    .to_kind(Kind::Double)
                    .to_device(tch::Device::Cpu);
                let values: Vec<f64> = Vec::try_from(&logp).unwrap_or_default();
                for (v, &i) in values.iter().zip(&owner) {
                    sums[i] += v;
                }
            }
        }
        sums
    });
    Ok(sums
        .into_iter()
        .zip(q.choices.iter().zip(&q.norm_lengths))
        .map(|(logprob, (c, &norm_length))| ChoiceScore {
            logprob,
            tokens: c.len(),
            norm_length,
        })
        .collect())
}

/// Accuracy on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAccuracy {
    /// The task's name.
    pub task: String,
    /// Questions scored.
    pub questions: usize,
    /// Share answered right by summed log-probability.
    pub acc: f64,
    /// Share answered right by length-normalised log-probability.
    pub acc_norm: f64,
}

/// A question's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The task.
    pub task: CommonsenseTask,
    /// Row in the task's split.
    pub row: usize,
    /// The correct choice.
    pub answer: usize,
    /// Every choice's score.
    pub scores: Vec<ChoiceScore>,
}

/// Per-task accuracies (tasks in the order of [`CommonsenseTask::ALL`] that have outcomes),
/// then the unweighted mean over tasks as a last row named `average`.
pub fn accuracies(outcomes: &[Outcome]) -> Vec<TaskAccuracy> {
    let mut rows = Vec::new();
    for task in CommonsenseTask::ALL {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.task == task).collect();
        if mine.is_empty() {
            continue;
        }
        let share = |normalise: bool| {
            mine.iter()
                .filter(|o| pick(&o.scores, normalise) == o.answer)
                .count() as f64
                / mine.len() as f64
        };
        rows.push(TaskAccuracy {
            task: task.name().to_string(),
            questions: mine.len(),
            acc: share(false),
            acc_norm: share(true),
        });
    }
    if !rows.is_empty() {
        let k = rows.len() as f64;
        rows.push(TaskAccuracy {
            task: "average".into(),
            questions: rows.iter().map(|r| r.questions).sum(),
            acc: rows.iter().map(|r| r.acc).sum::<f64>() / k,
            acc_norm: rows.iter().map(|r| r.acc_norm).sum::<f64>() / k,
        });
    }
    rows
}

/// Scores `questions` (progress on a bar unless `quiet`) and returns each one's outcome.
pub fn score_all(
    model: &LlamaModel,
    questions: &[EncodedQuestion],
    quiet: bool,
) -> Result<Vec<Outcome>, LmError> {
    let bar = super::progress_bar(questions.len() as u64, "questions", quiet);
    let mut out = Vec::with_capacity(questions.len());
    for q in questions {
        out.push(Outcome {
            task: q.task,
            row: q.row,
            answer: q.answer,
            scores: score_question(model, q)?,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The accuracy table as Markdown.
pub fn markdown_table(rows: &[TaskAccuracy]) -> String {
    let mut s =
        String::from("| task | questions | acc | acc_norm |\n| --- | ---: | ---: | ---: |\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} |\n",
            r.task,
            r.questions,
            100.0 * r.acc,
            100.0 * r.acc_norm
        ));
    }
    s
}
