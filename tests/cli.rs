//! The `roomlab` binary as a person runs it: exit codes and the words of its messages for the
//! mistakes people make, `frame`'s verdicts, sharding and merging (the scale-out script), and the
//! small promises of the other commands. Every simulation here is tiny (one or a few seeds of a
//! few clients for a second or two of faults).

use std::io::Write;
use std::process::{Command, Output, Stdio};

const ROOMLAB: &str = env!("CARGO_BIN_EXE_roomlab");

/// Runs roomlab with `args` in `dir`, feeding `stdin`.
fn roomlab(args: &[&str], stdin: &str, dir: &std::path::Path) -> Output {
    let mut child = Command::new(ROOMLAB)
        .args(args)
        .current_dir(dir)
        .env_remove("ROOMLAB_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roomlab starts");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin written");
    child.wait_with_output().expect("roomlab ends")
}

/// Runs `args` and checks the exit code and that standard output and error together contain every
/// fragment of `expected`, each as many times as it is listed (an error printed twice is a defect).
fn check(args: &[&str], stdin: &str, code: i32, expected: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    check_in(dir.path(), args, stdin, code, expected)
}

fn check_in(dir: &std::path::Path, args: &[&str], stdin: &str, code: i32, expected: &[&str]) -> String {
    let output = roomlab(args, stdin, dir);
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(code), "roomlab {}:\n{text}", args.join(" "));
    for fragment in expected {
        let wanted = expected.iter().filter(|f| *f == fragment).count();
        assert_eq!(
            text.matches(fragment).count(),
            wanted,
            "{fragment:?} in roomlab {}:\n{text}",
            args.join(" ")
        );
    }
    text
}

#[test]
fn usage_errors_say_what_is_wrong_and_exit_2() {
    check(&["sim", "--scenario", "./missing.toml"], "", 2, &["file not found: ./missing.toml"]);
    check(&["sim", "--scenario", "swam"], "", 2, &["no scenario named \"swam\"", "reconnect-storm, swarm"]);
    check(&["sim", "--scenario", "regressions"], "", 2, &["roomlab sim --regressions"]);
    let text = check(&["sim", "--seeds", "0"], "", 2, &["--seeds must be at least 1"]);
    assert!(!text.contains("shard"), "{text}");
    check(&["sim", "--seeds", "5..5"], "", 2, &["the seed range 5..5 is empty"]);
    check(&["sim", "--seeds", "many"], "", 2, &["\"many\" is not a seed"]);
    check(&["sim", "--clients", "0", "--seeds", "1"], "", 2, &["--clients must be at least 1"]);
    check(&["sim", "--shard", "9/8"], "", 2, &["\"9/8\" is not a shard"]);
    check(&["sim", "--regressions", "--seed", "3"], "", 2, &["cannot be used with"]);
    check(&["sim", "--merge", "nowhere.json"], "", 2, &["file not found: nowhere.json"]);
    check(&["sim", "--mutant", "no-such-bug"], "", 2, &["no mutant \"no-such-bug\""]);
    check(&["fracdex", "between", "b", "a"], "", 2, &["cannot make a key"]);
    check(&["conform", "--target", "gone.toml"], "", 2, &["file not found: gone.toml"]);
    check(&["load", "--target", "gone.toml"], "", 2, &["file not found: gone.toml"]);
    check(&["load", "--connections", "0"], "", 2, &["--connections must be at least 1"]);
}

#[test]
fn a_bad_scenario_file_is_explained_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "name = \"bad\"\ncolour = 1\n").unwrap();
    check_in(dir.path(), &["sim", "--scenario", "bad.toml"], "", 2, &["unknown field `colour`", "line 2"]);
}

#[test]
fn a_shard_without_seeds_runs_nothing_and_says_so() {
    let args = ["sim", "--seeds", "4", "--shard", "5/8", "--safety-s", "1", "--clients", "2"];
    check(&args, "", 0, &["shard 5/8 has no seeds", "the sweep has 4 seeds"]);
}

#[test]
fn tiny_sweeps_pass_and_merge_refuses_seeds_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let one =
        ["sim", "--json", "one.json", "--clients", "2", "--safety-s", "1", "--jobs", "1", "--seeds", "0..2"];
    check_in(
        dir.path(),
        &one,
        "",
        0,
        &["roomlab sim: scenario swarm (2 clients on 2 hosts, 1 s of faults), 2 seeds"],
    );
    let two =
        ["sim", "--json", "two.json", "--clients", "2", "--safety-s", "1", "--jobs", "1", "--seeds", "1..3"];
    check_in(dir.path(), &two, "", 0, &["seeds                        2"]);
    check_in(dir.path(), &["sim", "--merge", "one.json", "./one.json"], "", 2, &["are the same file"]);
    check_in(dir.path(), &["sim", "--merge", "one.json", "two.json"], "", 2, &["both ran swarm seed 0x1"]);
    std::fs::write(dir.path().join("junk.json"), "{").unwrap();
    check_in(
        dir.path(),
        &["sim", "--merge", "junk.json"],
        "",
        2,
        &["junk.json is not a report of `roomlab sim --json`"],
    );
    let one_client = ["sim", "--clients", "1", "--seeds", "1", "--safety-s", "1", "--jobs", "1"];
    check(&one_client, "", 0, &["(1 client on 1 host, 1 s of faults), 1 seed, 1 job"]);
}

