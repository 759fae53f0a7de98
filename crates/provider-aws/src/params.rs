//! SecretProviderClass `spec.parameters` → validated mount parameters.
//!
//! Pure: no I/O. Everything a mount can get wrong in its parameters is rejected here, before any
//! network call. The rules are ASCP 3.1.x's (so classes that work there work here and produce the
//! same file names) plus the gaps ASCP leaves open: path traversal in every file name (jmesPath
//! aliases and bare `..` included), two objects writing the same file, and unknown
//! `preferredAddressType` values.

use std::collections::{BTreeMap, HashSet};

use secrets_store_provider::{FileMode, conflicting_path, validate_path};

use crate::arn::{Arn, ObjectKind};
pub use crate::file_names::{file_name, parse_mode};
use crate::jmes_path::{KeyPath, KeyPathError};
use crate::limits::{Exceeded, Limit, SHOWN_NAME_BYTES, SHOWN_PATH_BYTES, shown};
use crate::objects_yaml::{RawObject, parse_objects};

/// Parameter keys, as ASCP spells them.
mod keys {
    pub const REGION: &str = "region";
    pub const FAILOVER_REGION: &str = "failoverRegion";
    pub const PATH_TRANSLATION: &str = "pathTranslation";
    pub const USE_POD_IDENTITY: &str = "usePodIdentity";
    pub const PREFERRED_ADDRESS_TYPE: &str = "preferredAddressType";
    pub const OBJECTS: &str = "objects";
    pub const NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
    pub const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";
    pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
}

/// A parameter validation failure. The message names the object (by its `objectName`) and field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A top-level parameter is invalid.
    #[error("parameter {key}: {reason}")]
    Parameter {
        /// The parameter key.
        key: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The `objects` YAML does not parse.
    #[error("parameter objects: invalid YAML: {0}")]
    ObjectsYaml(String),
    /// One object is invalid.
    #[error("object {object:?}: {field}: {reason}")]
    Object {
        /// The object's `objectName` (or its index when the name is missing).
        object: String,
        /// The offending field.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// An input is over one of the [`crate::limits`].
    #[error("{scope}: {exceeded}")]
    Limit {
        /// The parameter or object (and field) at fault, e.g. `object "db": jmesPath entry 0`.
        scope: String,
        /// Which limit, and the size seen.
        exceeded: Exceeded,
    },
}

impl ParamError {
    fn param(key: &'static str, reason: impl Into<String>) -> Self {
        Self::Parameter {
            key,
            reason: reason.into(),
        }
    }
}

/// How `/` in object names becomes part of a file name (`pathTranslation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathTranslation {
    /// Replace every `/` with this character (ASCP default: `_`).
    Replace(char),
    /// Keep `/` (creating sub-directories) but strip leading slashes.
    Off,
}

/// Which Pod Identity Agent address to use (`preferredAddressType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AddressType {
    /// IPv4 first, then IPv6.
    #[default]
    Auto,
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
}

/// Which version of an object to fetch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct VersionSelector {
    /// Secrets Manager VersionId or SSM version number.
    pub version: Option<String>,
    /// Secrets Manager VersionStage or SSM label.
    pub label: Option<String>,
}

impl VersionSelector {
    /// Whether this asks for the current version (batchable).
    pub fn is_latest(&self) -> bool {
        self.version.is_none() && self.label.is_none()
    }
}

/// One jmesPath extraction: a JSON value inside a secret written to its own file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JmesSpec {
    /// The expression as written (for messages).
    pub path: String,
    /// The expression, parsed.
    pub key_path: KeyPath,
    /// The file name (alias after path translation).
    pub file_name: String,
    /// Explicit permission, if any.
    pub mode: Option<FileMode>,
}

/// The object to read in the failover region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverSpec {
    /// Name or ARN in the failover region.
    pub name: String,
    /// Version to fetch there.
    pub selector: VersionSelector,
}

/// One validated object of the `objects` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSpec {
    /// `objectName` as written (name, full ARN or partial ARN).
    pub name: String,
    /// Secrets Manager or SSM.
    pub kind: ObjectKind,
    /// Which version to fetch.
    pub selector: VersionSelector,
    /// The file name (alias or name after path translation).
    pub file_name: String,
    /// Explicit permission, if any (else the request's default).
    pub mode: Option<FileMode>,
    /// Values extracted from the secret's JSON into their own files.
    pub jmes: Vec<JmesSpec>,
    /// An alternative object for the failover region.
    pub failover: Option<FailoverSpec>,
}

/// The pod the mount is for, from the volume context kubelet adds.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodInfo {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The pod's ServiceAccount.
    pub service_account: String,
}

