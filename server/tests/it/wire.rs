//! Bytes on the wire, counted by a proxy between a phone and the relay
//! (TCP payload: HTTP headers and bodies). Byte counts are deterministic,
//! so these are checked here; BENCHMARKS.md records the figures
//! (`cargo test -p handoff-server --test it wire -- --nocapture`).

use handoff_core::sync::wire::{self, DocChange, PushRequest};
use handoff_core::*;

use crate::harness::*;
use crate::proxy::Proxy;

#[test]
fn one_logged_call_costs_its_change_plus_a_small_envelope() {
    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Call", "ana");
    // Warm: one call synced, so the connection is open as it would be.
    ana.store
        .log_call(&task, call(CallOutcome::NoAnswer))
        .unwrap();
    ana.sync();

    // Steady state, nothing new: one round trip.
    proxy.take_counts();
    let report = ana.sync();
    assert_eq!(report, SyncReport::default());
    let (up, down) = proxy.take_counts();
    println!("empty poll: {up} B up + {down} B down = {} B", up + down);
    assert!(up + down < 512, "empty poll {} B", up + down);

    // One logged call: its change, the push, and the poll that follows.
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    let change = ana.store.outbox(10).unwrap().remove(0);
    let body = wire::encode(&PushRequest {
        changes: vec![DocChange {
            doc: change.doc_id.clone(),
            bytes: change.bytes.clone(),
        }],
    });
    proxy.take_counts();
    let report = ana.sync();
    assert_eq!(report.pushed, 1);
    let (up, down) = proxy.take_counts();
    println!(
        "one call attempt: change {} B, push body {} B (+{} B); on the wire with HTTP \
         headers, push + empty poll: {up} B up + {down} B down",
        change.bytes.len(),
        body.len(),
        body.len() - change.bytes.len()
    );
    assert!(body.len() <= change.bytes.len() + 128);
    // Headers of two round trips (~600 B) are the rest.
    assert!(up + down < change.bytes.len() + 1024, "{} B", up + down);

    // The manager's phone receives it: pull body vs change.
    max.sync();
    assert_eq!(max.store.task_detail(&task).unwrap().state.calls.len(), 2);
}
