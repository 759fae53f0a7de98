//! Wire and API types of the Secrets Store CSI driver, with no I/O.
//!
//! - [`crd`]: the `SecretProviderClass` and `SecretProviderClassPodStatus` custom resources
//!   (group `secrets-store.csi.x-k8s.io`), schema-compatible with upstream v1.6, and their CRDs.
//! - [`labels`]: label and annotation keys shared by the driver and the secret sync.
//! - [`duration`]: the one parser of durations written as `30s`, `2m`, `1h` or seconds (`0.25`).
//! - [`names`]: the field managers and Event reporter the agent acts under.
//! - [`csi::v1`], [`provider::v1alpha1`], [`registration::v1`]: prost messages and tonic
//!   clients/servers generated from our own `.proto` files, whose packages, names and field
//!   numbers match the upstream wire contracts.
//!
//! Messages that carry secrets or tokens (`NodePublishVolumeRequest`, `MountRequest`, `File`, …)
//! have a hand-written `Debug` that prints sizes instead of values.

pub mod crd;
pub mod duration;
pub mod labels;
pub mod names;
mod redact;

/// Container Storage Interface messages and services.
pub mod csi {
    /// CSI spec v1 (`csi.v1`): Identity and Node services.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }

    #[cfg(test)]
    mod tests;
}

/// The upstream driver ↔ provider API.
pub mod provider {
    /// Package `v1alpha1`: service `CSIDriverProvider` (`Version`, `Mount`).
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1alpha1 {
        tonic::include_proto!("v1alpha1");
    }

    #[cfg(test)]
    mod tests;
}

/// Kubelet's plugin registration API.
pub mod registration {
    /// Registration v1 (wire package `pluginregistration`): service `Registration`.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("pluginregistration");
    }

    #[cfg(test)]
    mod tests;
}
