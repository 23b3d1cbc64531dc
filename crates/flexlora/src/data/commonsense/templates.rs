//! The prompt templates of the eight tasks (the table in the parent module's documentation):
//! one row rendered into an instruction, its choices and the answer.

use super::{CommonsenseTask, Row, kind};
use crate::data::DataError;
use serde_json::Value;

/// `{prefix}1: {choice 1}\n\n{prefix}2: ...`, the choices without their leading space.
fn numbered_list(prefix: &str, texts: &[String]) -> String {
    texts
        .iter()
        .enumerate()
        .map(|(j, t)| format!("{prefix}{}: {t}", j + 1))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The instruction, choices and answer of one row of `task`.
pub(super) fn render(
    task: CommonsenseTask,
    r: &Row,
) -> Result<(String, Vec<String>, usize), DataError> {
    use CommonsenseTask as T;
    Ok(match task {
        T::Boolq => {
            let question = r.text("question")?;
            let answer = match r.get("answer")? {
                Value::Bool(true) => 0,
                Value::Bool(false) => 1,
                other => {
                    return Err(r.err("answer", format!("is {}, expected a boolean", kind(other))));
                }
            };
            (
                format!(
                    "Please answer the following question with true or false, question: {question}?"
                ),
                vec![" true".into(), " false".into()],
                answer,
            )
        }
        T::Piqa => {
            let goal = r.text("goal")?;
            let texts = [r.text("sol1")?, r.text("sol2")?];
            let choices = r.choices("sol1", &texts, |j| format!("sol{}", j + 1))?;
            let label = r.get("label")?;
            let answer =
                label.as_u64().filter(|&k| k < 2).ok_or_else(|| {
                    r.err("label", format!("is {label}, expected the integer 0 or 1"))
                })? as usize;
            (
                format!(
                    "Please choose the correct solution to the question: {goal}\n\n{}",
                    numbered_list("Solution", &texts)
                ),
                choices,
                answer,
            )
        }
        T::SocialIqa => {
            let context = r.text("context")?;
            let question = r.text("question")?;
            let texts = [r.text("answerA")?, r.text("answerB")?, r.text("answerC")?];
            let choices = r.choices("answerA", &texts, |j| {
                format!("answer{}", ["A", "B", "C"][j])
            })?;
            let answer = r.numbered("label", 1, 3)?;
            (
                format!(
                    "Please choose the correct answer to the question: {context} {question}\n\n{}",
                    numbered_list("Answer", &texts)
                ),
                choices,
                answer,
            )
        }
        T::Hellaswag => {
            // As lm-evaluation-harness: the fields as stored, preprocessed as a whole.
            let label = r.raw("activity_label")?;
            let ctx = format!("{} {}", r.raw("ctx_a")?, capitalize(r.raw("ctx_b")?));
            let query = hellaswag_preprocess(&format!("{label}: {ctx}"));
            let texts: Vec<String> = r
                .strs("endings", r.get("endings")?)?
                .into_iter()
                .map(|e| hellaswag_preprocess(e).trim().to_string())
                .collect();
            let choices = r.choices("endings", &texts, |j| format!("endings[{j}]"))?;
            let answer = r.numbered("label", 0, texts.len())?;
            (
                format!(
                    "Please choose the correct ending to complete the given sentence: {}\n\n{}",
                    query.trim(),
                    numbered_list("Ending", &texts)
                ),
                choices,
                answer,
            )
        }
        T::Winogrande => {
            let sentence = r.text("sentence")?;
            let texts = [r.text("option1")?, r.text("option2")?];
            let choices = r.choices("option1", &texts, |j| format!("option{}", j + 1))?;
            let answer = r.numbered("answer", 1, 2)?;
            (
                format!(
                    "Please choose the correct answer to fill in the blank to complete the given sentence: {sentence}\n\n{}",
                    numbered_list("Option", &texts)
                ),
                choices,
                answer,
            )
        }
        T::ArcEasy | T::ArcChallenge | T::Openbookqa => {
            let question = r.text(if task == T::Openbookqa {
                "question_stem"
            } else {
                "question"
            })?;
            let (texts, labels) = r.labelled_choices()?;
            let texts: Vec<String> = texts.iter().map(|t| t.trim().to_string()).collect();
            let labels: Vec<&str> = labels.iter().map(|l| l.trim()).collect();
            let choices = r.choices("choices.text", &texts, |j| format!("choices.text[{j}]"))?;
            let answer = r.answer_position(&labels, &r.text("answerKey")?)?;
            (
                format!(
                    "Please choose the correct answer to the question: {question}\n\n{}",
                    numbered_list("Answer", &texts)
                ),
                choices,
                answer,
            )
        }
    })
}

/// Python's `str.capitalize`: the first character upper case, the rest lower case.
pub(super) fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    }
}

/// lm-evaluation-harness's HellaSwag `preprocess`: trim, `" [title]"` → `". "`, drop every
/// `[...]` (`re.sub("\\[.*?\\]", "", text)`: the shortest span, not across a newline), then
/// `"  "` → `" "` in one pass.
pub(super) fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after[close..].starts_with(']') => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}
