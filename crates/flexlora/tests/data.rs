//! Loading and splitting data: the real Pang & Lee file with the shipped config, every GLUE
//! preset on small folders in each task's real layout, clear errors for bad input, and the
//! per-epoch order of training examples.

use flexlora::config::{Column, Config, DataConfig, GluePreset, MetricName, TaskKind};
use flexlora::data::{
    Example, SplitSizes, Splits, count_examples, epoch_order, load_splits, shuffled_indices,
    split_sizes,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `[data]` of configs/default.toml, with the data path made absolute.
fn default_data() -> DataConfig {
    let loaded = Config::load(&repo_root().join("configs/default.toml"), &[]).unwrap();
    let mut data = loaded.config.data;
    data.path = repo_root().join(&data.path);
    assert!(
        data.path.exists(),
        "{} is missing: run scripts/fetch-assets",
        data.path.display()
    );
    data
}

/// A `[data]` table from TOML (every other key at its default), reading `path`.
fn data_config(path: &Path, toml_keys: &str) -> DataConfig {
    let mut c: DataConfig = toml::from_str(&format!("path = 'unused'\n{toml_keys}")).unwrap();
    c.path = path.to_path_buf();
    c
}

fn all(s: &Splits) -> impl Iterator<Item = &Example> {
    s.train.iter().chain(&s.validation).chain(&s.test)
}

fn sizes(s: &Splits) -> (usize, usize, usize) {
    (s.train.len(), s.validation.len(), s.test.len())
}

fn err(c: &DataConfig) -> String {
    load_splits(c).expect_err("should fail").to_string()
}

#[test]
fn pang_lee_loads_with_the_default_config() {
    let data = default_data();
    let s = load_splits(&data).unwrap();
    assert_eq!(s.label_names, ["-1", "1"]);
    assert_eq!(
        (s.task, s.metric, s.num_labels()),
        (TaskKind::Classification, MetricName::Accuracy, 2)
    );
    assert_eq!(sizes(&s), (2800, 400, 800));
    assert_eq!(count_examples(&data).unwrap(), 4000);
    assert_eq!(
        split_sizes(&data).unwrap(),
        SplitSizes {
            train: 2800,
            validation: 400,
            test: 800
        }
    );
    let positives = all(&s).filter(|e| e.label == 1.0).count();
    let negatives = all(&s).filter(|e| e.label == 0.0).count();
    assert_eq!((positives, negatives), (2000, 2000));
    for e in all(&s) {
        assert!(
            !e.text.is_empty() && e.text.trim() == e.text,
            "{:?}",
            e.text
        );
        assert!(e.text_pair.is_none());
    }
    // Record 0 (the file's first, a positive) sits where the split's shuffle put it.
    let order = shuffled_indices(4000, data.split_seed);
    let pos = order.iter().position(|&i| i == 0).unwrap();
    let first = match pos {
        p if p < 2800 => &s.train[p],
        p if p < 3200 => &s.validation[p - 2800],
        p => &s.test[p - 3200],
    };
    assert!(
        first.text.starts_with("the rock is destined"),
        "{}",
        first.text
    );
    assert_eq!(first.label, 1.0);
    // The file is sorted by label; the split is not.
    let train_pos = s.train.iter().filter(|e| e.label == 1.0).count();
    assert!((1300..1500).contains(&train_pos), "{train_pos}");
}

#[test]
fn split_is_deterministic_disjoint_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.csv");
    let rows: String = (0..101).map(|i| format!("{},text {i}\n", i % 3)).collect();
    std::fs::write(&path, rows).unwrap();
    let mut c = data_config(&path, "text_column = 1\nlabel_column = 0");
    let a = load_splits(&c).unwrap();
    assert_eq!(a, load_splits(&c).unwrap());
    assert_eq!(sizes(&a), (71, 10, 20));
    let texts: Vec<&str> = all(&a).map(|e| e.text.as_str()).collect();
    let unique: HashSet<&str> = texts.iter().copied().collect();
    assert_eq!((texts.len(), unique.len()), (101, 101));
    for e in all(&a) {
        let i: usize = e.text["text ".len()..].parse().unwrap();
        assert_eq!(e.label, (i % 3) as f32);
    }
    c.split_seed = 1;
    let b = load_splits(&c).unwrap();
    assert_ne!(a.train, b.train);
    assert_eq!(sizes(&a), sizes(&b));
}

