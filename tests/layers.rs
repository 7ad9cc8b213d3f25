//! The one-way flow, enforced: reads every file of `src/` and the layer table in
//! docs/ARCHITECTURE.md, and fails on an import from a higher layer, on modules that import
//! each other (directly or round a loop), and on a module the table does not place.
//! Granularity: the top-level modules of the crate (`jobs/` counts as `jobs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Imports = BTreeMap<String, BTreeSet<String>>;

/// The code of a file without comments and without its `#[cfg(test)]` items.
fn production_code(text: &str) -> String {
    let mut code = String::new();
    let mut skipping_test_item = false;
    let mut depth: i64 = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        let line = line.split(" //").next().unwrap_or(line);
        if !skipping_test_item && trimmed.starts_with("#[cfg(test)]") {
            skipping_test_item = true;
            depth = 0;
            continue;
        }
        if skipping_test_item {
            depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
            // The item ends where its braces close (or at its `;` for a one-line item).
            if depth <= 0 && (line.contains('}') || line.trim_end().ends_with(';')) {
                skipping_test_item = false;
            }
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// The leading identifier of `text`.
fn identifier(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The crate-level modules a piece of code names through `crate::…`, including each entry
/// of a group such as `crate::{a, b::c, d::{e, f}}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    rooted_paths(code, "crate::", &[])
        .into_iter()
        .filter_map(|path| path.into_iter().next())
        .collect()
}

/// Every `.rs` file under `src`, as its path relative to `src` and its production code.
fn production_sources(src: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut sources = Vec::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("src is readable") {
                pending.push(entry.expect("entry").path());
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(src).expect("under src").to_path_buf();
            let code = production_code(&std::fs::read_to_string(&path).expect("readable"));
            sources.push((relative, code));
        }
    }
    sources
}

/// Every top-level module of `src/` and the other top-level modules it imports.
fn crate_imports(src: &Path) -> Imports {
    let mut modules: Imports = BTreeMap::new();
    for (relative, code) in production_sources(src) {
        let Some(first) = module_path_of(&relative).into_iter().next() else {
            continue; // lib.rs, main.rs
        };
        let imports = modules.entry(first.clone()).or_default();
        for named in named_modules(&code) {
            if named != first {
                imports.insert(named);
            }
        }
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    for imports in modules.values_mut() {
        imports.retain(|name| known.contains(name));
    }
    modules
}

/// The table under `## Layers`: module → layer number.
fn layer_table(architecture: &str) -> BTreeMap<String, u32> {
    let section = architecture
        .split("\n## Layers\n")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a `## Layers` section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut layers = BTreeMap::new();
    for row in section.lines().filter(|line| line.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(number) = cells
            .get(1)
            .and_then(|cell| cell.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        for module in cells.get(2).unwrap_or(&"").split(',') {
            let module = module.trim().trim_matches('`');
            if !module.is_empty() {
                layers.insert(module.to_string(), number);
            }
        }
    }
    layers
}

/// What breaks the layering, one line each; empty when none.
fn violations(imports: &Imports, layers: &BTreeMap<String, u32>) -> Vec<String> {
    let mut found = Vec::new();
    for module in imports.keys() {
        if !layers.contains_key(module) {
            found.push(format!(
                "`{module}` is not in the layer table of docs/ARCHITECTURE.md: place it"
            ));
        }
    }
    for module in layers.keys() {
        if !imports.contains_key(module) {
            found.push(format!(
                "the layer table names `{module}`, which src/ does not have"
            ));
        }
    }
    for (module, targets) in imports {
        let Some(own) = layers.get(module) else {
            continue;
        };
        for target in targets {
            if let Some(theirs) = layers.get(target) {
                if theirs > own {
                    found.push(format!(
                        "`{module}` (layer {own}) imports `{target}` (layer {theirs}), a higher layer"
                    ));
                }
            }
        }
    }
    found.extend(cycles(imports));
    found
}

/// Every import cycle, as `a → b → a`: depth-first search, reporting the loop from the first
/// node met twice.
fn cycles(imports: &Imports) -> Vec<String> {
    fn visit(
        node: &str,
        imports: &Imports,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(start) = path.iter().position(|m| m == node) {
            let mut ring = path[start..].to_vec();
            ring.push(node.to_string());
            found.push(format!("import cycle: {}", ring.join(" → ")));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for target in imports.get(node).into_iter().flatten() {
            visit(target, imports, path, done, found);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in imports.keys() {
        visit(node, imports, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// The module path a file of `src/` defines (`jobs/mod.rs` → `jobs`, `graph/errors.rs` →
/// `graph::errors`; `lib.rs` → the crate root, empty).
fn module_path_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    parts
}

/// The paths a piece of code names from `crate::` or `super::` (relative to `here`), each as
/// segments; a group (`super::{a::b, c}`) gives one path per entry.
fn named_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let parent = &here[..here.len().saturating_sub(1)];
    let mut paths = rooted_paths(code, "crate::", &[]);
    paths.extend(rooted_paths(code, "super::", parent));
    paths
}

/// The paths after each `root` (`crate::` or `super::`) in `code`, prefixed by `base`.
fn rooted_paths(code: &str, root: &str, base: &[String]) -> Vec<Vec<String>> {
    fn segments(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = text;
        loop {
            let name = identifier(rest);
            if name.is_empty() {
                return found;
            }
            rest = &rest.trim_start()[name.len()..];
            found.push(name);
            match rest.strip_prefix("::") {
                Some(after) if !after.starts_with('{') => rest = after,
                _ => return found,
            }
        }
    }
    let mut paths = Vec::new();
    for (at, _) in code.match_indices(root) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let after = &code[at + root.len()..];
        let mut entries = Vec::new();
        if let Some(group) = after.strip_prefix('{') {
            let (mut depth, mut start) = (0, 0);
            for (i, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        entries.push(&group[start..i]);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        entries.push(&group[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            entries.push(after);
        }
        for entry in entries {
            let named = segments(entry);
            if !named.is_empty() {
                paths.push(base.iter().cloned().chain(named).collect());
            }
        }
    }
    paths
}

/// Every file of `src/` and the other files it imports from (a path resolves to the file of
/// its longest prefix that is a module). Declaring a child module (`mod x;`) and naming a
/// child by a bare path are not counted: the check is for `crate::` and `super::` imports.
fn file_imports(src: &Path) -> Imports {
    let sources = production_sources(src);
    let by_module: BTreeMap<Vec<String>, String> = sources
        .iter()
        .map(|(relative, _)| (module_path_of(relative), relative.display().to_string()))
        .collect();
    let mut imports = Imports::new();
    for (relative, code) in &sources {
        let name = relative.display().to_string();
        let here = module_path_of(relative);
        let targets = imports.entry(name.clone()).or_default();
        for path in named_paths(code, &here) {
            let file = (1..=path.len())
                .rev()
                .find_map(|n| by_module.get(&path[..n]));
            if let Some(file) = file.filter(|file| **file != name) {
                targets.insert(file.clone());
            }
        }
    }
    imports
}

#[test]
fn the_crate_follows_its_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let imports = crate_imports(&root.join("src"));
    let architecture =
        std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("architecture doc");
    let layers = layer_table(&architecture);
    assert!(layers.len() > 20, "the table was read: {layers:?}");
    // The reader sees real imports (not an empty map that passes by default).
    assert!(imports["jobs"].contains("graph") && imports["app"].contains("worker"));
    let found = violations(&imports, &layers);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn no_file_of_src_is_in_an_import_cycle() {
    let imports = file_imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The reader resolves real paths: `super::` within jobs/ and `crate::` into graph/.
    assert!(imports["jobs/graph_lifecycle.rs"].contains("jobs/subscription_steps.rs"));
    assert!(imports["jobs/graph_notification.rs"].contains("graph/resources.rs"));
    let found = cycles(&imports);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn a_wrong_way_import_a_cycle_and_an_unplaced_module_are_caught() {
    let code = "use crate::{clock::now_unix, graph::{GraphError, x}};\nfn f() { crate::queue::go(); }\n// crate::cli is a comment\n#[cfg(test)]\nmod tests {\n    use crate::app;\n}\n";
    let names = named_modules(&production_code(code));
    assert_eq!(
        names,
        BTreeSet::from(["clock".to_string(), "graph".into(), "queue".into()])
    );
    let layers = layer_table("# x\n\n## Layers\n\n| layer | modules |\n|---|---|\n| 1 base | `clock` |\n| 2 store | `store`, `audit` |\n| 3 top | `app` |\n\n## Next\n| 9 | `nope` |\n");
    assert_eq!(layers.len(), 4, "{layers:?}");
    let imports: Imports = [
        ("clock", vec!["store"]),
        ("store", vec!["audit"]),
        ("audit", vec!["store"]),
        ("app", vec!["clock"]),
        ("stray", vec![]),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.into_iter().map(String::from).collect()))
    .collect();
    let found = violations(&imports, &layers);
    assert!(
        found
            .iter()
            .any(|v| v.contains("`clock` (layer 1) imports `store` (layer 2)")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("import cycle")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|v| v.contains("`stray` is not in the layer table")),
        "{found:?}"
    );
}
