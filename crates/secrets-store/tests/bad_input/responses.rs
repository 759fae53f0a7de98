//! Hostile provider responses: in process straight into `AtomicWriter`, and over the upstream
//! `v1alpha1` gRPC API on a real unix socket (our server adapter in front of a provider that
//! returns whatever a case asks for, our client in front of the writer). Each case scans the
//! whole parent of the target directory before and after: nothing may change anywhere.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use secrets_store_driver::AtomicWriter;
use secrets_store_provider::grpc::client::{ClientConfig, ExternalProvider};
use secrets_store_provider::grpc::server;
use secrets_store_provider::{
    Attributes, FileMode, MountRequest, MountResponse, ObjectVersion, Provider, ProviderError,
    ProviderErrorKind, ProviderFile, SecretBytes,
};

use super::{Tally, expect_names};

/// Everything under `dir`, without following symlinks: path → (type, size, mode, link target).
type Snapshot = BTreeMap<PathBuf, (char, u64, u32, Option<PathBuf>)>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let kind = if meta.file_type().is_symlink() {
                'l'
            } else if meta.is_dir() {
                stack.push(path.clone());
                'd'
            } else {
                'f'
            };
            let link = fs::read_link(&path).ok();
            let size = if kind == 'f' { meta.len() } else { 0 };
            out.insert(
                path.strip_prefix(dir).unwrap().to_path_buf(),
                (kind, size, meta.permissions().mode(), link),
            );
        }
    }
    out
}

fn file(path: &str, mode: FileMode) -> ProviderFile {
    ProviderFile {
        path: path.to_string(),
        mode,
        contents: SecretBytes::new(format!("contents of {}", path.len()).into_bytes()),
    }
}

fn good_payload() -> Vec<ProviderFile> {
    vec![file("db", 0o644), file("dir/user", 0o600)]
}

/// A temp parent holding a `target` volume dir and a sibling a traversal would hit.
struct Volume {
    parent: tempfile::TempDir,
}

impl Volume {
    fn new(prepopulated: bool) -> Self {
        let parent = tempfile::tempdir().unwrap();
        fs::create_dir(parent.path().join("target")).unwrap();
        fs::write(parent.path().join("sibling"), b"outside the volume").unwrap();
        let v = Self { parent };
        if prepopulated {
            AtomicWriter::new(v.target())
                .write(&good_payload())
                .unwrap();
        }
        v
    }

    fn target(&self) -> PathBuf {
        self.parent.path().join("target")
    }

    /// Runs `write` and checks that nothing under the parent changed.
    fn unchanged(&self, write: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let before = snapshot(self.parent.path());
        let result = write();
        let after = snapshot(self.parent.path());
        if before != after {
            return Err(format!("the filesystem changed: {before:?} -> {after:?}"));
        }
        result
    }
}

/// Rejected by `AtomicWriter::validate` and by `write`, naming `needle`, with nothing written.
fn reject_files(t: &mut Tally, label: &str, files: Vec<ProviderFile>, needle: &str) {
    for prepopulated in [false, true] {
        let files = files.clone();
        let needle = needle.to_string();
        let input = format!(
            "files {prepopulated} {:?}",
            files.iter().map(|f| (&f.path, f.mode)).collect::<Vec<_>>()
        );
        let label = format!(
            "{label}/{}",
            if prepopulated {
                "over-existing"
            } else {
                "fresh"
            }
        );
        t.case(label, input, move || {
            let msg = AtomicWriter::validate(&files)
                .err()
                .ok_or("validate accepted it")?
                .to_string();
            expect_names(&msg, &[&needle])?;
            let v = Volume::new(prepopulated);
            v.unchanged(|| match AtomicWriter::new(v.target()).write(&files) {
                Ok(o) => Err(format!("written: {o:?}")),
                Err(e) => expect_names(&e.to_string(), &[&needle]),
            })
        });
    }
}

