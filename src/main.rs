//! `roomlab`: the command-line entry point.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rand_chacha::rand_core::SeedableRng;
use roomlab_protocol::fracdex;
use std::process::ExitCode;

mod conform_command;
mod connect_command;
mod embedded;
mod explore_command;
mod frame_command;
mod load_command;
mod mutants_command;
mod sim_command;

/// roomlab makes real-time room backends trustworthy: a reference room engine and server, a
/// deterministic simulation, a conformance suite and planted bugs that prove they catch what they
/// claim. See README.md.
#[derive(Parser)]
#[command(name = "roomlab", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("ROOMLAB_COMMIT"), ")"), about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic simulation: the real server and many virtual clients in a faulty
    /// network, invariants checked on snapshots; exit 1 on any failure, with a repro line.
    Sim(sim_command::SimArgs),
    /// Grade a server against docs/PROTOCOL.md over the wire, case by case (the embedded roomlab
    /// server when no --target is given); exit 0 pass, 1 failures beyond the baseline, 2 harness error.
    Conform(conform_command::ConformArgs),
    /// Plant each known bug in turn, run the conformance suite and a simulation sweep against it,
    /// and print the kill matrix; exit 1 if a mutant survives (needs --features mutants).
    Mutants(mutants_command::MutantsArgs),
    /// Load a server over the wire: confirmed mutations per second from many connections (none
    /// lost, none applied twice), and the fan-out latency of one write to many subscribers.
    Load(load_command::LoadArgs),
    /// Fractional index keys: make keys between two others, or check keys.
    #[command(subcommand)]
    Fracdex(FracdexCommand),
    /// Run the room server: WebSocket and HTTP on one address, one SQLite database per room.
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        addr: std::net::SocketAddr,
        /// The directory of room databases; in memory when absent.
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// The HS256 secret for room tokens (or the ROOMLAB_SECRET environment variable).
        #[arg(long, env = "ROOMLAB_SECRET", default_value = DEV_SECRET, hide_env_values = true)]
        secret: String,
        /// Plant this bug (builds with --features mutants; see `roomlab mutants --list`).
        #[arg(long, value_name = "NAME")]
        mutant: Option<String>,
    },
    /// Mint a room token (an HS256 JWT) for development.
    Token {
        /// The room the token opens.
        #[arg(long)]
        room: String,
        /// The user id.
        #[arg(long)]
        user: String,
        /// The role.
        #[arg(long, value_enum, default_value_t = RoleArg::Member)]
        role: RoleArg,
        /// How long the token lasts, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// The storage plan.
        #[arg(long, value_enum, default_value_t = PlanArg::Pro)]
        plan: PlanArg,
        /// Storage add-ons.
        #[arg(long, default_value_t = 0)]
        addons: u32,
        /// The HS256 secret, the server's (or the ROOMLAB_SECRET environment variable).
        #[arg(long, env = "ROOMLAB_SECRET", default_value = DEV_SECRET, hide_env_values = true)]
        secret: String,
    },
    /// Talk to a room by hand: connect, say hello, print every frame received as indented JSON,
    /// and send what you type (a JSON message, or a short command: type `help`).
    Connect(connect_command::ConnectArgs),
    /// Decode protocol frames (one JSON frame per line on standard input) and print each as
    /// canonical JSON, or the error code a server answers it with and why; exit 1 if any is bad.
    Frame(frame_command::FrameArgs),
}

