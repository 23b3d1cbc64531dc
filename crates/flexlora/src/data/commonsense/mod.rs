//! The commonsense-reasoning suite of the FlexLoRA paper as multiple-choice questions: eight
//! tasks read from Hugging Face `save_to_disk` folders (their validation splits), each row
//! rendered with its task's prompt template, and a seeded split of every task into disjoint
//! training and evaluation halves. Nothing here touches tensors.
//!
//! # Folders
//! [`load_task`] reads `root/`[`CommonsenseTask::split_folder`] (`root` is usually
//! `assets/hf_datasets`; `scripts/fetch-assets commonsense` fetches it):
//!
//! | task            | folder                               | rows  |
//! |-----------------|--------------------------------------|-------|
//! | `boolq`         | `boolq/none/validation`              | 3270  |
//! | `piqa`          | `piqa/plain_text/validation`         | 1838  |
//! | `social_i_qa`   | `social_i_qa/none/validation`        | 1954  |
//! | `hellaswag`     | `hellaswag/none/validation`          | 10042 |
//! | `winogrande`    | `winogrande/winogrande_xl/validation`| 1267  |
//! | `arc_easy`      | `ai2_arc/ARC-Easy/validation`        | 570   |
//! | `arc_challenge` | `ai2_arc/ARC-Challenge/validation`   | 299   |
//! | `openbookqa`    | `openbookqa/main/validation`         | 500   |
//!
//! # Prompts
//! The templates follow LLM-Adapters (Hu et al. 2023), which the FlexLoRA paper used, but
//! each choice is scored by the log-likelihood of its *content*, as lm-evaluation-harness
//! does, so the response ends with "the correct answer is" and the choices are the answer
//! texts. Every prompt is
//!
//! ```text
//! Below is an instruction that describes a task. Write a response that appropriately completes the request.
//!
//! ### Instruction:
//! {instruction}
//!
//! ### Response:
//! the correct answer is
//! ```
//!
//! (no newline after "is"), and every choice is `" " + text`: one space, then the text
//! trimmed of surrounding whitespace. Field values in instructions are trimmed too; `\n`
//! below is a newline.
//!
//! | task | instruction | choices | answer |
//! |------|-------------|---------|--------|
//! | boolq | `Please answer the following question with true or false, question: {question}?` (no passage, as LLM-Adapters) | `true`, `false` | 0 when `answer` (bool) is true, else 1 |
//! | piqa | `Please choose the correct solution to the question: {goal}\n\nSolution1: {sol1}\n\nSolution2: {sol2}` | `sol1`, `sol2` | `label` (integer 0 or 1) |
//! | social_i_qa | `Please choose the correct answer to the question: {context} {question}\n\nAnswer1: {answerA}\n\nAnswer2: {answerB}\n\nAnswer3: {answerC}` | `answerA`, `answerB`, `answerC` | `label` (string `"1"`–`"3"`) − 1 |
//! | hellaswag | `Please choose the correct ending to complete the given sentence: {activity_label}: {ctx}\n\nEnding1: {e1}\n\nEnding2: {e2}\n\nEnding3: {e3}\n\nEnding4: {e4}` | `endings` (preprocessed) | `label` (string `"0"`–`"3"`) |
//! | winogrande | `Please choose the correct answer to fill in the blank to complete the given sentence: {sentence}\n\nOption1: {option1}\n\nOption2: {option2}` | `option1`, `option2` | `answer` (string `"1"`/`"2"`) − 1 |
//! | arc_easy, arc_challenge | `Please choose the correct answer to the question: {question}\n\nAnswer1: {c1}\n\nAnswer2: {c2}…` over all choices | `choices.text` | position of `answerKey` in `choices.label` |
//! | openbookqa | as ARC, with `question_stem` for `{question}` | `choices.text` | as ARC |
//!
//! ARC has 3 to 5 choices per question, labelled `A`–`E` or `1`–`5`.
//!
//! **HellaSwag preprocessing** (lm-evaluation-harness's `hellaswag` task): the context is
//! `ctx_a + " " + capitalize(ctx_b)`, where `capitalize` is Python's `str.capitalize` (first
//! character upper case, the rest lower case). The text `{activity_label}: {ctx}` and each
//! ending are then preprocessed: trim; replace `" [title]"` by `". "`; remove every
//! `[...]` tag (the shortest bracketed span on one line; WikiHow artefacts); replace each
//! double space by one space (one left-to-right pass, as Python's `str.replace`). Choices
//! are trimmed after this.
//!
//! # The harness format
//! With [`PromptFormat::Harness`] (`data.prompt_format = "harness"`, `flexlora lm-eval
//! --format harness`) every row becomes the zero-shot requests of lm-evaluation-harness's task
//! configs, so that scores compare with published ones. Fields are used as stored (not
//! trimmed); each continuation is `" " + choice`:
//!
//! | task | context | choices | answer | harness metrics |
//! |------|---------|---------|--------|-----------------|
//! | boolq | `{passage}\nQuestion: {question}?\nAnswer:` | `no`, `yes` | `answer` true → `yes` | acc |
//! | piqa | `Question: {goal}\nAnswer:` | `sol1`, `sol2` | `label` | acc, acc_norm |
//! | social_i_qa | `Q: {context} {question}\nA:` | `answerA`–`answerC` | `label` − 1 | acc |
//! | hellaswag | the preprocessed `{activity_label}: {ctx}` (above) | preprocessed `endings` | `label` | acc, acc_norm |
//! | winogrande | `sentence` up to its `_`, followed by each option (one context per choice) | one continuation: the rest of the sentence after `_`, trimmed | `answer` − 1 | acc |
//! | arc_easy, arc_challenge | `Question: {question}\nAnswer:` | `choices.text` | `answerKey` in `choices.label` | acc, acc_norm |
//! | openbookqa | `{question_stem}` | `choices.text` | `answerKey` (leading space stripped) in `choices.label` | acc, acc_norm |
//!
//! acc_norm divides each choice's log-likelihood by the choice's length in characters (the
//! harness's `len(choice)`; for WinoGrande the length of its context); the LLM-Adapters format
//! divides by UTF-8 bytes of `" " + text`. Every task reports both; the last column says which
//! the harness itself reports. tests/commonsense_data.rs checks every row against the harness
//! (`python/check/lm_eval_harness.py` prints its requests).
//!
//! # Split
//! [`split_suite`] shuffles each task's rows with [`shuffled_indices`]`(n,
//! `[`derive_seed`]`(seed, k))`, `k` the task's position in [`CommonsenseTask::ALL`] (so each
//! task has its own order and adding a task changes no other's); the first `⌊n/2⌋` of that
//! order are the training half and the rest the evaluation half. Each half is then cut to a
//! prefix of at most `train_per_task` / `eval_per_task` questions, so a smaller cap gives a
//! subset of a larger one. Questions keep the shuffled order within a task; the tasks come in
//! [`CommonsenseTask::ALL`] order.
//!
//! # Errors
//! A missing field, a field of the wrong type, an answer out of range or not among the
//! labels, fewer than 2 choices or an empty choice is a [`DataError::Field`] naming the
//! folder, the 0-based row and the field. A missing folder is a [`DataError::Config`] naming
//! it and `scripts/fetch-assets commonsense`. Bad data never panics.

