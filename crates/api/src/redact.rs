//! `Debug` for generated messages that carry secrets or tokens (their derived `Debug` is turned
//! off in `build.rs`). Values are replaced by their size; keys stay visible because they help
//! debugging and are not secret.

use std::collections::HashMap;
use std::fmt;

use crate::csi::v1::{NodeExpandVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest};
use crate::provider::v1alpha1::{File, MountRequest};

/// The volume-context key under which kubelet passes service account tokens.
const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// Prints a map's keys with `<redacted N bytes>` for every value.
struct Redacted<'a>(&'a HashMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.0.iter().collect();
        keys.sort();
        f.debug_map()
            .entries(keys.into_iter().map(|(k, v)| (k, Size(v.len()))))
            .finish()
    }
}

/// Prints a volume context in full except the tokens entry.
struct VolumeContext<'a>(&'a HashMap<String, String>);

impl fmt::Debug for VolumeContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<_> = self.0.iter().collect();
        entries.sort();
        let mut map = f.debug_map();
        for (k, v) in entries {
            if k == TOKENS_KEY {
                map.entry(k, &Size(v.len()));
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

/// Prints `<redacted N bytes>`.
struct Size(usize);

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

impl fmt::Debug for NodePublishVolumeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodePublishVolumeRequest")
            .field("volume_id", &self.volume_id)
            .field("publish_context", &self.publish_context)
            .field("staging_target_path", &self.staging_target_path)
            .field("target_path", &self.target_path)
            .field("volume_capability", &self.volume_capability)
            .field("readonly", &self.readonly)
            .field("secrets", &Redacted(&self.secrets))
            .field("volume_context", &VolumeContext(&self.volume_context))
            .finish()
    }
}

impl fmt::Debug for NodeStageVolumeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeStageVolumeRequest")
            .field("volume_id", &self.volume_id)
            .field("publish_context", &self.publish_context)
            .field("staging_target_path", &self.staging_target_path)
            .field("volume_capability", &self.volume_capability)
            .field("secrets", &Redacted(&self.secrets))
            .field("volume_context", &VolumeContext(&self.volume_context))
            .finish()
    }
}

impl fmt::Debug for NodeExpandVolumeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeExpandVolumeRequest")
            .field("volume_id", &self.volume_id)
            .field("volume_path", &self.volume_path)
            .field("capacity_range", &self.capacity_range)
            .field("staging_target_path", &self.staging_target_path)
            .field("volume_capability", &self.volume_capability)
            .field("secrets", &Redacted(&self.secrets))
            .finish()
    }
}

impl fmt::Debug for MountRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `attributes` is JSON that embeds the service account tokens: print its size only.
        f.debug_struct("MountRequest")
            .field("attributes", &Size(self.attributes.len()))
            .field("secrets", &Size(self.secrets.len()))
            .field("target_path", &self.target_path)
            .field("permission", &self.permission)
            .field("current_object_version", &self.current_object_version)
            .finish()
    }
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("contents", &Size(self.contents.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::v1alpha1::MountResponse;

    #[test]
    fn publish_request_debug_hides_secrets_and_tokens() {
        let req = NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: "/var/lib/kubelet/pods/x/mount".into(),
            secrets: HashMap::from([("password".into(), "hunter2".into())]),
            volume_context: HashMap::from([
                ("secretProviderClass".into(), "my-class".into()),
                (TOKENS_KEY.into(), r#"{"sts":{"token":"eyJtoken"}}"#.into()),
            ]),
            ..Default::default()
        };
        let printed = format!("{req:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("eyJtoken"), "{printed}");
        assert!(printed.contains("my-class"), "{printed}");
        assert!(printed.contains("password"), "{printed}");
    }

    #[test]
    fn mount_messages_debug_hide_values() {
        let req = MountRequest {
            attributes: r#"{"csi.storage.k8s.io/serviceAccount.tokens":"eyJtoken"}"#.into(),
            secrets: r#"{"k":"hunter2"}"#.into(),
            permission: "420".into(),
            ..Default::default()
        };
        let printed = format!("{req:?}");
        assert!(
            !printed.contains("eyJtoken") && !printed.contains("hunter2"),
            "{printed}"
        );
        assert!(printed.contains("420"), "{printed}");

        let resp = MountResponse {
            files: vec![File {
                path: "db-password".into(),
                mode: 0o644,
                contents: b"hunter2".to_vec(),
            }],
            ..Default::default()
        };
        let printed = format!("{resp:?}");
        // A derived Debug would print the bytes as numbers: "104, 117, 110, ...".
        assert!(!printed.contains("104, 117, 110"), "{printed}");
        assert!(printed.contains("db-password"), "{printed}");
        assert!(printed.contains("<redacted 7 bytes>"), "{printed}");
    }
}