/// Everything a mount needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountParameters {
    /// Primary region.
    pub region: String,
    /// Region tried when the primary fails with a retryable/regional error.
    pub failover_region: Option<String>,
    /// Use EKS Pod Identity instead of IRSA.
    pub use_pod_identity: bool,
    /// Pod Identity Agent address family.
    pub address_type: AddressType,
    /// The pod.
    pub pod: PodInfo,
    /// The objects, in the order written.
    pub objects: Vec<ObjectSpec>,
}

/// Refuses a region that is not shaped like an AWS region name: it becomes the endpoint's host
/// name, and the pod's token and credentials go there.
fn check_region(key: &'static str, region: &str) -> Result<(), ParamError> {
    if crate::region::is_region_name(region) {
        return Ok(());
    }
    Err(ParamError::param(
        key,
        format!(
            "{:?} is not an AWS region name (lowercase, like us-east-1 or us-gov-west-1)",
            shown(region, SHOWN_NAME_BYTES)
        ),
    ))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Parses and validates the attributes of a mount request.
///
/// `default_region` is the provider's own region (`AWS_REGION`, else the node's
/// `topology.kubernetes.io/region` label), used when the class sets none.
pub fn parse(
    attrs: &BTreeMap<String, String>,
    default_region: Option<&str>,
) -> Result<MountParameters, ParamError> {
    let get = |k: &str| attrs.get(k).map(String::as_str).unwrap_or("");

    let region = match get(keys::REGION) {
        "" => default_region
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                ParamError::param(
                    keys::REGION,
                    "not set, and neither AWS_REGION nor the node label topology.kubernetes.io/region gives one",
                )
            })?
            .to_string(),
        r => r.to_string(),
    };
    check_region(keys::REGION, &region)?;
    let failover_region = non_empty(get(keys::FAILOVER_REGION));
    if let Some(f) = &failover_region {
        check_region(keys::FAILOVER_REGION, f)?;
    }
    if failover_region.as_deref() == Some(region.as_str()) {
        return Err(ParamError::param(
            keys::FAILOVER_REGION,
            format!("{region}: failover region cannot be the same as the primary region"),
        ));
    }
    let translation = parse_translation(get(keys::PATH_TRANSLATION))?;
    let use_pod_identity = match get(keys::USE_POD_IDENTITY) {
        "" => false,
        s => parse_go_bool(s).ok_or_else(|| {
            ParamError::param(keys::USE_POD_IDENTITY, format!("{s:?} is not a boolean"))
        })?,
    };
    let address_type = match get(keys::PREFERRED_ADDRESS_TYPE)
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "auto" => AddressType::Auto,
        "ipv4" => AddressType::Ipv4,
        "ipv6" => AddressType::Ipv6,
        other => {
            return Err(ParamError::param(
                keys::PREFERRED_ADDRESS_TYPE,
                format!("{other:?} is not one of ipv4, ipv6, auto"),
            ));
        }
    };
    let pod = PodInfo {
        namespace: get(keys::NAMESPACE).to_string(),
        name: get(keys::POD_NAME).to_string(),
        service_account: get(keys::SERVICE_ACCOUNT).to_string(),
    };

    let raw = match get(keys::OBJECTS) {
        yaml if yaml.trim().is_empty() => {
            return Err(ParamError::param(keys::OBJECTS, "missing or empty"));
        }
        yaml => parse_objects(yaml)?,
    };
    if raw.is_empty() {
        return Err(ParamError::param(keys::OBJECTS, "lists no objects"));
    }

    let objects = validate_objects(raw, &region, failover_region.as_deref(), translation)?;
    Ok(MountParameters {
        region,
        failover_region,
        use_pod_identity,
        address_type,
        pod,
        objects,
    })
}

fn parse_translation(s: &str) -> Result<PathTranslation, ParamError> {
    if s.is_empty() {
        return Ok(PathTranslation::Replace('_'));
    }
    if s.eq_ignore_ascii_case("false") {
        return Ok(PathTranslation::Off);
    }
    // ASCP compares Go byte length, so a multi-byte character is rejected there too.
    match (s.len(), s.chars().next()) {
        (1, Some(c)) if c != '/' => Ok(PathTranslation::Replace(c)),
        _ => Err(ParamError::param(
            keys::PATH_TRANSLATION,
            "must be either 'False' or a single character string (not '/')",
        )),
    }
}

/// Whether `parameters` ask for EKS Pod Identity (`usePodIdentity` set to a true boolean); a value
/// that is not a boolean counts as no (the mount refuses it with its own message).
pub fn uses_pod_identity(parameters: &BTreeMap<String, String>) -> bool {
    parameters
        .get(keys::USE_POD_IDENTITY)
        .and_then(|v| parse_go_bool(v))
        .unwrap_or(false)
}

