//! The shape of an AWS region name, checked before a region becomes part of an endpoint host
//! name (`secretsmanager.<region>.amazonaws.com`, `sts.<region>.amazonaws.com`).
//!
//! Without it a class with region `evil.example/x` or `us-east-1.evil.com` would send the pod's
//! ServiceAccount token (AssumeRoleWithWebIdentity) and its credentials to another host.

/// Longest region name accepted (today's longest, `ap-southeast-5` and `us-isob-east-1`, are
/// 14; room is left for longer partitions).
pub const MAX_REGION_BYTES: usize = 32;

/// Whether `region` has the shape of an AWS region name: a lowercase partition prefix of 2 to 4
/// letters (`us`, `eu`, `cn`, `eusc`), one or more lowercase words (`east`, `gov-west`,
/// `iso-east`, `isob-east`, `northwest`), and a number of 1 or 2 digits, joined by `-`.
/// Dots, slashes, uppercase, empty labels and everything else a host name or URL could smuggle
/// are refused.
pub fn is_region_name(region: &str) -> bool {
    if region.len() > MAX_REGION_BYTES {
        return false;
    }
    let parts: Vec<&str> = region.split('-').collect();
    let [prefix, words @ .., number] = parts.as_slice() else {
        return false;
    };
    let lower = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    (2..=4).contains(&prefix.len())
        && lower(prefix)
        && !words.is_empty()
        && words.iter().all(|w| lower(w))
        && (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_region_names_are_accepted() {
        for r in [
            "us-east-1",
            "us-west-2",
            "eu-central-1",
            "ap-southeast-5",
            "ca-west-1",
            "me-central-1",
            "il-central-1",
            "mx-central-1",
            "cn-north-1",
            "cn-northwest-1",
            "us-gov-west-1",
            "us-gov-east-1",
            "us-iso-east-1",
            "us-isob-east-1",
            "eu-isoe-west-1",
            "us-isof-south-1",
            "eusc-de-east-1",
            "ap-east-12",
        ] {
            assert!(is_region_name(r), "{r}");
        }
    }

    #[test]
    fn host_names_urls_and_odd_shapes_are_refused() {
        for r in [
            "",
            "evil.example/x",
            "a.b",
            "us-east-1.evil.com",
            "evil.com#us-east-1",
            "us-east-1/",
            "us-east-1:443",
            "user@us-east-1",
            "US-EAST-1",
            "Us-east-1",
            "us--east-1",
            "-us-east-1",
            "us-east-1-",
            "us-east-",
            "us-east",
            "us-1",
            "east-1",
            "u-east-1",
            "usxyz-east-1",
            "us-east-123",
            "us-east-1a",
            "us-ea st-1",
            "us-east-１",
            "us-éast-1",
            "localhost",
            "127.0.0.1",
            "us-east-1\n",
        ] {
            assert!(!is_region_name(r), "{r:?}");
        }
        let long = format!("us-{}-1", "a".repeat(MAX_REGION_BYTES));
        assert!(!is_region_name(&long));
    }
}
