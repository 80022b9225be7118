use finetune::export;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// ONNX (weights inside, dynamic batch size, metadata_props with classes and preprocessing).
    Onnx,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle folder (from `finetune train --out`).
    model: PathBuf,
    /// File format.
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// Output file (default: MODEL/model.onnx).
    #[arg(long)]
    out: Option<PathBuf>,
    /// ONNX opset, 13 to 21.
    #[arg(long, default_value_t = export::DEFAULT_OPSET)]
    opset: i64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let Format::Onnx = a.format;
    let out = a.out.unwrap_or_else(|| a.model.join("model.onnx"));
    let e = export::export_onnx(&a.model, &out, a.opset)?;
    eprintln!(
        "wrote {} ({:.1} MB, opset {}, {} nodes, {} initializers)",
        e.path.display(),
        e.bytes as f64 / 1e6,
        e.opset,
        e.nodes,
        e.initializers
    );
    Ok(())
}