/// Go's `strconv.ParseBool`, which ASCP uses for `usePodIdentity`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn validate_objects(
    raw: Vec<RawObject>,
    region: &str,
    failover_region: Option<&str>,
    translation: PathTranslation,
) -> Result<Vec<ObjectSpec>, ParamError> {
    // ASCP's duplicate rules: (name → alias, label) seen so far, and aliases seen so far.
    let mut seen_names: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut seen_aliases: HashSet<String> = HashSet::new();
    // Our extra rule: no two files with the same name, whatever produced them.
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(raw.len());

    for (index, r) in raw.into_iter().enumerate() {
        let label = if r.object_name.is_empty() {
            format!("#{index}")
        } else {
            shown(&r.object_name, SHOWN_NAME_BYTES).into_owned()
        };
        let err = |field: &'static str, reason: String| ParamError::Object {
            object: label.clone(),
            field,
            reason,
        };
        if r.object_name.is_empty() {
            return Err(err("objectName", "must be specified".into()));
        }
        let kind = check_object_name(&r.object_name, &r.object_type, region)
            .map_err(|(f, reason)| err(f, reason))?;
        if kind == ObjectKind::SsmParameter
            && !r.object_version.is_empty()
            && !r.object_version_label.is_empty()
        {
            return Err(err(
                "objectVersion",
                "ssm parameters can not specify both objectVersion and objectVersionLabel".into(),
            ));
        }
        let mode = match r.file_permission.as_str() {
            "" => None,
            s => Some(parse_mode(s).map_err(|e| err("filePermission", e))?),
        };
        let alias_or_name = if r.object_alias.is_empty() {
            &r.object_name
        } else {
            &r.object_alias
        };
        let fname = file_name(alias_or_name, translation);
        let alias_field = if r.object_alias.is_empty() {
            "objectName"
        } else {
            "objectAlias"
        };
        validate_path(&fname).map_err(|e| err(alias_field, e.to_string()))?;

        Limit::JmesEntries
            .check(r.jmes_path.len())
            .map_err(|exceeded| ParamError::Limit {
                scope: format!("object {label:?}: jmesPath"),
                exceeded,
            })?;
        let mut jmes = Vec::with_capacity(r.jmes_path.len());
        for (j, entry) in r.jmes_path.iter().enumerate() {
            if entry.path.is_empty() {
                return Err(err(
                    "jmesPath",
                    format!("entry {j}: path must be specified"),
                ));
            }
            let path = shown(&entry.path, SHOWN_PATH_BYTES);
            let key_path = KeyPath::parse(&entry.path).map_err(|e| match e {
                KeyPathError::Limit(exceeded) => ParamError::Limit {
                    scope: format!("object {label:?}: jmesPath entry {j}"),
                    exceeded,
                },
                e => err(
                    "jmesPath",
                    format!("entry {j}: invalid jmesPath {path:?}: {e}"),
                ),
            })?;
            if entry.object_alias.is_empty() {
                return Err(err(
                    "jmesPath",
                    format!("entry {j} ({path}): objectAlias must be specified"),
                ));
            }
            let jname = file_name(&entry.object_alias, translation);
            validate_path(&jname)
                .map_err(|e| err("jmesPath", format!("entry {j} ({path}): {e}")))?;
            let jmode = match entry.file_permission.as_str() {
                "" => None,
                s => Some(parse_mode(s).map_err(|e| {
                    err(
                        "jmesPath",
                        format!("entry {j} ({path}): filePermission: {e}"),
                    )
                })?),
            };
            jmes.push(JmesSpec {
                path: entry.path.clone(),
                key_path,
                file_name: jname,
                mode: jmode,
            });
        }

        let failover = if r.failover_object.object_name.is_empty() {
            None
        } else {
            let f = &r.failover_object;
            if r.object_alias.is_empty() {
                return Err(err(
                    "failoverObject",
                    "objectAlias must be specified for objects with failover entries".into(),
                ));
            }
            let Some(fregion) = failover_region else {
                return Err(err(
                    "failoverObject",
                    "allowed only when the failoverRegion parameter is set".into(),
                ));
            };
            let fkind = check_object_name(&f.object_name, &r.object_type, fregion)
                .map_err(|(_, reason)| err("failoverObject.objectName", reason))?;
            if fkind != kind {
                return Err(err(
                    "failoverObject.objectName",
                    format!("is a {fkind} but the object is a {kind}"),
                ));
            }
            if kind == ObjectKind::SsmParameter
                && !f.object_version.is_empty()
                && !f.object_version_label.is_empty()
            {
                return Err(err(
                    "failoverObject",
                    "ssm parameters can not specify both objectVersion and objectVersionLabel"
                        .into(),
                ));
            }
            if f.object_version != r.object_version {
                return Err(err(
                    "failoverObject.objectVersion",
                    "object versions must match between primary and failover regions".into(),
                ));
            }
            Some(FailoverSpec {
                name: f.object_name.clone(),
                selector: VersionSelector {
                    version: non_empty(&f.object_version),
                    label: non_empty(&f.object_version_label),
                },
            })
        };

        // ASCP duplicate-name cases (same name twice is fine only when alias or label tell the
        // two apart); the same-file check below catches what remains.
        if let Some((prev_alias, prev_label)) = seen_names.get(&r.object_name) {
            let (alias, vlabel) = (&r.object_alias, &r.object_version_label);
            let reason = match (
                alias.is_empty(),
                prev_alias.is_empty(),
                vlabel.is_empty(),
                prev_label.is_empty(),
            ) {
                (false, false, true, true) if alias == prev_alias => Some(format!(
                    "duplicate object alias {alias}, and no version label"
                )),
                (true, true, false, false) if vlabel == prev_label => Some(format!(
                    "no object alias, and duplicate version label {vlabel}"
                )),
                (false, false, false, false) if alias == prev_alias && vlabel == prev_label => {
                    Some(format!(
                        "duplicate object alias {alias}, and duplicate version label {vlabel}"
                    ))
                }
                (true, true, true, true) => Some("no object alias, and no version label".into()),
                _ => None,
            };
            if let Some(reason) = reason {
                return Err(err(
                    "objectName",
                    format!("duplicate object name: {reason}"),
                ));
            }
        }
        seen_names.insert(
            r.object_name.clone(),
            (r.object_alias.clone(), r.object_version_label.clone()),
        );
        if !r.object_alias.is_empty() && !seen_aliases.insert(r.object_alias.clone()) {
            return Err(err(
                "objectAlias",
                format!("duplicate object alias {}", r.object_alias),
            ));
        }
        for entry in &r.jmes_path {
            if !seen_aliases.insert(entry.object_alias.clone()) {
                return Err(err(
                    "jmesPath",
                    format!(
                        "duplicate object alias {} in entry {}",
                        entry.object_alias,
                        shown(&entry.path, SHOWN_PATH_BYTES)
                    ),
                ));
            }
        }
        for f in std::iter::once(&fname).chain(jmes.iter().map(|j| &j.file_name)) {
            if let Some((path, other)) = conflicting_path(&files, f) {
                let reason = if path == f {
                    format!("writes file {f:?}, which object {other:?} also writes")
                } else {
                    format!(
                        "writes file {f:?}, which conflicts with {path:?} written by object {other:?}"
                    )
                };
                return Err(err("objectAlias", reason));
            }
            files.insert(f.clone(), label.clone());
        }

        out.push(ObjectSpec {
            name: r.object_name,
            kind,
            selector: VersionSelector {
                version: non_empty(&r.object_version),
                label: non_empty(&r.object_version_label),
            },
            file_name: fname,
            mode,
            jmes,
            failover,
        });
    }
    Ok(out)
}

