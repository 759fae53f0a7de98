//! The library half of the `secrets-store` binary: the subcommands whose logic stands on its own
//! and is tested in process as well as through the binary (`tests/check_cli.rs`).

pub mod check;