mod harness;
mod templates;

pub use crate::config::PromptFormat;

use super::{DataError, derive_seed, shuffled_indices};
use serde_json::{Map, Value};
use std::path::Path;
use templates::render;

/// One task of the commonsense-reasoning suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommonsenseTask {
    /// BoolQ: yes/no questions (answered without their passage).
    Boolq,
    /// PIQA: physical commonsense, two solutions to a goal.
    Piqa,
    /// Social IQa: social situations, three answers. Serialised as its
    /// [`name`](CommonsenseTask::name) `social_i_qa` (`social_iqa` is read too).
    #[serde(rename = "social_i_qa", alias = "social_iqa")]
    SocialIqa,
    /// HellaSwag: the ending of a described activity, four endings.
    Hellaswag,
    /// WinoGrande (XL): fill in the blank, two options.
    Winogrande,
    /// ARC-Easy: grade-school science, 3–5 answers.
    ArcEasy,
    /// ARC-Challenge: the harder ARC questions, 3–5 answers.
    ArcChallenge,
    /// OpenBookQA: elementary science, four answers.
    Openbookqa,
}

impl CommonsenseTask {
    /// Every task, in the order of the paper's table.
    pub const ALL: [CommonsenseTask; 8] = [
        Self::Boolq,
        Self::Piqa,
        Self::SocialIqa,
        Self::Hellaswag,
        Self::Winogrande,
        Self::ArcEasy,
        Self::ArcChallenge,
        Self::Openbookqa,
    ];

