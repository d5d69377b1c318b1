//! The `mohd` command line: thin, everything lives in the library.
//!
//! The allocator is glibc's, on purpose (issue 18, measured with `TOTAL=60000 RATE=250
//! benches/churn.sh` on one binary, 2-core box): RSS plateau while churning / 30 s idle after,
//! glibc 62.5 / 63.1 MB, `MALLOC_ARENA_MAX=2` 59.7 / 60.1, jemalloc 56.9 / 46.2 (decaying),
//! mimalloc 64.8 / 47.5 (decaying). The plateau was live data, not fragmentation: RFC 3261's
//! 32 s transaction timers hold about 64 transactions per call/s, and the tables that held
//! them kept their peak room. That is fixed where it grew (`table::give_back_room`, boxed
//! transactions and calls; `tests/churn_memory.rs`); a different allocator would buy at most
//! a tenth, for a dependency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mohd::config::Config;

#[derive(Parser)]
#[command(
    name = "mohd",
    version,
    about = "Music-on-hold server: SIP/RTP and line-out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SIP on UDP 5060 and the built-in demo melody when no config is given).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen for SIP on this UDP address instead of the configured ones.
        #[arg(long, value_name = "ADDR:PORT")]
        sip: Option<SocketAddr>,
        /// Play this file or folder on every channel instead of the configured music.
        #[arg(long, value_name = "PATH")]
        music: Option<PathBuf>,
        /// Serve the admin page and API here (`off`: no web listener).
        #[arg(long, value_name = "IP:PORT|off")]
        web: Option<String>,
        /// The state folder (library, settings, credentials, renders).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Set the web admin password (stored as an argon2 hash in the state folder).
    Passwd {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Read the password from standard input (one line) instead of the terminal.
        #[arg(long)]
        stdin: bool,
    },
    /// API tokens for scripts (`Authorization: Bearer TOKEN`): new NAME, list, revoke NAME.
    Token {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR", global = true)]
        state: Option<PathBuf>,
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The music library: `export DIR` writes it for a fleet to follow.
    Library {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR", global = true)]
        state: Option<PathBuf>,
        #[command(subcommand)]
        action: LibraryAction,
    },
    /// Decode one file and print what it is, as JSON (used by uploads, in a child process,
    /// so a hostile file cannot take the server down).
    #[command(hide = true)]
    Probe { file: PathBuf },
    /// Validate the config, the dialplan and every music file; print what would play.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_name = "PATH")]
        music: Option<PathBuf>,
    },
    /// A test softphone: call a SIP URI, receive the music, print RTP receive statistics.
    Call(mohd::call::CallArgs),
    /// A load test: place N calls at a rate, hold them, measure every stream's lateness
    /// against its own RTP clock, loss and setup times (`mohd call` places one call and
    /// decodes it).
    Load(mohd::load::LoadArgs),
    /// Drain a running box: new calls get 503, calls in progress go on until they end or the
    /// grace period runs out, then it exits (`POST /api/drain` with an API token).
    Drain(mohd::control::drain::DrainArgs),
    /// List the sound card playback devices (ALSA) and their rates, for `[lineout] device`.
    Devices,
}

