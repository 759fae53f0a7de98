//! `secrets-store crds`: print or write the CRDs generated from the Rust types.

use std::path::PathBuf;

use anyhow::Context;

/// Flags of `secrets-store crds`.
#[derive(clap::Args, Debug)]
pub struct CrdsArgs {
    /// Write one file per CRD (upstream's file names) into this directory instead of printing.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Prints the CRDs as one YAML stream, or writes them to `--out-dir`.
pub fn run(args: CrdsArgs) -> anyhow::Result<()> {
    let Some(dir) = args.out_dir else {
        print!("{}", secrets_store_api::crd::crds_yaml());
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, yaml) in secrets_store_api::crd::crd_files() {
        let path = dir.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