fn hostile_paths() -> Vec<(&'static str, String, &'static str)> {
    let long_element = "e".repeat(256);
    let long_path = "p/".repeat(2048) + "pp";
    vec![
        ("absolute-etc", "/etc/passwd".into(), "/etc/passwd"),
        ("absolute-root", "/".into(), "absolute"),
        ("absolute-double", "//x".into(), "//x"),
        (
            "absolute-target-sibling",
            "/tmp/sibling".into(),
            "/tmp/sibling",
        ),
        ("dotdot", "..".into(), "can not contain .."),
        ("dotdot-sibling", "../sibling".into(), "../sibling"),
        (
            "dotdot-deep",
            "../../../../etc/cron.d/x".into(),
            "etc/cron.d",
        ),
        ("dotdot-inner", "a/../../sibling".into(), "a/../../sibling"),
        ("dotdot-trailing", "a/..".into(), "a/.."),
        ("dotdot-nested", "a/b/../../../x".into(), "a/b/../../../x"),
        ("reserved-data", "..data".into(), "..data"),
        ("reserved-data-child", "..data/x".into(), "..data/x"),
        (
            "reserved-data-escape",
            "..data/../../sibling".into(),
            "..data/../../sibling",
        ),
        ("reserved-data-tmp", "..data_tmp".into(), "..data_tmp"),
        (
            "reserved-payload-dir",
            "..2026_01_01_00_00_00.000000000/x".into(),
            "..2026",
        ),
        ("reserved-triple-dot", "...".into(), "..."),
        ("reserved-prefix", "..x".into(), "..x"),
        ("reserved-inner", "a/..b".into(), "a/..b"),
        ("current-dir", ".".into(), "a . component"),
        ("current-dir-prefix", "./a".into(), "./a"),
        ("current-dir-inner", "a/./b".into(), "a/./b"),
        ("double-slash", "a//b".into(), "a//b"),
        ("trailing-slash", "a/".into(), "a/"),
        ("nul-middle", "a\0b".into(), "NUL"),
        ("nul-only", "\0".into(), "NUL"),
        ("nul-after-dir", "a/\0".into(), "NUL"),
        ("empty", String::new(), "empty"),
        ("element-256", long_element, "longer than 255"),
        ("path-4097", long_path + "p", "longer than 4096"),
    ]
}

/// (label, files with modes, what the error must name).
type FileSetCase = (&'static str, Vec<(&'static str, FileMode)>, &'static str);

fn run_writer(t: &mut Tally) {
    for (what, path, needle) in hostile_paths() {
        reject_files(t, &format!("path/{what}"), vec![file(&path, 0o644)], needle);
        // A valid file first: the whole payload is refused, the good file is not written either.
        reject_files(
            t,
            &format!("path-after-good/{what}"),
            vec![file("good", 0o644), file(&path, 0o644)],
            needle,
        );
    }
    let sets: Vec<FileSetCase> = vec![
        (
            "duplicate",
            vec![("a", 0o644), ("a", 0o644)],
            "\"a\" conflicts",
        ),
        (
            "duplicate-modes",
            vec![("a", 0o644), ("a", 0o600)],
            "\"a\" conflicts",
        ),
        (
            "duplicate-nested",
            vec![("x/y", 0o644), ("z", 0o644), ("x/y", 0o644)],
            "\"x/y\" conflicts",
        ),
        (
            "file-then-dir",
            vec![("a", 0o644), ("a/b", 0o644)],
            "\"a\" conflicts",
        ),
        (
            "dir-then-file",
            vec![("a/b/c", 0o644), ("a/b", 0o644)],
            "\"a/b\" conflicts",
        ),
        (
            "file-over-deep-dir",
            vec![("d/e/f/g", 0o644), ("d", 0o644)],
            "\"d\" conflicts",
        ),
        ("mode-setuid-overflow", vec![("a", 0o10000)], "mode"),
        ("mode-filetype-bits", vec![("a", 0o100644)], "mode"),
        ("mode-max", vec![("a", u32::MAX)], "mode"),
        (
            "mode-after-good",
            vec![("good", 0o644), ("bad", 0o20000)],
            "\"bad\" has invalid mode",
        ),
    ];
    for (what, list, needle) in sets {
        let files = list.into_iter().map(|(p, m)| file(p, m)).collect();
        reject_files(t, &format!("set/{what}"), files, needle);
    }
}

/// A provider that answers each mount with the response the request's `case` attribute names.
struct Hostile {
    responses: BTreeMap<String, MountResponse>,
}

#[async_trait]
impl Provider for Hostile {
    fn name(&self) -> &str {
        "hostile"
    }

    fn version(&self) -> &str {
        "0"
    }

    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let case = request.attributes.get("case").unwrap_or_default();
        self.responses
            .get(case)
            .cloned()
            .ok_or_else(|| ProviderError::new(ProviderErrorKind::Internal, "unknown case"))
    }
}

fn versions() -> Vec<ObjectVersion> {
    vec![ObjectVersion {
        id: "db".into(),
        version: "v1".into(),
    }]
}

fn response(files: Vec<ProviderFile>) -> MountResponse {
    MountResponse {
        files,
        object_versions: versions(),
    }
}