/// ASCP's object name rule: ARN well-formed and in `region`, objectType known and agreeing
/// with the ARN, objectType required without an ARN. Returns the field at fault on error.
fn check_object_name(
    name: &str,
    object_type: &str,
    region: &str,
) -> Result<ObjectKind, (&'static str, String)> {
    let arn = if name.starts_with("arn:") {
        let arn = Arn::parse(name)
            .ok_or_else(|| ("objectName", format!("invalid ARN format: {name}")))?;
        if arn.region != region {
            return Err((
                "objectName",
                format!("ARN region must match region {region}: {name}"),
            ));
        }
        Some(arn)
    } else {
        None
    };
    let arn_kind = match &arn {
        Some(a) => Some(ObjectKind::from_arn_service(a.service).ok_or_else(|| {
            (
                "objectName",
                format!("invalid service in ARN: {}", a.service),
            )
        })?),
        None => None,
    };
    let type_kind = match object_type {
        "" => None,
        t => Some(
            ObjectKind::from_object_type(t)
                .ok_or_else(|| ("objectType", format!("invalid objectType: {t}")))?,
        ),
    };
    match (type_kind, arn_kind) {
        (None, None) => Err((
            "objectType",
            "must use objectType when a full ARN is not specified".into(),
        )),
        (Some(t), Some(a)) if t != a => Err((
            "objectType",
            format!("objectType does not match ARN: {name}"),
        )),
        (Some(k), _) | (None, Some(k)) => Ok(k),
    }
}

#[cfg(test)]
#[path = "params_accepted_tests.rs"]
mod accepted_tests;
#[cfg(test)]
#[path = "params_tests.rs"]
mod tests;
