//! `componentize --wit DIR --world NAME CORE.wasm -o OUT.wasm`
//!
//! Embeds the world's type information in a core module (whose imports and
//! exports follow the component model's canonical ABI) and turns it into a
//! component, as `wasm-tools component embed` followed by `wasm-tools
//! component new` do. For policies written without a bindings generator.

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut wit, mut world, mut input, mut output) = (None, None, None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--wit" => wit = args.next(),
            "--world" => world = args.next(),
            "-o" | "--output" => output = args.next(),
            _ if input.is_none() => input = Some(arg),
            other => bail!("unexpected argument {other}"),
        }
    }
    let usage = "usage: componentize --wit DIR --world NAME CORE.wasm -o OUT.wasm";
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
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("reading the core module")?
        .validate(true)
        .encode()
        .context("encoding the component")?;
    std::fs::write(&output, component).with_context(|| format!("writing {output}"))?;
    Ok(())
}
