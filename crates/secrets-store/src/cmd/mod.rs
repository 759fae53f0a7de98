//! One module per subcommand.

pub mod check;
pub mod crds;
pub mod node;
pub mod provider_aws;
pub mod signal;
