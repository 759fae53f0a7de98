//! A container's environment built the way kubelet builds it (`makeEnvironmentVariables`), so
//! tests can assert what `kubectl exec … env` would show for variables from the pod spec.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

/// Why kubelet would refuse to start the container (`CreateContainerConfigError`). The messages
/// are kubelet's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// The container is not in the pod spec.
    #[error("container {0:?} not found in pod spec")]
    NoSuchContainer(String),
    /// A referenced Secret does not exist (the apiserver's NotFound message).
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    /// A referenced ConfigMap does not exist.
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    /// A referenced key is missing from a Secret.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        /// The key.
        key: String,
        /// Secret namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// A referenced key is missing from a ConfigMap.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        /// The key.
        key: String,
        /// ConfigMap namespace.
        namespace: String,
        /// ConfigMap name.
        name: String,
    },
    /// A `fieldRef` path the simulator does not support.
    #[error("unsupported fieldRef {0}")]
    UnsupportedField(String),
    /// The API call failed for another reason.
    #[error("{0}")]
    Api(String),
}

/// Resolves `env` and `envFrom` of `container` in `pod`, reading Secrets and ConfigMaps from the
/// API like kubelet: `envFrom` first, then `env` (later entries win), `optional` references to
/// missing objects or keys are skipped, `$(VAR)` references to earlier variables are expanded.
pub async fn resolved_env(
    client: &Client,
    pod: &Pod,
    container: &str,
) -> Result<BTreeMap<String, String>, EnvError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let c: &Container = spec
        .and_then(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .find(|c| c.name == container)
        })
        .ok_or_else(|| EnvError::NoSuchContainer(container.to_string()))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut env = BTreeMap::new();

    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match get_secret(&secrets, &r.name, optional).await? {
                Some(data) => {
                    for (k, v) in data {
                        env.insert(format!("{prefix}{k}"), v);
                    }
                }
                None => continue,
            }
        }
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            if let Some(data) = get_config_map(&config_maps, &r.name, optional).await? {
                for (k, v) in data {
                    env.insert(format!("{prefix}{k}"), v);
                }
            }
        }
    }

    for var in c.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(r) = &from.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                let Some(data) = get_secret(&secrets, &r.name, optional).await? else {
                    continue;
                };
                match data.get(&r.key) {
                    Some(v) => v.clone(),
                    None if optional => continue,
                    None => {
                        return Err(EnvError::SecretKeyNotFound {
                            key: r.key.clone(),
                            namespace: ns.clone(),
                            name: r.name.clone(),
                        });
                    }
                }
            } else if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                let Some(data) = get_config_map(&config_maps, &r.name, optional).await? else {
                    continue;
                };
                match data.get(&r.key) {
                    Some(v) => v.clone(),
                    None if optional => continue,
                    None => {
                        return Err(EnvError::ConfigMapKeyNotFound {
                            key: r.key.clone(),
                            namespace: ns.clone(),
                            name: r.name.clone(),
                        });
                    }
                }
            } else if let Some(f) = &from.field_ref {
                field_value(pod, &f.field_path)?
            } else {
                return Err(EnvError::UnsupportedField(format!("{var:?}")));
            }
        } else {
            expand(var.value.as_deref().unwrap_or(""), &env)
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

async fn get_secret(
    api: &Api<Secret>,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    match api
        .get_opt(name)
        .await
        .map_err(|e| EnvError::Api(e.to_string()))?
    {
        Some(s) => Ok(Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
        )),
        None if optional => Ok(None),
        None => Err(EnvError::SecretNotFound(name.to_string())),
    }
}

async fn get_config_map(
    api: &Api<ConfigMap>,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    match api
        .get_opt(name)
        .await
        .map_err(|e| EnvError::Api(e.to_string()))?
    {
        Some(cm) => Ok(Some(cm.data.unwrap_or_default())),
        None if optional => Ok(None),
        None => Err(EnvError::ConfigMapNotFound(name.to_string())),
    }
}

fn field_value(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let v = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        _ => return Err(EnvError::UnsupportedField(path.to_string())),
    };
    Ok(v.unwrap_or_default())
}

/// Expands `$(NAME)` from earlier variables; `$$` escapes; unknown references stay as written
/// (kubelet's `expansion.Expand` semantics).
fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_matches_kubelet() {
        let env = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }

    #[test]
    fn error_texts_are_kubelets() {
        assert_eq!(
            EnvError::SecretNotFound("foosecret".into()).to_string(),
            "secret \"foosecret\" not found"
        );
        assert_eq!(
            EnvError::SecretKeyNotFound {
                key: "K".into(),
                namespace: "ns".into(),
                name: "s".into()
            }
            .to_string(),
            "couldn't find key K in Secret ns/s"
        );
    }
}