#[derive(Subcommand)]
enum FracdexCommand {
    /// Print a key strictly between A and B ("-" for an open end).
    Between {
        /// The lower key, or "-".
        a: String,
        /// The upper key, or "-".
        b: String,
        /// Which allocator to use.
        #[arg(long, value_enum, default_value_t = Allocator::Midpoint)]
        allocator: Allocator,
        /// Seed for the jittered allocator (drawn from the operating system when absent, so
        /// successive calls differ).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Print N keys in order strictly between A and B ("-" for an open end).
    N {
        /// The lower key, or "-".
        a: String,
        /// The upper key, or "-".
        b: String,
        /// How many keys.
        n: usize,
    },
    /// Check keys given as arguments; exit 1 if any is invalid.
    Validate {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// The secret `serve` and `token` share when none is given: for development on one machine only.
const DEV_SECRET: &str = "roomlab-development-secret";

/// A mistake in how roomlab was called (a bad option value, a file that is not there): `main`
/// exits with 2 for it, as clap does for the mistakes it finds itself, and with 1 for any other
/// error. The message says what is wrong and what to do instead.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A [`UsageError`] with this message, as the `anyhow` error the commands return.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// "1 client", "2 clients": `count` and the noun, plural when the count is not one.
pub fn plural(count: usize, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Viewer,
    Member,
    Admin,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanArg {
    Free,
    Pro,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Allocator {
    /// The public package's midpoint rule.
    Midpoint,
    /// Short keys for many inserts in one gap.
    Short,
    /// At least 31 random bits, for concurrent inserts.
    Jittered,
}

fn bound(text: &str) -> Option<&str> {
    (text != "-").then_some(text)
}

/// A seed from the operating system's random source, for the runs that need no replay.
pub fn os_seed() -> Result<u64> {
    getrandom::u64().map_err(|error| anyhow::anyhow!("reading the operating system's random source: {error}"))
}

fn run_fracdex(command: FracdexCommand) -> Result<ExitCode> {
    match command {
        FracdexCommand::Between { a, b, allocator, seed } => {
            let (a, b) = (bound(&a), bound(&b));
            let key = match allocator {
                Allocator::Midpoint => fracdex::key_between(a, b),
                Allocator::Short => fracdex::key_between_short(a, b),
                Allocator::Jittered => {
                    let seed = match seed {
                        Some(seed) => seed,
                        None => os_seed()?,
                    };
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    fracdex::key_between_jittered(a, b, &mut rng)
                }
            };
            println!("{}", key.map_err(|error| usage(format!("cannot make a key: {error}")))?);
        }
        FracdexCommand::N { a, b, n } => {
            let keys = fracdex::n_keys_between(bound(&a), bound(&b), n)
                .map_err(|error| usage(format!("cannot make keys: {error}")))?;
            for key in keys {
                println!("{key}");
            }
        }
        FracdexCommand::Validate { keys } => {
            let mut invalid = 0;
            for key in keys {
                match fracdex::validate(&key) {
                    Ok(()) => println!("{key}\tok"),
                    Err(error) => {
                        invalid += 1;
                        println!("{key}\tinvalid: {error}");
                    }
                }
            }
            if invalid > 0 {
                eprintln!("{} invalid", plural(invalid, "key"));
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// `text` quoted for a POSIX shell, so a printed command can be pasted whatever the secret holds.
fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// What `serve` prints once it listens: where, how to mint a token that this server accepts (with
/// the secret in use, when it is not the development one), and a `connect` line ready to paste.
fn serve_banner(local: std::net::SocketAddr, data: Option<&std::path::Path>, secret: &str) -> String {
    // A server on every interface is reached on this machine through loopback.
    let host = match local.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            std::net::SocketAddr::from(([127, 0, 0, 1], local.port()))
        }
        ip if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port()))
        }
        _ => local,
    };
    let mut lines = vec![format!("roomlab listening on ws://{host}/ws/{{room}}?token={{jwt}}")];
    lines.push(match data {
        Some(dir) => format!("room databases in {}", dir.display()),
        None => "room databases in memory (pass --data DIR to keep them)".to_string(),
    });
    let token_command = "roomlab token --room canvas-1 --user u-1 --role member";
    if secret == DEV_SECRET {
        lines.push("using the development secret; set ROOMLAB_SECRET in production".into());
        lines.push(format!("mint a token: {token_command}"));
    } else {
        lines.push(format!("mint a token: ROOMLAB_SECRET={} {token_command}", shell_quote(secret)));
    }
    let claims = roomlab_server::Claims {
        sub: "u-1".into(),
        room: "canvas-1".into(),
        role: roomlab_protocol::Role::Member,
        exp: unix_now().as_secs() + 86_400,
        plan: Some(roomlab_protocol::Plan::Pro),
        addons: Some(0),
    };
    let token = roomlab_server::mint(secret.as_bytes(), &claims);
    lines.push(format!(
        "talk to room canvas-1 as u-1: roomlab connect ws://{host}/ws/canvas-1 --token {token}"
    ));
    lines.join("\n")
}

fn run_serve(
    addr: std::net::SocketAddr,
    data: Option<std::path::PathBuf>,
    secret: String,
    mutant: Option<roomlab_protocol::Mutant>,
) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async move {
        let mut config = roomlab_server::ServerConfig::new(secret.clone());
        config.data = data.clone();
        config.epoch_ms = unix_now().as_millis() as u64;
        config.seed = unix_now().as_nanos() as u64;
        config.engine.mutant = mutant;
        let server = roomlab_server::Server::new(config)?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (is another server there? pick one with --addr)")
        })?;
        println!("{}", serve_banner(listener.local_addr()?, data.as_deref(), &secret));
        if let Some(mutant) = mutant {
            println!("MUTANT {mutant} planted: this server has a bug on purpose");
        }
        let stopper = server.clone();
        tokio::spawn(async move {
            // systemd, Docker and Kubernetes stop a service with SIGTERM; a terminal with Ctrl-C.
            let signal = shutdown_signal().await;
            println!("{signal}: shutting down (connections close with 1001)");
            stopper.shutdown();
        });
        server.serve(listener, 5_000).await;
        Ok(())
    })
}

