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
use tracing::{error, info};

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
    limit_malloc_arenas();
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
    let (proc_root_cli, host_cli) = (cli.proc_root.clone(), cli.host.clone());
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
    // Handlers first: from here on no signal the agent knows kills it mid-write.
    let mut signals = match runtime.block_on(async { Signals::install() }) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let overrides = Overrides {
        config: cli.config.clone(),
        proc_root: proc_root_cli,
        host: host_cli,
    };
    let code = run_until_stopped(&runtime, config, cli.once, &mut signals, &overrides);
    // The sink is flushed by now. A collector run still blocked in a read (it is abandoned at its
    // deadline) must not hold the exit.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    code
}

/// What the command line sets over the config file; applied again on every reload.
struct Overrides {
    config: Option<PathBuf>,
    proc_root: Option<PathBuf>,
    host: Option<String>,
}

impl Overrides {
    /// The config file (or the built-in defaults) with the command line's overrides, checked
    /// against this machine.
    fn load(&self) -> Result<Config, String> {
        let (mut config, src, origin) = load_config(self.config.as_ref())?;
        if let Some(root) = &self.proc_root {
            config.agent.proc_root = root.clone();
        }
        if let Some(host) = &self.host {
            config.agent.host = host.clone();
        }
        check_environment(&config, src.as_deref(), &origin, self.proc_root.is_some())
            .map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Runs the agent until SIGTERM or SIGINT (or the end of `--once`). A SIGHUP with a valid config
/// ends the run (its sink flushed) and starts one with the new config; an invalid one is logged
/// and the running config goes on undisturbed.
fn run_until_stopped(
    runtime: &tokio::runtime::Runtime,
    mut config: Config,
    once: bool,
    signals: &mut Signals,
    overrides: &Overrides,
) -> ExitCode {
    let mut sink = match memscope_agent::runtime::open_sink(&config) {
        Ok(s) => s,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    loop {
        let mut reloaded: Option<Config> = None;
        let stop = async {
            reloaded = signals.stop_or_reload(overrides, once).await;
        };
        let run = memscope_agent::runtime::run(config.clone(), sink, once, stop);
        if let Err(e) = runtime.block_on(run) {
            error!("{e:#}");
            return ExitCode::FAILURE;
        }
        let Some(new) = reloaded else {
            return ExitCode::SUCCESS;
        };
        sink = match memscope_agent::runtime::open_sink(&new) {
            Ok(s) => {
                info!("SIGHUP: the new config is running");
                config = new;
                s
            }
            Err(e) => {
                error!("SIGHUP: {e:#}; the old config keeps running");
                match memscope_agent::runtime::open_sink(&config) {
                    Ok(s) => s,
                    Err(e) => {
                        error!("{e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        };
    }
}

/// The signals the agent handles (docs/deploy.md#signals): SIGTERM and SIGINT stop it, SIGHUP
/// reloads the config, SIGUSR1 and SIGUSR2 are logged and otherwise ignored.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Resolves on SIGTERM or SIGINT (`None`), or on a SIGHUP whose config is valid (`Some`). A
    /// SIGHUP with an invalid config, or in a `--once` run, and SIGUSR1/SIGUSR2 are logged and
    /// waited past.
    async fn stop_or_reload(&mut self, overrides: &Overrides, once: bool) -> Option<Config> {
        loop {
            tokio::select! {
                _ = self.term.recv() => return None,
                _ = self.int.recv() => return None,
                _ = self.hup.recv() => {
                    if once {
                        info!("SIGHUP ignored: a --once run has nothing to reload");
                        continue;
                    }
                    match overrides.load() {
                        Ok(config) => {
                            info!(config = %origin(overrides), "SIGHUP: reloading the config");
                            return Some(config);
                        }
                        Err(e) => error!("SIGHUP: config rejected, the old config keeps running: {e}"),
                    }
                }
                _ = self.usr1.recv() => info!("SIGUSR1 ignored (no meaning assigned)"),
                _ = self.usr2.recv() => info!("SIGUSR2 ignored (no meaning assigned)"),
            }
        }
    }
}

fn origin(overrides: &Overrides) -> String {
    overrides.config.as_ref().map_or_else(
        || "<built-in defaults>".to_string(),
        |p| p.display().to_string(),
    )
}

/// How long the exit waits for collector runs still going once the sink is flushed.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps glibc's heap from growing with every emission (docs/design.md#memory):
///
/// - glibc gives each thread that allocates concurrently an arena of its own (up to 8 per core),
///   and memory freed in one arena serves only that arena: with collector runs on the blocking
///   pool's threads the heap fragments across arenas. Two arenas keep contention low (the agent
///   has two async workers) and freed memory reusable.
/// - A fixed mmap threshold: by default glibc raises it (up to 32 MiB) each time a large block is
///   freed, so the next emission's large buffers (the lines of 3000 processes, the per-pid maps)
///   come from the heap and leave holes there. Fixed at 128 KiB, they are mapped and unmapped
///   whole.
///
/// The store task also trims the heap after each emission is written ([`memscope_agent::store`]).
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called first thing in main, before any
    // thread is spawned.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
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
    let collected = runtime.block_on(memscope_agent::view::collect_once(config));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    let lines = match collected {
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