/// The recipe of docs/SCALE-OUT.md on this machine: three shards, a merge, the merged seed count.
#[test]
fn shards_merge_into_the_whole_sweep() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/shard-merge-check.sh");
    let output = Command::new("bash").arg(script).arg(ROOMLAB).output().expect("bash runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("3 shards of 6 seeds merged into 6 seeds"), "{text}");
}

#[test]
fn version() {
    let text = check(&["--version"], "", 0, &["roomlab "]);
    assert!(text.starts_with("roomlab "), "{text}");
}

/// `frame` prints each line's verdict; it exits 1 when any line is refused.
fn check_frame(args: &[&str], lines: &[&str], code: i32, expected: &[&str]) {
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    check(&[&["frame"], args].concat(), &input, code, expected);
}

#[test]
fn frame_gives_the_servers_verdict() {
    check_frame(&[], &[r#"{"type":"ping","nonce":1}"#], 0, &["ok\t{\"nonce\":1,\"type\":\"ping\"}"]);
    check_frame(&[], &["nope"], 1, &["bad_frame\tnot JSON: expected a value at column 2"]);
    check_frame(
        &[],
        &[
            r#"{"type":"subscribe","sub":"q","query":{"collection":"tasks","limit":5000}}"#,
            r#"{"type":"ping","nonce":2}"#,
        ],
        1,
        &["invalid\tthe query is refused: limit must be between 1 and 1000", "ok\t"],
    );
    check_frame(&["--frame-bytes-max", "10"], &[r#"{"type":"ping","nonce":1}"#], 1, &["frame_too_large\t"]);
    check_frame(
        &["--server"],
        &[r#"{"type":"pong","nonce":1}"#],
        0,
        &["ok\t{\"nonce\":1,\"type\":\"pong\"}"],
    );
    check_frame(&["--server"], &[r#"{"type":"hello"}"#], 1, &["bad_frame\tnot a message of the protocol"]);
}

#[test]
fn jittered_keys_differ_unless_seeded() {
    let key = |extra: &[&str]| {
        check(&[&["fracdex", "between", "a0", "a1", "--allocator", "jittered"], extra].concat(), "", 0, &[])
    };
    assert_ne!(key(&[]), key(&[]), "two unseeded calls drew the same key");
    assert_eq!(key(&["--seed", "7"]), key(&["--seed", "7"]));
    assert_eq!(key(&[]).lines().count(), 1, "prints only the key");
}

#[test]
fn token_takes_the_secret_as_serve_does() {
    let flag = check(&["token", "--room", "r", "--user", "u", "--secret", "s1"], "", 0, &[]);
    let dev = check(&["token", "--room", "r", "--user", "u"], "", 0, &[]);
    let room = roomlab_protocol::RoomId::new("r").unwrap();
    assert!(roomlab_server::verify(b"s1", Some(flag.trim()), &room, 0).is_ok(), "{flag}");
    assert!(roomlab_server::verify(b"s1", Some(dev.trim()), &room, 0).is_err(), "{dev}");
    let output = Command::new(ROOMLAB)
        .args(["token", "--room", "r", "--user", "u"])
        .env("ROOMLAB_SECRET", "s2")
        .output()
        .unwrap();
    let from_env = String::from_utf8(output.stdout).unwrap();
    assert!(roomlab_server::verify(b"s2", Some(from_env.trim()), &room, 0).is_ok(), "{from_env}");
}

/// `conform --explore`: its usage errors exit 2, and a short clean exploration of the embedded
/// server says what it checked and exits 0.
#[test]
fn explore_checks_frames_and_explains_its_mistakes() {
    check(&["conform", "--explore", "--seeds", "0"], "", 2, &["--seeds must be at least 1"]);
    check(&["conform", "--seeds", "3"], "", 2, &["required arguments were not provided"]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("yws.toml");
    std::fs::write(
        &target,
        "name = \"stock\"\nyjs_url = \"ws://127.0.0.1:9/{room}/{doc}/{field}\"\ncapabilities = [\"y-websocket\"]\n",
    )
    .unwrap();
    let target = target.to_str().unwrap();
    check(&["conform", "--explore", "--target", target], "", 2, &["does not declare `core`"]);
    let text = check(&["conform", "--explore", "--seeds", "1", "--ops", "8"], "", 0, &["no deviation"]);
    assert!(text.contains("explored 1 seed (8 operations sent"), "{text}");
}
