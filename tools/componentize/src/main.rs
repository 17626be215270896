//! `componentize --wit DIR --world NAME [--adapt-wasip1] CORE.wasm -o OUT.wasm`
//!
//! Embeds the world's type information in a core module (whose imports and
//! exports follow the component model's canonical ABI) and turns it into a
//! component, as `wasm-tools component embed` followed by `wasm-tools
//! component new` do. For policies written without a bindings generator.
//!
//! `--adapt-wasip1` is `component new --adapt` with the WASI preview1
//! *reactor* adapter of the `wasi-preview1-component-adapter-provider`
//! crate, for core modules that import `wasi_snapshot_preview1` (Go's
//! `GOOS=wasip1`). The adapter takes its 64 KiB stack and its page of state
//! from the main module's `cabi_realloc_adapter` export if it has one, else
//! from `cabi_realloc`, else from `memory.grow`; it asks on its first call,
//! which may come before the main module's own initialisation is done.

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut wit, mut world, mut input, mut output) = (None, None, None, None);
    let mut adapt_wasip1 = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--wit" => wit = args.next(),
            "--world" => world = args.next(),
            "-o" | "--output" => output = args.next(),
            "--adapt-wasip1" => adapt_wasip1 = true,
            _ if input.is_none() => input = Some(arg),
            other => bail!("unexpected argument {other}"),
        }
    }
    let usage = "usage: componentize --wit DIR --world NAME [--adapt-wasip1] CORE.wasm -o OUT.wasm";
    let (Some(wit), Some(input), Some(output)) = (wit, input, output) else {
        bail!(usage);
    };
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(&wit)
        .with_context(|| format!("reading the WIT package in {wit}"))?;
    let world = resolve
        .select_world(&[package], world.as_deref())
        .context("selecting the world")?;
    let mut module = std::fs::read(&input).with_context(|| format!("reading {input}"))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .context("embedding the world")?;
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder
        .module(&module)
        .context("reading the core module")?
        .validate(true);
    if adapt_wasip1 {
        encoder
            .adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
            .context("reading the WASI preview1 adapter")?;
    }
    let component = encoder.encode().context("encoding the component")?;
    std::fs::write(&output, component).with_context(|| format!("writing {output}"))?;
    Ok(())
}
