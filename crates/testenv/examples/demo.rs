//! `make demo` placeholder until the seed walk-through lands: starts the real test cluster, shows
//! that it is up (node, CRDs, ServiceAccount tokens, moto), and stops it on exit.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use secrets_store_testenv::Cluster;

#[tokio::main]
async fn main() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    println!("apiserver:  {}", cluster.server_url());
    println!("kubeconfig: {}", cluster.kubeconfig_path().display());
    println!("logs:       {}", cluster.log_dir().display());
    println!("moto:       {}", cluster.moto().endpoint());
    for node in Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("listing nodes")
    {
        let labels = node.metadata.labels.unwrap_or_default();
        println!(
            "node:       {} (region {})",
            node.metadata.name.unwrap_or_default(),
            labels
                .get("topology.kubernetes.io/region")
                .map(String::as_str)
                .unwrap_or("?")
        );
    }
    for crd in Api::<CustomResourceDefinition>::all(client)
        .list(&ListParams::default())
        .await
        .expect("listing CRDs")
    {
        println!("crd:        {}", crd.metadata.name.unwrap_or_default());
    }
    let ns = cluster.new_namespace("demo").await;
    println!("namespace:  {ns} (default ServiceAccount ready)");
    println!("cluster is up; it stops when this program exits");
}
