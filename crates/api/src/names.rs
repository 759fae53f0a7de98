//! The names this agent acts under on the API server: the field managers of its server-side
//! applies and the reporter of its Events. One place, so that status writes, Secret writes,
//! Events and the RBAC/audit rules that match on them agree.

use kube::runtime::events::Reporter;

/// The product name: the reporting controller of every Event, the field manager of
/// `SecretProviderClassPodStatus` writes, and the prefix of the User-Agent.
pub const PRODUCT: &str = "secrets-store-rs";

/// The cluster-wide controller (`secrets-store controller`): the reporting controller of its
/// Events and the rollout controller's field manager. (The pod-less sync writes Secrets as
/// `secrets-store-rs/controller`, under [`SECRET_FIELD_MANAGER_PREFIX`] like the node agents, so
/// the drift reconcilers take its data for secrets-store's own.)
pub const CONTROLLER: &str = "secrets-store-rs-controller";

/// Field manager of the `SecretProviderClassPodStatus` objects the node service applies.
pub const STATUS_FIELD_MANAGER: &str = PRODUCT;

/// What every field manager of synced Secrets starts with (each node's, and the pod-less sync's
/// `secrets-store-rs/controller`): the drift reconciler tells our writes from others' by it.
pub const SECRET_FIELD_MANAGER_PREFIX: &str = "secrets-store-rs/";

/// Field manager of the synced Secrets written from `node`: per node, so one node's apply
/// never takes over the fields another node wrote (`secrets-store-rs/<node>`).
pub fn secret_field_manager(node: &str) -> String {
    format!("{SECRET_FIELD_MANAGER_PREFIX}{node}")
}

/// The reporter of Events emitted from `node` (`reportingController` is [`PRODUCT`],
/// `reportingInstance` the node).
pub fn reporter(node: &str) -> Reporter {
    Reporter {
        controller: PRODUCT.into(),
        instance: Some(node.to_owned()),
    }
}

/// The reporter of Events the controller replica `identity` emits.
pub fn controller_reporter(identity: &str) -> Reporter {
    Reporter {
        controller: CONTROLLER.into(),
        instance: Some(identity.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_audit_and_rbac_rules_match() {
        assert_eq!(STATUS_FIELD_MANAGER, "secrets-store-rs");
        assert_eq!(secret_field_manager("node-1"), "secrets-store-rs/node-1");
        let r = reporter("node-1");
        assert_eq!(r.controller, "secrets-store-rs");
        assert_eq!(r.instance.as_deref(), Some("node-1"));
        assert_eq!(
            controller_reporter("c-0").controller,
            "secrets-store-rs-controller"
        );
    }
}
