//! lm-evaluation-harness's zero-shot prompts for the eight tasks (its task configs `boolq`,
//! `piqa`, `social_iqa`, `hellaswag`, `winogrande`, `arc_easy`, `arc_challenge`,
//! `openbookqa`): fields as stored (the harness trims nothing but what its own code trims),
//! each request a context and a continuation `" " + choice`.

use super::templates::hellaswag_preprocess;
use super::{CommonsenseTask, Row, kind};
use crate::data::DataError;
use serde_json::Value;

/// One row in the harness format.
pub(super) struct HarnessRow {
    /// The shared context (empty when every choice has its own, as WinoGrande's).
    pub context: String,
    /// Per-choice contexts (WinoGrande: the sentence up to the blank, filled with each option).
    pub choice_contexts: Vec<String>,
    /// Continuations, `" " + text` each.
    pub continuations: Vec<String>,
    /// acc_norm's normaliser per choice: the choice's length in characters without the
    /// delimiter (the harness's `len(choice)` over `doc_to_choice`).
    pub norm_lengths: Vec<usize>,
    /// The gold choice.
    pub answer: usize,
}

/// `doc_to_choice` texts as continuations: at least two, none empty.
fn continuations(r: &Row, field: &str, texts: &[&str]) -> Result<Vec<String>, DataError> {
    if texts.len() < 2 {
        return Err(r.err(
            field,
            format!("has {} choice(s), at least 2 are needed", texts.len()),
        ));
    }
    if let Some(j) = texts.iter().position(|t| t.is_empty()) {
        return Err(r.err(&format!("{field}[{j}]"), "is an empty choice".into()));
    }
    Ok(texts.iter().map(|t| format!(" {t}")).collect())
}

/// Character counts of `texts`.
fn char_lengths(texts: &[&str]) -> Vec<usize> {
    texts.iter().map(|t| t.chars().count()).collect()
}

/// A row of `task` as the harness builds its requests.
pub(super) fn render(task: CommonsenseTask, r: &Row) -> Result<HarnessRow, DataError> {
    use CommonsenseTask as T;
    let shared = |context: String, texts: &[&str], field: &str, answer: usize| {
        Ok(HarnessRow {
            context,
            choice_contexts: Vec::new(),
            continuations: continuations(r, field, texts)?,
            norm_lengths: char_lengths(texts),
            answer,
        })
    };
    match task {
        T::Boolq => {
            // doc_to_text "{{passage}}\nQuestion: {{question}}?\nAnswer:", choices no / yes.
            let answer = match r.get("answer")? {
                Value::Bool(b) => usize::from(*b),
                other => {
                    return Err(r.err("answer", format!("is {}, expected a boolean", kind(other))));
                }
            };
            let context = format!(
                "{}\nQuestion: {}?\nAnswer:",
                r.raw("passage")?,
                r.raw("question")?
            );
            shared(context, &["no", "yes"], "answer", answer)
        }
        T::Piqa => {
            let label = r.get("label")?;
            let answer =
                label.as_u64().filter(|&k| k < 2).ok_or_else(|| {
                    r.err("label", format!("is {label}, expected the integer 0 or 1"))
                })? as usize;
            let context = format!("Question: {}\nAnswer:", r.raw("goal")?);
            shared(context, &[r.raw("sol1")?, r.raw("sol2")?], "sol1", answer)
        }
        T::SocialIqa => {
            let context = format!("Q: {} {}\nA:", r.raw("context")?, r.raw("question")?);
            let texts = [r.raw("answerA")?, r.raw("answerB")?, r.raw("answerC")?];
            shared(context, &texts, "answerA", r.numbered("label", 1, 3)?)
        }
        T::Hellaswag => {
            let ctx = format!(
                "{} {}",
                r.raw("ctx_a")?,
                super::templates::capitalize(r.raw("ctx_b")?)
            );
            let query = hellaswag_preprocess(&format!("{}: {ctx}", r.raw("activity_label")?));
            let endings: Vec<String> = r
                .strs("endings", r.get("endings")?)?
                .into_iter()
                .map(hellaswag_preprocess)
                .collect();
            let texts: Vec<&str> = endings.iter().map(String::as_str).collect();
            let answer = r.numbered("label", 0, texts.len())?;
            shared(query, &texts, "endings", answer)
        }
        T::Winogrande => {
            // Partial evaluation: each option fills the blank of its own context; the rest
            // of the sentence is the one continuation scored.
            let sentence = r.raw("sentence")?;
            let blank = sentence
                .find('_')
                .ok_or_else(|| r.err("sentence", "has no blank `_`".into()))?;
            let target = sentence[blank + 1..].trim();
            if target.is_empty() {
                return Err(r.err("sentence", "has nothing after its blank `_`".into()));
            }
            let options = [r.raw("option1")?, r.raw("option2")?];
            let contexts: Vec<String> = options
                .iter()
                .map(|o| format!("{}{o}", &sentence[..blank]))
                .collect();
            Ok(HarnessRow {
                context: String::new(),
                norm_lengths: contexts.iter().map(|c| c.chars().count()).collect(),
                choice_contexts: contexts,
                continuations: vec![format!(" {target}"); 2],
                answer: r.numbered("answer", 1, 2)?,
            })
        }
        T::ArcEasy | T::ArcChallenge | T::Openbookqa => {
            let context = if task == T::Openbookqa {
                r.raw("question_stem")?.to_string()
            } else {
                format!("Question: {}\nAnswer:", r.raw("question")?)
            };
            let (texts, labels) = r.labelled_choices()?;
            // OpenBookQA's target strips the key's leading whitespace; ARC's takes it as is.
            let key = r.raw("answerKey")?;
            let key = if task == T::Openbookqa {
                key.trim_start()
            } else {
                key
            };
            let answer = r.answer_position(&labels, key)?;
            shared(context, &texts, "choices.text", answer)
        }
    }
}
