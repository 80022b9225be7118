use finetune::download::{self, ClassSummary, DownloadConfig, Progress, Source};
use finetune::search::ddg::{DdgConfig, DuckDuckGo, Filters};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Output folder: train/<class>/, test/<class>/ and manifest.csv go here.
    #[arg(long)]
    pub out: PathBuf,
    /// Class names; each is also the search query (plus --query-suffix).
    #[arg(required_unless_present = "urls_from")]
    pub classes: Vec<String>,
    /// Images to keep per class (train + test).
    #[arg(long, default_value_t = 100)]
    pub per_class: usize,
    /// Appended to every query, e.g. " animal".
    #[arg(long, default_value = "")]
    pub query_suffix: String,
    /// Longer side of saved images, in pixels (never enlarged).
    #[arg(long, default_value_t = 400)]
    pub max_size: u32,
    /// Images per class moved to test/ (whole near-duplicate groups stay together).
    #[arg(long, default_value_t = 0)]
    pub test_per_class: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// on, moderate or off.
    #[arg(long, default_value = "moderate")]
    pub safesearch: String,
    #[arg(long, default_value = "us-en")]
    pub region: String,
    /// Small, Medium, Large or Wallpaper.
    #[arg(long)]
    pub size: Option<String>,
    /// photo, clipart, gif, transparent or line.
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Square, Tall or Wide.
    #[arg(long)]
    pub layout: Option<String>,
    /// any, Public, Share, ShareCommercially, Modify or ModifyCommercially.
    #[arg(long)]
    pub license: Option<String>,
    /// Image URLs instead of a search: one per line (one class), or CSV with `class,url` columns.
    #[arg(long)]
    pub urls_from: Option<PathBuf>,
    /// Parallel downloads.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds allowed per download (whole request, body included).
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Largest accepted download, in MB.
    #[arg(long, default_value_t = 20)]
    pub max_mb: u64,
    #[arg(long, short)]
    pub quiet: bool,
}

struct Bars {
    tty: bool,
    quiet: bool,
    bar: Mutex<Option<indicatif::ProgressBar>>,
    class: Mutex<String>,
}

impl Progress for Bars {
    fn start_class(&self, class: &str, total: usize) {
        if let Ok(mut c) = self.class.lock() {
            *c = class.to_string();
        }
        if self.quiet {
            return;
        }
        if self.tty {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(class.to_string());
            if let Ok(mut g) = self.bar.lock() {
                *g = Some(b);
            }
        } else {
            eprintln!("{class}: downloading");
        }
    }
    fn top_up(&self, class: &str, kept: usize, short: usize, total: usize) {
        if self.quiet {
            return;
        }
        let bar = self.bar.lock().ok();
        match bar.as_ref().and_then(|g| g.as_ref()) {
            // The bar grows: one bar per class, however many rounds it takes.
            Some(b) => b.inc_length(total as u64),
            None => eprintln!("{class}: {kept} kept, {short} short: trying {total} more results"),
        }
    }
    fn item(&self, done: usize, failed: usize, kept: usize) {
        if let Ok(g) = self.bar.lock() {
            if let Some(b) = g.as_ref() {
                b.set_position(done as u64);
                b.set_message(format!("kept {kept}, failed {failed}"));
            }
        }
        if !self.tty && !self.quiet && done.is_multiple_of(25) {
            let c = self.class.lock().map(|c| c.clone()).unwrap_or_default();
            eprintln!("{c}: {done} done, {kept} kept, {failed} failed");
        }
    }
    fn finish_class(&self, _s: &ClassSummary) {
        if let Ok(mut g) = self.bar.lock() {
            if let Some(b) = g.take() {
                b.finish_and_clear();
            }
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<Vec<ClassSummary>> {
    anyhow::ensure!(
        matches!(a.safesearch.as_str(), "on" | "moderate" | "off"),
        "--safesearch must be on, moderate or off"
    );
    anyhow::ensure!(a.max_size >= 16, "--max-size must be at least 16");
    let cfg = DownloadConfig {
        out: a.out.clone(),
        per_class: a.per_class,
        query_suffix: a.query_suffix.clone(),
        max_size: a.max_size,
        test_per_class: a.test_per_class,
        seed: a.seed,
        concurrency: a.concurrency.max(1),
        timeout: Duration::from_secs_f64(a.timeout.max(0.1)),
        max_bytes: a.max_mb * 1024 * 1024,
        jpeg_quality: 90,
    };
    let bars = Bars {
        tty: super::console::stderr_is_tty(),
        quiet: a.quiet,
        bar: Mutex::new(None),
        class: Mutex::new(String::new()),
    };
    let summaries = if let Some(list) = &a.urls_from {
        let lists = finetune::search::urls::read_url_list(list, &a.classes)?;
        let classes: Vec<String> = lists.keys().cloned().collect();
        anyhow::ensure!(
            !classes.is_empty(),
            "{} lists no URL for the given classes",
            list.display()
        );
        download::run(&classes, Source::Lists(lists), &cfg, &bars)?
    } else {
        let ddg = DdgConfig {
            region: a.region.clone(),
            safesearch: a.safesearch.clone(),
            filters: Filters {
                size: a.size.clone(),
                color: None,
                kind: a.kind.clone(),
                layout: a.layout.clone(),
                license: a.license.clone(),
            },
            ..Default::default()
        };
        let mut provider = DuckDuckGo::new(ddg);
        download::run(&a.classes, Source::Search(&mut provider), &cfg, &bars)?
    };
    print!("{}", download::summary_table(&summaries));
    println!(
        "images in {} (manifest.csv lists every source)",
        a.out.display()
    );
    Ok(summaries)
}
