//! The commonsense-reasoning suite as data (`flexlora::data::commonsense`): the eight real
//! validation splits in assets/hf_datasets (group `commonsense` of scripts/fetch-assets) load
//! with their row counts and render as python/golden/commonsense_prompts.py (an independent
//! implementation on pyarrow) renders them; the seeded train/eval split; and synthetic Arrow
//! folders with a missing field or a bad answer give errors naming the folder, row and field.

use arrow_array::builder::{LargeListBuilder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field};
use flexlora::data::DataError;
use flexlora::data::commonsense::{
    ChoiceQuestion, CommonsenseTask, PromptFormat, load_task, split_suite,
};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

const PREAMBLE: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n";

fn root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/hf_datasets");
    assert!(
        root.join("piqa/plain_text/validation/state.json").exists(),
        "{} is missing: run scripts/fetch-assets commonsense",
        root.display()
    );
    root
}

/// Every task's questions, loaded once for the whole test binary.
fn suite() -> &'static Vec<Vec<ChoiceQuestion>> {
    static SUITE: OnceLock<Vec<Vec<ChoiceQuestion>>> = OnceLock::new();
    SUITE.get_or_init(|| {
        CommonsenseTask::ALL
            .iter()
            .map(|&t| {
                load_task(&root(), t, PromptFormat::LlmAdapters)
                    .unwrap_or_else(|e| panic!("{}: {e}", t.name()))
            })
            .collect()
    })
}

fn questions(task: CommonsenseTask) -> &'static [ChoiceQuestion] {
    &suite()[CommonsenseTask::ALL
        .iter()
        .position(|&t| t == task)
        .unwrap()]
}

/// Row counts of the validation splits (their dataset_info.json).
const ROWS: [(CommonsenseTask, usize); 8] = [
    (CommonsenseTask::Boolq, 3270),
    (CommonsenseTask::Piqa, 1838),
    (CommonsenseTask::SocialIqa, 1954),
    (CommonsenseTask::Hellaswag, 10042),
    (CommonsenseTask::Winogrande, 1267),
    (CommonsenseTask::ArcEasy, 570),
    (CommonsenseTask::ArcChallenge, 299),
    (CommonsenseTask::Openbookqa, 500),
];

#[test]
fn every_task_loads_with_its_row_count_and_well_formed_questions() {
    assert_eq!(
        ROWS.map(|(t, _)| t),
        CommonsenseTask::ALL,
        "ALL is the paper's order"
    );
    for (task, n) in ROWS {
        let qs = questions(task);
        assert_eq!(qs.len(), n, "{}", task.name());
        for (i, q) in qs.iter().enumerate() {
            let at = format!("{} row {i}", task.name());
            assert_eq!((q.task, q.row), (task, i), "{at}");
            assert!(q.choices.len() >= 2, "{at}: {:?}", q.choices);
            assert!(q.answer < q.choices.len(), "{at}");
            assert_eq!(q.target(), q.choices[q.answer], "{at}");
            assert!(q.prompt.starts_with(PREAMBLE), "{at}: {}", q.prompt);
            assert!(
                q.prompt
                    .ends_with("\n\n### Response:\nthe correct answer is"),
                "{at}: {}",
                q.prompt
            );
            for c in &q.choices {
                assert!(
                    c.starts_with(' ') && c.len() > 1 && c.trim() == &c[1..],
                    "{at}: choice {c:?} is not one space then trimmed text"
                );
            }
        }
    }
    // ARC has 3- and 5-choice questions; boolq's choices are fixed.
    let arc_sizes: HashSet<usize> = questions(CommonsenseTask::ArcEasy)
        .iter()
        .map(|q| q.choices.len())
        .collect();
    assert_eq!(arc_sizes, HashSet::from([3, 4, 5]));
    assert!(
        questions(CommonsenseTask::Boolq)
            .iter()
            .all(|q| q.choices == [" true", " false"])
    );
}

