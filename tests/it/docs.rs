//! The layout stays as documented: every `src/` and `plugins/src/` file docs/architecture.md
//! names exists, every file under those directories is named (in full, or by file name inside
//! the chart block of its directory), and no two top-level modules use each other.

use std::collections::BTreeSet;
use std::path::Path;

fn tokens(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c.is_whitespace() || "`(),;:".contains(c))
        .filter(|t| !t.is_empty())
}

/// A path of the gateway's or the plugin crate's sources.
fn is_source_path(token: &str) -> bool {
    token.starts_with("src/") || token.starts_with("plugins/src/")
}

/// The source files the page names.
fn named_files(doc: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut block_dir: Option<String> = None;
    for line in doc.lines() {
        if line.starts_with("```") {
            block_dir = None;
        }
        if line.contains(" ─") {
            // A chart entry: `src/dir/ ─ ...` opens a directory block, `src/file.rs ─` ends one.
            block_dir = tokens(line)
                .find(|t| is_source_path(t))
                .filter(|t| t.ends_with('/'))
                .map(str::to_string);
        }
        for token in tokens(line) {
            let token = token.trim_end_matches('.');
            if is_source_path(token) && token.ends_with(".rs") {
                named.insert(token.to_string());
            } else if let (Some(dir), true) = (&block_dir, token.ends_with(".rs")) {
                if !token.contains('/') {
                    named.insert(format!("{dir}{token}"));
                }
            }
        }
    }
    named
}

fn source_files(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .expect("inside");
            out.insert(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn architecture_names_every_source_file_and_only_existing_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("the page");
    let named = named_files(&doc);
    let mut actual = BTreeSet::new();
    source_files(&root.join("src"), &mut actual);
    source_files(&root.join("plugins/src"), &mut actual);
    let missing_files: Vec<_> = named.difference(&actual).collect();
    assert!(
        missing_files.is_empty(),
        "docs/architecture.md names files that do not exist: {missing_files:?}"
    );
    let unnamed: Vec<_> = actual.difference(&named).collect();
    assert!(
        unnamed.is_empty(),
        "docs/architecture.md does not name: {unnamed:?}"
    );
}

/// The top-level modules each top-level module of `src/` uses (`crate::name`), tests left out.
fn module_uses(root: &Path) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut files = BTreeSet::new();
    source_files(&root.join("src"), &mut files);
    let mut uses = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
    for file in files {
        let module = file["src/".len()..]
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(root.join(&file)).expect("source");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            let used: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !used.is_empty() && used != module {
                uses.entry(module.clone()).or_default().insert(used);
            }
        }
    }
    uses
}

#[test]
fn no_two_modules_use_each_other() {
    let uses = module_uses(Path::new(env!("CARGO_MANIFEST_DIR")));
    let cycles: Vec<(&String, &String)> = uses
        .iter()
        .flat_map(|(a, used)| used.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a < b && uses.get(*b).is_some_and(|u| u.contains(*a)))
        .collect();
    assert!(cycles.is_empty(), "modules that use each other: {cycles:?}");
}
