//! The crate's modules depend on each other one way: among the top-level modules of
//! `src/`, and among the files of each folder module, no module uses one that uses it back.
//!
//! A dependency is any `crate::…` or `super::…` path in a file's non-test code (doc and line
//! comments excluded), resolved to the longest module it names. A child using its own parent's
//! items (or the parent re-exporting its children) is how Rust folder modules are built and is
//! not counted; what is counted is a dependency between two different children of the same
//! folder (or between two top-level modules), seen at that folder's level.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path of a file under `src/`: `a/b.rs` → `[a, b]`, `a/mod.rs` → `[a]`, `lib.rs` → `[]`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The source without its test module and without comment lines.
fn code_of(source: &str) -> String {
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every `crate::`/`super::` path in `code`, as absolute segments seen from `module`; a
/// `{a, b::c}` group yields one path per item.
fn paths_in(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident(chars[i - 1]);
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        let (mut base, skip) = if starts_word && rest.starts_with("crate::") {
            (Vec::new(), 7)
        } else if starts_word && rest.starts_with("super::") {
            (module[..module.len().saturating_sub(1)].to_vec(), 7)
        } else {
            i += 1;
            continue;
        };
        i += skip;
        let mut grouped = false;
        // Segments up to the first non-path character; a `{…}` group ends the path.
        loop {
            if chars.get(i) == Some(&'{') {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .map_or(chars.len(), |p| i + p);
                let group: String = chars[i + 1..end].iter().collect();
                for item in group.split(',') {
                    let mut p = base.clone();
                    p.extend(
                        item.trim()
                            .split("::")
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty() && s != "self"),
                    );
                    out.push(p);
                }
                i = end;
                grouped = true;
                break;
            }
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let seg: String = chars[start..i].iter().collect();
            if seg == "super" {
                base.pop();
            } else if !seg.is_empty() {
                base.push(seg);
            }
            if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
                i += 2;
                continue;
            }
            break;
        }
        if !grouped {
            out.push(base);
        }
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// For each folder module (`[]` is the crate), the dependencies between its children.
type Levels = BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>>;

fn sibling_dependencies(files: &[(Vec<String>, String)]) -> Levels {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut levels = Levels::new();
    for (module, source) in files {
        for path in paths_in(module, &code_of(source)) {
            let target = resolve(&modules, &path);
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // the same module, its ancestor or its descendant
            }
            levels
                .entry(module[..common].to_vec())
                .or_default()
                .entry(module[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    levels
}

/// One cycle per folder level that has one, written `a -> b -> a`.
fn cycles(levels: &Levels) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut found = Vec::new();
    for (folder, graph) in levels {
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
                let prefix = if folder.is_empty() {
                    "crate".to_string()
                } else {
                    format!("crate::{}", folder.join("::"))
                };
                found.push(format!("in {prefix}: {}", cycle.join(" -> ")));
                break;
            }
        }
    }
    found
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(Vec<String>, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(&path, root, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let source = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let relative = path.strip_prefix(root).expect("under src");
            out.push((module_of(relative), source));
        }
    }
}

fn crate_levels(manifest_dir: &Path) -> (usize, Levels) {
    let src = manifest_dir.join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    (files.len(), sibling_dependencies(&files))
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let flexlora = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (n, levels) = crate_levels(flexlora);
    assert!(n > 50, "read {n} files of {}", flexlora.display());
    // The check sees real dependencies: the engine uses the step, and commands use training.
    assert!(levels[&vec!["train".to_string()]]["engine"].contains("step"));
    assert!(levels[&Vec::new()]["cli"].contains("train"));
    let found = cycles(&levels);
    assert!(
        found.is_empty(),
        "flexlora's modules that depend on each other:\n{}",
        found.join("\n")
    );
    let (n, levels) = crate_levels(&flexlora.join("../flexlora-core"));
    assert!(n > 3, "read {n} files of flexlora-core");
    let found = cycles(&levels);
    assert!(
        found.is_empty(),
        "flexlora-core's modules that depend on each other:\n{}",
        found.join("\n")
    );
}

fn file(module: &str, source: &str) -> (Vec<String>, String) {
    let m = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(String::from).collect()
    };
    (m, source.to_string())
}

#[test]
fn the_check_finds_sibling_and_top_level_cycles_and_allows_parent_child_use() {
    let files = [
        file("", "mod a; mod b; mod d;"),
        file("a", "use crate::b::Thing;"),
        file("b", "fn f() { crate::a::g(); }"),
        file("d", "pub use x::X; pub struct E; fn f() { x::run() }"),
        file("d::x", "use super::E; use super::{y, E};"),
        file("d::y", "use super::x::X;"),
        // A comment or a test module does not count.
        file(
            "d::z",
            "// crate::a::f\nfn f() {}\n#[cfg(test)]\nmod t { use crate::a; }",
        ),
    ];
    let levels = sibling_dependencies(&files);
    let found = cycles(&levels);
    assert_eq!(
        found,
        ["in crate: a -> b -> a", "in crate::d: x -> y -> x"],
        "{levels:?}"
    );
    assert!(!levels.get(&Vec::new()).is_some_and(|g| g.contains_key("d")));
}
