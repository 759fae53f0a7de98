//! `kubernetes.io/tls` Secrets: split a PEM bundle into `tls.crt` and `tls.key` the way upstream does.
//!
//! Upstream concatenates every `CERTIFICATE` block for `tls.crt` and, for `tls.key`, takes the last
//! non-certificate block and re-encodes it: RSA keys as PKCS#1 (`RSA PRIVATE KEY`). Upstream also
//! labels EC keys `RSA PRIVATE KEY`, which no TLS stack accepts; we keep their SEC1 encoding under
//! the correct `EC PRIVATE KEY` label instead.

use der::{Decode, Encode};
use secrets_store_provider::SecretBytes;

/// The Secret data key for the certificate chain.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The Secret data key for the private key.
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";

const RSA_ENCRYPTION_OID: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY_OID: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// Why a PEM bundle could not be split. Messages never contain key material.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The key is neither `tls.crt` nor `tls.key`.
    #[error(
        "key {0:?} is not supported for kubernetes.io/tls secrets: only tls.crt and tls.key are"
    )]
    UnsupportedKey(String),
    /// The object holds no PEM block of the needed kind.
    #[error("no {0} PEM block found in the object")]
    Missing(&'static str),
    /// The content is not valid PEM.
    #[error("the object is not valid PEM")]
    InvalidPem,
    /// The private key could not be parsed.
    #[error("the private key is not an RSA or EC key in PKCS#1, SEC1 or PKCS#8 form")]
    UnsupportedPrivateKey,
}

/// Extracts the part of `bundle` that belongs under `key` in a `kubernetes.io/tls` Secret.
pub fn tls_part(bundle: &[u8], key: &str) -> Result<SecretBytes, TlsError> {
    let blocks = pem::parse_many(bundle).map_err(|_| TlsError::InvalidPem)?;
    match key {
        TLS_CERT_KEY => {
            let certs: Vec<_> = blocks
                .into_iter()
                .filter(|b| b.tag() == "CERTIFICATE")
                .collect();
            if certs.is_empty() {
                return Err(TlsError::Missing("CERTIFICATE"));
            }
            Ok(SecretBytes::from(pem::encode_many(&certs)))
        }
        TLS_PRIVATE_KEY_KEY => {
            let block = blocks
                .into_iter()
                .rfind(|b| b.tag() != "CERTIFICATE")
                .ok_or(TlsError::Missing("private key"))?;
            let (tag, der) = normalize_private_key(block.contents())?;
            Ok(SecretBytes::from(pem::encode(&pem::Pem::new(tag, der))))
        }
        other => Err(TlsError::UnsupportedKey(other.to_string())),
    }
}

/// Returns the PEM tag and DER of the key in its traditional form (PKCS#1 for RSA, SEC1 for EC).
fn normalize_private_key(der: &[u8]) -> Result<(&'static str, Vec<u8>), TlsError> {
    if pkcs1::RsaPrivateKeyRef::from_der(der).is_ok() {
        return Ok(("RSA PRIVATE KEY", der.to_vec()));
    }
    if sec1::EcPrivateKey::from_der(der).is_ok() {
        return Ok(("EC PRIVATE KEY", der.to_vec()));
    }
    let info =
        pkcs8::PrivateKeyInfoRef::from_der(der).map_err(|_| TlsError::UnsupportedPrivateKey)?;
    let inner = info.private_key.as_bytes();
    if info.algorithm.oid == RSA_ENCRYPTION_OID {
        pkcs1::RsaPrivateKeyRef::from_der(inner).map_err(|_| TlsError::UnsupportedPrivateKey)?;
        return Ok(("RSA PRIVATE KEY", inner.to_vec()));
    }
    if info.algorithm.oid == EC_PUBLIC_KEY_OID {
        let mut key =
            sec1::EcPrivateKey::from_der(inner).map_err(|_| TlsError::UnsupportedPrivateKey)?;
        // PKCS#8 carries the curve in the algorithm parameters; SEC1 readers expect it inline.
        if key.parameters.is_none() {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| TlsError::UnsupportedPrivateKey)?;
            key.parameters = Some(sec1::EcParameters::NamedCurve(curve));
        }
        let der = key.to_der().map_err(|_| TlsError::UnsupportedPrivateKey)?;
        return Ok(("EC PRIVATE KEY", der));
    }
    Err(TlsError::UnsupportedPrivateKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_CERT: &str = include_str!("testdata/rsa.crt");
    const RSA_PKCS8: &str = include_str!("testdata/rsa-pkcs8.key");
    const RSA_PKCS1: &str = include_str!("testdata/rsa-pkcs1.key");

    fn text(s: SecretBytes) -> String {
        String::from_utf8(s.expose().to_vec()).unwrap()
    }

    #[test]
    fn certificates_are_concatenated_and_keys_dropped() {
        let ec = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let bundle = format!(
            "{}{}{}",
            ec.signing_key.serialize_pem(),
            RSA_CERT,
            ec.cert.pem()
        );
        let crt = text(tls_part(bundle.as_bytes(), TLS_CERT_KEY).unwrap());
        let blocks = pem::parse_many(&crt).unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(blocks.iter().all(|b| b.tag() == "CERTIFICATE"));
        assert!(!crt.contains("PRIVATE KEY"));
    }

    #[test]
    fn rsa_pkcs8_key_is_reencoded_as_pkcs1() {
        let bundle = format!("{RSA_CERT}{RSA_PKCS8}");
        let key = text(tls_part(bundle.as_bytes(), TLS_PRIVATE_KEY_KEY).unwrap());
        assert_eq!(pem::parse(&key).unwrap(), pem::parse(RSA_PKCS1).unwrap());
    }

    #[test]
    fn rsa_pkcs1_key_is_kept() {
        let bundle = format!("{RSA_PKCS1}{RSA_CERT}");
        let key = text(tls_part(bundle.as_bytes(), TLS_PRIVATE_KEY_KEY).unwrap());
        assert_eq!(pem::parse(&key).unwrap(), pem::parse(RSA_PKCS1).unwrap());
    }

    #[test]
    fn ec_pkcs8_key_becomes_sec1_with_its_curve() {
        let ec = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let bundle = format!("{}{}", ec.cert.pem(), ec.signing_key.serialize_pem());
        let key = tls_part(bundle.as_bytes(), TLS_PRIVATE_KEY_KEY).unwrap();
        let block = pem::parse(key.expose()).unwrap();
        assert_eq!(block.tag(), "EC PRIVATE KEY");
        let parsed = sec1::EcPrivateKey::from_der(block.contents()).unwrap();
        let p256 = der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
        assert_eq!(parsed.parameters.and_then(|p| p.named_curve()), Some(p256));
    }

    #[test]
    fn errors_name_the_problem_without_content() {
        assert_eq!(
            tls_part(RSA_CERT.as_bytes(), TLS_PRIVATE_KEY_KEY),
            Err(TlsError::Missing("private key"))
        );
        assert_eq!(
            tls_part(RSA_PKCS1.as_bytes(), TLS_CERT_KEY),
            Err(TlsError::Missing("CERTIFICATE"))
        );
        assert_eq!(
            tls_part(RSA_CERT.as_bytes(), "ca.crt"),
            Err(TlsError::UnsupportedKey("ca.crt".into()))
        );
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            tls_part(garbage.as_bytes(), TLS_PRIVATE_KEY_KEY),
            Err(TlsError::UnsupportedPrivateKey)
        );
    }
}
