//! Throwaway PKI for one test cluster: a CA, the apiserver serving cert, an admin client cert in
//! `system:masters`, the apiserver's client cert for kubelets, and the ServiceAccount token signing
//! key; [`node_credentials`] adds a real node's client and serving certs. Everything lives in the run dir and
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
    /// CA private key (PEM), so that certificates for a real node can be issued later.
    pub ca_key: PathBuf,
    /// Apiserver serving certificate.
    pub serving_cert: PathBuf,
    /// Apiserver serving key.
    pub serving_key: PathBuf,
    /// Admin client certificate (`CN=testenv-admin`, `O=system:masters`).
    pub admin_cert: PathBuf,
    /// Admin client key.
    pub admin_key: PathBuf,
    /// The apiserver's client certificate towards kubelets (`--kubelet-client-certificate`;
    /// `O=system:masters`, so kubelet's webhook authorizer would allow it too).
    pub kubelet_client_cert: PathBuf,
    /// Its key.
    pub kubelet_client_key: PathBuf,
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

/// The CA's parameters. Issuing needs only its name and key, so [`node_credentials`] rebuilds
/// the issuer from these and the saved key.
fn ca_params() -> Result<CertificateParams, Error> {
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
    Ok(ca_params)
}

/// A client certificate with subject `CN=<cn>, O=<org>` signed by `issuer`.
fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    org: &str,
) -> Result<(rcgen::Certificate, KeyPair), Error> {
    let key = KeyPair::generate().map_err(|e| cert_err(cn, e))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_err(cn, e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| cert_err(cn, e))?;
    Ok((cert, key))
}

/// Generates the PKI into `dir`.
pub fn generate(dir: &Path) -> Result<Pki, Error> {
    let ca_key = KeyPair::generate().map_err(|e| cert_err("CA key", e))?;
    let ca_params = ca_params()?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| cert_err("CA", e))?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
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

    let (admin_cert, admin_key) = client_cert(&issuer, "testenv-admin", "system:masters")?;

    let (kubelet_client, kubelet_client_key) =
        client_cert(&issuer, "kube-apiserver-kubelet-client", "system:masters")?;

    let sa_key = KeyPair::generate().map_err(|e| cert_err("service account key", e))?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_pem: ca_pem.clone(),
        ca_key: dir.join("ca.key"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    write(&pki.ca_cert, &ca_pem)?;
    write(&pki.ca_key, &ca_key_pem)?;
    write(&pki.serving_cert, &serving_cert.pem())?;
    write(&pki.serving_key, &serving_key.serialize_pem())?;
    write(&pki.admin_cert, &admin_cert.pem())?;
    write(&pki.admin_key, &admin_key.serialize_pem())?;
    write(&pki.kubelet_client_cert, &kubelet_client.pem())?;
    write(&pki.kubelet_client_key, &kubelet_client_key.serialize_pem())?;
    write(&pki.sa_key, &sa_key.serialize_pem())?;
    write(&pki.sa_pub, &sa_key.public_key_pem())?;
    Ok(pki)
}

/// File paths of a real node's credentials (see [`node_credentials`]).
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    /// kubelet's client certificate: `CN=system:node:<name>, O=system:nodes`, so the Node
    /// authorizer (and NodeRestriction, if enabled) treat it as that node.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// kubelet's serving certificate for its API (logs, exec), naming the node and `ips`.
    pub serving_cert: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
}

/// Issues, from the cluster CA in `pki`, the client and serving certificates of the node `name`
/// reachable at `ips`, into `dir`.
pub fn node_credentials(
    pki: &Pki,
    dir: &Path,
    name: &str,
    ips: &[std::net::IpAddr],
) -> Result<NodeCredentials, Error> {
    let key_pem = std::fs::read_to_string(&pki.ca_key).map_err(|e| Error::io(&pki.ca_key, e))?;
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| cert_err("CA key", e))?;
    let issuer = Issuer::new(ca_params()?, ca_key);

    let (client, client_key) =
        client_cert(&issuer, &format!("system:node:{name}"), "system:nodes")?;

    let serving_key = KeyPair::generate().map_err(|e| cert_err("kubelet serving key", e))?;
    let mut names = vec![name.to_string(), "localhost".to_string()];
    names.extend(ips.iter().map(ToString::to_string));
    let mut serving = CertificateParams::new(names).map_err(|e| cert_err("kubelet serving", e))?;
    serving
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{name}"));
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .map_err(|e| cert_err("kubelet serving", e))?;

    let creds = NodeCredentials {
        client_cert: dir.join("node-client.crt"),
        client_key: dir.join("node-client.key"),
        serving_cert: dir.join("kubelet-serving.crt"),
        serving_key: dir.join("kubelet-serving.key"),
    };
    write(&creds.client_cert, &client.pem())?;
    write(&creds.client_key, &client_key.serialize_pem())?;
    write(&creds.serving_cert, &serving_cert.pem())?;
    write(&creds.serving_key, &serving_key.serialize_pem())?;
    Ok(creds)
}
