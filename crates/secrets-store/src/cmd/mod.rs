//! One module per subcommand.

pub mod node;
pub mod provider_aws;
pub mod signal;
