//! The files a real node runs from, all under its private dir: containerd's config, the CNI
//! network, kubelet's configuration and kubeconfig.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::Error;
use crate::certs::{NodeCredentials, Pki};

/// The node's private directories and files.
#[derive(Debug, Clone)]
pub(crate) struct NodeDirs {
    /// Everything below lives here (`<run dir>/node`).
    pub root: PathBuf,
    /// kubelet's `--root-dir`.
    pub kubelet: PathBuf,
    /// containerd's `root` (images, snapshots).
    pub containerd_root: PathBuf,
    /// containerd's `state` (tasks, sandboxes, network namespaces, runc state).
    pub containerd_state: PathBuf,
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// containerd's config file.
    pub containerd_config: PathBuf,
    /// containerd's `opt` plugin path (its default is `/opt/containerd`).
    pub containerd_opt: PathBuf,
    /// containerd's registry `config_path`: empty, so no mirrors or credentials apply.
    pub registry_config: PathBuf,
    /// CNI network configs.
    pub cni_conf: PathBuf,
    /// host-local IPAM allocations.
    pub cni_ipam: PathBuf,
    /// kubelet's `podLogsDir`.
    pub pod_logs: PathBuf,
    /// kubelet's flexvolume plugin dir (its default is under `/usr/libexec`).
    pub volume_plugins: PathBuf,
    /// Node certificates.
    pub pki: PathBuf,
    /// kubelet's config file.
    pub kubelet_config: PathBuf,
    /// kubelet's kubeconfig (the node's client certificate).
    pub kubelet_kubeconfig: PathBuf,
}

impl NodeDirs {
    pub(crate) fn new(root: &Path) -> Self {
        let c = root.join("containerd");
        Self {
            root: root.to_path_buf(),
            kubelet: root.join("kubelet"),
            containerd_root: c.join("root"),
            containerd_state: c.join("state"),
            containerd_socket: c.join("containerd.sock"),
            containerd_config: c.join("config.toml"),
            containerd_opt: c.join("opt"),
            registry_config: c.join("certs.d"),
            cni_conf: root.join("cni/net.d"),
            cni_ipam: root.join("cni/ipam"),
            pod_logs: root.join("pod-logs"),
            volume_plugins: root.join("volume-plugins"),
            pki: root.join("pki"),
            kubelet_config: root.join("kubelet-config.yaml"),
            kubelet_kubeconfig: root.join("kubelet.kubeconfig"),
        }
    }

    /// Creates the directories.
    pub(crate) fn create(&self) -> Result<(), Error> {
        for dir in [
            &self.kubelet,
            &self.containerd_root,
            &self.containerd_state,
            &self.containerd_opt,
            &self.registry_config,
            &self.cni_conf,
            &self.cni_ipam,
            &self.pod_logs,
            &self.volume_plugins,
            &self.pki,
        ] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

/// The pod network: a bridge of our own with host-local IPAM on a private /24 whose first
/// address is the bridge's (and the node's) IP.
#[derive(Debug, Clone)]
pub(crate) struct PodNetwork {
    /// CNI network name.
    pub name: String,
    /// Bridge link name.
    pub bridge: String,
    /// The /24's network address.
    pub subnet: Ipv4Addr,
}

impl PodNetwork {
    /// The bridge's address: the pods' gateway and the node's InternalIP.
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The subnet in CIDR notation.
    pub(crate) fn cidr(&self) -> String {
        format!("{}/24", self.subnet)
    }
}

/// containerd 1.6 config: own root, state, socket and `opt`; CRI with cgroupfs, runc state under
/// the node's state dir, the sandbox image pre-imported, no registry configuration, network
/// namespaces under the state dir, and `restrict_oom_score_adj` (runc cannot set a negative
/// `oom_score_adj` without CAP_SYS_RESOURCE, and every sandbox fails without it).
pub(crate) fn write_containerd_config(dirs: &NodeDirs, sandbox_image: &str) -> Result<(), Error> {
    let q = |p: &Path| toml_string(&p.display().to_string());
    let text = format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = {socket}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {runc_root}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni_conf}
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {registry}
"#,
        root = q(&dirs.containerd_root),
        state = q(&dirs.containerd_state),
        socket = q(&dirs.containerd_socket),
        opt = q(&dirs.containerd_opt),
        sandbox = toml_string(sandbox_image),
        runc_root = q(&dirs.containerd_state.join("runc")),
        cni_conf = q(&dirs.cni_conf),
        registry = q(&dirs.registry_config),
    );
    write(&dirs.containerd_config, &text)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The CNI network: bridge + host-local. No `ipMasq` (pods reach only the node), so no iptables
/// rules; containerd sets up each pod's loopback itself with the `loopback` plugin.
pub(crate) fn write_cni_config(dirs: &NodeDirs, net: &PodNetwork) -> Result<(), Error> {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [{
            "type": "bridge",
            "bridge": net.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": net.cidr(), "gateway": net.gateway().to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dirs.cni_ipam,
            },
        }],
    });
    let path = dirs.cni_conf.join(format!("10-{}.conflist", net.name));
    write(
        &path,
        &serde_json::to_string_pretty(&conf).unwrap_or_default(),
    )
}

/// What kubelet's configuration depends on.
pub(crate) struct KubeletSettings<'a> {
    pub server_url: &'a str,
    pub node_ip: Ipv4Addr,
    pub port: u16,
    pub healthz_port: u16,
    pub sync_frequency: Duration,
    pub pki: &'a Pki,
    pub creds: &'a NodeCredentials,
}

/// KubeletConfiguration: cgroup v1 allowed, cgroupfs, no iptables chains, API on the node IP
/// with x509 client auth against the cluster CA (only the apiserver calls it), eviction and image
/// GC relaxed so a busy build machine never evicts test pods or deletes the imported images.
pub(crate) fn write_kubelet_config(dirs: &NodeDirs, s: &KubeletSettings<'_>) -> Result<(), Error> {
    let config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": format!("unix://{}", dirs.containerd_socket.display()),
        "makeIPTablesUtilChains": false,
        "podLogsDir": dirs.pod_logs,
        "volumePluginDir": dirs.volume_plugins,
        "address": s.node_ip.to_string(),
        "port": s.port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": s.healthz_port,
        "tlsCertFile": s.creds.serving_cert,
        "tlsPrivateKeyFile": s.creds.serving_key,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": false},
            "x509": {"clientCAFile": s.pki.ca_cert},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "syncFrequency": format!("{}s", s.sync_frequency.as_secs().max(1)),
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "failSwapOn": false,
        "serializeImagePulls": false,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "staticPodPath": "",
    });
    write(
        &dirs.kubelet_config,
        &serde_yaml::to_string(&config).map_err(|e| Error::Kubeconfig(e.to_string()))?,
    )?;
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": s.server_url,
            "certificate-authority": s.pki.ca_cert,
        }}],
        "users": [{"name": "node", "user": {
            "client-certificate": s.creds.client_cert,
            "client-key": s.creds.client_key,
        }}],
        "contexts": [{"name": "node", "context": {"cluster": "testenv", "user": "node"}}],
        "current-context": "node",
    });
    write(
        &dirs.kubelet_kubeconfig,
        &serde_yaml::to_string(&kubeconfig).map_err(|e| Error::Kubeconfig(e.to_string()))?,
    )
}