/// One GLUE task folder: its files and rows in the task's real layout.
struct Fixture {
    preset: GluePreset,
    header: Option<&'static str>,
    /// Row `i` with label `label`.
    row: fn(usize, &str) -> String,
    labels: &'static [&'static str],
    test_file: &'static str,
}

const TRAIN_ROWS: usize = 10;
const TEST_ROWS: usize = 3;

fn fixtures() -> Vec<Fixture> {
    vec![
        Fixture {
            preset: GluePreset::Sst2,
            header: Some("sentence\tlabel"),
            row: |i, l| format!("it 's a \"charming\" film number {i} \t{l}"),
            labels: &["0", "1"],
            test_file: "dev.tsv",
        },
        Fixture {
            preset: GluePreset::Cola,
            header: None,
            row: |i, l| {
                let star = if l == "0" { "*" } else { "" };
                format!("gj04\t{l}\t{star}\tOur friends won't buy analysis {i}.")
            },
            labels: &["0", "1"],
            test_file: "dev.tsv",
        },
        Fixture {
            preset: GluePreset::Mrpc,
            // The real MRPC files start with a byte-order mark.
            header: Some("\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"),
            row: |i, l| {
                format!(
                    "{l}\t70287{i}\t70297{i}\tAmrozi called him \" the witness \" {i} .\tReferring to \" the witness \" , {i} ."
                )
            },
            labels: &["0", "1"],
            test_file: "dev.tsv",
        },
        Fixture {
            preset: GluePreset::Qqp,
            header: Some("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"),
            row: |i, l| {
                format!(
                    "{i}\t{}\t{}\tHow do I learn {i}?\tWhat is the way to learn {i}?\t{l}",
                    2 * i,
                    2 * i + 1
                )
            },
            labels: &["0", "1"],
            test_file: "dev.tsv",
        },
        Fixture {
            preset: GluePreset::Stsb,
            header: Some(
                "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            ),
            row: |i, l| {
                format!(
                    "{i}\tmain-captions\tMSRvid\t2012test\t000{i}\tnone\tnone\tA plane is taking off {i}.\tAn air plane is taking off {i}.\t{l}"
                )
            },
            labels: &["5.000", "3.800", "0.250"],
            test_file: "dev.tsv",
        },
        Fixture {
            preset: GluePreset::Mnli,
            header: Some(
                "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
            ),
            row: |i, l| {
                format!(
                    "{i}\t31193\t31193n\tgovernment\t( ( x ) )\t( ( y ) )\t(ROOT x)\t(ROOT y)\tConceptually cream skimming {i}.\tProduct and geography {i}.\t{l}\t{l}"
                )
            },
            labels: &["contradiction", "entailment", "neutral"],
            test_file: "dev_matched.tsv",
        },
        Fixture {
            preset: GluePreset::Qnli,
            header: Some("index\tquestion\tsentence\tlabel"),
            row: |i, l| {
                format!(
                    "{i}\tWhen did the third Digimon series begin {i}?\tUnlike the two seasons before it {i}.\t{l}"
                )
            },
            labels: &["entailment", "not_entailment"],
            test_file: "dev.tsv",
        },
        Fixture {
            preset: GluePreset::Rte,
            header: Some("index\tsentence1\tsentence2\tlabel"),
            row: |i, l| {
                format!(
                    "{i}\tNo Weapons of Mass Destruction Found in Iraq {i}.\tWeapons {i} Found.\t{l}"
                )
            },
            labels: &["entailment", "not_entailment"],
            test_file: "dev.tsv",
        },
    ]
}

/// Writes `f`'s train file and test file (and, for MNLI, a mismatched dev file that must not
/// be read); row `i` takes label `labels[i % len]`, test rows are numbered from 100.
fn write_fixture(dir: &Path, f: &Fixture) {
    std::fs::create_dir_all(dir).unwrap();
    let file = |rows: std::ops::Range<usize>| {
        let mut text = f.header.map(|h| format!("{h}\n")).unwrap_or_default();
        for i in rows {
            text.push_str(&(f.row)(i, f.labels[i % f.labels.len()]));
            text.push('\n');
        }
        text
    };
    std::fs::write(dir.join("train.tsv"), file(0..TRAIN_ROWS)).unwrap();
    std::fs::write(dir.join(f.test_file), file(100..100 + TEST_ROWS)).unwrap();
    if f.preset == GluePreset::Mnli {
        std::fs::write(dir.join("dev_mismatched.tsv"), file(200..201)).unwrap();
    }
}

#[test]
fn every_glue_preset_reads_its_real_layout() {
    let root = tempfile::tempdir().unwrap();
    for f in fixtures() {
        let dir = root.path().join(format!("{:?}", f.preset));
        write_fixture(&dir, &f);
        let mut c = data_config(&dir, "validation_fraction = 0.2");
        c.preset = Some(f.preset);
        let s = load_splits(&c).unwrap_or_else(|e| panic!("{:?}: {e}", f.preset));
        let what = format!("{:?}", f.preset);
        // Validation carved out of train.tsv (round(10 · 0.2) = 2); test = the dev file.
        assert_eq!(sizes(&s), (8, 2, TEST_ROWS), "{what}");
        assert_eq!(
            count_examples(&c).unwrap(),
            (TRAIN_ROWS + TEST_ROWS) as u64,
            "{what}"
        );
        assert_eq!(
            split_sizes(&c).unwrap(),
            SplitSizes {
                train: 8,
                validation: 2,
                test: TEST_ROWS as u64
            },
            "{what}"
        );
        let (task, metric, pair) = match f.preset {
            GluePreset::Sst2 => (TaskKind::Classification, MetricName::Accuracy, false),
            GluePreset::Cola => (TaskKind::Classification, MetricName::Matthews, false),
            GluePreset::Mrpc | GluePreset::Qqp => (TaskKind::Classification, MetricName::F1, true),
            GluePreset::Stsb => (TaskKind::Regression, MetricName::Pearson, true),
            _ => (TaskKind::Classification, MetricName::Accuracy, true),
        };
        assert_eq!((s.task, s.metric), (task, metric), "{what}");
        // Each example's number (in its text) gives back its row and so its label.
        let number = |t: &str| -> usize {
            t.split(|c: char| !c.is_ascii_digit())
                .rfind(|w| !w.is_empty())
                .unwrap()
                .parse()
                .unwrap()
        };
        let mut rows: Vec<usize> = s
            .train
            .iter()
            .chain(&s.validation)
            .map(|e| number(&e.text))
            .collect();
        rows.sort_unstable();
        assert_eq!(rows, (0..TRAIN_ROWS).collect::<Vec<_>>(), "{what}");
        let test_rows: Vec<usize> = s.test.iter().map(|e| number(&e.text)).collect();
        assert_eq!(
            test_rows,
            [100, 101, 102],
            "{what}: dev file, in file order"
        );
        for e in all(&s) {
            let i = number(&e.text);
            let written = f.labels[i % f.labels.len()];
            let expected = match task {
                TaskKind::Regression => written.parse::<f32>().unwrap(),
                TaskKind::Classification => {
                    f.labels.iter().position(|l| *l == written).unwrap() as f32
                }
            };
            assert_eq!(e.label, expected, "{what}: {}", e.text);
            assert_eq!(e.text_pair.is_some(), pair, "{what}");
            if let Some(p) = &e.text_pair {
                assert_eq!(number(p), i, "{what}: pair of {}", e.text);
            }
        }
        match task {
            TaskKind::Classification => {
                assert_eq!(s.label_names, f.labels, "{what}");
                assert_eq!(s.num_labels(), f.labels.len());
            }
            TaskKind::Regression => assert_eq!(s.num_labels(), 1),
        }
        // Quote characters are text, not CSV quoting.
        if f.preset == GluePreset::Mrpc {
            assert!(
                s.test[0]
                    .text
                    .starts_with("Amrozi called him \" the witness \" 100")
            );
        }
        if f.preset == GluePreset::Sst2 {
            assert_eq!(s.test[0].text, "it 's a \"charming\" film number 100");
        }
        // Deterministic, and the config's metric overrides the preset's.
        assert_eq!(load_splits(&c).unwrap(), s, "{what}");
        if task == TaskKind::Classification {
            c.metric = Some(MetricName::Matthews);
            assert_eq!(load_splits(&c).unwrap().metric, MetricName::Matthews);
        }
    }
}

#[test]
fn glue_errors_name_the_file() {
    let root = tempfile::tempdir().unwrap();
    let f = &fixtures()[0];
    write_fixture(root.path(), f);
    std::fs::remove_file(root.path().join("dev.tsv")).unwrap();
    let mut c = data_config(root.path(), "");
    c.preset = Some(GluePreset::Sst2);
    let e = err(&c);
    assert!(
        e.contains("cannot read data file") && e.contains("dev.tsv"),
        "{e}"
    );
    // A label outside the preset's set.
    std::fs::write(root.path().join("dev.tsv"), "sentence\tlabel\ngood\t2\n").unwrap();
    let e = err(&c);
    assert!(
        e.contains("dev.tsv: record 1 (line 2): unknown label \"2\""),
        "{e}"
    );
    assert!(e.contains("\"0\", \"1\""), "{e}");
    // Another task's columns are missing from this folder's header.
    c.preset = Some(GluePreset::Mnli);
    let e = err(&c);
    assert!(e.contains("train.tsv: no column \"sentence1\""), "{e}");
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(&dir, "h.csv", "label,sentence\n1,good\n0,bad\n1,fine\n");

    // A missing column names it and lists the header.
    let c = data_config(&csv, "has_header = true\ntext_column = \"text\"");
    let e = err(&c);
    assert!(e.contains("h.csv"), "{e}");
    assert!(
        e.contains("no column \"text\" (data.text_column) in the header; the header has \"label\", \"sentence\""),
        "{e}"
    );

    // A name with the header switched off.
    let c = data_config(&csv, "has_header = false\ntext_column = \"sentence\"");
    let e = err(&c);
    assert!(
        e.contains(
            "h.csv: data.text_column = \"sentence\" names a column, but data.has_header = false"
        ),
        "{e}"
    );

    // An unknown label names file, record, value and the allowed labels.
    let c = data_config(
        &csv,
        "has_header = true\ntext_column = \"sentence\"\nlabels = [\"0\", \"2\"]",
    );
    let e = err(&c);
    assert!(
        e.contains(
            "h.csv: record 1 (line 2): unknown label \"1\"; the allowed labels are \"0\", \"2\""
        ),
        "{e}"
    );

    // An empty file, and a header with no rows.
    let empty = write(&dir, "e.csv", "");
    let e = err(&data_config(&empty, "text_column = 1\nlabel_column = 0"));
    assert!(e.contains("e.csv: no examples found"), "{e}");
    let e = count_examples(&data_config(&empty, ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("e.csv: no examples found"), "{e}");
    let header_only = write(&dir, "ho.csv", "label,text\n");
    let e = err(&data_config(&header_only, "has_header = true"));
    assert!(e.contains("ho.csv: no examples found"), "{e}");

    // A missing file.
    let e = err(&data_config(
        &dir.path().join("nope.csv"),
        "text_column = 1\nlabel_column = 0",
    ));
    assert!(
        e.contains("cannot read data file") && e.contains("nope.csv"),
        "{e}"
    );

    // An index column on JSONL.
    let jsonl = write(&dir, "d.jsonl", "{\"text\": \"a\", \"label\": 1}\n");
    let e = err(&data_config(&jsonl, "format = \"jsonl\"\ntext_column = 0"));
    assert!(
        e.contains(
            "d.jsonl: data.text_column = 0 is a column index, but JSON lines and Arrow data sets have named fields"
        ),
        "{e}"
    );

    // Malformed JSON.
    let broken = write(
        &dir,
        "b.jsonl",
        "{\"text\": \"a\", \"label\": 1}\n{\"text\": \n",
    );
    let e = err(&data_config(&broken, "format = \"jsonl\""));
    assert!(
        e.contains("b.jsonl: record 2 (line 2): invalid JSON"),
        "{e}"
    );

    // A regression label that is not a number.
    let reg = write(&dir, "r.tsv", "s\ty\na\t0.5\nb\thigh\n");
    let e = err(&data_config(
        &reg,
        "format = \"tsv\"\nhas_header = true\ntext_column = \"s\"\nlabel_column = \"y\"\ntask = \"regression\"",
    ));
    assert!(
        e.contains("r.tsv: record 2 (line 3): label \"high\" is not a finite number (data.task = regression)"),
        "{e}"
    );

    // Invalid UTF-8.
    let bad = dir.path().join("u.csv");
    std::fs::write(&bad, b"1,ok\n0,caf\xe9\n").unwrap();
    let e = err(&data_config(&bad, "text_column = 1\nlabel_column = 0"));
    assert!(
        e.contains("u.csv: record 2 (line 2): field 2 is not valid UTF-8"),
        "{e}"
    );
}

#[test]
fn configured_labels_fix_the_class_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "l.jsonl",
        &(0..20)
            .map(|i| {
                format!(
                    "{{\"text\": \"t{i}\", \"label\": \"{}\"}}\n",
                    ["pos", "neg"][i % 2]
                )
            })
            .collect::<String>(),
    );
    let mut c = data_config(&path, "format = \"jsonl\"\nlabels = [\"pos\", \"neg\"]");
    let s = load_splits(&c).unwrap();
    assert_eq!(s.label_names, ["pos", "neg"]);
    for e in all(&s) {
        let i: usize = e.text[1..].parse().unwrap();
        assert_eq!(e.label, (i % 2) as f32);
    }
    c.labels = None;
    assert_eq!(load_splits(&c).unwrap().label_names, ["neg", "pos"]);
    c.text_column = Column::Name("body".into());
    let e = err(&c);
    assert!(
        e.contains("l.jsonl: record 1 (line 1): no field `body` (data.text_column)"),
        "{e}"
    );
}

