//! The AWS calls themselves: one function per API operation, each returning one result per
//! requested object. Matching batch answers back to requests is pure and tested here.

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_sdk_secretsmanager::config::Region;
use secrets_store_provider::SecretBytes;

use crate::errors::{Class, Classified, classify, classify_code};
use crate::params::VersionSelector;
use crate::render::FetchedValue;

/// An AWS answer for one object: a value or a classified failure.
pub type CallResult = Result<FetchedValue, Classified>;

/// Secrets Manager client for one identity and region.
pub fn secretsmanager(
    base: &SdkConfig,
    creds: &Credentials,
    region: &str,
) -> aws_sdk_secretsmanager::Client {
    let conf = aws_sdk_secretsmanager::config::Builder::from(base)
        .region(Region::new(region.to_string()))
        .credentials_provider(creds.clone())
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

/// SSM client for one identity and region.
pub fn ssm(base: &SdkConfig, creds: &Credentials, region: &str) -> aws_sdk_ssm::Client {
    let conf = aws_sdk_ssm::config::Builder::from(base)
        .region(aws_sdk_ssm::config::Region::new(region.to_string()))
        .credentials_provider(creds.clone())
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

/// `GetSecretValue` for one secret (pinned versions, or after a denied batch).
pub async fn get_secret_value(
    client: &aws_sdk_secretsmanager::Client,
    region: &str,
    name: &str,
    selector: &VersionSelector,
) -> CallResult {
    let out = client
        .get_secret_value()
        .secret_id(name)
        .set_version_id(selector.version.clone())
        .set_version_stage(selector.label.clone())
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let value = match (out.secret_string(), out.secret_binary()) {
        (Some(s), _) => SecretBytes::new(s.as_bytes().to_vec()),
        (None, Some(b)) => SecretBytes::new(b.as_ref().to_vec()),
        (None, None) => {
            return Err(Classified {
                kind: Class::Other,
                message: "the secret version has neither SecretString nor SecretBinary".into(),
            });
        }
    };
    Ok(FetchedValue {
        value,
        version: out.version_id().unwrap_or_default().to_string(),
        region: region.to_string(),
    })
}

/// `BatchGetSecretValue` for up to 20 current secrets. `Err` means the whole call failed.
pub async fn batch_get_secret_value(
    client: &aws_sdk_secretsmanager::Client,
    region: &str,
    ids: &[String],
) -> Result<Vec<CallResult>, Classified> {
    let mut entries = Vec::new();
    let mut errors: Vec<Option<Classified>> = vec![None; ids.len()];
    let mut next: Option<String> = None;
    loop {
        let mut out = client
            .batch_get_secret_value()
            .set_secret_id_list(Some(ids.to_vec()))
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        entries.extend(out.secret_values.take().unwrap_or_default());
        for e in out.errors() {
            if let Some(i) = ids.iter().position(|id| Some(id.as_str()) == e.secret_id()) {
                let code = e.error_code().unwrap_or("");
                errors[i] = Some(Classified {
                    kind: classify_code(code, 0),
                    message: format!("{code}: {}", e.message().unwrap_or("")),
                });
            }
        }
        // Page on while an id has neither an exact answer nor an error: its exact answer may
        // be on a later page, and a partial-ARN match must not be taken before it is seen.
        let answers: Vec<_> = entries.iter().map(|e| (e.name(), e.arn())).collect();
        let matched = match_batch_answers(ids, &answers);
        let open = matched
            .iter()
            .zip(&errors)
            .any(|(m, e)| !matches!(m, Some(BatchMatch::Exact(_))) && e.is_none());
        match out.next_token() {
            Some(t) if !t.is_empty() && open => next = Some(t.to_string()),
            _ => break,
        }
    }
    let answers: Vec<_> = entries.iter().map(|e| (e.name(), e.arn())).collect();
    let matched = match_batch_answers(ids, &answers);
    Ok(matched
        .into_iter()
        .zip(errors)
        .map(|(m, error)| {
            // An exact answer wins over an error (another id may have named the same secret),
            // an error over a partial-ARN answer (that answer is another id's secret).
            let j = match (m, error) {
                (Some(BatchMatch::Exact(j)), _) => j,
                (_, Some(e)) => return Err(e),
                (Some(BatchMatch::Partial(j)), None) => j,
                (None, None) => {
                    return Err(Classified {
                        kind: Class::NotFound,
                        message: "missing from the BatchGetSecretValue answer".into(),
                    });
                }
            };
            let entry = &entries[j];
            let value = match (entry.secret_string(), entry.secret_binary()) {
                (Some(s), _) => SecretBytes::new(s.as_bytes().to_vec()),
                (None, Some(b)) => SecretBytes::new(b.as_ref().to_vec()),
                (None, None) => SecretBytes::default(),
            };
            Ok(FetchedValue {
                value,
                version: entry.version_id().unwrap_or_default().to_string(),
                region: region.to_string(),
            })
        })
        .collect())
}

/// How a requested id found its batch answer (the index into the answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMatch {
    /// The answer's name or ARN is the id.
    Exact(usize),
    /// The id is the answer's ARN without the 6-character suffix Secrets Manager appends.
    Partial(usize),
}

/// Matches batch answers (`name`, `arn`) back to the requested ids (names, full ARNs or partial
/// ARNs). One secret may be requested under several ids and listed once: every matching id gets
/// it. An exact name or ARN match is looked for among all answers before the partial-ARN rule
/// is tried, whatever the answers' order: `…:secret:a-AbCdEf` is both the full ARN of secret
/// `a` and a partial ARN of secret `a-AbCdEf`, and must get `a`'s value when `a` was answered.
pub fn match_batch_answers(
    ids: &[String],
    answers: &[(Option<&str>, Option<&str>)],
) -> Vec<Option<BatchMatch>> {
    ids.iter()
        .map(|id| {
            let id = id.as_str();
            answers
                .iter()
                .position(|&(name, arn)| Some(id) == name || Some(id) == arn)
                .map(BatchMatch::Exact)
                .or_else(|| {
                    answers
                        .iter()
                        .position(|&(_, arn)| arn.is_some_and(|a| is_partial_arn(id, a)))
                        .map(BatchMatch::Partial)
                })
        })
        .collect()
}

/// Whether `id` is `arn` without its `-XXXXXX` suffix.
fn is_partial_arn(id: &str, arn: &str) -> bool {
    id.starts_with("arn:")
        && arn.len() == id.len() + 7
        && arn.starts_with(id)
        && arn.as_bytes()[id.len()] == b'-'
}

/// The name SSM's `GetParameters` takes for a selector: `name`, `name:version` or `name:label`.
pub fn ssm_request_name(name: &str, selector: &VersionSelector) -> String {
    match (&selector.version, &selector.label) {
        (Some(v), _) => format!("{name}:{v}"),
        (None, Some(l)) => format!("{name}:{l}"),
        (None, None) => name.to_string(),
    }
}

/// One SSM request: base name (or ARN) and selector.
#[derive(Clone, Debug)]
pub struct SsmRequest {
    /// Name or ARN.
    pub name: String,
    /// Version or label.
    pub selector: VersionSelector,
}

/// `GetParameter` (with decryption) for one parameter, used for parameters named by ARN: their
/// answers in a `GetParameters` batch cannot be matched back reliably (shared parameters come
/// back under their ARN, others under their name), and moto only resolves ARNs here.
pub async fn get_parameter(
    client: &aws_sdk_ssm::Client,
    region: &str,
    request: &SsmRequest,
) -> CallResult {
    let out = client
        .get_parameter()
        .name(ssm_request_name(&request.name, &request.selector))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let p = out.parameter().ok_or_else(|| Classified {
        kind: Class::NotFound,
        message: "GetParameter answered without a parameter".into(),
    })?;
    Ok(FetchedValue {
        value: SecretBytes::new(p.value().unwrap_or_default().as_bytes().to_vec()),
        version: p.version().to_string(),
        region: region.to_string(),
    })
}

/// `GetParameters` (with decryption) for up to 10 parameters with distinct names.
pub async fn get_parameters(
    client: &aws_sdk_ssm::Client,
    region: &str,
    requests: &[SsmRequest],
) -> Result<Vec<CallResult>, Classified> {
    let names: Vec<String> = requests
        .iter()
        .map(|r| ssm_request_name(&r.name, &r.selector))
        .collect();
    let out = client
        .get_parameters()
        .set_names(Some(names.clone()))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let mut results: Vec<Option<CallResult>> = vec![None; requests.len()];
    for p in out.parameters() {
        // moto leaves `Selector` out, so match on name (or ARN) and, when pinned, the version.
        let Some(i) = requests.iter().enumerate().position(|(i, r)| {
            results[i].is_none()
                && (Some(r.name.as_str()) == p.name() || Some(r.name.as_str()) == p.arn())
                && r.selector
                    .version
                    .as_ref()
                    .is_none_or(|v| v.parse::<i64>().ok() == Some(p.version()))
        }) else {
            continue;
        };
        results[i] = Some(Ok(FetchedValue {
            value: SecretBytes::new(p.value().unwrap_or_default().as_bytes().to_vec()),
            version: p.version().to_string(),
            region: region.to_string(),
        }));
    }
    for invalid in out.invalid_parameters() {
        if let Some(i) = names.iter().position(|n| n == invalid) {
            results[i] = Some(Err(Classified {
                kind: Class::NotFound,
                message: format!(
                    "ParameterNotFound: {invalid} (or that version/label) does not exist"
                ),
            }));
        }
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Classified {
                    kind: Class::NotFound,
                    message: "missing from the GetParameters answer".into(),
                })
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_answers_match_names_full_and_partial_arns() {
        let arn = "arn:aws:secretsmanager:us-east-1:1:secret:db-AbCdEf";
        let cases = [
            ("db", Some(BatchMatch::Exact(0))),
            (arn, Some(BatchMatch::Exact(0))),
            (
                "arn:aws:secretsmanager:us-east-1:1:secret:db",
                Some(BatchMatch::Partial(0)),
            ),
            ("arn:aws:secretsmanager:us-east-1:1:secret:d", None),
            ("dbx", None),
            ("xdb", None),
            ("db-AbCdEf", None),
            ("other", None),
        ];
        for (id, want) in cases {
            let got = match_batch_answers(&[id.to_string()], &[(Some("db"), Some(arn))]);
            assert_eq!(got, vec![want], "{id}");
        }
    }

    #[test]
    fn an_exact_match_wins_over_a_partial_arn_in_any_answer_order() {
        let p = "arn:aws:secretsmanager:us-east-1:1:secret:";
        // Secret `a` has the ARN `…:a-AbCdEf`; secret `a-AbCdEf` has `…:a-AbCdEf-GhIjKl`, so
        // `…:a-AbCdEf` is also a partial ARN of `a-AbCdEf`.
        let a_arn = format!("{p}a-AbCdEf");
        let ab_arn = format!("{p}a-AbCdEf-GhIjKl");
        let xa_arn = format!("{p}xa-MnOpQr");
        let a = (Some("a"), Some(a_arn.as_str()));
        let ab = (Some("a-AbCdEf"), Some(ab_arn.as_str()));
        let xa = (Some("xa"), Some(xa_arn.as_str()));
        let ids = [
            "a-AbCdEf".to_string(),
            a_arn.clone(),
            "a".to_string(),
            format!("{p}a"),
        ];
        // (answers, the answer each id must get)
        let cases = [
            (vec![ab, a, xa], [Some(0), Some(1), Some(1), Some(1)]),
            (vec![a, ab, xa], [Some(1), Some(0), Some(0), Some(0)]),
            (vec![xa, ab, a], [Some(1), Some(2), Some(2), Some(2)]),
            // `a` not answered: its full ARN only reaches `a-AbCdEf` as a partial ARN.
            (vec![xa, ab], [Some(1), Some(1), None, None]),
        ];
        for (answers, want) in cases {
            let got: Vec<Option<usize>> = match_batch_answers(&ids, &answers)
                .into_iter()
                .map(|m| m.map(|(BatchMatch::Exact(j) | BatchMatch::Partial(j))| j))
                .collect();
            assert_eq!(got, want, "{answers:?}");
        }
    }

    #[test]
    fn ssm_selectors() {
        let s = |v: Option<&str>, l: Option<&str>| VersionSelector {
            version: v.map(String::from),
            label: l.map(String::from),
        };
        assert_eq!(ssm_request_name("/a/b", &s(None, None)), "/a/b");
        assert_eq!(ssm_request_name("/a/b", &s(Some("3"), None)), "/a/b:3");
        assert_eq!(
            ssm_request_name("/a/b", &s(None, Some("prod"))),
            "/a/b:prod"
        );
    }
}
