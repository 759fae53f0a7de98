//! Compiles our `.proto` files with protox (pure Rust, no `protoc` needed) and generates prost
//! messages plus tonic clients and servers.

use std::path::Path;

const PROTOS: &[&str] = &[
    "csi/v1/csi.proto",
    "provider/v1alpha1/service.proto",
    "pluginregistration/v1/api.proto",
];

/// Messages that carry secrets or tokens. Their derived `Debug` is suppressed; `src/redact.rs`
/// supplies one that prints only the keys and sizes.
const REDACTED: &[&str] = &[
    ".csi.v1.NodeStageVolumeRequest",
    ".csi.v1.NodePublishVolumeRequest",
    ".csi.v1.NodeExpandVolumeRequest",
    ".v1alpha1.MountRequest",
    ".v1alpha1.File",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    let files: Vec<_> = PROTOS.iter().map(|p| root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(REDACTED)
        .compile_fds(fds)?;
    Ok(())
}