/// Waits for SIGINT or (on Unix) SIGTERM, and names it.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            Err(_) => tokio::signal::ctrl_c().await.map(|_| "SIGINT").unwrap_or("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

fn run_token(
    room: String,
    user: String,
    role: RoleArg,
    ttl: u64,
    plan: PlanArg,
    addons: u32,
    secret: String,
) {
    let role = match role {
        RoleArg::Viewer => roomlab_protocol::Role::Viewer,
        RoleArg::Member => roomlab_protocol::Role::Member,
        RoleArg::Admin => roomlab_protocol::Role::Admin,
    };
    let plan = match plan {
        PlanArg::Free => roomlab_protocol::Plan::Free,
        PlanArg::Pro => roomlab_protocol::Plan::Pro,
    };
    let exp = unix_now().as_secs() + ttl;
    let claims =
        roomlab_server::Claims { sub: user, room, role, exp, plan: Some(plan), addons: Some(addons) };
    println!("{}", roomlab_server::mint(secret.as_bytes(), &claims));
}

/// 0 when `passed`, 1 otherwise.
fn passed(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(command: Command) -> Result<ExitCode> {
    Ok(match command {
        Command::Sim(args) => passed(sim_command::run_sim(args)?),
        Command::Serve { addr, data, secret, mutant } => {
            let mutant = conform_command::mutant(mutant.as_deref())?;
            run_serve(addr, data, secret, mutant)?;
            ExitCode::SUCCESS
        }
        Command::Conform(args) => ExitCode::from(conform_command::run_conform(args)?),
        Command::Mutants(args) => passed(mutants_command::run_mutants(args)?),
        Command::Load(args) => passed(load_command::run_load(args)?),
        Command::Token { room, user, role, ttl, plan, addons, secret } => {
            run_token(room, user, role, ttl, plan, addons, secret);
            ExitCode::SUCCESS
        }
        Command::Connect(args) => passed(connect_command::run_connect(args)?),
        Command::Fracdex(command) => run_fracdex(command)?,
        Command::Frame(args) => passed(frame_command::run_frame(args)?),
    })
}

/// The error and its causes on one line, each cause once: many errors already quote their
/// source (a TOML error names its line and column), and printing it again only repeats it.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            let is_usage = error.chain().any(|cause| cause.downcast_ref::<UsageError>().is_some());
            ExitCode::from(if is_usage { 2 } else { 1 })
        }
    }
}

/// mimalloc instead of the system allocator: a simulated run allocates a JSON tree for every
/// document of every frame each virtual client receives, and glibc's malloc and free took about
/// 13 % of its time (BENCHMARKS.md). The allocator does not change what a run computes, so a seed's
/// trace is the same under either. The workspace builds it without transparent huge pages
/// (mimalloc's `no_thp`): zeroing freshly faulted 2 MiB pages took a seventh of a run's wall time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
