//! Regenerates `deploy/crds/*.yaml` from the Rust types.
//!
//! `cargo run -p secrets-store-api --example gen-crds`

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in secrets_store_api::crd::crd_files() {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
