//! `roomlab`: the command-line entry point.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand_chacha::rand_core::SeedableRng;
use roomlab_protocol::fracdex;
use std::io::BufRead;

/// roomlab makes real-time room backends trustworthy: a reference room engine and server, a
/// deterministic simulation, a conformance suite and planted bugs that prove they catch what they
/// claim. See README.md.
#[derive(Parser)]
#[command(name = "roomlab", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fractional index keys: make keys between two others, or check keys.
    #[command(subcommand)]
    Fracdex(FracdexCommand),
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Fracdex(command) => run_fracdex(command),
        Command::Frame { frame_bytes_max, server } => run_frame(frame_bytes_max, server),
    }
}