    /// The task's name: `boolq`, `piqa`, `social_i_qa`, `hellaswag`, `winogrande`,
    /// `arc_easy`, `arc_challenge` or `openbookqa`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Boolq => "boolq",
            Self::Piqa => "piqa",
            Self::SocialIqa => "social_i_qa",
            Self::Hellaswag => "hellaswag",
            Self::Winogrande => "winogrande",
            Self::ArcEasy => "arc_easy",
            Self::ArcChallenge => "arc_challenge",
            Self::Openbookqa => "openbookqa",
        }
    }

    /// The task called `name` ([`CommonsenseTask::name`]), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The task's validation split, relative to the `hf_datasets` root.
    pub fn split_folder(self) -> &'static str {
        match self {
            Self::Boolq => "boolq/none/validation",
            Self::Piqa => "piqa/plain_text/validation",
            Self::SocialIqa => "social_i_qa/none/validation",
            Self::Hellaswag => "hellaswag/none/validation",
            Self::Winogrande => "winogrande/winogrande_xl/validation",
            Self::ArcEasy => "ai2_arc/ARC-Easy/validation",
            Self::ArcChallenge => "ai2_arc/ARC-Challenge/validation",
            Self::Openbookqa => "openbookqa/main/validation",
        }
    }

    /// The task's position in [`CommonsenseTask::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

/// One multiple-choice question rendered with its task's prompt template.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceQuestion {
    /// The task it belongs to.
    pub task: CommonsenseTask,
    /// Its 0-based row in the task's folder.
    pub row: usize,
    /// The format it was rendered in.
    pub format: PromptFormat,
    /// The prompt every choice continues (module docs); empty when each choice has its own.
    pub prompt: String,
    /// Per-choice prompts, for a task whose choices change the context rather than the
    /// continuation (WinoGrande in the harness format); empty otherwise.
    pub choice_prompts: Vec<String>,
    /// The choices (continuations), each `" " + text` (at least two).
    pub choices: Vec<String>,
    /// acc_norm's normaliser per choice: UTF-8 bytes of the choice in the LLM-Adapters
    /// format, characters of the choice text in the harness format (as the harness).
    pub norm_lengths: Vec<usize>,
    /// The index of the correct choice.
    pub answer: usize,
}

impl ChoiceQuestion {
    /// The correct choice, `choices[answer]`.
    pub fn target(&self) -> &str {
        &self.choices[self.answer]
    }

    /// The prompt choice `j` continues.
    pub fn prompt_of(&self, j: usize) -> &str {
        self.choice_prompts.get(j).unwrap_or(&self.prompt)
    }
}

/// The training and evaluation questions of [`split_suite`].
#[derive(Debug, Clone)]
pub struct CommonsenseSplit {
    /// Training questions, tasks in [`CommonsenseTask::ALL`] order.
    pub train: Vec<ChoiceQuestion>,
    /// Evaluation questions (disjoint from `train`), tasks in [`CommonsenseTask::ALL`] order.
    pub eval: Vec<ChoiceQuestion>,
}

const PREAMBLE: &str = "Below is an instruction that describes a task. Write a response that \
                        appropriately completes the request.\n\n### Instruction:\n";
const RESPONSE: &str = "\n\n### Response:\nthe correct answer is";

/// Every row of `task`'s folder under `root` as a question in `format` (rules in the module
/// docs).
pub fn load_task(
    root: &Path,
    task: CommonsenseTask,
    format: PromptFormat,
) -> Result<Vec<ChoiceQuestion>, DataError> {
    if !root.is_dir() {
        return Err(DataError::Config {
            path: root.to_path_buf(),
            message: "the Hugging Face data sets folder of the commonsense suite is missing; \
                      run scripts/fetch-assets commonsense"
                .into(),
        });
    }
    let folder = root.join(task.split_folder());
    if !folder.is_dir() {
        return Err(DataError::Config {
            path: folder,
            message: format!(
                "the {} folder is missing; run scripts/fetch-assets commonsense",
                task.name()
            ),
        });
    }
    let rows = super::arrow::read_rows(&folder)?;
    if rows.is_empty() {
        return Err(DataError::Empty { path: folder });
    }
    rows.iter()
        .enumerate()
        .map(|(row, object)| {
            let r = Row {
                path: &folder,
                row,
                object,
            };
            Ok(match format {
                PromptFormat::LlmAdapters => {
                    let (instruction, choices, answer) = render(task, &r)?;
                    ChoiceQuestion {
                        task,
                        row,
                        format,
                        prompt: format!("{PREAMBLE}{instruction}{RESPONSE}"),
                        choice_prompts: Vec::new(),
                        norm_lengths: choices.iter().map(String::len).collect(),
                        choices,
                        answer,
                    }
                }
                PromptFormat::Harness => {
                    let h = harness::render(task, &r)?;
                    ChoiceQuestion {
                        task,
                        row,
                        format,
                        prompt: h.context,
                        choice_prompts: h.choice_contexts,
                        choices: h.continuations,
                        norm_lengths: h.norm_lengths,
                        answer: h.answer,
                    }
                }
            })
        })
        .collect()
}

