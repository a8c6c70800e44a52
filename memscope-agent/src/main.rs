//! `memscope-agent`: the daemon and its small CLI. JSON lines go to the configured sink (stdout by
//! default); the agent's own logs go to stderr.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use memscope_agent::{
    config::{Config, DEFAULT_CONFIG_TOML},
    sinks::check_output,
};
use tracing::error;

#[derive(Parser, Debug)]
#[command(
    name = "memscope-agent",
    version,
    about = "Where the memory goes, as JSON lines"
)]
struct Cli {
    /// Config file (TOML). Without it the built-in defaults are used (= config/memscope.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Root of the proc filesystem; overrides `[agent] proc_root`.
    #[arg(long, value_name = "PATH")]
    proc_root: Option<PathBuf>,
    /// Host name written into every record; overrides `[agent] host` (a DaemonSet passes the
    /// node's name: a pod's own host name is the pod's).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// One full emission, then exit.
    #[arg(long)]
    once: bool,
    /// Log filter for the agent's own logs on stderr (tracing env-filter syntax); RUST_LOG also works.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file (syntax, values, and that the output file can be opened) and exit.
    CheckConfig { path: PathBuf },
    /// Print the built-in default configuration.
    PrintDefaultConfig,
}

fn init_logs(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let env_filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn load_config(path: Option<&PathBuf>) -> Result<(Config, Option<String>, String), String> {
    match path {
        None => Ok((Config::default(), None, "<built-in defaults>".to_string())),
        Some(p) => {
            let origin = p.display().to_string();
            let src = std::fs::read_to_string(p)
                .map_err(|e| format!("{origin}: cannot read config file: {e}"))?;
            let config = Config::parse(&src, &origin).map_err(|e| e.to_string())?;
            Ok((config, Some(src), origin))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log);
    match &cli.command {
        Some(Command::PrintDefaultConfig) => {
            #[expect(
                clippy::print_stdout,
                reason = "printing the config is this command's output"
            )]
            {
                print!("{DEFAULT_CONFIG_TOML}");
            }
            return ExitCode::SUCCESS;
        }
        Some(Command::CheckConfig { path }) => {
            return match load_config(Some(path)).and_then(|(c, src, origin)| {
                check_output(&c.output, src.as_deref(), &origin).map_err(|e| e.to_string())
            }) {
                Ok(()) => {
                    eprintln!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
        None => {}
    }

    let (mut config, src, origin) = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(root) = cli.proc_root {
        config.agent.proc_root = root;
    }
    if let Some(host) = cli.host {
        config.agent.host = host;
    }
    if let Err(e) = check_output(&config.output, src.as_deref(), &origin) {
        error!("{e}");
        return ExitCode::from(2);
    }

    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sink = match memscope_agent::runtime::open_sink(&config) {
        Ok(s) => s,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let run = memscope_agent::runtime::run(config, sink, cli.once, shutdown_signal());
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: the agent keeps one `statm` descriptor per
/// process open between passes (it reads them the plain way beyond the limit).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!("could not raise RLIMIT_NOFILE");
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