/// SHA-256 over rows of `prompt \0 choice_1 \0 ... \0 answer \n`, as
/// python/golden/commonsense_prompts.py computes it.
fn digest(qs: &[ChoiceQuestion]) -> String {
    let mut h = Sha256::new();
    for q in qs {
        let mut parts = vec![q.prompt.clone()];
        parts.extend(q.choices.iter().cloned());
        parts.push(q.answer.to_string());
        h.update(parts.join("\0").as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every row of every task renders exactly as an independent Python implementation renders it
/// (python/golden/commonsense_prompts.py on pyarrow 26; its output pasted here).
#[test]
fn rendered_questions_match_an_independent_python_rendering() {
    let golden = [
        (
            "boolq",
            3270,
            "25a98e55a5e1cc633c12b86aa874f70e36287b5e33cca4ee10c4a432e2a22955",
        ),
        (
            "piqa",
            1838,
            "dab5dcae308a94bad5a500ee621feba5b20924cd2ec952b910e9b2aa4dbbd0e6",
        ),
        (
            "social_i_qa",
            1954,
            "0afbdc019e12d8e345a4306139147420c0f8e71657f0d7f0d63b7fb0d4259cfd",
        ),
        (
            "hellaswag",
            10042,
            "c2f98f54fd51ee7729357ef2ce0a49508901ff415b81fc540abe1732f58ee064",
        ),
        (
            "winogrande",
            1267,
            "dc6014cf075dfd828eb11e8f5379220196c6ed3683483f4d9a8c7828aa434cb0",
        ),
        (
            "arc_easy",
            570,
            "b5736011f997d80b6a6020cb3eebf9a4aaf5e06b8c991e5a6bbe378041c37bcc",
        ),
        (
            "arc_challenge",
            299,
            "4d69d0fc765cc4fc3cc724e13191283cc308d276585d085d55c37c50bc081f83",
        ),
        (
            "openbookqa",
            500,
            "84d524b48fa194c6d93fff98ecd8611b964b96869f10c8af90e0400cef4982d6",
        ),
    ];
    for (name, n, sha) in golden {
        let task = CommonsenseTask::from_name(name).unwrap();
        let qs = questions(task);
        assert_eq!(qs.len(), n, "{name}");
        assert_eq!(digest(qs), sha, "{name}");
    }
}

/// The first rows of piqa and ARC-Easy, spelt out (values read with pyarrow).
#[test]
fn first_rows_of_piqa_and_arc_easy_match_python() {
    let piqa = &questions(CommonsenseTask::Piqa)[0];
    let sol1 = "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.";
    let sol2 = "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish.";
    assert_eq!(
        piqa.prompt,
        format!(
            "{PREAMBLE}Please choose the correct solution to the question: How do I ready a guinea pig cage for it's new occupants?\n\nSolution1: {sol1}\n\nSolution2: {sol2}\n\n### Response:\nthe correct answer is"
        )
    );
    assert_eq!(piqa.choices, [format!(" {sol1}"), format!(" {sol2}")]);
    assert_eq!(piqa.answer, 0);

    let arc = &questions(CommonsenseTask::ArcEasy)[0];
    assert_eq!(
        arc.prompt,
        format!(
            "{PREAMBLE}Please choose the correct answer to the question: Which technology was developed most recently?\n\nAnswer1: cellular telephone\n\nAnswer2: television\n\nAnswer3: refrigerator\n\nAnswer4: airplane\n\n### Response:\nthe correct answer is"
        )
    );
    assert_eq!(
        arc.choices,
        [
            " cellular telephone",
            " television",
            " refrigerator",
            " airplane"
        ]
    );
    assert_eq!((arc.answer, arc.target()), (0, " cellular telephone"));
}

/// HellaSwag row 3243 (WikiHow) loses its `[header]`/`[step]`/`[substeps]` tags and turns
/// ` [title]` into `. `, as lm-evaluation-harness's preprocessing does (its output, by Python).
#[test]
fn hellaswag_wikihow_tags_are_removed_as_lm_eval_does() {
    let q = &questions(CommonsenseTask::Hellaswag)[3243];
    assert!(q.prompt.contains(
        "Please choose the correct ending to complete the given sentence: Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. This job requires"
    ), "{}", q.prompt);
    assert!(!q.prompt.contains('['), "{}", q.prompt);
    assert_eq!(
        q.choices[0],
        " Many high schools have classes offered for their students who do not have a high school diploma, so be sure to register to take these classes and find a job in your field.. Search for entry-level positions in fashion industries."
    );
    assert_eq!(
        q.choices[3],
        " Earn a bachelor's degree in a fashion-related field. Degrees for the fashion industry include art, fashion merchandising, and marketing."
    );
    assert_eq!(q.answer, 3);
    assert!(
        q.prompt
            .contains(&format!("\n\nEnding4:{}\n\n###", q.choices[3]))
    );
    // Row 0 (ActivityNet): ctx_b "he" is capitalised.
    let q = &questions(CommonsenseTask::Hellaswag)[0];
    assert!(
        q.prompt
            .contains("sentence: Roof shingle removal: A man is sitting on a roof. He\n\nEnding1: is using wrap"),
        "{}",
        q.prompt
    );
    assert_eq!(q.target(), " starts pulling up roofing on a roof.");
}

/// Answer counts per choice index, as counted by Python; no task is all one class.
#[test]
fn answers_are_spread_over_the_classes() {
    let expected: [&[usize]; 8] = [
        &[2033, 1237],
        &[910, 928],
        &[643, 654, 657],
        &[2515, 2485, 2584, 2458],
        &[628, 639],
        &[158, 152, 142, 118],
        &[64, 73, 78, 83, 1],
        &[126, 138, 110, 126],
    ];
    for (task, want) in CommonsenseTask::ALL.into_iter().zip(expected) {
        let qs = questions(task);
        let mut counts = vec![0usize; want.len()];
        for q in qs {
            counts[q.answer] += 1;
        }
        assert_eq!(counts, want, "{}", task.name());
        assert!(counts.iter().filter(|&&c| c > 0).count() >= 2);
    }
}

fn keys(qs: &[ChoiceQuestion]) -> Vec<(CommonsenseTask, usize)> {
    qs.iter().map(|q| (q.task, q.row)).collect()
}

#[test]
fn split_halves_are_disjoint_sized_and_seeded() {
    let root = root();
    let s = split_suite(
        &root,
        &CommonsenseTask::ALL,
        7,
        None,
        None,
        PromptFormat::LlmAdapters,
    )
    .unwrap();
    let train: HashSet<_> = keys(&s.train).into_iter().collect();
    let eval: HashSet<_> = keys(&s.eval).into_iter().collect();
    assert_eq!(train.len(), s.train.len(), "no question twice in train");
    assert_eq!(eval.len(), s.eval.len(), "no question twice in eval");
    assert!(train.is_disjoint(&eval));
    for (task, n) in ROWS {
        let count = |qs: &[ChoiceQuestion]| qs.iter().filter(|q| q.task == task).count();
        assert_eq!(
            (count(&s.train), count(&s.eval)),
            (n / 2, n - n / 2),
            "{}",
            task.name()
        );
    }
    // Tasks come in ALL order, each a contiguous block; the questions are the loaded ones.
    let order: Vec<CommonsenseTask> = s.train.iter().map(|q| q.task).collect();
    assert!(order.windows(2).all(|w| w[0] as usize <= w[1] as usize));
    for q in s.train.iter().chain(&s.eval).step_by(97) {
        assert_eq!(q, &questions(q.task)[q.row]);
    }
    // Shuffled, not file order.
    assert_ne!(
        keys(&s.train[..10]),
        (0..10)
            .map(|i| (CommonsenseTask::Boolq, i))
            .collect::<Vec<_>>()
    );
    // Deterministic for a seed, different for another.
    let again = split_suite(
        &root,
        &CommonsenseTask::ALL,
        7,
        None,
        None,
        PromptFormat::LlmAdapters,
    )
    .unwrap();
    assert_eq!((&again.train, &again.eval), (&s.train, &s.eval));
    let other = split_suite(
        &root,
        &CommonsenseTask::ALL,
        8,
        None,
        None,
        PromptFormat::LlmAdapters,
    )
    .unwrap();
    assert_ne!(keys(&other.train), keys(&s.train));
    // A subset of tasks, listed out of order and twice, gives the same halves for those tasks,
    // in ALL order.
    let some = [
        CommonsenseTask::Openbookqa,
        CommonsenseTask::Piqa,
        CommonsenseTask::Openbookqa,
    ];
    let sub = split_suite(&root, &some, 7, None, None, PromptFormat::LlmAdapters).unwrap();
    let only = |qs: &[ChoiceQuestion]| -> Vec<(CommonsenseTask, usize)> {
        keys(qs)
            .into_iter()
            .filter(|(t, _)| some.contains(t))
            .collect()
    };
    assert_eq!(keys(&sub.train), only(&s.train));
    assert_eq!(keys(&sub.eval), only(&s.eval));
}

#[test]
fn caps_give_nested_prefixes() {
    let root = root();
    let tasks = [CommonsenseTask::ArcChallenge, CommonsenseTask::Winogrande];
    let full = split_suite(&root, &tasks, 3, None, None, PromptFormat::LlmAdapters).unwrap();
    let per_task = |qs: &[ChoiceQuestion], t: CommonsenseTask| -> Vec<usize> {
        qs.iter().filter(|q| q.task == t).map(|q| q.row).collect()
    };
    let mut previous: Option<(Vec<ChoiceQuestion>, Vec<ChoiceQuestion>)> = None;
    for (tc, ec) in [(500, 1000), (100, 40), (10, 5), (0, 1)] {
        let s = split_suite(
            &root,
            &tasks,
            3,
            Some(tc),
            Some(ec),
            PromptFormat::LlmAdapters,
        )
        .unwrap();
        for t in tasks {
            let (train, eval) = (per_task(&s.train, t), per_task(&s.eval, t));
            let (ftrain, feval) = (per_task(&full.train, t), per_task(&full.eval, t));
            assert_eq!(train.len(), tc.min(ftrain.len()), "{} train", t.name());
            assert_eq!(eval.len(), ec.min(feval.len()), "{} eval", t.name());
            assert_eq!(train, ftrain[..train.len()], "a prefix of the half");
            assert_eq!(eval, feval[..eval.len()], "a prefix of the half");
            if let Some((ptrain, peval)) = &previous {
                let (ptrain, peval) = (per_task(ptrain, t), per_task(peval, t));
                assert!(ptrain.starts_with(&train) && peval.starts_with(&eval));
            }
        }
        previous = Some((s.train, s.eval));
    }
}

// ---- Synthetic folders -------------------------------------------------------------------

/// Writes `batch` as the Hugging Face folder of `task` under `root`.
fn write_folder(root: &Path, task: CommonsenseTask, batch: &RecordBatch) -> PathBuf {
    let folder = root.join(task.split_folder());
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("state.json"),
        r#"{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}"#,
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema()).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    drop(w);
    std::fs::write(folder.join("data-00000-of-00001.arrow"), bytes).unwrap();
    folder
}

fn strings(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

/// PIQA rows (goal, sol1, sol2, label), without the columns named in `drop`.
fn piqa(rows: &[(&str, &str, &str, i64)], drop: &[&str]) -> RecordBatch {
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "goal",
            strings(&rows.iter().map(|r| r.0).collect::<Vec<_>>()),
        ),
        (
            "sol1",
            strings(&rows.iter().map(|r| r.1).collect::<Vec<_>>()),
        ),
        (
            "sol2",
            strings(&rows.iter().map(|r| r.2).collect::<Vec<_>>()),
        ),
        (
            "label",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ),
    ];
    batch(
        cols.into_iter()
            .filter(|(n, _)| !drop.contains(n))
            .collect(),
    )
}

/// An ARC-style `choices` column: a struct of `text` and `label` string lists.
fn choices(rows: &[(&[&str], &[&str])]) -> ArrayRef {
    let mut text = ListBuilder::new(StringBuilder::new());
    let mut label = ListBuilder::new(StringBuilder::new());
    for (t, l) in rows {
        for s in *t {
            text.values().append_value(s);
        }
        text.append(true);
        for s in *l {
            label.values().append_value(s);
        }
        label.append(true);
    }
    let text: ArrayRef = Arc::new(text.finish());
    let label: ArrayRef = Arc::new(label.finish());
    Arc::new(StructArray::from(vec![
        (
            Arc::new(Field::new("text", text.data_type().clone(), true)),
            text,
        ),
        (
            Arc::new(Field::new("label", label.data_type().clone(), true)),
            label,
        ),
    ]))
}

fn field_error(e: DataError) -> (PathBuf, usize, String, String) {
    let shown = e.to_string();
    match e {
        DataError::Field {
            path,
            row,
            field,
            message,
        } => {
            assert!(
                shown.contains(&format!("row {row}")) && shown.contains(&format!("`{field}`")),
                "{shown}"
            );
            (path, row, field, message)
        }
        other => panic!("expected a Field error, got {other}"),
    }
}

#[test]
fn a_missing_field_names_the_folder_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let folder = write_folder(
        dir.path(),
        CommonsenseTask::Piqa,
        &piqa(&[("g", "a", "b", 0), ("g2", "c", "d", 1)], &["sol2"]),
    );
    let (path, row, field, message) = field_error(
        load_task(dir.path(), CommonsenseTask::Piqa, PromptFormat::LlmAdapters).unwrap_err(),
    );
    assert_eq!((path, row, field.as_str()), (folder.clone(), 0, "sol2"));
    assert!(
        message.contains("missing") && message.contains("`sol1`"),
        "{message}"
    );

    // A well-formed folder loads; the synthetic rows render with the template.
    write_folder(
        dir.path(),
        CommonsenseTask::Piqa,
        &piqa(&[("g", " a ", "b", 0), ("g2", "c", "d", 1)], &[]),
    );
    let qs = load_task(dir.path(), CommonsenseTask::Piqa, PromptFormat::LlmAdapters).unwrap();
    assert_eq!(qs[0].choices, [" a", " b"]);
    assert_eq!((qs[1].answer, qs[1].target()), (1, " d"));

    // A field of the wrong type: boolq's answer as a string.
    let folder = write_folder(
        dir.path(),
        CommonsenseTask::Boolq,
        &batch(vec![
            ("question", strings(&["is it", "is it not"])),
            ("answer", strings(&["true", "false"])),
        ]),
    );
    let (path, row, field, message) = field_error(
        load_task(
            dir.path(),
            CommonsenseTask::Boolq,
            PromptFormat::LlmAdapters,
        )
        .unwrap_err(),
    );
    assert_eq!((path, row, field.as_str()), (folder, 0, "answer"));
    assert!(
        message.contains("a string, expected a boolean"),
        "{message}"
    );
}

