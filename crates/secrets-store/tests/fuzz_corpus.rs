//! Replays the committed fuzz regression corpus (`fuzz/corpus/<target>/`) through the same
//! check functions the cargo-fuzz targets run, on stable, as part of `make test`.

#[path = "../../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()))
        .map(|e| e.expect("read corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "corpus {} has only {} inputs",
        dir.display(),
        files.len()
    );
    files
}

/// Runs `check` on every corpus file; a panic names the file that caused it.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(target);
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            std::panic::resume_unwind(Box::new(format!(
                "{} failed: {}",
                path.display(),
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )));
        }
    }
    files.len()
}

#[test]
fn objects_corpus() {
    replay("objects", checks::check_objects);
}

#[test]
fn objects_yaml_corpus() {
    replay("objects_yaml", checks::check_objects_yaml);
}

#[test]
fn jmes_path_corpus() {
    replay("jmes_path", checks::check_jmes_path);
}

#[test]
fn volume_context_corpus() {
    replay("volume_context", checks::check_volume_context);
}

#[test]
fn paths_corpus() {
    replay("paths", checks::check_paths);
}

/// The corpus keeps inputs that must stay rejected: make sure they are (a check function that
/// silently accepted everything would pass the replay above).
#[test]
fn hostile_seeds_stay_rejected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let read = |t: &str, n: &str| std::fs::read(dir.join(t).join(format!("{n}.txt"))).unwrap();
    for seed in [
        "alias-traversal",
        "jmes-alias-traversal",
        "dotdot-name-translation-off",
        "nul-alias",
        "huge-name",
        "bad-yaml-unclosed",
        "unknown-object-type",
        "arn-region-mismatch",
        "duplicate-names",
        "billion-laughs",
        "jmes-hyphen-unquoted",
        "leading-dotdot-component",
    ] {
        let attrs = checks::decode_objects_input(&read("objects", seed)).unwrap();
        assert!(checks::check_parameters(&attrs).is_err(), "{seed} accepted");
    }
    // The seeds for issue 13's inputs are refused for the right reason.
    for (target, seed, why) in [
        (
            "objects",
            "billion-laughs",
            "anchors and aliases (&name, *name) are not supported",
        ),
        ("objects", "jmes-bangs-nesting", "path nests 40 levels deep"),
        (
            "objects",
            "jmes-parens-nesting",
            "path nests 40 levels deep",
        ),
        (
            "objects",
            "jmes-doubling",
            "'@' (current node) is not supported",
        ),
        ("objects_yaml", "billion-laughs", "anchors and aliases"),
        ("objects_yaml", "alias-storage-bomb", "anchors and aliases"),
        ("objects_yaml", "one-alias", "anchors and aliases"),
        ("objects_yaml", "anchor-unused", "anchors and aliases"),
        (
            "objects_yaml",
            "two-documents",
            "more than one YAML document",
        ),
    ] {
        let attrs = checks::decode_objects_input(&read(target, seed)).unwrap();
        let err = checks::check_parameters(&attrs).expect_err(seed);
        assert!(err.contains(why), "{target}/{seed}: {err}");
    }
    for seed in [
        "quoted-star-amp",
        "merge-key",
        "flow-and-block",
        "escapes-and-folding",
        "tags",
        "nulls-and-numbers",
        "deep-unknown-field",
        "valid-basic",
    ] {
        let attrs = checks::decode_objects_input(&read("objects_yaml", seed)).unwrap();
        checks::check_parameters(&attrs).unwrap_or_else(|e| panic!("objects_yaml/{seed}: {e}"));
    }
    let jmes = |seed: &str| {
        let text = String::from_utf8(read("jmes_path", seed)).unwrap();
        checks::check_jmes_path_text(&text).map_err(|e| e.to_string())
    };
    for seed in [
        "key",
        "sub-keys",
        "quoted-hyphen",
        "quoted-escapes",
        "index-negative",
        "root-index",
        "whitespace",
        "long-key-at-limit",
    ] {
        jmes(seed).unwrap_or_else(|e| panic!("jmes_path/{seed}: {e}"));
    }
    for (seed, why) in [
        (
            "bangs-over-length",
            "path is 5000 bytes; the limit is 4096 bytes",
        ),
        ("bangs-nesting", "path nests 4000 levels deep"),
        ("parens-2047", "path nests 2047 levels deep"),
        ("not-paren-alternating", "path nests 34 levels deep"),
        ("doubling", "'@' (current node) is not supported"),
        ("function", "(functions and grouping) is not supported"),
        ("unquoted-hyphen", "must be quoted"),
    ] {
        let err = jmes(seed).expect_err(seed);
        assert!(err.contains(why), "jmes_path/{seed}: {err}");
    }
    for seed in ["valid-basic", "valid-jmes-hyphen-quoted", "unicode-names"] {
        let attrs = checks::decode_objects_input(&read("objects", seed)).unwrap();
        let p = checks::check_parameters(&attrs).unwrap_or_else(|e| panic!("{seed}: {e}"));
        assert!(!p.objects.is_empty());
    }
    for seed in [
        "absolute",
        "dotdot",
        "reserved",
        "nul",
        "duplicate",
        "file-and-dir",
        "long-path",
    ] {
        let files = checks::decode_files_input(&read("paths", seed));
        assert!(checks::check_files(&files).is_err(), "{seed} accepted");
    }
    let files = checks::decode_files_input(&read("paths", "valid"));
    assert_eq!(checks::check_files(&files), Ok(()));
    for seed in [
        "missing-class",
        "bad-ephemeral",
        "bad-token-json",
        "token-wrong-audience",
    ] {
        let input = checks::decode_volume_context_input(&read("volume_context", seed));
        assert!(
            checks::check_volume_context_input(&input).is_err(),
            "{seed} accepted"
        );
    }
    let input = checks::decode_volume_context_input(&read("volume_context", "valid-with-token"));
    assert_eq!(checks::check_volume_context_input(&input), Ok(()));
}