#[derive(Subcommand)]
enum LibraryAction {
    /// Write the library (manifest.json and files/<sha256>) into DIR for a web server or an
    /// S3-compatible bucket; boxes follow it with `[library] follow = "https://…/manifest.json"`.
    /// Files already in DIR are kept; the manifest is written last.
    Export { dir: PathBuf },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token and print it (it is shown only once; only its hash is stored).
    New { name: String },
    /// List token names and when they were made.
    List,
    /// Revoke a token by name.
    Revoke { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve {
            config,
            sip,
            music,
            web,
            state,
        } => serve_command(config, sip, music, web, state),
        Command::Check { config, music } => {
            let config = match load_config(config.as_deref(), None, music) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if mohd::check::run(&config) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Passwd {
            config,
            state,
            stdin,
        } => passwd_command(config, state, stdin),
        Command::Token {
            config,
            state,
            action,
        } => token_command(config, state, action),
        Command::Library {
            config,
            state,
            action: LibraryAction::Export { dir },
        } => export_command(config, state, &dir),
        Command::Probe { file } => {
            ExitCode::from(mohd::library::probe::probe_main(&file).clamp(0, 255) as u8)
        }
        Command::Devices => devices_command(),
        Command::Call(args) => call_command(&args),
        Command::Load(args) => load_command(&args),
        Command::Drain(args) => drain_command(&args),
    }
}

/// `mohd serve`: the config with the command line's overrides, on a two-worker runtime.
fn serve_command(
    config: Option<PathBuf>,
    sip: Option<SocketAddr>,
    music: Option<PathBuf>,
    web: Option<String>,
    state: Option<PathBuf>,
) -> ExitCode {
    let mut config = match load_config(config.as_deref(), sip, music) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = config.apply_web_overrides(web.as_deref(), state) {
        eprintln!("mohd: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mohd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mohd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn passwd_command(config: Option<PathBuf>, state: Option<PathBuf>, stdin: bool) -> ExitCode {
    let dir = match state_dir(config.as_deref(), state) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match mohd::web::auth::cli_passwd(&dir, stdin) {
        Ok(()) => {
            eprintln!("mohd: admin password set in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mohd passwd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn export_command(
    config: Option<PathBuf>,
    state: Option<PathBuf>,
    dir: &std::path::Path,
) -> ExitCode {
    let state = match state_dir(config.as_deref(), state) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match mohd::library::manifest::export_dir(&state, dir) {
        Ok(r) => {
            println!(
                "mohd: library version {} exported to {} ({} tracks, {} files copied)",
                r.version,
                dir.display(),
                r.tracks,
                r.copied
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mohd library export: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token_command(config: Option<PathBuf>, state: Option<PathBuf>, action: TokenAction) -> ExitCode {
    let dir = match state_dir(config.as_deref(), state) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let cmd = match action {
        TokenAction::New { name } => mohd::web::auth::TokenCmd::New(name),
        TokenAction::List => mohd::web::auth::TokenCmd::List,
        TokenAction::Revoke { name } => mohd::web::auth::TokenCmd::Revoke(name),
    };
    match mohd::web::auth::cli_token(&dir, cmd) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mohd token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn devices_command() -> ExitCode {
    match mohd::lineout::list_devices() {
        Ok(devices) => {
            print!("{}", mohd::lineout::devices_report(&devices));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mohd devices: {e}");
            ExitCode::FAILURE
        }
    }
}

fn call_command(args: &mohd::call::CallArgs) -> ExitCode {
    let result = mohd::call::run(args).map(|r| (r.human(), r));
    print_report("mohd call", result, args.json)
}

fn load_command(args: &mohd::load::LoadArgs) -> ExitCode {
    let result = mohd::load::run(args).map(|r| (r.human(), r));
    print_report("mohd load", result, args.json)
}

/// A softphone command's outcome: its report (human text, or JSON with `--json`), or the
/// error under the command's name.
fn print_report<R: serde::Serialize, E: std::fmt::Display>(
    command: &str,
    result: Result<(String, R), E>,
    json: bool,
) -> ExitCode {
    match result {
        Ok((human, report)) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("mohd: {e}"),
                }
            } else {
                print!("{human}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn drain_command(args: &mohd::control::drain::DrainArgs) -> ExitCode {
    use mohd::control::drain;
    let url = match &args.url {
        Some(u) => u.clone(),
        None => match load_config(args.config.as_deref(), None, None) {
            Ok(c) => match c.web.listen {
                Some(listen) => drain::local_url(listen),
                None => {
                    eprintln!("mohd drain: the config has no [web] listen: give --url");
                    return ExitCode::from(2);
                }
            },
            Err(code) => return code,
        },
    };
    let host_port = match drain::parse_url(&url) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("mohd drain: {e}");
            return ExitCode::from(2);
        }
    };
    match drain::run(&host_port, args) {
        Ok(answer) => {
            match serde_json::to_string_pretty(&answer) {
                Ok(s) if !args.wait => println!("{s}"),
                Ok(_) => println!("mohd drain: {url} has exited"),
                Err(e) => eprintln!("mohd: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mohd drain: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mohd serve`: bind, then serve until SIGINT or SIGTERM (the first drains, a second hangs
/// up at once) or until a drain requested over the API has finished.
async fn serve(config: Config) -> Result<(), mohd::server::ServerError> {
    use mohd::server::{self, Environment, Listeners};
    let listeners = Listeners::bind(&config).await?;
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(forward_stop_signals(stop_tx));
    server::run(config, listeners, Environment::from_process(), stop_rx).await
}

/// Exit status 2 for a configuration error, as the docs promise.
fn load_config(
    path: Option<&std::path::Path>,
    sip: Option<SocketAddr>,
    music: Option<PathBuf>,
) -> Result<Config, ExitCode> {
    let mut config = match path {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mohd: {e}");
                return Err(ExitCode::from(2));
            }
        },
        None => Config::embedded_default(),
    };
    config.apply_overrides(sip, music);
    Ok(config)
}

/// The state folder the server with this config would use (`--state` wins).
fn state_dir(
    config: Option<&std::path::Path>,
    state: Option<PathBuf>,
) -> Result<PathBuf, ExitCode> {
    if let Some(dir) = state {
        return Ok(dir);
    }
    let config = load_config(config, None, None)?;
    Ok(config.state.dir)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Every SIGINT and SIGTERM becomes a stop request.
async fn forward_stop_signals(requests: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("mohd: cannot handle SIGINT/SIGTERM ({e}): stop with SIGKILL");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if requests.send(()).await.is_err() {
            return;
        }
    }
}
