//! wasmCloud's HTTP server provider as its own binary does it: the library's `run()` on a
//! multi-threaded tokio runtime (one worker per core). Host data comes on stdin.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wasmcloud_provider_http_server::run().await
}
