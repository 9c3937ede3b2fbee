//! Serves a Wasm component that exports `wasi:http/incoming-handler` as
//! `wrpc:http/incoming-handler@0.1.0.handle` over NATS, with Rust's wRPC
//! (`wrpc-transport-nats` + `wrpc-interface-http`) and wasmtime: the provider's peer of the
//! `make interop` checks without a wasmCloud host. One component instance per request, as the
//! wasmCloud host does.
//!
//!   interop-wrpc-runner --nats nats://127.0.0.1:4222 --prefix default.http-http_component COMPONENT.wasm

use std::sync::Arc;

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use tracing::{info, warn};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::bindings::ProxyPre;
use wasmtime_wasi_http::body::{HostIncomingBody, HyperIncomingBody, HyperOutgoingBody};
use wasmtime_wasi_http::types::HostIncomingRequest;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};
use wrpc_interface_http::bindings::exports::wrpc::http::incoming_handler;
use wrpc_interface_http::{ServeIncomingHandlerWasmtime, ServeWasmtime};

struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn ctx(&mut self) -> &mut WasiHttpCtx {
        &mut self.http
    }

    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

#[derive(Clone)]
struct Runner {
    pre: Arc<ProxyPre<State>>,
}

impl<Ctx: Send> ServeIncomingHandlerWasmtime<Ctx> for Runner {
    async fn handle(
        &self,
        _cx: Ctx,
        request: http::Request<HyperIncomingBody>,
    ) -> anyhow::Result<Result<http::Response<HyperOutgoingBody>, ErrorCode>> {
        let scheme = match request.uri().scheme_str() {
            Some("https") => Scheme::Https,
            Some("http") => Scheme::Http,
            Some(other) => Scheme::Other(other.into()),
            None => bail!("request without scheme"),
        };
        let mut store = Store::new(
            self.pre.engine(),
            State {
                wasi: WasiCtx::builder().inherit_stderr().build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
            },
        );
        let proxy = self.pre.instantiate_async(&mut store).await?;
        // WasiHttpView::new_incoming_request wants a hyper::Error body; the wRPC body is not one.
        let (parts, body) = request.into_parts();
        let body = HostIncomingBody::new(body, std::time::Duration::from_secs(600));
        let data = store.data_mut();
        let incoming = HostIncomingRequest::new(data, parts, scheme, Some(body))?;
        let incoming = WasiHttpView::table(data).push(incoming)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let outparam = data.new_response_outparam(tx)?;
        // The guest keeps running after it set the response head: it writes the body.
        let task = tokio::spawn(async move {
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        });
        match rx.await {
            Ok(Ok(response)) => Ok(Ok(response)),
            Ok(Err(code)) => Ok(Err(code)),
            Err(_) => {
                task.await.context("component task")??;
                bail!("component did not call `response-outparam::set`")
            }
        }
    }
}

fn argument(args: &mut std::iter::Peekable<std::env::Args>, flag: &str) -> anyhow::Result<String> {
    args.next().with_context(|| format!("{flag} needs a value"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut nats_url = "nats://127.0.0.1:4222".to_string();
    let mut prefix = "default.http-http_component".to_string();
    let mut component_path = None;
    let mut args = std::env::args().peekable();
    args.next();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nats" => nats_url = argument(&mut args, "--nats")?,
            "--prefix" => prefix = argument(&mut args, "--prefix")?,
            _ if component_path.is_none() && !arg.starts_with("--") => component_path = Some(arg),
            _ => bail!("usage: interop-wrpc-runner [--nats URL] [--prefix PREFIX] COMPONENT.wasm"),
        }
    }
    let component_path = component_path.context("usage: interop-wrpc-runner [--nats URL] [--prefix PREFIX] COMPONENT.wasm")?;

    let mut config = Config::new();
    config.async_support(true);
    let engine = Engine::new(&config)?;
    let component = Component::from_file(&engine, &component_path)
        .with_context(|| format!("failed to compile {component_path}"))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;

    let nats = async_nats::connect(&nats_url)
        .await
        .with_context(|| format!("failed to connect to {nats_url}"))?;
    let wrpc = wrpc_transport_nats::Client::new(nats, prefix.clone(), None).await?;
    let invocations = incoming_handler::serve_interface(
        &wrpc,
        ServeWasmtime(Runner { pre: Arc::new(pre) }),
    )
    .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (instance, name, stream) in invocations {
        info!(prefix, instance, name, "serving");
        tasks.spawn(stream.for_each_concurrent(None, |invocation| async move {
            match invocation {
                Ok(call) => {
                    if let Err(err) = call.await {
                        warn!(?err, "invocation failed");
                    }
                }
                Err(err) => warn!(?err, "failed to accept invocation"),
            }
        }));
    }
    eprintln!("interop-wrpc-runner: serving {prefix} from {component_path}");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { while tasks.join_next().await.is_some() {} } => {}
    }
    Ok(())
}
