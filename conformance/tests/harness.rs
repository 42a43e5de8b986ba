//! The harness's own honesty: an unreachable target is found before any case runs, and a user's
//! own case files load beside the built-in ones.

use roomlab_conformance::{cases_in, probe, Target};
use std::time::Duration;

fn target_at(port: u16) -> Target {
    let file = format!(
        "name = \"t\"\nws_url = \"ws://127.0.0.1:{port}/ws/{{room}}?token={{token}}\"\nhttp_base = \"http://127.0.0.1:{port}\"\ncapabilities = [\"core\"]\n[token]\nsecret = \"s\"\n"
    );
    Target::parse(&file).unwrap()
}

#[tokio::test]
async fn an_unreachable_target_is_found_by_the_probe() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(probe(&target_at(port), Duration::from_secs(5)).await, Ok(()));
    drop(listener);
    let error = probe(&target_at(port), Duration::from_secs(5)).await.unwrap_err();
    assert!(
        error.starts_with(&format!("the target is unreachable: ws://127.0.0.1:{port}/ws/{{room}} (")),
        "{error}"
    );
}

#[test]
fn a_users_case_files_load_as_their_own_groups() {
    let dir = tempfile::tempdir().unwrap();
    let case = "case mine.ping#1 mine.ping MUST\n  about: ping is answered\n  connect a u1 member\n  a> {\"type\":\"ping\",\"nonce\":1}\n  a< {\"type\":\"pong\",\"nonce\":1}\n";
    std::fs::write(dir.path().join("mine.cases"), case).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a case file").unwrap();
    let cases = cases_in(dir.path()).unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!((cases[0].id.as_str(), cases[0].group.as_str()), ("mine.ping#1", "mine"));
    assert_eq!(cases[0].needs, vec!["core".to_string()]);
    std::fs::write(dir.path().join("bad.cases"), "case x#1 x MUST\n about: z\n a> {").unwrap();
    let error = cases_in(dir.path()).unwrap_err().to_string();
    assert!(error.contains("bad.cases:3: invalid JSON"), "{error}");
}
