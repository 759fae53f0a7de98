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
