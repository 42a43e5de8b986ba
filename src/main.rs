//! `roomlab`: the command-line entry point.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand_chacha::rand_core::SeedableRng;
use roomlab_protocol::fracdex;
use std::io::BufRead;

mod conform_command;
mod embedded;
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
        /// The HS256 secret (or the ROOMLAB_SECRET environment variable).
        #[arg(long, env = "ROOMLAB_SECRET", default_value = DEV_SECRET, hide_env_values = true)]
        secret: String,
    },
    /// Decode protocol frames (one JSON frame per line on standard input) and print each as the
    /// message it parses to, or the error code a server would answer it with.
    Frame {
        /// Frame-size limit in bytes, as a server would enforce it.
        #[arg(long, default_value_t = 1 << 20)]
        frame_bytes_max: usize,
        /// Decode as server-to-client frames instead of client-to-server frames.
        #[arg(long)]
        server: bool,
    },
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
        /// Seed for the jittered allocator.
        #[arg(long, default_value_t = 0)]
        seed: u64,
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

fn run_fracdex(command: FracdexCommand) -> Result<()> {
    match command {
        FracdexCommand::Between { a, b, allocator, seed } => {
            let (a, b) = (bound(&a), bound(&b));
            let key = match allocator {
                Allocator::Midpoint => fracdex::key_between(a, b),
                Allocator::Short => fracdex::key_between_short(a, b),
                Allocator::Jittered => {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    fracdex::key_between_jittered(a, b, &mut rng)
                }
            };
            println!("{}", key.context("cannot make a key")?);
        }
        FracdexCommand::N { a, b, n } => {
            for key in fracdex::n_keys_between(bound(&a), bound(&b), n).context("cannot make keys")? {
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
                bail!("{invalid} invalid key(s)");
            }
        }
    }
    Ok(())
}

fn run_frame(frame_bytes_max: usize, server: bool) -> Result<()> {
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        let decoded = if server {
            roomlab_protocol::decode_server(line.as_bytes(), frame_bytes_max).map(|m| format!("{m:?}"))
        } else {
            roomlab_protocol::decode(line.as_bytes(), frame_bytes_max).map(|m| format!("{m:?}"))
        };
        match decoded {
            Ok(message) => println!("ok\t{message}"),
            Err(error) => println!("{}\t{error}", error.code()),
        }
    }
    Ok(())
}

fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
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
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        println!("roomlab listening on ws://{local}/ws/{{room}}?token={{jwt}}");
        match &data {
            Some(dir) => println!("room databases in {}", dir.display()),
            None => println!("room databases in memory (pass --data DIR to keep them)"),
        }
        if secret == DEV_SECRET {
            println!("using the development secret; set ROOMLAB_SECRET in production");
        }
        println!("mint a token: roomlab token --room canvas-1 --user u-1 --role member");
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Sim(args) => {
            if !sim_command::run_sim(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve { addr, data, secret, mutant } => {
            let mutant = conform_command::mutant(mutant.as_deref())?;
            run_serve(addr, data, secret, mutant)
        }
        Command::Conform(args) => std::process::exit(conform_command::run_conform(args)?),
        Command::Mutants(args) => {
            if !mutants_command::run_mutants(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Load(args) => {
            if !load_command::run_load(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Token { room, user, role, ttl, plan, addons, secret } => {
            run_token(room, user, role, ttl, plan, addons, secret);
            Ok(())
        }
        Command::Fracdex(command) => run_fracdex(command),
        Command::Frame { frame_bytes_max, server } => run_frame(frame_bytes_max, server),
    }
}

/// mimalloc instead of the system allocator: a simulated run allocates a JSON tree for every
/// document of every frame each virtual client receives, and glibc's malloc and free took about
/// 13 % of its time (BENCHMARKS.md). The allocator does not change what a run computes, so a seed's
/// trace is the same under either. The workspace builds it without transparent huge pages
/// (mimalloc's `no_thp`): zeroing freshly faulted 2 MiB pages took a seventh of a run's wall time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
