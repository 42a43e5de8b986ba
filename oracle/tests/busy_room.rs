//! A busy room (about a hundred connections, a few thousand mutations) stays cheap to judge.

use roomlab_oracle::{Identity, Oracle, PlanLimits, Settings};
use roomlab_protocol::{ClientMessage, Limits, Plan, Role, RoomId, UserId};
use serde_json::json;
use std::time::Instant;

fn message(value: serde_json::Value) -> ClientMessage {
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_hundred_connections_and_thousands_of_mutations() {
    let settings = Settings {
        room: RoomId::new("busy").unwrap(),
        limits: Limits::default(),
        plans: PlanLimits::default(),
    };
    let mut oracle = Oracle::new(settings);
    let connections = 100u64;
    for conn in 0..connections {
        let user = UserId::new(format!("u{}", conn % 20)).unwrap();
        oracle.connect(conn, Identity { user, role: Role::Member, plan: Plan::Pro, addons: 0 }, 0);
        oracle.receive(
            conn,
            message(json!({"type":"hello","protocol":1,"client":format!("c{conn}")})),
            0,
            false,
        );
        let mut subscriptions = vec![
            json!({"type":"subscribe","sub":"q","query":{"collection":"tasks","where":{"field":"n","op":"gte","value":conn}}}),
            json!({"type":"subscribe","sub":"w","query":{"collection":"tasks","order_by":[{"field":"n","dir":"desc"}],"limit":10}}),
            json!({"type":"subscribe","sub":"d","doc":format!("t{}", conn % 50)}),
        ];
        // sys:index is pushed whole to each subscriber on every create and delete: a tenth of the
        // connections watch it.
        if conn % 10 == 0 {
            subscriptions.push(json!({"type":"subscribe","sub":"i","doc":"sys:index"}));
        }
        for subscription in subscriptions {
            oracle.receive(conn, message(subscription), 0, false);
        }
    }
    let started = Instant::now();
    let mut pushes = 0;
    for step in 0..3000u64 {
        let conn = step % connections;
        let doc = format!("t{}", step % 200);
        let op = match step % 5 {
            0 | 1 => json!({"op":"create","doc":doc,"doc_type":"tasks","data":{"n":step % 97}}),
            2 => json!({"op":"patch","doc":doc,"data":{"n":step % 89}}),
            3 => {
                json!({"op":"list_insert","doc":doc,"list":"l","item":format!("i{step}"),"key":"a0","value":step})
            }
            _ => json!({"op":"remove","doc":doc}),
        };
        let mut mutation = op;
        mutation["type"] = json!("mutate");
        mutation["mid"] = json!(step + 1);
        pushes += oracle.receive(conn, message(mutation), step, false).len();
    }
    assert!(pushes > 3000, "{pushes}");
    eprintln!("3000 mutations, {pushes} outputs, in {:?}", started.elapsed());
}