#[test]
fn a_bad_answer_names_the_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    // PIQA label 2 in row 1.
    let folder = write_folder(
        dir.path(),
        CommonsenseTask::Piqa,
        &piqa(&[("g", "a", "b", 0), ("g", "a", "b", 2)], &[]),
    );
    let (path, row, field, message) = field_error(
        load_task(dir.path(), CommonsenseTask::Piqa, PromptFormat::LlmAdapters).unwrap_err(),
    );
    assert_eq!((path, row, field.as_str()), (folder, 1, "label"));
    assert!(message.contains("0 or 1"), "{message}");

    // ARC answerKey not among the labels, in row 2.
    let arc = |key: &str, rows: &[(&[&str], &[&str])]| {
        let n = rows.len();
        batch(vec![
            ("question", strings(&vec!["q"; n])),
            ("choices", choices(rows)),
            (
                "answerKey",
                strings(&[vec!["A"; n - 1], vec![key]].concat()),
            ),
        ])
    };
    let good: (&[&str], &[&str]) = (&["x", "y", "z"], &["A", "B", "C"]);
    let folder = write_folder(
        dir.path(),
        CommonsenseTask::ArcEasy,
        &arc("E", &[good, good, (&["x", "y"], &["1", "2"])]),
    );
    let (path, row, field, message) = field_error(
        load_task(
            dir.path(),
            CommonsenseTask::ArcEasy,
            PromptFormat::LlmAdapters,
        )
        .unwrap_err(),
    );
    assert_eq!((path, row, field.as_str()), (folder, 2, "answerKey"));
    assert!(
        message.contains("\"E\" is not one of the labels \"1\", \"2\""),
        "{message}"
    );
    // The same rows with a good key load, struct-of-lists choices and all.
    write_folder(
        dir.path(),
        CommonsenseTask::ArcEasy,
        &arc("2", &[good, good, (&["x", "y"], &["1", "2"])]),
    );
    let qs = load_task(
        dir.path(),
        CommonsenseTask::ArcEasy,
        PromptFormat::LlmAdapters,
    )
    .unwrap();
    assert_eq!((qs[2].answer, qs[2].target()), (1, " y"));
    assert!(
        qs[0]
            .prompt
            .contains("Answer1: x\n\nAnswer2: y\n\nAnswer3: z\n\n###")
    );

    // One choice only; an empty choice text.
    write_folder(
        dir.path(),
        CommonsenseTask::ArcEasy,
        &arc("A", &[good, (&["x"], &["A"])]),
    );
    let (_, row, field, message) = field_error(
        load_task(
            dir.path(),
            CommonsenseTask::ArcEasy,
            PromptFormat::LlmAdapters,
        )
        .unwrap_err(),
    );
    assert_eq!((row, field.as_str()), (1, "choices.text"));
    assert!(message.contains("at least 2"), "{message}");
    write_folder(
        dir.path(),
        CommonsenseTask::ArcEasy,
        &arc("A", &[(&["x", " ", "z"], &["A", "B", "C"])]),
    );
    let (_, row, field, message) = field_error(
        load_task(
            dir.path(),
            CommonsenseTask::ArcEasy,
            PromptFormat::LlmAdapters,
        )
        .unwrap_err(),
    );
    assert_eq!((row, field.as_str()), (0, "choices.text[1]"));
    assert!(message.contains("empty"), "{message}");

    // Social IQa label "0" (its labels are 1-based).
    let folder = write_folder(
        dir.path(),
        CommonsenseTask::SocialIqa,
        &batch(vec![
            ("context", strings(&["c"])),
            ("question", strings(&["q"])),
            ("answerA", strings(&["a"])),
            ("answerB", strings(&["b"])),
            ("answerC", strings(&["c"])),
            ("label", strings(&["0"])),
        ]),
    );
    let (path, row, field, message) = field_error(
        load_task(
            dir.path(),
            CommonsenseTask::SocialIqa,
            PromptFormat::LlmAdapters,
        )
        .unwrap_err(),
    );
    assert_eq!((path, row, field.as_str()), (folder, 0, "label"));
    assert!(message.contains("\"1\", \"2\", \"3\""), "{message}");
}