#[test]
fn epoch_order_is_a_seeded_permutation_per_epoch() {
    let n = 1000;
    let e0 = epoch_order(n, 5, 0, None, 32);
    let mut sorted = e0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_eq!(e0, epoch_order(n, 5, 0, None, 32));
    assert_ne!(e0, epoch_order(n, 5, 1, None, 32));
    assert_ne!(e0, epoch_order(n, 6, 0, None, 32));
}

#[test]
fn bucketing_groups_similar_lengths_and_stays_random() {
    let n = 3000;
    let b = 32;
    // Lengths 5..=64, unrelated to the index order.
    let lengths: Vec<usize> = (0..n).map(|i| 5 + (i * 7919 + 13) % 60).collect();
    let spread = |order: &[usize]| -> f64 {
        let total: usize = order
            .chunks(b)
            .map(|batch| {
                let l = batch.iter().map(|&i| lengths[i]);
                l.clone().max().unwrap() - l.min().unwrap()
            })
            .sum();
        total as f64 / order.len().div_ceil(b) as f64
    };
    let plain = epoch_order(n, 3, 0, None, b);
    let bucketed = epoch_order(n, 3, 0, Some(&lengths), b);
    let mut sorted = bucketed.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_eq!(bucketed, epoch_order(n, 3, 0, Some(&lengths), b));
    assert_ne!(bucketed, epoch_order(n, 3, 1, Some(&lengths), b));
    let (p, q) = (spread(&plain), spread(&bucketed));
    // Unbucketed batches span nearly the whole range; bucketed ones about 60 / 50.
    assert!(
        p > 40.0 && q < 3.0,
        "mean length spread per batch: {p} plain, {q} bucketed"
    );
    // The batch order is shuffled: batch lengths do not rise monotonically within a chunk.
    let firsts: Vec<usize> = bucketed.chunks(b).take(20).map(|c| lengths[c[0]]).collect();
    assert!(firsts.windows(2).any(|w| w[0] > w[1]), "{firsts:?}");
}