/// Splits every task of `tasks` into disjoint training and evaluation halves by a seeded
/// shuffle, capped per task (rules in the module docs). A task listed twice counts once.
pub fn split_suite(
    root: &Path,
    tasks: &[CommonsenseTask],
    seed: u64,
    train_per_task: Option<usize>,
    eval_per_task: Option<usize>,
    format: PromptFormat,
) -> Result<CommonsenseSplit, DataError> {
    let mut split = CommonsenseSplit {
        train: Vec::new(),
        eval: Vec::new(),
    };
    for task in CommonsenseTask::ALL
        .into_iter()
        .filter(|t| tasks.contains(t))
    {
        let questions = load_task(root, task, format)?;
        let n = questions.len();
        let order = shuffled_indices(n, derive_seed(seed, task.index() as u64));
        let (train, eval) = order.split_at(n / 2);
        let cap =
            |half: &[usize], limit: Option<usize>| half.len().min(limit.unwrap_or(usize::MAX));
        let mut slots: Vec<Option<ChoiceQuestion>> = questions.into_iter().map(Some).collect();
        let mut take = |indices: &[usize]| -> Vec<ChoiceQuestion> {
            indices.iter().filter_map(|&i| slots[i].take()).collect()
        };
        split
            .train
            .extend(take(&train[..cap(train, train_per_task)]));
        split.eval.extend(take(&eval[..cap(eval, eval_per_task)]));
    }
    Ok(split)
}

/// One row of a folder, for error messages that name the folder, the row and the field.
pub(crate) struct Row<'a> {
    path: &'a Path,
    row: usize,
    object: &'a Map<String, Value>,
}

