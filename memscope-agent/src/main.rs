//! `memscope-agent`: the daemon and its small CLI. JSON lines go to the configured sink (stdout by
//! default); the agent's own logs go to stderr.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use memscope_agent::{
    config::{Config, ConfigError, DEFAULT_CONFIG_TOML},
    sinks::check_output,
    view::{
        report::ReportArgs,
        table::{ShowOptions, SortKey},
    },
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
    #[arg(long, global = true, value_name = "PATH")]
    proc_root: Option<PathBuf>,
    /// Host name written into every record; overrides `[agent] host` (a DaemonSet passes the
    /// node's name: a pod's own host name is the pod's).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// One full emission, then exit.
    #[arg(long)]
    once: bool,
    /// Log filter for the agent's own logs on stderr (tracing env-filter syntax); RUST_LOG also works.
    /// Default: `info`; `warn` for `show` and `report`, whose output is for a person.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file (syntax, values, and that the output file could be opened, creating
    /// nothing) and exit.
    CheckConfig { path: PathBuf },
    /// Print the built-in default configuration.
    PrintDefaultConfig,
    /// One collection (as `--once`), printed as tables that fit the terminal.
    Show {
        /// Rows per table (processes, shared objects).
        #[arg(long, default_value_t = 15, value_name = "N")]
        top: usize,
        /// Order processes by this figure (descending).
        #[arg(long, value_enum, default_value_t = SortKey::Pss)]
        sort: SortKey,
        /// Print the JSON lines instead of tables (what `--once` sends to the sink).
        #[arg(long)]
        json: bool,
        /// Table width in columns (default: the terminal's, else $COLUMNS, else 100).
        #[arg(long, value_name = "COLUMNS")]
        width: Option<usize>,
    },
    /// Write one self-contained HTML report (treemap, time plots, exits) from a recorded stream.
    Report(ReportArgs),
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

/// Checks the config against this machine, creating nothing: the directories it reads exist, and
/// the output passes the sink's own rules (directory, link, owner). `proc_from_cli`: the proc root
/// came from `--proc-root`, not the file.
fn check_environment(
    config: &Config,
    src: Option<&str>,
    origin: &str,
    proc_from_cli: bool,
) -> Result<(), ConfigError> {
    let mut dirs = vec![("agent.proc_root", &config.agent.proc_root)];
    if config.collectors.tmpfs.enabled {
        dirs.push((
            "collectors.tmpfs.host_root",
            &config.collectors.tmpfs.host_root,
        ));
    }
    for (key, dir) in dirs {
        if !dir.is_dir() {
            let why = match std::fs::metadata(dir) {
                Ok(_) => "is not a directory".to_string(),
                Err(e) => e.to_string(),
            };
            let message = format!("{}: {why}", dir.display());
            if key == "agent.proc_root" && proc_from_cli {
                return Err(ConfigError {
                    origin: "--proc-root".to_string(),
                    line: None,
                    key: None,
                    message,
                });
            }
            return Err(ConfigError::at_key(origin, src, key, message));
        }
    }
    check_output(&config.output, src, origin)
}

fn main() -> ExitCode {
    // The clock of `uptime_ms` starts here, before the eBPF programs are loaded.
    memscope_agent::runtime::process_started();
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Some(Command::Show { .. } | Command::Report(_)));
    init_logs(
        cli.log
            .as_deref()
            .unwrap_or(if quiet { "warn" } else { "info" }),
    );
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
                check_environment(&c, src.as_deref(), &origin, false).map_err(|e| e.to_string())
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
        Some(Command::Report(args)) => {
            return match memscope_agent::view::report::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Show { .. }) | None => {}
    }

    let (mut config, src, origin) = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let proc_from_cli = cli.proc_root.is_some();
    if let Some(root) = cli.proc_root {
        config.agent.proc_root = root;
    }
    if let Some(host) = cli.host {
        config.agent.host = host;
    }
    if let Some(Command::Show {
        top,
        sort,
        json,
        width,
    }) = &cli.command
    {
        // The sink is not used: the lines stay in memory, so the output settings are not checked.
        let opts = ShowOptions {
            top: *top,
            sort: *sort,
            width: width.unwrap_or_else(memscope_agent::view::table::terminal_width),
        };
        return show(config, &opts, *json);
    }
    if let Err(e) = check_environment(&config, src.as_deref(), &origin, proc_from_cli) {
        error!("{e}");
        return ExitCode::from(2);
    }

    raise_fd_limit();
    let Some(runtime) = async_runtime() else {
        return ExitCode::FAILURE;
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

/// The agent's async runtime (two workers; `/proc` reads go to the blocking pool).
fn async_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            None
        }
    }
}

/// `show`: one collection through the `--once` path, printed as tables (or as the JSON lines).
fn show(config: Config, opts: &ShowOptions, json: bool) -> ExitCode {
    use std::io::Write as _;
    raise_fd_limit();
    let Some(runtime) = async_runtime() else {
        return ExitCode::FAILURE;
    };
    let lines = match runtime.block_on(memscope_agent::view::collect_once(config)) {
        Ok(l) => l,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let out = if json {
        lines
    } else {
        let (state, _) = memscope_agent::view::state::rebuild(&String::from_utf8_lossy(&lines));
        memscope_agent::view::table::render(&state, opts).into_bytes()
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&out).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // `show | head` closes the pipe early: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            error!("writing to stdout: {e}");
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
