//! Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores its
//! `multiple_choice` tasks: each choice's score is `Σ log p(choice token | everything before)`
//! over the choice's tokens; `acc` picks the highest sum, `acc_norm` the highest sum divided by
//! the choice's length (UTF-8 bytes in the LLM-Adapters format, characters of the choice text
//! in the harness format, as lm-evaluation-harness's `acc_norm`), so long choices are not
//! penalised for their length.
//!
//! The prompt runs once, packed into one row with every choice after it (each choice attending
//! to the prompt and to itself only, at the positions that follow the prompt), so a question
//! costs one forward of its prompt plus its choices, and the vocabulary projection runs only
//! where a choice's token is predicted. A question whose choices have prompts of their own
//! (WinoGrande in the harness format) is scored one choice at a time.

use super::tokens::EncodedQuestion;
use super::{LmError, check_tokens};
use crate::data::commonsense::CommonsenseTask;
use crate::models::LlamaModel;
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
    let sums = tch::no_grad(|| packed_sums(model, &q.prompt, &q.choices));
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

/// The summed log-probability of each choice after `prompt`, from one forward of the prompt and
/// every choice but its last token packed into one row: a choice's tokens sit at the positions
/// after the prompt and attend to the prompt and to their own choice's earlier tokens only, so
/// each choice is scored as if it ran alone after the prompt (module docs).
fn packed_sums(model: &LlamaModel, prompt: &[i64], choices: &[Vec<i64>]) -> Vec<f64> {
    let device = model.device();
    let p = prompt.len();
    let mut ids = prompt.to_vec();
    let mut positions: Vec<i64> = (0..p as i64).collect();
    let mut starts = Vec::with_capacity(choices.len());
    for c in choices {
        starts.push(ids.len());
        ids.extend_from_slice(&c[..c.len() - 1]);
        positions.extend(p as i64..(p + c.len() - 1) as i64);
    }
    let t = ids.len();
    let mut allowed = vec![0u8; t * t];
    for i in 0..t {
        let row = &mut allowed[i * t..(i + 1) * t];
        row[..p.min(i + 1)].fill(1);
        if i >= p {
            let own = starts.iter().rev().find(|&&s| s <= i).copied().unwrap_or(p);
            row[own..=i].fill(1);
        }
    }
    // Row 0 of the scored rows is the prompt's last position (it predicts every choice's
    // first token); a choice's token at packed index k predicts its next token.
    let mut rows = vec![(p - 1) as i64];
    let mut entries = Vec::new(); // (index into rows, target token, choice)
    for (i, c) in choices.iter().enumerate() {
        entries.push((0usize, c[0], i));
        for k in 0..c.len() - 1 {
            entries.push((rows.len(), c[k + 1], i));
            rows.push((starts[i] + k) as i64);
        }
    }
    let hidden = model.forward_packed(
        &Tensor::from_slice(&ids).to_device(device).unsqueeze(0),
        &Tensor::from_slice(&positions),
        &Tensor::from_slice(&allowed)
            .view([t as i64, t as i64])
            .to_kind(Kind::Bool),
    );
    let selected = hidden
        .get(0)
        .index_select(0, &Tensor::from_slice(&rows).to_device(device));
    let logp = model.logits(&selected).log_softmax(-1, Kind::Float);
    let vocab = logp.size()[1];
    let flat: Vec<i64> = entries
        .iter()
        .map(|&(r, target, _)| r as i64 * vocab + target)
        .collect();
    let picked = logp
        .view([-1])
        .index_select(0, &Tensor::from_slice(&flat).to_device(device))
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu);
    let values: Vec<f64> = Vec::try_from(&picked).unwrap_or_default();
    let mut sums = vec![0.0; choices.len()];
    for (v, &(_, _, i)) in values.iter().zip(&entries) {
        sums[i] += v;
    }
    sums
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