fn big(path: &str, bytes: usize) -> ProviderFile {
    ProviderFile {
        path: path.into(),
        mode: 0o644,
        contents: SecretBytes::new(vec![b'x'; bytes]),
    }
}

fn run_grpc(t: &mut Tally) {
    const MIB: usize = 1024 * 1024;
    let small_limit = MIB;
    // (case, response, small client limit?, what the error must name)
    let mut cases: Vec<(String, MountResponse, bool, String)> = vec![
        (
            "zero-versions".into(),
            MountResponse {
                files: good_payload(),
                object_versions: vec![],
            },
            false,
            "no object versions".into(),
        ),
        (
            "zero-versions-no-files".into(),
            MountResponse::default(),
            false,
            "no object versions".into(),
        ),
        (
            "payload-100MiB".into(),
            response(vec![big("huge", 100 * MIB)]),
            false,
            "byte limit".into(),
        ),
        (
            "payload-5MiB".into(),
            response(vec![big("huge", 5 * MIB)]),
            false,
            "byte limit".into(),
        ),
        (
            "payload-over-small-limit".into(),
            response(vec![big("huge", MIB + MIB / 2)]),
            true,
            "byte limit".into(),
        ),
        (
            "many-files-over-limit".into(),
            response((0..5_000).map(|i| big(&format!("f{i}"), 1024)).collect()),
            false,
            "byte limit".into(),
        ),
        (
            "mode-over-0777".into(),
            response(vec![file("a", 0o4755)]),
            false,
            "mode".into(),
        ),
        (
            "mode-negative".into(),
            response(vec![file("a", 0o20000)]),
            false,
            "mode".into(),
        ),
    ];
    for (what, path, needle) in hostile_paths() {
        // The client or the writer may be the one to refuse it: both name the path itself.
        let _ = needle;
        let needle = if path.is_empty() || path.contains('\0') || path.len() > 64 {
            "file path".to_string()
        } else {
            format!("{path:?}")
        };
        cases.push((
            format!("path/{what}"),
            response(vec![file("good", 0o644), file(&path, 0o644)]),
            false,
            needle,
        ));
    }
    for (what, list, needle) in [
        ("duplicate", vec!["a", "a"], "conflicts"),
        ("file-and-dir", vec!["a", "a/b"], "conflicts"),
    ] {
        cases.push((
            format!("set/{what}"),
            response(list.into_iter().map(|p| file(p, 0o644)).collect()),
            false,
            needle.into(),
        ));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hostile.sock");
    let provider = Arc::new(Hostile {
        responses: cases
            .iter()
            .map(|(c, r, _, _)| (c.clone(), r.clone()))
            .collect(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let _guard = rt.enter();
        let listener = server::bind(&socket).unwrap();
        let socket = socket.clone();
        rt.spawn(async move {
            server::serve_on(provider, listener, &socket, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    let client = |limit: usize| {
        ExternalProvider::with_config(
            "hostile",
            &socket,
            ClientConfig {
                max_response_bytes: limit,
                attempts: 1,
                ..ClientConfig::default()
            },
        )
    };
    let default_client = client(secrets_store_provider::grpc::DEFAULT_MAX_RESPONSE_BYTES);
    let small_client = client(small_limit);

    for (case, _, small, needle) in cases {
        let c = if small {
            &small_client
        } else {
            &default_client
        };
        let input = format!("grpc {case}");
        t.case(format!("grpc/{case}"), input, || {
            let v = Volume::new(true);
            let request = MountRequest {
                attributes: Attributes([("case".to_string(), case.clone())].into()),
                target_path: v.target(),
                permission: 0o644,
                ..MountRequest::default()
            };
            v.unchanged(|| match rt.block_on(c.mount(request)) {
                Err(e) => {
                    if e.kind != ProviderErrorKind::InvalidResponse {
                        return Err(format!("kind {:?}: {e}", e.kind));
                    }
                    expect_names(&e.message, &["\"hostile\"", &needle])
                }
                // What the client lets through, the writer must stop.
                Ok(resp) => match AtomicWriter::new(v.target()).write(&resp.files) {
                    Ok(o) => Err(format!("written: {o:?}")),
                    Err(e) => expect_names(&e.to_string(), &[&needle]),
                },
            })
        });
    }
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
    assert!(!socket.exists(), "the server left its socket behind");
}

pub fn run() -> usize {
    let mut t = Tally::default();
    run_writer(&mut t);
    run_grpc(&mut t);
    t.finish(100)
}
