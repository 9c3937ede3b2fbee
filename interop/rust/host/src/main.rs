//! A wasmCloud 1.x host: the `wasmcloud-host` library with a minimal main, as wasmCloud's own
//! binary starts it. Everything else goes through its NATS control interface.
//!
//!   interop-host --nats nats://127.0.0.1:4222 [--lattice default]
//!
//! It allows `file://` images (as `wash up` does), prints `host_id=<N...>` on stdout once it
//! serves, and stops on SIGINT/SIGTERM or a host stop command.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::signal::unix::{signal, SignalKind};
use wasmcloud_host::url::Url;
use wasmcloud_host::{WasmbusHost, WasmbusHostConfig};

const USAGE: &str = "usage: interop-host [--nats URL] [--lattice NAME]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut nats = "nats://127.0.0.1:4222".to_string();
    let mut lattice = "default".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nats" => nats = args.next().context(USAGE)?,
            "--lattice" => lattice = args.next().context(USAGE)?,
            _ => bail!(USAGE),
        }
    }
    let host_key = Arc::new(nkeys::KeyPair::new_server());
    let url = Url::parse(&nats).with_context(|| format!("bad NATS URL {nats}"))?;
    let (host, shutdown) = WasmbusHost::new(WasmbusHostConfig {
        ctl_nats_url: url.clone(),
        rpc_nats_url: url,
        lattice: lattice.into(),
        host_key: Some(Arc::clone(&host_key)),
        allow_file_load: true,
        // componentize-js components (SpiderMonkey) need more than the 10 MB default
        max_linear_memory: 256 << 20,
        provider_shutdown_delay: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await
    .context("failed to start the host")?;
    println!("host_id={}", host_key.public_key());
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        stopped = host.stopped() => { stopped?; }
    }
    shutdown.await.context("failed to stop the host")?;
    Ok(())
}
