//! wadm as `wadm` runs it: the configuration from its own flags and WADM_* variables
//! (`WadmConfig`, clap), then `wadm::start_wadm`, until a task ends or the process is stopped.
use anyhow::{anyhow, Result};
use clap::Parser;
use wadm::config::WadmConfig;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let config = WadmConfig::parse();
    let mut tasks = wadm::start_wadm(config).await?;
    tokio::select! {
        ended = tasks.join_next() => match ended {
            Some(Ok(Ok(()))) | None => Err(anyhow!("a wadm task ended")),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow!("a wadm task failed: {e}")),
        },
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