/// HellaSwag endings stored as a LargeList are read as a list too; label out of range.
#[test]
fn hellaswag_endings_as_a_large_list_and_a_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let hs = |label: &str| {
        let mut endings = LargeListBuilder::new(StringBuilder::new());
        for e in ["goes [step] home.", "  stays.", "sleeps", "eats"] {
            endings.values().append_value(e);
        }
        endings.append(true);
        let endings: ArrayRef = Arc::new(endings.finish());
        assert!(matches!(endings.data_type(), DataType::LargeList(_)));
        batch(vec![
            ("activity_label", strings(&["Walking"])),
            ("ctx_a", strings(&["A man walks."])),
            ("ctx_b", strings(&["he THEN"])),
            ("endings", endings),
            ("label", strings(&[label])),
            ("flag", Arc::new(BooleanArray::from(vec![true])) as ArrayRef),
        ])
    };
    write_folder(dir.path(), CommonsenseTask::Hellaswag, &hs("1"));
    let q = &load_task(
        dir.path(),
        CommonsenseTask::Hellaswag,
        PromptFormat::LlmAdapters,
    )
    .unwrap()[0];
    assert_eq!(q.choices, [" goes home.", " stays.", " sleeps", " eats"]);
    assert_eq!(q.answer, 1);
    assert!(
        q.prompt.contains(
            "sentence: Walking: A man walks. He then\n\nEnding1: goes home.\n\nEnding2: stays."
        ),
        "{}",
        q.prompt
    );
    let folder = write_folder(dir.path(), CommonsenseTask::Hellaswag, &hs("4"));
    let (path, row, field, message) = field_error(
        load_task(
            dir.path(),
            CommonsenseTask::Hellaswag,
            PromptFormat::LlmAdapters,
        )
        .unwrap_err(),
    );
    assert_eq!((path, row, field.as_str()), (folder, 0, "label"));
    assert!(message.contains("\"4\" is not a choice"), "{message}");
}

