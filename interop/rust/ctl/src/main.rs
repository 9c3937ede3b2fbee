//! Drives a wasmCloud host through its NATS control interface with wasmCloud's own client
//! crate (`wasmcloud-control-interface`): what `wash` does for the `make interop` checks.
//!
//!   interop-ctl [--nats URL] [--lattice NAME] COMMAND ...
//!
//!   host-id                                      the id of the (first) host, waiting up to 30 s
//!   put-config NAME [KEY=VALUE ...]              a named config
//!   start-provider HOST REF ID [CONFIG ...]      start, then wait for the host's health_check_passed
//!   stop-provider HOST ID
//!   scale-component HOST REF ID COUNT [CONFIG ...]  then wait until the host runs it
//!   put-link SOURCE TARGET NAMESPACE PACKAGE INTERFACE [SOURCE_CONFIG ...]
//!   del-link SOURCE NAMESPACE PACKAGE            link name `default`
//!   inventory HOST                               the host inventory as JSON
//!
//! Prints the host's answer; exits 1 when the host refuses or does not answer.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use futures::StreamExt as _;
use wasmcloud_control_interface::{Client, ClientBuilder, CtlResponse, Link};

const USAGE: &str = "usage: interop-ctl [--nats URL] [--lattice NAME] COMMAND ... (see the source)";

fn answer<T>(what: &str, response: Result<CtlResponse<T>, Box<dyn std::error::Error + Send + Sync>>) -> anyhow::Result<Option<T>> {
    let response = response.map_err(|e| anyhow!("{what}: {e}"))?;
    ensure!(response.succeeded(), "{what} refused: {}", response.message());
    Ok(response.into_data())
}

async fn host_id(ctl: &Client) -> anyhow::Result<String> {
    for _ in 0..60 {
        let hosts = ctl.get_hosts().await.map_err(|e| anyhow!("get hosts: {e}"))?;
        if let Some(host) = hosts.into_iter().filter_map(CtlResponse::into_data).next() {
            return Ok(host.id().to_string());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("no host answered within 30 s")
}

/// Waits for a lattice event (`kind`, subscribed in `events`) whose data names `id` as its
/// provider_id or component_id.
async fn wait_event(mut events: async_nats::Subscriber, kind: &str, id: &str, seconds: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => bail!("no {kind} event for {id} within {seconds} s"),
            msg = events.next() => {
                let msg = msg.context("event subscription ended")?;
                let event: serde_json::Value = serde_json::from_slice(&msg.payload)?;
                let data = &event["data"];
                if data["provider_id"] == id || data["component_id"] == id {
                    return Ok(());
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut nats = "nats://127.0.0.1:4222".to_string();
    let mut lattice = "default".to_string();
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        ensure!(!args.is_empty(), USAGE);
        let value = args.remove(0);
        match flag.as_str() {
            "--nats" => nats = value,
            "--lattice" => lattice = value,
            _ => bail!(USAGE),
        }
    }
    ensure!(!args.is_empty(), USAGE);
    let nc = async_nats::connect(&nats).await.with_context(|| format!("connect {nats}"))?;
    let ctl = ClientBuilder::new(nc.clone())
        .lattice(lattice.clone())
        .timeout(Duration::from_secs(10))
        .build();
    let command = args.remove(0);
    let rest: Vec<&str> = args.iter().map(String::as_str).collect();
    match (command.as_str(), rest.as_slice()) {
        ("host-id", []) => println!("{}", host_id(&ctl).await?),
        ("put-config", [name, entries @ ..]) => {
            let mut config = HashMap::new();
            for entry in entries {
                let (key, value) = entry.split_once('=').context("config entries are KEY=VALUE")?;
                config.insert(key.to_string(), value.to_string());
            }
            answer("put config", ctl.put_config(name, config).await)?;
        }
        ("start-provider", [host, reference, id, config @ ..]) => {
            let events = nc.subscribe(format!("wasmbus.evt.{lattice}.health_check_passed")).await?;
            let started = nc.subscribe(format!("wasmbus.evt.{lattice}.provider_started")).await?;
            let config = config.iter().map(|c| c.to_string()).collect();
            answer("start provider", ctl.start_provider(host, reference, id, None, config).await)?;
            wait_event(started, "provider_started", id, 30).await?;
            wait_event(events, "health_check_passed", id, 30).await?;
            println!("healthy");
        }
        ("stop-provider", [host, id]) => {
            answer("stop provider", ctl.stop_provider(host, id).await)?;
        }
        ("scale-component", [host, reference, id, count, config @ ..]) => {
            let scaled = nc.subscribe(format!("wasmbus.evt.{lattice}.component_scaled")).await?;
            let count: u32 = count.parse().context("COUNT is a number")?;
            let config = config.iter().map(|c| c.to_string()).collect();
            answer("scale component", ctl.scale_component(host, reference, id, count, None, config, false).await)?;
            wait_event(scaled, "component_scaled", id, 120).await?;
        }
        ("put-link", [source, target, namespace, package, interface, source_config @ ..]) => {
            let link: Link = Link::builder()
                .source_id(source)
                .target(target)
                .name("default")
                .wit_namespace(namespace)
                .wit_package(package)
                .interfaces(vec![interface.to_string()])
                .source_config(source_config.iter().map(|c| c.to_string()).collect())
                .build()
                .map_err(|e| anyhow!("link: {e}"))?;
            answer("put link", ctl.put_link(link).await)?;
        }
        ("del-link", [source, namespace, package]) => {
            answer("delete link", ctl.delete_link(source, "default", namespace, package).await)?;
        }
        ("inventory", [host]) => {
            let inventory = answer("host inventory", ctl.get_host_inventory(host).await)?;
            println!("{}", serde_json::to_string(&inventory)?);
        }
        _ => bail!(USAGE),
    }
    Ok(())
}
