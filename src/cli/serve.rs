use finetune::serve;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle folders (from `finetune train --out`); each is served under its folder name.
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// Address to listen on; 0.0.0.0 makes the server reachable from other machines.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most images in one forward pass.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long the worker may wait for more images after the first one of a batch, in ms: only
    /// while other requests are on their way (body arriving, images decoding); a lone request
    /// runs at once.
    #[arg(long, default_value_t = 5)]
    max_batch_delay_ms: u64,
    /// Forward passes each model runs at once, each with its own copy of the network (default:
    /// 2 on a CPU with two cores or more, each on half the threads; 1 on a GPU). A request that
    /// arrives while one pass computes starts at once on a free worker.
    #[arg(long)]
    workers: Option<usize>,
    /// Images waiting per model beyond which requests are answered 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Require `Authorization: Bearer SECRET` on every route except /ping and /v2/health/*.
    #[arg(long, env = "FINETUNE_SERVE_TOKEN")]
    token: Option<String>,
    /// Let web pages from this origin (e.g. https://example.com, or * for any) call the API.
    #[arg(long)]
    cors: Option<String>,
    /// Seconds a request body may take to arrive (20 MB in 30 s is about 5 Mbit/s); slower is 408.
    #[arg(long, default_value_t = 30.0)]
    body_timeout_s: f64,
    /// Seconds a client may take to send a request's headers (and an idle keep-alive connection
    /// may stay open) before the connection is closed, like nginx's client_header_timeout.
    #[arg(long, default_value_t = 30.0)]
    header_timeout_s: f64,
    #[command(flatten)]
    trust: super::TrustArgs,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let runtime = a.compute.runtime()?;
    let opts = serve::Options {
        host: a.host,
        port: a.port,
        max_batch: a.max_batch.max(1),
        max_batch_delay: Duration::from_millis(a.max_batch_delay_ms),
        queue: a.queue.max(1),
        runtime,
        token: a.token,
        cors: a.cors,
        body_timeout: seconds("--body-timeout-s", a.body_timeout_s)?,
        header_timeout: seconds("--header-timeout-s", a.header_timeout_s)?,
        raw_probs: a.trust.raw_probs,
        accept: a.trust.unknown.map(|u| u.0),
        workers: a.workers,
    };
    serve::run(&a.models, opts, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    })?;
    Ok(())
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("{flag} must be a positive number of seconds"))
}