#[test]
fn a_missing_root_or_folder_suggests_fetch_assets() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("no_such_hf_datasets");
    let e = load_task(&gone, CommonsenseTask::Boolq, PromptFormat::LlmAdapters)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no_such_hf_datasets") && e.contains("scripts/fetch-assets commonsense"),
        "{e}"
    );
    let e = split_suite(
        dir.path(),
        &[CommonsenseTask::Winogrande],
        0,
        None,
        None,
        PromptFormat::LlmAdapters,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("winogrande/winogrande_xl/validation")
            && e.contains("scripts/fetch-assets commonsense"),
        "{e}"
    );
}

/// SHA-256 of every task's requests in the harness format, written as
/// python/check/lm_eval_harness.py writes them from lm-evaluation-harness itself (the `lm-eval`
/// 0.4.13 package's task configs on the same local data): per choice `context \x1f
/// continuation \x1f norm_length`, choices joined by `\x1e`, then `\x1d gold \n`, rows in file
/// order. The digests below were printed by that script (command in its docstring).
fn harness_digest(questions: &[ChoiceQuestion]) -> String {
    let mut h = Sha256::new();
    for q in questions {
        let parts: Vec<String> = (0..q.choices.len())
            .map(|j| {
                format!(
                    "{}\x1f{}\x1f{}",
                    q.prompt_of(j),
                    q.choices[j],
                    q.norm_lengths[j]
                )
            })
            .collect();
        h.update(format!("{}\x1d{}\n", parts.join("\x1e"), q.answer).as_bytes());
    }
    format!("{:x}", h.finalize())
}

