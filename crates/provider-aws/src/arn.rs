//! ARNs and object kinds.

use std::fmt;

/// Which AWS service stores an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// AWS Secrets Manager.
    SecretsManager,
    /// AWS Systems Manager Parameter Store.
    SsmParameter,
}

impl ObjectKind {
    /// From the `objectType` field. `ssm` is accepted only inside ARNs, as in ASCP.
    pub fn from_object_type(s: &str) -> Option<Self> {
        match s {
            "secretsmanager" => Some(Self::SecretsManager),
            "ssmparameter" => Some(Self::SsmParameter),
            _ => None,
        }
    }

    /// From the service part of an ARN.
    pub fn from_arn_service(s: &str) -> Option<Self> {
        match s {
            "secretsmanager" => Some(Self::SecretsManager),
            "ssm" | "ssmparameter" => Some(Self::SsmParameter),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SecretsManager => "secretsmanager",
            Self::SsmParameter => "ssmparameter",
        })
    }
}

/// The parts of an ARN (`arn:partition:service:region:account:resource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arn<'a> {
    /// Partition, e.g. `aws`.
    pub partition: &'a str,
    /// Service, e.g. `secretsmanager`.
    pub service: &'a str,
    /// Region.
    pub region: &'a str,
    /// Account id.
    pub account: &'a str,
    /// Resource (may contain `:` and `/`).
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    /// Parses an ARN the way the AWS Go SDK's `arn.Parse` does: six `:`-separated sections,
    /// the last of which may contain further `:`.
    pub fn parse(s: &'a str) -> Option<Self> {
        let mut parts = s.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        let partition = parts.next()?;
        let service = parts.next()?;
        let region = parts.next()?;
        let account = parts.next()?;
        let resource = parts.next()?;
        Some(Self {
            partition,
            service,
            region,
            account,
            resource,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_go_sdk() {
        let a = Arn::parse("arn:aws:secretsmanager:us-west-2:123456789012:secret:db/pw-AbCdEf")
            .expect("valid");
        assert_eq!(a.service, "secretsmanager");
        assert_eq!(a.region, "us-west-2");
        assert_eq!(a.account, "123456789012");
        assert_eq!(a.resource, "secret:db/pw-AbCdEf");
        assert_eq!(
            Arn::parse("arn:aws:ssm:eu-west-1:1:parameter/a/b").map(|a| a.resource),
            Some("parameter/a/b")
        );
        assert_eq!(Arn::parse("arn:aws:ssm:eu-west-1"), None);
        assert_eq!(Arn::parse("arn:aws:ssm:eu-west-1:1"), None);
        assert_eq!(Arn::parse("nra:aws:ssm:eu-west-1:1:x"), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(
            ObjectKind::from_object_type("ssm"),
            None,
            "ASCP rejects objectType ssm"
        );
        assert_eq!(
            ObjectKind::from_arn_service("ssm"),
            Some(ObjectKind::SsmParameter)
        );
        assert_eq!(ObjectKind::from_arn_service("s3"), None);
        assert_eq!(ObjectKind::SecretsManager.to_string(), "secretsmanager");
    }
}