impl Row<'_> {
    pub(crate) fn err(&self, field: &str, message: String) -> DataError {
        DataError::Field {
            path: self.path.to_path_buf(),
            row: self.row,
            field: field.to_string(),
            message,
        }
    }

    pub(crate) fn get(&self, field: &str) -> Result<&Value, DataError> {
        self.object.get(field).ok_or_else(|| {
            let keys: Vec<String> = self.object.keys().map(|k| format!("`{k}`")).collect();
            self.err(
                field,
                format!(
                    "missing; the row has {}",
                    if keys.is_empty() {
                        "no fields".into()
                    } else {
                        keys.join(", ")
                    }
                ),
            )
        })
    }

    /// A string field, trimmed.
    pub(crate) fn text(&self, field: &str) -> Result<String, DataError> {
        Ok(self.raw(field)?.trim().to_string())
    }

    /// A string field as stored.
    pub(crate) fn raw(&self, field: &str) -> Result<&str, DataError> {
        as_str(self.get(field)?, |m| self.err(field, m))
    }

    /// A list-of-strings value `value` (named `field`), the strings as stored.
    pub(crate) fn strs<'v>(
        &self,
        field: &str,
        value: &'v Value,
    ) -> Result<Vec<&'v str>, DataError> {
        let Value::Array(items) = value else {
            return Err(self.err(
                field,
                format!("is {}, expected a list of strings", kind(value)),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(j, v)| as_str(v, |m| self.err(&format!("{field}[{j}]"), m)))
            .collect()
    }

    /// `" " + text` for each (trimmed) text: at least two, none empty. `field` names the
    /// choices as a whole, `item(j)` choice `j`.
    pub(crate) fn choices(
        &self,
        field: &str,
        texts: &[String],
        item: impl Fn(usize) -> String,
    ) -> Result<Vec<String>, DataError> {
        if texts.len() < 2 {
            return Err(self.err(
                field,
                format!("has {} choice(s), at least 2 are needed", texts.len()),
            ));
        }
        texts
            .iter()
            .enumerate()
            .map(|(j, t)| {
                if t.is_empty() {
                    Err(self.err(&item(j), "is an empty choice".into()))
                } else {
                    Ok(format!(" {t}"))
                }
            })
            .collect()
    }

    /// ARC's and OpenBookQA's `choices` struct: its `text` and `label` lists as stored, of
    /// equal length.
    pub(crate) fn labelled_choices(&self) -> Result<(Vec<&str>, Vec<&str>), DataError> {
        let c = match self.get("choices")? {
            Value::Object(c) => c,
            other => {
                return Err(self.err(
                    "choices",
                    format!(
                        "is {}, expected a struct of `text` and `label` lists",
                        kind(other)
                    ),
                ));
            }
        };
        let list = |name: &str| -> Result<Vec<&str>, DataError> {
            let field = format!("choices.{name}");
            let value = c
                .get(name)
                .ok_or_else(|| self.err(&field, "missing".into()))?;
            self.strs(&field, value)
        };
        let (texts, labels) = (list("text")?, list("label")?);
        if labels.len() != texts.len() {
            return Err(self.err(
                "choices.label",
                format!(
                    "has {} labels for {} choice texts",
                    labels.len(),
                    texts.len()
                ),
            ));
        }
        Ok((texts, labels))
    }

    /// The position of `key` (the `answerKey` field's value) among `labels`.
    pub(crate) fn answer_position<S: AsRef<str>>(
        &self,
        labels: &[S],
        key: &str,
    ) -> Result<usize, DataError> {
        labels
            .iter()
            .position(|l| l.as_ref() == key)
            .ok_or_else(|| {
                self.err(
                    "answerKey",
                    format!(
                        "\"{key}\" is not one of the labels {}",
                        labels
                            .iter()
                            .map(|l| format!("\"{}\"", l.as_ref()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    /// A 1-based (`base = 1`) or 0-based (`base = 0`) choice number written as a string.
    pub(crate) fn numbered(&self, field: &str, base: usize, n: usize) -> Result<usize, DataError> {
        let value = self.text(field)?;
        value
            .parse::<usize>()
            .ok()
            .and_then(|k| k.checked_sub(base))
            .filter(|&k| k < n)
            .ok_or_else(|| {
                self.err(
                    field,
                    format!(
                        "\"{value}\" is not a choice; expected one of {}",
                        (base..base + n)
                            .map(|k| format!("\"{k}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }
}

fn as_str(value: &Value, err: impl FnOnce(String) -> DataError) -> Result<&str, DataError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(err(format!("is {}, expected a string", kind(other)))),
    }
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a struct",
    }
}

#[cfg(test)]
mod tests {
    use super::templates::{capitalize, hellaswag_preprocess};
    use super::*;

    #[test]
    fn names_round_trip_and_index_matches_all() {
        for (k, t) in CommonsenseTask::ALL.into_iter().enumerate() {
            assert_eq!(CommonsenseTask::from_name(t.name()), Some(t));
            assert_eq!(t.index(), k);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.name()));
            assert_eq!(serde_json::from_str::<CommonsenseTask>(&json).unwrap(), t);
        }
        assert_eq!(
            serde_json::from_str::<CommonsenseTask>("\"social_iqa\"").unwrap(),
            CommonsenseTask::SocialIqa
        );
        assert_eq!(CommonsenseTask::from_name("arc"), None);
    }

    #[test]
    fn hellaswag_preprocessing_matches_lm_eval() {
        assert_eq!(capitalize("he IS"), "He is");
        assert_eq!(capitalize(""), "");
        assert_eq!(
            hellaswag_preprocess(
                " [header] How to tie a tie [title] Pick a tie. [step] Cross it. "
            ),
            // As Python's: the tag after the trim leaves a leading space (choices are trimmed).
            " How to tie a tie. Pick a tie. Cross it."
        );
        // An unclosed bracket, or one closed only on a later line, stays.
        assert_eq!(hellaswag_preprocess("a [b\nc] d [e"), "a [b\nc] d [e");
        // One pass of "  " -> " ": three spaces become two.
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
    }
}