const HARNESS_DIGESTS: [(CommonsenseTask, &str); 8] = [
    (
        CommonsenseTask::Boolq,
        "89fde35fd6b7dc7598e2bb280669f3bbc0473179393b55406610bf9c04462ba5",
    ),
    (
        CommonsenseTask::Piqa,
        "3b9d20872644a50a612a1ddb9b18d7a704fa70b2920064d88d8362277fa6f215",
    ),
    (
        CommonsenseTask::SocialIqa,
        "e01f00139bd8062736bfe6e601aa0e15f9ec0ed02f9db37a350cfe1147fef140",
    ),
    (
        CommonsenseTask::Hellaswag,
        "874b597b2e532d10d60e79865232a04f5c2e51e96cf15053feb5fc484f2058c8",
    ),
    (
        CommonsenseTask::Winogrande,
        "0fe28b74b229a1e52885bbf112ae6561db17423dc90a9b1bb713d1364ca6bd45",
    ),
    (
        CommonsenseTask::ArcEasy,
        "19b23afb49b2a026e09f2708825c8ca5ad166c06e7ea54e43deb5895589b2512",
    ),
    (
        CommonsenseTask::ArcChallenge,
        "2198f410293ab77518f70f672edcd6567fadf85b58657b9410020d7838576dcf",
    ),
    (
        CommonsenseTask::Openbookqa,
        "e9dc78c4cfa12e4a3fbd4b22a0b1ae89f6fe1a78e3ac087e1635a00f9df0ca7b",
    ),
];

/// `--format harness` builds, for every row of every task, the requests lm-evaluation-harness
/// builds: the same contexts, continuations, gold choice and acc_norm normaliser.
#[test]
fn harness_prompts_match_lm_evaluation_harness() {
    let mut wrong = Vec::new();
    for (task, want) in HARNESS_DIGESTS {
        let qs = load_task(&root(), task, PromptFormat::Harness).unwrap();
        let got = harness_digest(&qs);
        if got != want {
            wrong.push(format!("{}: {got}", task.name()));
        }
    }
    assert!(
        wrong.is_empty(),
        "harness requests differ from lm-evaluation-harness's (diff question by question with \
         python/check/lm_eval_harness.py): {wrong:?}"
    );
    // WinoGrande: the options change the context, the rest of the sentence is the one
    // continuation.
    let wino = load_task(&root(), CommonsenseTask::Winogrande, PromptFormat::Harness).unwrap();
    let q = &wino[0];
    assert_eq!(q.choice_prompts.len(), 2);
    assert_eq!(q.choices[0], q.choices[1]);
    assert!(q.prompt.is_empty());
}
