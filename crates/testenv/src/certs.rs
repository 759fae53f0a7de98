//! Throwaway PKI for one test cluster: a CA, the apiserver serving cert, an admin client cert in
//! `system:masters`, and the ServiceAccount token signing key. Everything lives in the run dir and
//! dies with it; nothing here is a secret worth protecting beyond the test process.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// File paths of the generated PKI material.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (PEM); also the apiserver's `--client-ca-file`.
    pub ca_cert: PathBuf,
    /// CA certificate as PEM text.
    pub ca_pem: String,
    /// Apiserver serving certificate.
    pub serving_cert: PathBuf,
    /// Apiserver serving key.
    pub serving_key: PathBuf,
    /// Admin client certificate (`CN=testenv-admin`, `O=system:masters`).
    pub admin_cert: PathBuf,
    /// Admin client key.
    pub admin_key: PathBuf,
    /// ServiceAccount token signing key (ECDSA P-256, PKCS#8 PEM).
    pub sa_key: PathBuf,
    /// Its public key (PEM), for `--service-account-key-file` (token verification).
    pub sa_pub: PathBuf,
}

fn cert_err(what: &str, e: rcgen::Error) -> Error {
    Error::Pki(format!("{what}: {e}"))
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

/// Generates the PKI into `dir`.
pub fn generate(dir: &Path) -> Result<Pki, Error> {
    let ca_key = KeyPair::generate().map_err(|e| cert_err("CA key", e))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_err("CA", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "secrets-store-testenv-ca");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| cert_err("CA", e))?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    // The serving cert also names the in-cluster service IP and DNS names so that peers that
    // believe they run in a pod (upstream Go binaries with in-cluster config) can verify it.
    let serving_key = KeyPair::generate().map_err(|e| cert_err("serving key", e))?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
        "10.0.0.1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])
    .map_err(|e| cert_err("serving", e))?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .map_err(|e| cert_err("serving", e))?;

    let admin_key = KeyPair::generate().map_err(|e| cert_err("admin key", e))?;
    let mut admin =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_err("admin", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "testenv-admin");
    dn.push(DnType::OrganizationName, "system:masters");
    admin.distinguished_name = dn;
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin
        .signed_by(&admin_key, &issuer)
        .map_err(|e| cert_err("admin", e))?;

    let sa_key = KeyPair::generate().map_err(|e| cert_err("service account key", e))?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_pem: ca_pem.clone(),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    write(&pki.ca_cert, &ca_pem)?;
    write(&pki.serving_cert, &serving_cert.pem())?;
    write(&pki.serving_key, &serving_key.serialize_pem())?;
    write(&pki.admin_cert, &admin_cert.pem())?;
    write(&pki.admin_key, &admin_key.serialize_pem())?;
    write(&pki.sa_key, &sa_key.serialize_pem())?;
    write(&pki.sa_pub, &sa_key.public_key_pem())?;
    Ok(pki)
}
