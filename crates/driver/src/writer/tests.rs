use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use secrets_store_provider::SecretBytes;

use super::*;

fn file(path: &str, mode: FileMode, contents: &str) -> ProviderFile {
    ProviderFile {
        path: path.to_string(),
        mode,
        contents: SecretBytes::from(contents.to_string()),
    }
}

fn visible(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect()
}

#[test]
fn writes_files_with_modes_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(dir.path());
    let out = w
        .write(&[file("a", 0o600, "one"), file("sub/b", 0o644, "two")])
        .unwrap();
    assert!(matches!(out, WriteOutcome::Written { .. }));
    assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "one");
    assert_eq!(fs::read_to_string(dir.path().join("sub/b")).unwrap(), "two");
    let mode = fs::metadata(dir.path().join("a"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        fs::read_link(dir.path().join("a")).unwrap(),
        Path::new("..data/a")
    );
    let data = fs::read_link(dir.path().join(DATA_DIR_NAME)).unwrap();
    let name = data.to_string_lossy();
    // ..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN
    assert!(name.starts_with("..2"), "{name}");
    assert_eq!(
        name.len(),
        "..2026_01_01_00_00_00.000000000".len(),
        "{name}"
    );
}

#[test]
fn unchanged_payload_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(dir.path());
    let files = [file("a", 0o644, "one")];
    let WriteOutcome::Written { dir: first } = w.write(&files).unwrap() else {
        panic!("first write must write");
    };
    assert_eq!(w.write(&files).unwrap(), WriteOutcome::Unchanged);
    assert_eq!(w.current_dir().unwrap().as_deref(), Some(first.as_str()));
    // A mode change alone is a change.
    assert!(matches!(
        w.write(&[file("a", 0o600, "one")]).unwrap(),
        WriteOutcome::Written { .. }
    ));
}

#[test]
fn stale_names_and_old_dirs_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(dir.path());
    w.write(&[file("a", 0o644, "1"), file("b/c", 0o644, "2")])
        .unwrap();
    w.write(&[file("a", 0o644, "3"), file("d", 0o644, "4")])
        .unwrap();
    assert_eq!(
        visible(dir.path()),
        ["a", "d"].into_iter().map(String::from).collect()
    );
    let hidden: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != DATA_DIR_NAME)
        .collect();
    assert_eq!(
        hidden.len(),
        1,
        "only the current payload dir remains: {hidden:?}"
    );
    assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "3");
}

#[test]
fn a_planted_data_link_never_leads_the_writer_outside_the_volume() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("canary"), "keep").unwrap();
    for planted in [
        outside.path().to_string_lossy().into_owned(),
        "../outside".to_string(),
        "..data/../../x".to_string(),
        "..".to_string(),
        "..data".to_string(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&planted, dir.path().join(DATA_DIR_NAME)).unwrap();
        let w = AtomicWriter::new(dir.path());
        assert_eq!(w.current_dir().unwrap(), None, "{planted}");
        w.write(&[file("a", 0o644, "one")]).unwrap();
        let now = w.current_dir().unwrap().expect("a payload of ours");
        assert!(is_payload_name(&now), "{now}");
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "one");
        assert_eq!(
            fs::read_to_string(outside.path().join("canary")).unwrap(),
            "keep",
            "{planted}"
        );
    }
}

#[test]
fn invalid_paths_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(dir.path());
    for bad in ["../escape", "/abs", "a/../../b", "..data", "a//b", "a/..b"] {
        let err = w.write(&[file("ok", 0o644, "x"), file(bad, 0o644, "x")]);
        assert!(
            matches!(err, Err(WriteError::InvalidPath(_))),
            "{bad}: {err:?}"
        );
    }
    let err = w.write(&[file("a", 0o644, "x"), file("a/b", 0o644, "y")]);
    assert!(matches!(
        err,
        Err(WriteError::InvalidPath(PathError::Conflict(_)))
    ));
    let err = w.write(&[file("a", 0o644, "x"), file("a", 0o644, "y")]);
    assert!(matches!(
        err,
        Err(WriteError::InvalidPath(PathError::Conflict(_)))
    ));
    let err = w.write(&[file("a", 0o100644, "x")]);
    assert!(matches!(err, Err(WriteError::InvalidMode { .. })));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

/// Every file carries `generation:<n>:<name>:<padding>`; the padding makes files large enough
/// that a non-atomic write would be observable.
fn generation_payload(generation: usize) -> Vec<ProviderFile> {
    let padding = "x".repeat(8192 + generation % 7);
    ["alpha", "beta", "nested/gamma", "delta"]
        .iter()
        .map(|name| {
            file(
                name,
                0o644,
                &format!("generation:{generation}:{name}:{padding}:end"),
            )
        })
        .collect()
}

fn parse_generation(name: &str, contents: &str) -> usize {
    let mut parts = contents.splitn(4, ':');
    assert_eq!(parts.next(), Some("generation"), "torn file {name}");
    let generation: usize = parts.next().unwrap().parse().expect("torn generation");
    assert_eq!(
        parts.next(),
        Some(name),
        "file {name} has another file's content"
    );
    let rest = parts.next().expect("torn file");
    assert!(rest.ends_with(":end"), "torn file {name}: partial content");
    assert_eq!(rest.len(), 8192 + generation % 7 + 4, "torn file {name}");
    generation
}

#[test]
fn readers_never_see_torn_or_mixed_sets_during_1000_changes() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().to_path_buf();
    let w = AtomicWriter::new(&target);
    w.write(&generation_payload(0)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let consistent_reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (done, consistent_reads, target) =
            (done.clone(), consistent_reads.clone(), target.clone());
        std::thread::spawn(move || {
            let names = ["alpha", "beta", "nested/gamma", "delta"];
            let mut last_seen = 0;
            while !done.load(Ordering::Relaxed) {
                // Read through the visible names, bracketed by two reads of `..data`: when the
                // link did not move, the set must be one generation.
                let Ok(before) = fs::read_link(target.join(DATA_DIR_NAME)) else {
                    continue;
                };
                let mut generations = Vec::new();
                let mut vanished = false;
                for name in names {
                    match fs::read_to_string(target.join(name)) {
                        Ok(c) => generations.push(parse_generation(name, &c)),
                        // The writer retired the dir between our open calls; retry.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => vanished = true,
                        Err(e) => panic!("read {name}: {e}"),
                    }
                }
                let after = fs::read_link(target.join(DATA_DIR_NAME)).unwrap();
                if vanished || before != after {
                    continue;
                }
                assert!(
                    generations.iter().all(|g| *g == generations[0]),
                    "mixed set: {generations:?}"
                );
                assert!(generations[0] >= last_seen, "went back in time");
                last_seen = generations[0];
                consistent_reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for generation in 1..=1000 {
        let out = w.write(&generation_payload(generation)).unwrap();
        assert!(matches!(out, WriteOutcome::Written { .. }));
    }
    done.store(true, Ordering::Relaxed);
    reader.join().expect("reader saw a torn or mixed set");
    assert!(consistent_reads.load(Ordering::Relaxed) > 0);
    let last = fs::read_to_string(target.join("alpha")).unwrap();
    assert_eq!(parse_generation("alpha", &last), 1000);
}
